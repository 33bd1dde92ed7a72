"""A real ComfyUI server (`main.py --cpu`) loads the pack: no IMPORT FAILED, every node in /object_info, the
pack's model folders created, and its /storymaker/inspect route judging files only inside the model folders.

Needs COMFYUI_PATH (a ComfyUI v0.14.1 source tree) and its requirements in this Python; skipped otherwise.
"""

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from support.comfyui import REPO, comfyui_server
from support.model_headers import SD15_KEYS, SDXL_KEYS, write_safetensors

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
    checkpoints = base / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "placeholder.safetensors").write_bytes(b"")  # a zero-byte placeholder; no workflow names it
    write_safetensors(checkpoints / "good-sdxl.safetensors", SDXL_KEYS)
    write_safetensors(checkpoints / "v1-5.safetensors", SD15_KEYS)
    write_safetensors(base / "outside.safetensors", SDXL_KEYS)  # beside models/: must never be answered for
    with comfyui_server(Path(comfyui), base) as url:
        with urllib.request.urlopen(f"{url}/object_info", timeout=30) as response:
            info = json.load(response)
        yield info, base / "server.log", url


def test_pack_imports_without_failure(server):
    _, log, _ = server
    # ComfyUI's own comfy_extras may fail on a missing optional dependency (torchaudio); judge our line only.
    pack_lines = [line for line in log.read_text().splitlines() if "ComfyUI-StoryMaker" in line]
    assert pack_lines, "the custom-node import summary does not list the pack"
    assert not any("IMPORT FAILED" in line for line in pack_lines), pack_lines


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


def test_the_pack_creates_its_model_folders(server):
    _, log, _ = server
    base = log.parent
    for folder in ("storymaker_characters", "insightface/models", "sams"):  # none existed before the start
        assert (base / "models" / folder).is_dir(), folder


def inspect(url: str, files: list) -> tuple:
    request = urllib.request.Request(f"{url}/storymaker/inspect", data=json.dumps({"files": files}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_inspect_route_judges_model_files_from_their_headers(server):
    _, _, url = server
    status, answer = inspect(url, [
        {"folder": "checkpoints", "name": "placeholder.safetensors", "kind": "sdxl_checkpoint"},
        {"folder": "checkpoints", "name": "good-sdxl.safetensors", "kind": "sdxl_checkpoint"},
        {"folder": "checkpoints", "name": "v1-5.safetensors", "kind": "sdxl_checkpoint"},
        {"folder": "checkpoints", "name": "not-there.safetensors", "kind": "checkpoint"},
        {"folder": "insightface", "name": "buffalo_l", "kind": "insightface_pack"}])
    assert status == 200 and answer["version"] == 1
    empty, good, sd15, absent, pack = answer["results"]
    assert not empty["ok"] and "is empty (0 bytes)" in empty["problem"] and empty["fix"]
    assert good["ok"] and "SDXL checkpoint" in good["found"], good
    assert not sd15["ok"] and "SD1.5" in sd15["problem"]
    assert not absent["ok"] and "is not in ComfyUI's 'checkpoints' folder" in absent["problem"]
    assert not pack["ok"] and "buffalo_l" in pack["fix"] and pack["path"].endswith("insightface/models/buffalo_l")


@pytest.mark.parametrize("folder, name, kind", [
    ("checkpoints", "../../outside.safetensors", "sdxl_checkpoint"),
    ("checkpoints", "sub/../../../outside.safetensors", "sdxl_checkpoint"),
    ("checkpoints", "..\\..\\outside.safetensors", "sdxl_checkpoint"),
    ("checkpoints", "OUTSIDE", "sdxl_checkpoint"),  # replaced by the absolute path of the file outside
    ("../..", "outside.safetensors", "checkpoint"),
    ("no_such_folder", "outside.safetensors", "checkpoint"),
    ("insightface", "../../../outside.safetensors", "insightface_pack"),
    ("checkpoints", "good-sdxl.safetensors", "rm -rf"),
])
def test_inspect_route_refuses_anything_outside_the_model_folders(server, folder, name, kind):
    _, log, url = server
    name = str(log.parent / "outside.safetensors") if name == "OUTSIDE" else name
    status, answer = inspect(url, [{"folder": folder, "name": name, "kind": kind}])
    (result,) = answer["results"]
    assert status == 200 and result["refused"] is True and not result["ok"]
    assert result["path"] is None and not result["found"]  # nothing about the file was read or told
    query = urllib.parse.urlencode({"folder": folder, "name": name, "kind": kind})
    try:
        urllib.request.urlopen(f"{url}/storymaker/inspect?{query}", timeout=30)
        pytest.fail("GET answered 200 for a path outside the model folders")
    except urllib.error.HTTPError as e:
        assert e.code == 400 and json.loads(e.read())["results"][0]["refused"] is True


def test_inspect_route_rejects_a_malformed_request(server):
    _, _, url = server
    status, answer = inspect(url, "not a list")
    assert status == 400 and "expected" in answer["error"]
