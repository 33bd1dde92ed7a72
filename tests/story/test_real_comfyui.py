"""Against a real ComfyUI (``COMFYUI_PATH``), started with ``--cpu`` by the runner's own launcher:
``/object_info`` parsing and validation, uploads, and HTTP 400 node_errors. No model weights exist
there: the checkpoint name is expected to be refused by both sides, and the end-to-end story uses a
workflow that needs no weights (the reference image, inverted)."""

from __future__ import annotations

import asyncio
import copy
import json
import os

import pytest
from PIL import Image
from story_support import WORKFLOW

from storymaker.comfyui import find_comfyui
from storymaker.story.client import ComfyClient
from storymaker.story.errors import PromptRejected, ValidationFailed
from storymaker.story.runner import StoryRunner
from storymaker.story.server import LocalComfyUI

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("COMFYUI_PATH"),
                       reason="set COMFYUI_PATH to a ComfyUI source tree (and COMFYUI_PYTHON to the Python that has "
                              "its requirements) to test against a real ComfyUI started with --cpu"),
]


def core_only_workflow() -> dict:
    """WORKFLOW without the test-only node: the character image feeds VAEEncode (img2img), so ComfyUI
    validates the uploaded name too."""
    wf = copy.deepcopy(WORKFLOW)
    del wf["3"], wf["6"]
    wf["7"]["inputs"]["model"] = ["1", 0]
    wf["10"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}}
    wf["7"]["inputs"]["latent_image"] = ["10", 0]
    return wf


@pytest.fixture(scope="module")
def real_comfyui(tmp_path_factory):
    """One real ComfyUI for the module, with its own input/output/user folders (the tree stays clean)."""
    base = tmp_path_factory.mktemp("comfyui")
    dirs = {name: base / name for name in ("input", "output", "user")}
    for path in dirs.values():
        path.mkdir()
    extra = ["--input-directory", str(dirs["input"]), "--output-directory", str(dirs["output"]),
             "--user-directory", str(dirs["user"]), "--database-url", f"sqlite:///{base / 'comfyui.db'}"]
    local = LocalComfyUI(find_comfyui(), cpu=True, extra_args=extra, startup_timeout=300,
                         log_path=base / "comfyui.log")
    url = asyncio.run(local.start())
    yield url, dirs
    asyncio.run(local.stop())


def test_object_info_validation_and_upload_against_real_comfyui(real_comfyui, story_dir, make_story, options):
    url, dirs = real_comfyui
    (story_dir / "workflows" / "core.json").write_text(json.dumps(core_only_workflow()))
    story = make_story(workflow="workflows/core.json", sampling={"steps": 4, "sampler_name": "euler"})

    async def scenario():
        runner = StoryRunner(story, [url], options)
        with pytest.raises(ValidationFailed) as info:
            await runner.check()  # uploads the reference, reads /object_info, validates
        async with ComfyClient(url) as client:
            objects = await client.object_info()
            plan = runner.plans[0]
            with pytest.raises(PromptRejected) as rejected:
                await client.queue_prompt(plan.prompt, "real-test", "scene 01-morning")
            queue = await client.queue()
        return info.value, objects, plan, rejected.value, queue

    failure, objects, plan, rejected, queue = asyncio.run(scenario())
    # the only problem: no checkpoint is installed; links, COMBOs, INT/FLOAT ranges all fit real ComfyUI
    assert len(failure.problems) == 1, failure.problems
    assert failure.problems[0].startswith(
        "scenes 01-morning, 02-street, 03-alice-reads-a-book-by-the: node 1 (CheckpointLoaderSimple \"Load "
        "Checkpoint\"): input 'ckpt_name' is 'sdxl-test.safetensors', not offered by this server")
    (upload,) = plan.uploads
    assert (dirs["input"] / upload.name).read_bytes() == upload.path.read_bytes()
    assert upload.name in objects["LoadImage"]["input"]["required"]["image"][0]
    assert "node 1 (CheckpointLoaderSimple \"Load Checkpoint\")" in str(rejected)
    assert "ckpt_name" in str(rejected)
    assert queue == {"queue_running": [], "queue_pending": []}  # nothing was queued


def test_weightless_story_end_to_end_on_real_comfyui(real_comfyui, story_dir, make_story, options):
    """Upload, queue, websocket, /history and /view for real: each scene saves the inverted reference."""
    url, dirs = real_comfyui
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}, "_meta": {"title": "character:1"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
        "4": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": ""}, "_meta": {"title": "prompt"}},
        "5": {"class_type": "PrimitiveInt", "inputs": {"value": 0}, "_meta": {"title": "seed"}},
    }
    (story_dir / "workflows" / "invert.json").write_text(json.dumps(workflow))
    story = make_story(workflow="workflows/invert.json", bindings={
        "prompt": {"title": "prompt", "input": "value"}, "seed": {"title": "seed", "input": "value"}})
    runner = StoryRunner(story, [url], options)
    report = asyncio.run(runner.run())
    assert report.ok and sorted(report.rendered) == [p.stem for p in runner.plans]
    manifest = json.loads((runner.story_dir / "manifest.json").read_text())
    for plan in runner.plans:
        rec = manifest["scenes"][plan.id]
        assert rec["server"] == url and rec["output"]["subfolder"] == "storymaker/test-story/comfyui"
        with Image.open(runner.story_dir / rec["file"]) as im:
            pixel = im.convert("RGB").getpixel((3, 3))
        assert all(abs(a - b) <= 1 for a, b in zip(pixel, (55, 225, 225)))  # alice's (200, 30, 30) inverted
    assert (dirs["output"] / "storymaker" / "test-story").is_dir()
