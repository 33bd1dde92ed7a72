"""A story in the editor: one StoryMaker Story queue vs one queue per scene, and memory of long stories.

    python benchmarks/story_in_editor.py --comfyui /path/to/ComfyUI [--rounds 5 --scenes 10 --steps 3 --size 128]
    python benchmarks/story_in_editor.py --comfyui /path/to/ComfyUI --quick

On one real ComfyUI server (`main.py --cpu`, random-weight models of the real kinds built in a temporary
`--base-directory`, see tests/support/random_comfy.py), in interleaved rounds A B A B ...:

  A  a story of `--scenes` one-character scenes in ONE StoryMaker Story queue;
  B  the same scenes as `--scenes` queues of the classic one-scene graph (Character from Image -> Encode
     StoryMaker Characters -> Apply StoryMaker -> KSampler -> VAEDecode -> SaveImage), one queue each.

Both sample the same prompts, seeds, size and steps; every round uses new seeds and texts, so no sampler is
served from ComfyUI's cache. Each queue is timed from its POST to `execution_success`; round 0 warms up and
is dropped. Switching graphs costs a re-encode and a LoRA re-merge (ComfyUI drops the other graph's cached
nodes and its merge), which a session that stays with one graph does not pay: so before each timed A and B
an untimed one-step queue of the same graph does the switch, and the timed queues find the character, the
encoding and the merged model ready, as in a real session. Printed: seconds per scene of each, the ratio A/B
(goal <= 1.02), the switch's cost, and whether the story's panels equal the classic graph's PNGs. Both are
timed in wall time and in the server's CPU time; the server runs torch on one thread (`--threads`), since on a
shared 2-core machine a two-thread team stalls at each barrier whenever another process takes a core (identical
queues then varied 5x, in wall and CPU time alike).

Then the memory of a 2-scene vs a `--long`-scene story: the peak image K/V bytes held by live scene patches
and by the K/V cache per token group that the scenes share (a custom node written into the base directory wraps StoryMakerAttention, as tests/comfyui/
test_story_node_in_comfyui.py does) and the server's peak RSS (VmHWM, reset through /proc/self/clear_refs
before each story). Run it with the Python that runs ComfyUI (its requirements plus insightface). Prints a
markdown block for benchmarks/RESULTS.md and, last, one summary line; writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from support.comfyui import comfyui_server  # noqa: E402
from support.random_comfy import CLIP_VISION, STORYMAKER, UNET, make_base_directory  # noqa: E402

COUNTERS_NODE = '''
import os
import re
import sys
import weakref

from aiohttp import web
from server import PromptServer

COUNTS = {"peak_kv_bytes": 0, "releases": 0}
LIVE = weakref.WeakSet()
ORIGINAL = {}


def _tracked_init(self, *args, **kwargs):
    ORIGINAL["init"](self, *args, **kwargs)
    LIVE.add(self)


def kv_bytes():
    """(image K/V of the live scene patches, the per-token-group K/V cache the scenes share)."""
    caches = {id(o.group_cache): o.group_cache for o in list(LIVE) if o.group_cache is not None}
    return sum(o.cached_bytes() for o in list(LIVE)), sum(c.cached_bytes() for c in caches.values())


def _measured_release(self):
    # a scene's sampling just ended: its K/V are still held, so this is when the live patches hold the most
    COUNTS["peak_kv_bytes"] = max(COUNTS["peak_kv_bytes"], sum(kv_bytes()))
    COUNTS["releases"] += 1
    ORIGINAL["release"](self)


def install():
    if ORIGINAL:
        return
    patch = next(m for n, m in sys.modules.items() if n.endswith("storymaker_core.patch")
                 and hasattr(m, "StoryMakerAttention"))
    ORIGINAL.update(init=patch.StoryMakerAttention.__init__, release=patch.StoryMakerAttention.release_caches)
    patch.StoryMakerAttention.__init__ = _tracked_init
    patch.StoryMakerAttention.release_caches = _measured_release


def _status_kib(field):
    return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read())[1])


class StoryMakerBenchSink:
    """An output node that only takes the story's images (no preview PNGs to write in the timed story)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}

    RETURN_TYPES = ()
    FUNCTION = "take"
    OUTPUT_NODE = True
    CATEGORY = "StoryMaker/testing"

    def take(self, images):
        return ()


@PromptServer.instance.routes.get("/storymaker_bench/counters")
async def counters(request):
    times = os.times()
    scenes, groups = kv_bytes()
    return web.json_response({**COUNTS, "live_kv_bytes": scenes, "group_kv_bytes": groups,
                              "rss_kib": _status_kib("VmRSS"), "peak_rss_kib": _status_kib("VmHWM"),
                              "cpu_s": times.user + times.system})


@PromptServer.instance.routes.post("/storymaker_bench/reset")
async def reset(request):
    install()
    COUNTS.update(peak_kv_bytes=0, releases=0)
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM (the peak RSS) to the current RSS
        f.write("5")
    return web.json_response(COUNTS)


NODE_CLASS_MAPPINGS = {"StoryMakerBenchSink": StoryMakerBenchSink}
'''

NEGATIVE = "blurry, lowres"
PLACES = ["in a sunny kitchen", "in a park in autumn", "on a bench reading", "at a train station", "on a boat",
          "by a window at night", "in a library", "on a rooftop at dusk", "in a market", "on a beach"]


def node(class_type, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def shared_nodes() -> dict:
    """Loaders and the character: the same nodes (ids and inputs) in both graphs, so ComfyUI caches them."""
    return {
        "unet": node("UNETLoader", unet_name=UNET, weight_dtype="default"),
        "sm": node("StoryMakerLoader", storymaker_file=STORYMAKER),
        "face": node("StoryMakerInsightFaceLoader", model_name="buffalo_l", provider="CPU", det_size=640),
        "clipv": node("CLIPVisionLoader", clip_name=CLIP_VISION),
        "image": node("LoadImage", image="reference.png"),
        "mask": node("LoadImageMask", image="reference_mask.png", channel="red"),
        "ava": node("StoryMakerCharacterFromImage", image=["image", 0], insightface=["face", 0], name="ava",
                    face_index=0, identity="face", mask=["mask", 0]),
        "clip": node("StoryMakerTestCLIP"),
        "vae": node("VAELoader", vae_name="taesdxl"),
    }


def scene_lines(round_: int, count: int, tag: str = "") -> list:
    """(script line, seed) per scene: new texts and seeds every round, so no sampling is served from cache."""
    return [(f"[ava] {tag}round {round_} scene {i + 1}, {PLACES[i % len(PLACES)]} | seed={1000 * round_ + i}",
             1000 * round_ + i) for i in range(count)]


def story_graph(lines: list, name: str, steps: int, size: int) -> dict:
    prompt = shared_nodes()
    prompt.update({
        "cast": node("StoryMakerCast", **{"characters.character_1": ["ava", 0]}, face_only=False, descriptions="",
                     clip_vision=["clipv", 0]),
        "story": node("StoryMakerStory", model=["unet", 0], clip=["clip", 0], vae=["vae", 0], storymaker=["sm", 0],
                      cast=["cast", 0], script="\n".join(line for line, _ in lines), story_name=name, style_prefix="",
                      style_suffix="", negative=NEGATIVE, width=size, height=size, seed=0, steps=steps, cfg=5.0,
                      sampler_name="euler", scheduler="normal", ip_scale=0.8, lora_scale=0.8, start_at=0.0,
                      end_at=1.0),
        "sink": node("StoryMakerBenchSink", images=["story", 0]),
    })
    return prompt


def classic_graph(text: str, seed: int, prefix: str, steps: int, size: int) -> dict:
    """One scene with the classic nodes; `text` is the prompt the story's scene samples (tags resolved)."""
    prompt = shared_nodes()
    prompt.update({
        "encode": node("StoryMakerEncodeCharacters", storymaker=["sm", 0], character_1=["ava", 0], face_only=False,
                       clip_vision=["clipv", 0]),
        "apply": node("StoryMakerApply", model=["unet", 0], storymaker=["sm", 0], embeds=["encode", 0], ip_scale=0.8,
                      lora_scale=0.8, start_at=0.0, end_at=1.0),
        "pos": node("CLIPTextEncode", clip=["clip", 0], text=text),
        "neg": node("CLIPTextEncode", clip=["clip", 0], text=NEGATIVE),
        "latent": node("EmptyLatentImage", width=size, height=size, batch_size=1),
        "sampler": node("KSampler", model=["apply", 0], seed=seed, steps=steps, cfg=5.0, sampler_name="euler",
                        scheduler="normal", positive=["pos", 0], negative=["neg", 0], latent_image=["latent", 0],
                        denoise=1.0),
        "decode": node("VAEDecode", samples=["sampler", 0], vae=["vae", 0]),
        "save": node("SaveImage", images=["decode", 0], filename_prefix=prefix),
    })
    return prompt


def scene_texts(lines: list) -> list:
    """The prompt each story scene samples (the story's own parser and prompt rule)."""
    from storymaker_core.script import parse_script, scene_prompt

    return [scene_prompt(scene) for scene in parse_script("\n".join(line for line, _ in lines), ["ava"])]


async def _queue(url: str, prompt: dict, timeout: float) -> dict:
    """Queue `prompt` and wait for it: seconds from POST to success, and how many KSamplers ran."""
    import aiohttp

    client_id = f"bench-{time.time_ns()}"
    samplers = 0
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url}/ws?clientId={client_id}") as ws:
            start = time.perf_counter()
            async with session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client_id}) as response:
                body = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"prompt rejected: {json.dumps(body)[:2000]}")
            prompt_id = body["prompt_id"]
            while True:
                message = await ws.receive(timeout=timeout)
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(message.data)
                data = event.get("data", {})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                node_id = data.get("node")
                if event["type"] == "executing" and isinstance(node_id, str) and (
                        node_id == "sampler" or node_id.endswith(".sample")):
                    samplers += 1
                elif event["type"] == "execution_error":
                    raise RuntimeError(f"execution error: {data.get('exception_message')}\n"
                                       f"{''.join(data.get('traceback', []))}")
                elif event["type"] == "execution_interrupted":
                    raise RuntimeError("interrupted")
                elif event["type"] == "execution_success":
                    return {"seconds": time.perf_counter() - start, "samplers": samplers}


def queue(url: str, prompt: dict, timeout: float = 3600) -> dict:
    return asyncio.run(_queue(url, prompt, timeout))


def call(url: str, route: str, post: bool = False) -> dict:
    request = urllib.request.Request(f"{url}{route}", data=b"" if post else None, method="POST" if post else "GET")
    return json.loads(urllib.request.urlopen(request).read())


def story_vs_queues(url: str, base: Path, args) -> dict:
    """Interleaved rounds; seconds per scene of A (one story queue) and B (one queue per scene)."""
    import numpy as np
    from PIL import Image

    per_scene = {"story": [], "queues": []}
    cpu_per_scene = {"story": [], "queues": []}
    switches = {"story": [], "queues": []}
    max_png_diff = 0
    for r in range(args.rounds + 1):  # round 0 warms up (loads, encodes, LoRA merge) and is dropped
        lines = scene_lines(r, args.scenes)
        switches["story"].append(warm_up_story(url, r, args))
        cpu = server_cpu(url)
        story = queue(url, story_graph(lines, f"bench-r{r}", args.steps, args.size))
        story_cpu = server_cpu(url) - cpu
        if story["samplers"] != args.scenes:
            raise RuntimeError(f"round {r}: the story sampled {story['samplers']} scenes, not {args.scenes} "
                               f"(served from cache?)")
        text, seed = scene_texts(scene_lines(r, 1, tag="warm-up "))[0], 5000 + r
        switches["queues"].append(queue(url, classic_graph(text, seed, "bench/warm-up", 1, args.size))["seconds"])
        classic = []
        cpu = server_cpu(url)
        for i, (text, (_, seed)) in enumerate(zip(scene_texts(lines), lines)):
            result = queue(url, classic_graph(text, seed, f"bench/classic-r{r}-s{i + 1:02d}", args.steps, args.size))
            if result["samplers"] != 1:
                raise RuntimeError(f"round {r}, scene {i + 1}: the classic graph did not sample")
            classic.append(result["seconds"])
        classic_cpu = server_cpu(url) - cpu
        # the same scene through both graphs must give the same picture
        story_files = sorted((base / "output" / "storymaker" / f"bench-r{r}").glob("*.png"))
        classic_files = [next((base / "output" / "bench").glob(f"classic-r{r}-s{i + 1:02d}_*.png"))
                         for i in range(args.scenes)]
        for a, b in zip(story_files, classic_files):
            diff = np.abs(np.asarray(Image.open(a), np.int16) - np.asarray(Image.open(b), np.int16)).max()
            max_png_diff = max(max_png_diff, int(diff))
        a, b = story["seconds"] / args.scenes, sum(classic) / args.scenes
        a_cpu, b_cpu = story_cpu / args.scenes, classic_cpu / args.scenes
        print(f"round {r}{' (warm-up, dropped)' if r == 0 else ''}: story {a:.3f} s/scene, "
              f"{args.scenes} one-scene queues {b:.3f} s/scene, ratio {a / b:.3f}; server CPU time "
              f"{a_cpu:.3f} vs {b_cpu:.3f} s/scene, ratio {a_cpu / b_cpu:.3f}", flush=True)
        if r > 0:
            per_scene["story"].append(a)
            per_scene["queues"].append(b)
            cpu_per_scene["story"].append(a_cpu)
            cpu_per_scene["queues"].append(b_cpu)
    return {"per_scene_s": per_scene, "server_cpu_s_per_scene": cpu_per_scene,
            "max_png_diff_story_vs_classic": max_png_diff,
            "untimed_switch_s": {k: v[1:] for k, v in switches.items()}}


def server_cpu(url: str) -> float:
    """CPU seconds the server process has used (all its threads): the work done, which a slice of time taken
    by other processes or VMs on these cores does not inflate as it does wall time."""
    return call(url, "/storymaker_bench/counters")["cpu_s"]


def warm_up_story(url: str, round_: int, args) -> float:
    """An untimed one-scene, one-step story just before the timed one: after the other graph ran, ComfyUI has
    dropped the story's cached nodes (member encoding, LoRA model) and holds the other graph's LoRA merge; this
    re-encodes and re-merges, so the timed queues measure scenes, not the switch between the two graphs."""
    lines = scene_lines(round_, 1, tag="warm-up ")
    return queue(url, story_graph(lines, f"warm-up-{round_}", 1, args.size))["seconds"]


def story_memory(url: str, scenes: int, args) -> dict:
    """Peak image K/V of live scene patches and the server's peak RSS while one story of `scenes` renders."""
    warm_up_story(url, 900 + scenes, args)
    call(url, "/storymaker_bench/reset", post=True)
    before = call(url, "/storymaker_bench/counters")
    lines = scene_lines(900 + scenes, scenes, tag="memory ")
    result = queue(url, story_graph(lines, f"memory-{scenes}", args.steps, args.size))
    after = call(url, "/storymaker_bench/counters")
    if after["releases"] < scenes:
        raise RuntimeError(f"{scenes}-scene story: only {after['releases']} scene patches released their K/V")
    return {"scenes": scenes, "seconds": result["seconds"], "peak_kv_bytes": after["peak_kv_bytes"],
            "live_kv_bytes_after": after["live_kv_bytes"], "group_kv_bytes_after": after["group_kv_bytes"],
            "rss_before_mib": before["rss_kib"] / 1024,
            "peak_rss_mib": after["peak_rss_kib"] / 1024}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH"), help="ComfyUI source tree")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of A and B (after one warm-up round)")
    parser.add_argument("--scenes", type=int, default=10, help="scenes per story (and one-scene queues per round)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--long", type=int, default=20, help="scenes of the long story in the memory comparison")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 scenes, 1 step, memory of 2 vs 4 scenes")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "story_in_editor.json"))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the server (OMP_NUM_THREADS): on a shared CPU a team of several "
                             "threads waits at every barrier for a member another process preempted, so one "
                             "thread times far steadier; 0 leaves torch's default")
    parser.add_argument("--keep", metavar="DIR", help="build the base directory in DIR (new) and keep it, server.log "
                                                      "and images included")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.scenes, args.steps, args.long = 1, 2, 1, 4
    if not args.comfyui:
        parser.error("give --comfyui or set COMFYUI_PATH")
    comfyui = Path(args.comfyui).resolve()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the server inherits this process's environment
    folder = contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory(prefix="storymaker-story-")
    with folder as tmp:
        base = make_base_directory(comfyui, Path(tmp))
        (base / "custom_nodes" / "storymaker_bench_counters.py").write_text(COUNTERS_NODE)
        with comfyui_server(comfyui, base) as url:
            call(url, "/storymaker_bench/reset", post=True)  # installs the counters (every pack is loaded now)
            timing = story_vs_queues(url, base, args)
            memory = [story_memory(url, n, args) for n in (2, args.long)]
        log_text = (base / "server.log").read_text()
        if any("IMPORT FAILED" in line and "ComfyUI-StoryMaker" in line for line in log_text.splitlines()):
            raise RuntimeError("the pack failed to import:\n" + log_text[-3000:])
    story_s, queues_s = (statistics.median(timing["per_scene_s"][k]) for k in ("story", "queues"))
    ratio = story_s / queues_s
    round_ratios = [a / b for a, b in zip(timing["per_scene_s"]["story"], timing["per_scene_s"]["queues"])]
    story_cpu, queues_cpu = (statistics.median(timing["server_cpu_s_per_scene"][k]) for k in ("story", "queues"))
    cpu_ratio = story_cpu / queues_cpu
    # the least disturbed round of each (other processes only ever add time)
    best = {k: min(timing["per_scene_s"][k]) for k in ("story", "queues")}
    best_cpu = {k: min(timing["server_cpu_s_per_scene"][k]) for k in ("story", "queues")}
    result = {"benchmark": "story_in_editor", "device": "cpu", "cpu_count": os.cpu_count(),
              "server_torch_threads": args.threads or "default",
              "unet": "narrow SDXL (320 ch, 70 transformer blocks), random weights", "size": args.size,
              "steps": args.steps, "scenes": args.scenes, "rounds": args.rounds, "characters_per_scene": 1,
              "median_s_per_scene": {"story": story_s, "queues": queues_s}, "ratio": ratio,
              "round_ratios": round_ratios,
              "median_server_cpu_s_per_scene": {"story": story_cpu, "queues": queues_cpu}, "cpu_ratio": cpu_ratio,
              "best_s_per_scene": best, "best_server_cpu_s_per_scene": best_cpu,
              **timing, "memory": memory,
              "date": time.strftime("%Y-%m-%d")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))

    short, long_ = memory
    print()
    print(f"{args.scenes} one-character scenes, {args.size}x{args.size}, {args.steps} steps, euler, cfg 5, "
          f"{args.rounds} interleaved rounds after a warm-up, server torch threads: {args.threads or 'default'}:")
    print()
    print(f"| s per scene | A: one StoryMaker Story queue ({args.scenes} scenes) | B: {args.scenes} queues of the "
          f"one-scene graph | A/B | per-round A/B |")
    print("|---|---|---|---|---|")
    print(f"| wall time, median | {story_s:.3f} | {queues_s:.3f} | **{ratio:.3f}** | "
          f"{', '.join(f'{x:.3f}' for x in round_ratios)} |")
    print(f"| wall time, best round | {best['story']:.3f} | {best['queues']:.3f} | "
          f"{best['story'] / best['queues']:.3f} | |")
    cpu_rounds = [a / b for a, b in zip(*(timing["server_cpu_s_per_scene"][k] for k in ("story", "queues")))]
    print(f"| server CPU time, median | {story_cpu:.3f} | {queues_cpu:.3f} | **{cpu_ratio:.3f}** | "
          f"{', '.join(f'{x:.3f}' for x in cpu_rounds)} |")
    print(f"| server CPU time, best round | {best_cpu['story']:.3f} | {best_cpu['queues']:.3f} | "
          f"{best_cpu['story'] / best_cpu['queues']:.3f} | |")
    print()
    switch = {k: statistics.median(v) for k, v in timing["untimed_switch_s"].items()}
    print(f"Story panels vs the classic graph's images, same prompts and seeds: max |difference| "
          f"{timing['max_png_diff_story_vs_classic']} (0..255 PNG units). Untimed switch to the graph (one-step "
          f"queue with re-encode and LoRA re-merge), median: story {switch['story']:.1f} s, one-scene graph "
          f"{switch['queues']:.1f} s.")
    print()
    print("| story | peak image K/V (live scene patches + group cache) | after: scenes / group cache "
          "| server RSS before | server peak RSS |")
    print("|---|---|---|---|---|")
    for m in memory:
        print(f"| {m['scenes']} scenes | {m['peak_kv_bytes'] / 2 ** 20:.2f} MiB | {m['live_kv_bytes_after']} B / "
              f"{m['group_kv_bytes_after'] / 2 ** 20:.2f} MiB | {m['rss_before_mib']:.0f} MiB "
              f"| {m['peak_rss_mib']:.0f} MiB |")
    print()
    print(f"story_in_editor: {story_s:.3f} s/scene ({ratio:.3f}x vs {args.scenes} one-scene queues; K/V peak "
          f"{long_['peak_kv_bytes'] / max(short['peak_kv_bytes'], 1):.2f}x for {args.long} vs 2 scenes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
