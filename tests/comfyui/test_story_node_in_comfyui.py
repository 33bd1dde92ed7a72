"""A whole story in one StoryMaker Story node, on a real ComfyUI server with random-weight models.

What is counted comes from the server itself: each expanded KSampler's `executing` event (its id ends in
`.sample`), and a test-only custom node that counts LoRA weight merges (ModelPatcher.patch_weight_to_device
on a patched weight) and the image K/V held by every live scene patch and by the K/V cache per token group
that a story's scenes share. Needs COMFYUI_PATH (and insightface);
about three minutes on 2 cores.
"""

import json
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

COUNTERS_NODE = '''
import sys
import weakref

import comfy.model_patcher
from aiohttp import web
from server import PromptServer

COUNTS = {"weight_merges": 0, "peak_kv_bytes": 0, "releases": 0}
LIVE = weakref.WeakSet()
_patch_weight = comfy.model_patcher.ModelPatcher.patch_weight_to_device


def _counting_patch(self, key, *args, **kwargs):
    if key in self.patches:
        COUNTS["weight_merges"] += 1
    return _patch_weight(self, key, *args, **kwargs)




def _tracked_init(self, *args, **kwargs):
    ORIGINAL["init"](self, *args, **kwargs)
    LIVE.add(self)


def group_caches():
    return list({id(o.group_cache): o.group_cache for o in list(LIVE) if o.group_cache is not None}.values())


def kv_bytes():
    """(image K/V of the live scene patches, the shared per-group K/V cache)."""
    return sum(o.cached_bytes() for o in list(LIVE)), sum(c.cached_bytes() for c in group_caches())


def _measured_release(self):
    COUNTS["peak_kv_bytes"] = max(COUNTS["peak_kv_bytes"], sum(kv_bytes()))
    COUNTS["releases"] += 1
    ORIGINAL["release"](self)


ORIGINAL = {}


def install():
    """Wrap once, after every custom node is loaded (ComfyUI loads them in directory order)."""
    if ORIGINAL:
        return
    patch = next(m for n, m in sys.modules.items() if n.endswith("storymaker_core.patch")
                 and hasattr(m, "StoryMakerAttention"))
    ORIGINAL.update(init=patch.StoryMakerAttention.__init__, release=patch.StoryMakerAttention.release_caches)
    patch.StoryMakerAttention.__init__ = _tracked_init
    patch.StoryMakerAttention.release_caches = _measured_release
    comfy.model_patcher.ModelPatcher.patch_weight_to_device = _counting_patch


@PromptServer.instance.routes.get("/storymaker_test/counters")
async def counters(request):
    scenes, groups = kv_bytes()
    return web.json_response({**COUNTS, "live_kv_bytes": scenes, "group_kv_bytes": groups})


@PromptServer.instance.routes.post("/storymaker_test/reset")
async def reset(request):
    install()
    COUNTS.update(weight_merges=0, peak_kv_bytes=0, releases=0)
    for cache in group_caches():
        cache.clear()
    return web.json_response(COUNTS)


NODE_CLASS_MAPPINGS = {}
'''

SCRIPT = """# a six-scene story: nobody, one, two and three on stage
[ava] drinking coffee in a sunny kitchen, morning light
[ava, ben] walking side by side in a park, autumn | seed=42
[ben] reading a newspaper on a bench
[ben, ava, rex] at a picnic | layout=thirds
[NC] an empty street at dawn, rain
[rex][ava] playing chess by a window | layout=0-0.6,0.4-1
"""


def story_prompt(script: str, name: str = "tale", seed: int = 0, size: int = 128) -> dict:
    from support.random_comfy import CLIP_VISION, STORYMAKER, UNET

    def node(class_type, **inputs):
        return {"class_type": class_type, "inputs": inputs}

    def character(name):
        return node("StoryMakerCharacterFromImage", image=["5", 0], insightface=["3", 0], name=name, face_index=0,
                    identity="face", mask=["6", 0])

    return {
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
        "13": node("StoryMakerStory", model=["1", 0], clip=["11", 0], vae=["12", 0], storymaker=["2", 0],
                   cast=["10", 0], script=script, story_name=name, style_prefix="storybook style", style_suffix="",
                   negative="blurry", width=size, height=size, seed=seed, steps=2, cfg=5.0, sampler_name="euler",
                   scheduler="normal", ip_scale=0.8, lora_scale=0.8, start_at=0.0, end_at=1.0),
        "14": node("PreviewImage", images=["13", 0]),
        "15": node("StoryMakerStoryboard", images=["13", 0], story=["13", 1], style="grid", columns=3,
                   panel_width=128, gutter=8, order="", captions=True, rows="3,2", page_width=768,
                   background="dark"),
        "16": node("PreviewImage", images=["15", 0]),
    }


def run(url, prompt, **kwargs) -> dict:
    from support.story_server import run_story

    return run_story(url, prompt, timeout=600, **kwargs)


def reset_counters(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{url}/storymaker_test/reset", data=b"", method="POST")).read()


def counters(url: str) -> dict:
    return json.loads(urllib.request.urlopen(f"{url}/storymaker_test/counters").read())


def history_images(url: str, prompt_id: str, node: str) -> list:
    """The node's images in /history (ComfyUI stores the prompt's history just after `execution_success`)."""
    import time

    for _ in range(100):
        history = json.loads(urllib.request.urlopen(f"{url}/history/{prompt_id}").read())
        if prompt_id in history:
            return history[prompt_id]["outputs"][node]["images"]
        time.sleep(0.1)
    raise AssertionError(f"prompt {prompt_id} never reached /history")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from support.comfyui import comfyui_path_or_skip

    comfyui = comfyui_path_or_skip()
    pytest.importorskip("insightface")
    from support.comfyui import comfyui_server
    from support.random_comfy import make_base_directory

    base = make_base_directory(Path(comfyui), tmp_path_factory.mktemp("comfy-story"))
    (base / "custom_nodes" / "storymaker_story_counters.py").write_text(COUNTERS_NODE)
    with comfyui_server(Path(comfyui), base) as url:
        reset_counters(url)
        yield url, base


def lora_weights() -> int:
    """How many UNet weights StoryMaker's LoRA patches in the random file (one merge each, once per story)."""
    from storymaker_core.layout import unet_attention_layers_from_state_dict
    from support.comfyui import small_sdxl

    unet = small_sdxl(model_channels=320).model.diffusion_model.state_dict()
    layers = unet_attention_layers_from_state_dict({k: tuple(v.shape) for k, v in unet.items()})
    return 4 * len(layers)  # to_q, to_k, to_v, to_out of every attention layer


def test_a_story_renders_in_one_queue_and_only_edited_scenes_again(server):
    url, base = server
    first = run(url, story_prompt(SCRIPT))
    assert first["outcome"] == "success", first["error"]
    assert len(first["started"]) == 6
    folder = base / "output" / "storymaker" / "tale"
    files = sorted(p.name for p in folder.glob("*.png"))
    assert files == ["01-ava-drinking-coffee-in-a-sunny-kitchen.png", "02-ava-and-ben-walking-side-by-side-in-a.png",
                     "03-ben-reading-a-newspaper-on-a-bench.png", "04-ben-ava-and-rex-at-a-picnic.png",
                     "05-an-empty-street-at-dawn-rain.png", "06-rex-and-ava-playing-chess-by-a-window.png"], files
    assert len(history_images(url, first["prompt_id"], "14")) == 6
    assert len(history_images(url, first["prompt_id"], "16")) == 1  # the storyboard page
    merged = counters(url)["weight_merges"]
    assert merged == lora_weights(), "StoryMaker's LoRA is merged once for the whole story"

    from PIL import Image

    meta = json.loads(Image.open(folder / "02-ava-and-ben-walking-side-by-side-in-a.png").text["storymaker"])
    assert (meta["seed"], meta["cast"], meta["layout"], meta["scene"]) == (42, ["ava", "ben"], ["left", "right"], 2)
    assert meta["line"] == "[ava, ben] walking side by side in a park, autumn | seed=42"

    edited = SCRIPT.replace("reading a newspaper", "reading a book")
    second = run(url, story_prompt(edited))
    assert second["outcome"] == "success", second["error"]
    assert [s.split(".")[-2:] for s in second["started"]] == [["1", "sample"]] and len(second["started"]) == 1
    assert "scene3" in second["started"][0]

    appended = edited + "[ava] waving goodbye at a train station\n"
    third = run(url, story_prompt(appended))
    assert third["outcome"] == "success", third["error"]
    assert len(third["started"]) == 1 and "scene7" in third["started"][0]
    assert len(history_images(url, third["prompt_id"], "14")) == 7
    assert counters(url)["weight_merges"] == merged, "no re-merge when scenes change"


def test_an_interrupted_story_renders_only_the_unfinished_scenes_next_time(server):
    url, base = server
    folder = base / "output" / "storymaker" / "interrupted"
    prompt = story_prompt(SCRIPT, name="interrupted", seed=99)
    prompt["13"]["inputs"]["steps"] = 8  # long enough for the interrupt to land inside scene 4's sampling
    interrupted = run(url, prompt, interrupt_at_sample=4)
    assert interrupted["outcome"] == "interrupted"
    assert [s.split(".")[-3] for s in interrupted["started"]] == ["scene1", "scene2", "scene3", "scene4"]
    saved = sorted(int(p.name[:2]) for p in folder.glob("*.png"))
    assert saved == [1, 2, 3], "scenes render in script order and the finished ones stay saved"
    again = run(url, prompt)
    assert again["outcome"] == "success", again["error"]
    rerun = [s.split(".")[-3] for s in again["started"]]
    assert rerun == ["scene4", "scene5", "scene6"], rerun
    assert sorted(int(p.name[:2]) for p in folder.glob("*.png")) == [1, 2, 3, 4, 5, 6]


def test_candidates_render_one_seed_each_and_save_one_file_each(server):
    url, base = server
    result = run(url, story_prompt("[ava] on a boat at sunset | candidates=3 seed=7\n", name="candidates"))
    assert result["outcome"] == "success", result["error"]
    assert len(result["started"]) == 3
    folder = base / "output" / "storymaker" / "candidates"
    from PIL import Image

    seeds = [json.loads(Image.open(folder / f"01-ava-on-a-boat-at-sunset-{k}.png").text["storymaker"])["seed"]
             for k in (1, 2, 3)]
    assert seeds == [7, 8, 9]


def test_twenty_scenes_hold_one_scene_of_image_kv_at_a_time(server):
    """Peak image K/V (live scene patches + the per-group cache the scenes share) of 20 scenes within 1.5x of
    one scene's; afterwards no scene holds any, and the group cache holds the cast's groups, as after one."""
    url, _ = server
    reset_counters(url)
    one = run(url, story_prompt("[ava, ben] scene zero in a garden\n", name="kv-one", seed=5))
    assert one["outcome"] == "success", one["error"]
    one_scene, one_groups = counters(url)["peak_kv_bytes"], counters(url)["group_kv_bytes"]
    assert one_scene > 0 and one_groups > 0
    reset_counters(url)
    script = "".join(f"[ava, ben] scene {i} in a garden\n" for i in range(1, 21))
    many = run(url, story_prompt(script, name="kv-twenty", seed=5))
    assert many["outcome"] == "success", many["error"]
    measured = counters(url)
    assert measured["releases"] >= 20
    assert measured["peak_kv_bytes"] <= 1.5 * one_scene, (measured, one_scene)
    assert measured["live_kv_bytes"] == 0
    assert measured["group_kv_bytes"] == one_groups  # background, ava and ben in their slots, 3 negative groups


def test_a_script_mistake_names_its_line_before_anything_samples(server):
    url, _ = server
    result = run(url, story_prompt("[ava] fine\n[eve] unknown person\n[ava, ben, rex, ava] crowd\n", name="bad"))
    assert result["outcome"] == "error" and result["started"] == []
    message = result["error"]["exception_message"]
    assert "line 2" in message and "eve" in message and "ava, ben, rex" in message
    assert "line 3" in message


def test_the_shipped_api_workflow_renders_another_script_through_the_http_api(server):
    """workflows/api/10-story-in-one-node.api.json as an artist's script would queue it, with the checkpoint
    swapped for the random-weight stand-ins and a script of its own."""
    import shutil

    from support.comfyui import REPO
    from support.random_comfy import CLIP_VISION, STORYMAKER, UNET

    url, base = server
    for slot in (1, 2, 3):
        shutil.copy(base / "input" / "reference.png", base / "input" / f"character_{slot}.png")
        shutil.copy(base / "input" / "reference_mask.png", base / "input" / f"character_{slot}_mask.png")
    prompt = json.loads((REPO / "workflows" / "api" / "10-story-in-one-node.api.json").read_text())
    checkpoint = next(k for k, v in prompt.items() if v["class_type"] == "CheckpointLoaderSimple")
    prompt.pop(checkpoint)
    stand_ins = {0: ("90", "UNETLoader", {"unet_name": UNET, "weight_dtype": "default"}),
                 1: ("91", "StoryMakerTestCLIP", {}), 2: ("92", "VAELoader", {"vae_name": "taesdxl"})}
    for node_id, class_type, inputs in stand_ins.values():
        prompt[node_id] = {"class_type": class_type, "inputs": inputs}
    for node in prompt.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and value[0] == checkpoint:
                node["inputs"][name] = [stand_ins[value[1]][0], 0]
        if node["class_type"] == "StoryMakerLoader":
            node["inputs"]["storymaker_file"] = STORYMAKER
        elif node["class_type"] == "CLIPVisionLoader":
            node["inputs"]["clip_name"] = CLIP_VISION
        elif node["class_type"] == "StoryMakerInsightFaceLoader":
            node["inputs"]["provider"] = "CPU"
        elif node["class_type"] == "StoryMakerStory":
            node["inputs"].update(script="[rex] asleep by the fire\n[ben, ava] dancing | candidates=2\n[NC] a quiet lake",
                                  width=128, height=128, steps=2, story_name="from-the-api")
    result = run(url, prompt)
    assert result["outcome"] == "success", result["error"]
    assert len(result["started"]) == 4
    story = next(k for k, v in prompt.items() if v["class_type"] == "StoryMakerStory")
    previews = [k for k, v in prompt.items() if v["class_type"] == "PreviewImage" and v["inputs"]["images"][0] == story]
    assert len(history_images(url, result["prompt_id"], previews[0])) == 4
    assert len(list((base / "output" / "storymaker" / "from-the-api").glob("*.png"))) == 4
    pages = next(k for k, v in prompt.items() if v["class_type"] == "SaveImage")
    assert len(history_images(url, result["prompt_id"], pages)) == 1  # the storyboard page


def test_a_hand_drawn_mask_places_a_character(server):
    url, base = server
    prompt = story_prompt("[ava, ben] talking at a cafe table | layout=mask1,right\n", name="masked")
    prompt["20"] = {"class_type": "LoadImageMask", "inputs": {"image": "reference_mask.png", "channel": "red"}}
    prompt["13"]["inputs"]["masks.mask1"] = ["20", 0]
    result = run(url, prompt)
    assert result["outcome"] == "success", result["error"]
    from PIL import Image

    meta = json.loads(Image.open(base / "output" / "storymaker" / "masked" / "01-ava-and-ben-talking-at-a-cafe-table.png")
                      .text["storymaker"])
    assert meta["layout"] == ["mask1", "right"]
    missing = run(url, story_prompt("[ava, ben] talking | layout=mask2,right\n", name="masked"))
    assert missing["outcome"] == "error" and "mask2" in missing["error"]["exception_message"]
