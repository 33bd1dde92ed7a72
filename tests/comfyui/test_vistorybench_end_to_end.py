"""ViStoryBench end to end on a real ComfyUI: dataset -> convert -> story runner -> export -> score.

A three-shot story in ViStoryBench's layout (nobody; a person; the person and an animal in two regions)
is converted, rendered by the story runner through a real ComfyUI with random-weight models of the real
kinds (tests/support/random_comfy.py), exported to ViStoryBench's output layout and, when the evaluator
is there, scored with ``python -m storymaker evaluate story``. The numbers mean nothing (random
weights); the test checks that every step hands the next one what it needs. Needs COMFYUI_PATH and
insightface/onnx; about 2 minutes on 2 idle CPU cores (8 when they are shared).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]

SIZE = 256


def random_template(count: int) -> dict:
    """The random-weight models with the story templates' node titles, for ``count`` characters (each with
    a mask:N node, so the converter gives the cast whole-image masks; regions for 2-3)."""
    from support.random_comfy import CLIP_VISION, STORYMAKER, UNET

    nodes: dict = {}

    def add(class_type, title, **inputs) -> str:
        nodes[str(len(nodes) + 1)] = {"class_type": class_type, "inputs": inputs, "_meta": {"title": title}}
        return str(len(nodes))

    model = [add("UNETLoader", "Load UNet", unet_name=UNET, weight_dtype="default"), 0]
    if count:
        sm = add("StoryMakerLoader", "Load StoryMaker", storymaker_file=STORYMAKER)
        face = add("StoryMakerInsightFaceLoader", "Load InsightFace", model_name="buffalo_l", provider="CPU", det_size=640)
        vision = add("CLIPVisionLoader", "Load CLIP Vision", clip_name=CLIP_VISION)
        characters = {}
        for slot in range(1, count + 1):
            image = add("LoadImage", f"character:{slot}", image="reference.png")
            mask = add("LoadImageMask", f"mask:{slot}", image="reference_mask.png", channel="red")
            characters[f"character_{slot}"] = [add(
                "StoryMakerCharacterFromImage", f"Character {slot}", image=[image, 0], insightface=[face, 0],
                name=f"c{slot}", face_index=0, identity="auto", mask=[mask, 0]), 0]
        embeds = add("StoryMakerEncodeCharacters", "Encode characters", storymaker=[sm, 0], face_only=False,
                     clip_vision=[vision, 0], **characters)
        regions = {f"mask_{slot}": [add("LoadImageMask", f"region {slot}", image="reference_mask.png", channel="red"), 0]
                   for slot in range(1, count + 1)} if count > 1 else {}
        model = [add("StoryMakerApply", "Apply StoryMaker", model=model, storymaker=[sm, 0], embeds=[embeds, 0],
                     ip_scale=0.8, lora_scale=0.8, start_at=0.0, end_at=1.0, **regions), 0]
    positive = add("StoryMakerTestTextConditioning", "positive", text="")
    negative = add("StoryMakerTestTextConditioning", "negative", text="")
    latent = add("EmptyLatentImage", "latent", width=SIZE, height=SIZE, batch_size=1)
    sampler = add("KSampler", "sampler", model=model, seed=0, steps=2, cfg=5.0, sampler_name="euler",
                  scheduler="normal", positive=[positive, 0], negative=[negative, 0], latent_image=[latent, 0], denoise=1.0)
    vae = add("VAELoader", "Load VAE", vae_name="taesdxl")
    decoded = add("VAEDecode", "VAE Decode", samples=[sampler, 0], vae=[vae, 0])
    add("SaveImage", "output", images=[decoded, 0], filename_prefix="vistorybench")
    return nodes


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    from support.comfyui import comfyui_path_or_skip

    comfyui = comfyui_path_or_skip()
    pytest.importorskip("insightface")
    from support.comfyui import comfyui_server
    from support.random_comfy import make_base_directory

    base = make_base_directory(Path(comfyui), tmp_path_factory.mktemp("comfy-base"))
    with comfyui_server(Path(comfyui), base) as url:
        yield url, base


def test_dataset_converts_renders_exports_and_scores(comfy, tmp_path):
    from storymaker.story.cli import main as run_story
    from storymaker.story.vistorybench.cli import main as vistorybench
    from storymaker.story.vistorybench.outputs import read_output_shots
    from support.vistorybench_data import build_short_story

    url, base = comfy
    dataset = build_short_story(tmp_path / "data", base / "input" / "reference.png")  # the tiny detector's photo
    templates = []
    for count in range(4):
        path = tmp_path / f"random-{count}.api.json"
        path.write_text(json.dumps(random_template(count)))
        templates += ["--template", f"{count}={path}"]
    stories = tmp_path / "stories"
    assert vistorybench(["convert", str(dataset), str(stories), "--size", f"{SIZE}x{SIZE}", "--steps", "2",
                         *templates]) == 0
    runs = tmp_path / "runs"
    assert run_story([str(stories / "01" / "story.yaml"), "--server", url, "--out", str(runs)]) == 0
    run = runs / "vistorybench-en-01"
    manifest = json.loads((run / "manifest.json").read_text())
    assert {sid: rec["status"] for sid, rec in manifest["scenes"].items()} == {"1": "done", "2": "done", "3": "done"}

    outputs = tmp_path / "outputs"
    assert vistorybench(["export", str(runs), "--to", str(outputs), "--method", "StoryMaker",
                         "--timestamp", "20250101_120000"]) == 0
    shots = read_output_shots(outputs, "StoryMaker", "base", "en")["01"]
    assert sorted(shots) == [1, 2, 3]
    for index, path in shots.items():
        assert path == outputs / "StoryMaker/base/en/20250101_120000/01/shots" / f"{index}.png"
        assert Image.open(path).size == (SIZE, SIZE)
        assert path.read_bytes() == (run / manifest["scenes"][str(index)]["file"]).read_bytes()

    evaluate = pytest.importorskip("storymaker.evaluate.cli")
    if "story" not in evaluate.build_parser().format_help():
        pytest.skip("storymaker.evaluate has no `story` subcommand here")
    pytest.importorskip("open_clip")
    config = tmp_path / "TinyCLIP-vistorybench-test.json"
    config.write_text(json.dumps({
        "embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}))
    scores = tmp_path / "scores"
    assert evaluate.main(["story", "--vistorybench-outputs", str(outputs / "StoryMaker/base/en/20250101_120000"),
                          "--dataset", str(dataset), "--out", str(scores), "--providers", "CPU",
                          "--insightface-root", str(base / "models" / "insightface"),
                          "--clip-model", config.stem, "--clip-model-config", str(config),
                          "--clip-pretrained", "none", "--device", "cpu"]) == 0
    assert (scores / "results.json").is_file()
