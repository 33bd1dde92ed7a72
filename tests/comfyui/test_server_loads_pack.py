"""A real ComfyUI server (`main.py --cpu`) loads the pack: no IMPORT FAILED, every node in /object_info.

Needs COMFYUI_PATH (a ComfyUI v0.14.1 source tree) and its requirements in this Python; skipped otherwise.
"""

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from support.comfyui import REPO, comfyui_server

pytestmark = pytest.mark.comfyui

NODES = {"StoryMakerLoader", "StoryMakerInsightFaceLoader", "StoryMakerSAMLoader", "StoryMakerCharacterFromImage",
         "StoryMakerBlendCharacters", "StoryMakerSaveCharacter", "StoryMakerLoadCharacter",
         "StoryMakerEncodeCharacters", "StoryMakerApply"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from support.comfyui import comfyui_path_or_skip

    comfyui = str(comfyui_path_or_skip())
    base = tmp_path_factory.mktemp("comfy-base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "ComfyUI-StoryMaker").symlink_to(REPO)
    (base / "models" / "storymaker").mkdir(parents=True)
    (base / "models" / "storymaker" / "listed.safetensors").write_bytes(b"")  # only listed, never loaded
    with comfyui_server(Path(comfyui), base) as url:
        with urllib.request.urlopen(f"{url}/object_info", timeout=30) as response:
            info = json.load(response)
        yield info, base / "server.log", url


def test_pack_imports_without_failure(server):
    _, log, _ = server
    text = log.read_text()
    assert "IMPORT FAILED" not in text, text[-3000:]
    assert "ComfyUI-StoryMaker" in text  # the custom-node import summary lists it


def test_object_info_lists_every_node_with_its_inputs(server):
    info, _, _ = server
    assert NODES <= info.keys()
    loader = info["StoryMakerLoader"]["input"]["required"]["storymaker_file"]
    assert "listed.safetensors" in loader[0]  # the models/storymaker folder is registered
    apply = info["StoryMakerApply"]
    assert apply["output"] == ["MODEL"] and apply["category"] == "StoryMaker"
    assert set(apply["input"]["optional"]) == {"mask_1", "mask_2", "mask_3"}


@pytest.mark.parametrize("workflow", sorted((REPO / "workflows" / "api").glob("*.api.json")), ids=lambda p: p.name)
def test_real_server_accepts_every_workflow_but_for_missing_files(server, workflow):
    """ComfyUI's own validation of each API workflow: the only complaints allowed are model/input files
    that this empty server does not have."""
    _, _, url = server
    request = urllib.request.Request(f"{url}/prompt", data=json.dumps({"prompt": json.loads(workflow.read_text())}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=30)
        pytest.fail("queued a prompt whose model files do not exist")
    except urllib.error.HTTPError as e:
        body = json.loads(e.read())
    errors = [err for node in body["node_errors"].values() for err in node["errors"]]
    assert errors, body
    unexpected = [err for err in errors if err["type"] != "value_not_in_list" and "Invalid image file" not in err["details"]]
    assert not unexpected, unexpected
