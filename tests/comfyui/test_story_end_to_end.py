"""The main job end to end on a real ComfyUI: a story file -> the runner -> our nodes -> images on disk.

Random-weight models of the real kinds (tests/support/random_comfy.py) stand in for the downloads; the
story's reference is the shipped example (stories/refs/ava.png + mask). Needs COMFYUI_PATH and ComfyUI's
requirements plus insightface/onnx/onnxruntime; skipped otherwise. About two minutes on 2 cores.
"""

import json
from pathlib import Path

import pytest
import yaml

from storymaker.story.schema import default_seed
from support.comfyui import REPO

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]


def template() -> dict:
    from support.random_comfy import CLIP_VISION, STORYMAKER, UNET

    def node(class_type, title, **inputs):
        return {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}

    return {
        "1": node("UNETLoader", "Load UNet", unet_name=UNET, weight_dtype="default"),
        "2": node("StoryMakerLoader", "Load StoryMaker", storymaker_file=STORYMAKER),
        "3": node("StoryMakerInsightFaceLoader", "Load InsightFace", model_name="buffalo_l", provider="CPU", det_size=640),
        "4": node("CLIPVisionLoader", "Load CLIP Vision", clip_name=CLIP_VISION),
        "5": node("LoadImage", "character:1", image="reference.png"),
        "6": node("LoadImageMask", "mask:1", image="reference_mask.png", channel="red"),
        "7": node("StoryMakerCharacterFromImage", "Character", image=["5", 0], insightface=["3", 0], name="ava",
                  face_index=0, identity="face", mask=["6", 0]),
        "8": node("StoryMakerEncodeCharacters", "Encode characters", storymaker=["2", 0], character_1=["7", 0],
                  face_only=False, clip_vision=["4", 0]),
        "9": node("StoryMakerApply", "Apply StoryMaker", model=["1", 0], storymaker=["2", 0], embeds=["8", 0],
                  ip_scale=0.8, lora_scale=0.8, start_at=0.0, end_at=1.0),
        "10": node("StoryMakerTestTextConditioning", "positive", text=""),
        "11": node("StoryMakerTestTextConditioning", "negative", text=""),
        "12": node("EmptyLatentImage", "latent", width=256, height=256, batch_size=1),
        "13": node("KSampler", "sampler", model=["9", 0], seed=0, steps=3, cfg=5.0, sampler_name="euler",
                   scheduler="normal", positive=["10", 0], negative=["11", 0], latent_image=["12", 0], denoise=1.0),
        "14": node("VAELoader", "Load VAE", vae_name="taesdxl"),
        "15": node("VAEDecode", "VAE Decode", samples=["13", 0], vae=["14", 0]),
        "16": node("SaveImage", "output", images=["15", 0], filename_prefix="story"),
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from support.comfyui import comfyui_path_or_skip

    comfyui = str(comfyui_path_or_skip())
    pytest.importorskip("insightface")
    from support.comfyui import comfyui_server
    from support.random_comfy import make_base_directory

    base = make_base_directory(Path(comfyui), tmp_path_factory.mktemp("comfy-base"))
    with comfyui_server(Path(comfyui), base) as url:
        yield url


def test_story_renders_resumes_and_records_every_scene(server, tmp_path):
    from storymaker.story.cli import main

    (tmp_path / "template.api.json").write_text(json.dumps(template()))
    story = {
        "version": 1, "name": "e2e", "workflow": "template.api.json",
        "cast": [{"name": "ava", "image": str(REPO / "stories/refs/ava.png"), "mask": str(REPO / "stories/refs/ava-mask.png")}],
        "size": [256, 256], "sampling": {"steps": 3, "cfg": 5.0}, "base_seed": 7,
        "scenes": [{"id": "kitchen", "prompt": "a woman in a sunny kitchen"},
                   {"id": "street", "prompt": "a woman on a rainy street", "seed": 42}],
    }
    story_file = tmp_path / "story.yaml"
    story_file.write_text(yaml.safe_dump(story))
    out = tmp_path / "out"
    assert main([str(story_file), "--server", server, "--out", str(out)]) == 0
    folder = out / "e2e"
    images = sorted(p.name for p in folder.glob("0*.png"))
    assert images == ["01-kitchen.png", "02-street.png"]
    assert (folder / "contact-sheet.png").exists()
    manifest = json.loads((folder / "manifest.json").read_text())
    text = json.dumps(manifest)
    kitchen_seed = default_seed(7, "kitchen")  # base_seed + crc32 of the scene id
    assert f'"seed": {kitchen_seed}' in text and '"seed": 42' in text
    import hashlib
    for name in images:
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() in text
    from PIL import Image
    assert Image.open(folder / "01-kitchen.png").size == (256, 256)
    before = {name: (folder / name).stat().st_mtime_ns for name in images}
    assert main([str(story_file), "--server", server, "--out", str(out)]) == 0  # resume: nothing to redo
    assert {name: (folder / name).stat().st_mtime_ns for name in images} == before
