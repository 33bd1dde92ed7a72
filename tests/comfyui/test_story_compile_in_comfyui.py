"""A StoryMaker Story on a torch.compile'd model (ComfyUI's TorchCompileModel), on a real ComfyUI server.

The same story (nobody, one, two and three characters on stage, region layouts) is queued twice on one server:
once on the plain model, once with TorchCompileModel between the UNet loader and the story. Every scene must
match: its sampled latent (relative error <= 1e-4), the IMAGE batch the story outputs and the saved PNGs (<= 2 in
0..255 units); and dynamo must compile each new layout (character count, masks on/off) at most once: a later
scene with a layout already seen compiles nothing.

TorchCompileModel's combo offers inductor and cudagraphs; on 2 CPU cores inductor compiles the narrow SDXL UNet
for minutes per layout, so a test-only node calls the very same node with `aot_eager` (the backend the
library-mode compile tests also use; dynamo, the guard filter and StoryMaker's compiled path are the same).
Needs COMFYUI_PATH (and insightface); about five minutes on 2 cores (two thirds of it the compiled story).
"""

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

TEST_NODES = '''
import os
import sys
import time

import torch
from aiohttp import web
from server import PromptServer

SCENES = []  # per finished scene sampling: dynamo's counters then
SAMPLES = []  # per KSampler run: (seconds, latent)
ORIGINAL = {}


def dynamo_counts():
    from torch._dynamo.utils import counters

    return {"unique_graphs": counters["stats"]["unique_graphs"], "frames": counters["frames"]["total"],
            "graph_breaks": sum(counters["graph_break"].values())}


def _measured_release(self):
    SCENES.append(dynamo_counts())
    ORIGINAL["release"](self)


def _timed_ksampler(*args, **kwargs):
    start = time.perf_counter()
    out = ORIGINAL["ksampler"](*args, **kwargs)
    SAMPLES.append((time.perf_counter() - start, out[0]["samples"].clone()))
    return out


def install():
    if ORIGINAL:
        return
    import nodes

    patch = next(m for n, m in sys.modules.items() if n.endswith("storymaker_core.patch")
                 and hasattr(m, "StoryMakerAttention"))
    ORIGINAL.update(release=patch.StoryMakerAttention.release_caches, ksampler=nodes.common_ksampler)
    patch.StoryMakerAttention.release_caches = _measured_release
    nodes.common_ksampler = _timed_ksampler  # KSampler.sample looks it up at each call


class StoryMakerTestCompile:
    """ComfyUI's TorchCompileModel node itself, with a backend its combo does not list (aot_eager)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "backend": ("STRING", {"default": "aot_eager"})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "compile"
    CATEGORY = "StoryMaker/testing"

    def compile(self, model, backend):
        from comfy_extras.nodes_torch_compile import TorchCompileModel

        return (TorchCompileModel.execute(model, backend)[0],)


class StoryMakerTestSaveTensor:
    """Saves an IMAGE batch as a float tensor (output/tensors/<name>.pt): compared without PNG rounding."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "name": ("STRING", {"default": "images"})}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "StoryMaker/testing"

    def save(self, images, name):
        import folder_paths

        folder = os.path.join(folder_paths.get_output_directory(), "tensors")
        os.makedirs(folder, exist_ok=True)
        torch.save(images.cpu().float().clone(), os.path.join(folder, name + ".pt"))
        return ()


@PromptServer.instance.routes.get("/storymaker_test/dynamo")
async def dynamo(request):
    return web.json_response({"now": dynamo_counts(), "scenes": SCENES})


@PromptServer.instance.routes.post("/storymaker_test/dynamo_reset")
async def dynamo_reset(request):
    install()
    SCENES.clear()
    SAMPLES.clear()
    return web.json_response(dynamo_counts())


@PromptServer.instance.routes.post("/storymaker_test/samples")
async def samples(request):
    """Saves the latents sampled since the last reset (output/tensors/<name>-latents.pt); their seconds."""
    import folder_paths

    folder = os.path.join(folder_paths.get_output_directory(), "tensors")
    os.makedirs(folder, exist_ok=True)
    torch.save([latent for _, latent in SAMPLES], os.path.join(folder, request.query["name"] + "-latents.pt"))
    return web.json_response([seconds for seconds, _ in SAMPLES])


NODE_CLASS_MAPPINGS = {"StoryMakerTestCompile": StoryMakerTestCompile,
                       "StoryMakerTestSaveTensor": StoryMakerTestSaveTensor}
'''

# layouts in order of appearance: 1 unmasked, 2 masked (halves), 0, 3 masked (thirds); then each again (other
# regions, same shapes); last 2 characters unmasked (a new character count for the unmasked graphs)
SCRIPT = """[ava] drinking coffee in a sunny kitchen, morning light
[ava, ben] walking side by side in a park, autumn | seed=42
[NC] an empty street at dawn, rain
[ben, ava, rex] at a picnic | layout=thirds
[rex][ava] playing chess by a window | layout=0-0.6,0.4-1
[ben] reading a newspaper on a bench
[NC] a harbour at night
[rex, ben, ava] on a boat | layout=right-third,middle-third,left-third
[ava, ben] dancing in the rain | layout=full
"""
# which scene brings a layout (character count, masks on/off) not seen before
NEW_LAYOUT = [True, True, True, True, False, False, False, False, True]
FILES = ["01-ava-drinking-coffee-in-a-sunny-kitchen.png", "02-ava-and-ben-walking-side-by-side-in-a.png",
         "03-an-empty-street-at-dawn-rain.png", "04-ben-ava-and-rex-at-a-picnic.png",
         "05-rex-and-ava-playing-chess-by-a-window.png", "06-ben-reading-a-newspaper-on-a-bench.png",
         "07-a-harbour-at-night.png", "08-rex-ben-and-ava-on-a-boat.png", "09-ava-and-ben-dancing-in-the-rain.png"]
# Compiled and eager sample the same model; the compiled image branch computes attention by its written-out
# formula where eager runs ComfyUI's kernel (~1e-7 apart per call, see docs/compile.md). The latents are the
# telling comparison: the random TAESD decoder clips nearly every pixel of these random-UNet latents (|x| ~ 100)
# to 0 or 1, so equal images alone would prove little.
MAX_LATENT_RELATIVE_ERROR = 1e-4  # as tests/comfyui/test_compile_in_comfyui.py
MAX_ABS_DIFF_255 = 2.0  # images and saved PNGs, 0..255 units


def story_prompt(script: str, name: str, compile_backend=None, seed: int = 0, size: int = 128, steps: int = 2) -> dict:
    from support.random_comfy import CLIP_VISION, STORYMAKER, UNET

    def node(class_type, **inputs):
        return {"class_type": class_type, "inputs": inputs}

    def character(name):
        return node("StoryMakerCharacterFromImage", image=["5", 0], insightface=["3", 0], name=name, face_index=0,
                    identity="face", mask=["6", 0])

    prompt = {
        "1": node("UNETLoader", unet_name=UNET, weight_dtype="default"),
        "2": node("StoryMakerLoader", storymaker_file=STORYMAKER),
        "3": node("StoryMakerInsightFaceLoader", model_name="buffalo_l", provider="CPU", det_size=640),
        "4": node("CLIPVisionLoader", clip_name=CLIP_VISION),
        "5": node("LoadImage", image="reference.png"),
        "6": node("LoadImageMask", image="reference_mask.png", channel="red"),
        "7": character("ava"), "8": character("ben"), "9": character("rex"),
        "10": node("StoryMakerCast", **{"characters.character_1": ["7", 0], "characters.character_2": ["8", 0],
                                        "characters.character_3": ["9", 0]},
                   face_only=False, descriptions="", clip_vision=["4", 0]),
        "11": node("StoryMakerTestCLIP"),
        "12": node("VAELoader", vae_name="taesdxl"),
        "13": node("StoryMakerStory", model=["20" if compile_backend else "1", 0], clip=["11", 0], vae=["12", 0],
                   storymaker=["2", 0], cast=["10", 0], script=script, story_name=name, style_prefix="storybook style",
                   style_suffix="", negative="blurry", width=size, height=size, seed=seed, steps=steps, cfg=5.0,
                   sampler_name="euler", scheduler="normal", ip_scale=0.8, lora_scale=0.8, start_at=0.0, end_at=1.0),
        "14": node("StoryMakerTestSaveTensor", images=["13", 0], name=name),
    }
    if compile_backend:
        prompt["20"] = node("StoryMakerTestCompile", model=["1", 0], backend=compile_backend)
    return prompt


def run(url, prompt) -> dict:
    from support.story_server import run_story

    return run_story(url, prompt, client_id="story-compile-test")


def dynamo(url: str, reset: bool = False) -> dict:
    request = urllib.request.Request(f"{url}/storymaker_test/dynamo_reset", data=b"", method="POST") if reset else \
        f"{url}/storymaker_test/dynamo"
    return json.loads(urllib.request.urlopen(request).read())


def save_samples(url: str, name: str) -> list:
    """The server saves the latents of the story just run as output/tensors/<name>-latents.pt: seconds each."""
    request = urllib.request.Request(f"{url}/storymaker_test/samples?name={name}", data=b"", method="POST")
    return json.loads(urllib.request.urlopen(request).read())


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The story rendered eagerly, then compiled (aot_eager) on the same server; dynamo's counters per scene."""
    from support.comfyui import comfyui_path_or_skip

    comfyui = comfyui_path_or_skip()
    pytest.importorskip("insightface")
    from support.comfyui import comfyui_server
    from support.random_comfy import make_base_directory

    base = make_base_directory(Path(comfyui), tmp_path_factory.mktemp("comfy-story-compile"))
    (base / "custom_nodes" / "storymaker_compile_test_nodes.py").write_text(TEST_NODES)
    with comfyui_server(Path(comfyui), base) as url:
        dynamo(url, reset=True)  # installs the counters
        eager = run(url, story_prompt(SCRIPT, "eager"))
        assert eager["outcome"] == "success", eager["error"]
        seconds = {"eager": save_samples(url, "eager")}
        before = dynamo(url, reset=True)
        compiled = run(url, story_prompt(SCRIPT, "compiled", compile_backend="aot_eager"))
        counts = dynamo(url)
        seconds["compiled"] = save_samples(url, "compiled")
        print("seconds per scene sampling:", {k: [round(x, 1) for x in v] for k, v in seconds.items()})
        log = (base / "server.log").read_text()
        yield {"base": base, "eager": eager, "compiled": compiled, "before": before, "counts": counts, "log": log,
               "seconds": seconds}


def test_a_compiled_story_renders_every_scene(rendered):
    compiled = rendered["compiled"]
    assert compiled["outcome"] == "success", (compiled["error"], rendered["log"][-3000:])
    assert len(compiled["started"]) == len(FILES) == len(rendered["eager"]["started"])
    folder = rendered["base"] / "output" / "storymaker"
    assert sorted(p.name for p in (folder / "compiled").glob("*.png")) == FILES
    assert "graphs traced without StoryMaker were reused" not in rendered["log"]


def test_compiled_story_images_equal_eager_ones(rendered):
    import torch
    from PIL import Image

    from support import measured

    tensors = rendered["base"] / "output" / "tensors"
    latents = {name: torch.load(tensors / f"{name}-latents.pt", weights_only=True) for name in ("eager", "compiled")}
    assert len(latents["eager"]) == len(latents["compiled"]) == len(FILES)
    errors = [float((c - e).norm() / e.norm()) for c, e in zip(latents["compiled"], latents["eager"])]
    print("relative error of the compiled latents per scene:", [f"{x:.1e}" for x in errors])
    measured("story under aot_eager: compiled vs eager latents, worst scene", max(errors), MAX_LATENT_RELATIVE_ERROR)
    eager_latents = latents["eager"]
    assert all(float((a - b).norm() / b.norm()) > 0.05 for a, b in zip(eager_latents, eager_latents[1:])), \
        "consecutive scenes should differ (the comparison is not between equal scenes)"
    eager, compiled = (torch.load(tensors / f"{name}.pt", weights_only=True) for name in ("eager", "compiled"))
    inside = float(((eager > 0) & (eager < 1)).float().mean())
    print(f"pixels strictly inside (0, 1), not clipped by the random decoder: {inside:.1%}")
    assert eager.shape == compiled.shape == (len(FILES), 128, 128, 3)
    per_scene = ((compiled - eager).abs().amax(dim=(1, 2, 3)) * 255).tolist()
    print("max |compiled - eager| per scene, 0..255:", [round(d, 4) for d in per_scene])
    measured("story under aot_eager: max |compiled - eager| IMAGE (0..255 units)", max(per_scene), MAX_ABS_DIFF_255)
    folder = rendered["base"] / "output" / "storymaker"
    png = [int(np.abs(np.asarray(Image.open(folder / "compiled" / f), dtype=np.int16)
                      - np.asarray(Image.open(folder / "eager" / f), dtype=np.int16)).max()) for f in FILES]
    print("max |compiled - eager| per saved PNG, 0..255:", png)
    assert max(png) <= MAX_ABS_DIFF_255, png


def test_each_layout_compiles_once_and_a_repeated_layout_reuses_it(rendered):
    counts = rendered["counts"]
    scenes = counts["scenes"]
    assert len(scenes) == len(FILES), scenes
    start = rendered["before"]
    new_graphs = [s["unique_graphs"] - p["unique_graphs"] for p, s in zip([start] + scenes, scenes)]
    new_frames = [s["frames"] - p["frames"] for p, s in zip([start] + scenes, scenes)]
    print("new dynamo graphs per scene:", new_graphs, "frames converted per scene:", new_frames,
          "graph breaks in all:", counts["now"]["graph_breaks"] - start["graph_breaks"])
    assert new_graphs[0] > 0, "the compiled model was not compiled"
    for scene, (graphs, new) in enumerate(zip(new_graphs, NEW_LAYOUT), start=1):
        if not new:
            assert graphs == 0, f"scene {scene} repeats a layout already compiled but compiled {graphs} graphs"
        else:
            assert graphs <= new_graphs[0], f"scene {scene} compiled more ({graphs}) than the first compile"
    assert "recompile_limit" not in rendered["log"] and "cache_size_limit" not in rendered["log"], \
        "dynamo hit its recompile limit: some frames fell back to eager"
