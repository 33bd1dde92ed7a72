"""A real ComfyUI server (`main.py --cpu`) loads the pack: no IMPORT FAILED, every node in /object_info, the
pack's model folders created, its /storymaker/inspect route judging only the model files the story runner
asks about (never a path of the server nor a file's bytes), and Save StoryMaker Character writing only inside
models/storymaker_characters/ when queued through /prompt.

Needs COMFYUI_PATH (a ComfyUI v0.14.1 source tree) and its requirements in this Python; skipped otherwise.
"""

import json
import os
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from support.comfyui import REPO, comfyui_server
from support.model_headers import SD15_KEYS, SDXL_KEYS, write_safetensors

SECRET = b"TOPSECRT: a file that is no model"
SECRET_NUMBER = str(struct.unpack("<Q", SECRET[:8])[0])  # what its first 8 bytes read as a header size

pytestmark = pytest.mark.comfyui

NODES = {"StoryMakerLoader", "StoryMakerInsightFaceLoader", "StoryMakerSAMLoader", "StoryMakerCharacterFromImage",
         "StoryMakerBlendCharacters", "StoryMakerSaveCharacter", "StoryMakerLoadCharacter",
         "StoryMakerEncodeCharacters", "StoryMakerApply", "StoryMakerCast", "StoryMakerStory", "StoryMakerStoryboard",
         "StoryMakerConsistencyScores", "StoryMakerEncodeMember", "StoryMakerApplyLoRA", "StoryMakerApplyScene",
         "StoryMakerSaveScene", "StoryMakerJoinImages"}


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
    (checkpoints / "linked.safetensors").symlink_to(base / "outside.safetensors")  # listed by ComfyUI: answered
    for folder, name in [("custom_nodes", "secret.safetensors"), ("models/checkpoints", "secret.pkl"),
                         ("models/checkpoints", "notes.txt"), ("models/checkpoints", "secret-text.safetensors"),
                         ("models/configs", "secret.yaml"), ("models/embeddings", "secret.safetensors"),
                         ("models/insightface", "notes.txt"), ("input", "secret.safetensors"),
                         ("user", "secret.safetensors")]:
        (base / folder).mkdir(parents=True, exist_ok=True)
        (base / folder / name).write_bytes(SECRET)
    header = json.dumps({"w": {"dtype": "F16", "shape": [SECRET.decode()], "data_offsets": [0, 2]}}).encode()
    (checkpoints / "damaged-header.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0")
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
    """Every node, registered through the pack's comfy_entrypoint (the pack has no NODE_CLASS_MAPPINGS)."""
    from storymaker.story.validate import combo_choices

    info, log, _ = server
    ours = {name for name, spec in info.items() if spec["python_module"] == "custom_nodes.ComfyUI-StoryMaker"}
    assert ours == NODES
    assert "comfy_entrypoint" not in log.read_text()  # ComfyUI logs a warning when calling it fails
    loader = info["StoryMakerLoader"]["input"]["required"]["storymaker_file"]
    assert "listed.safetensors" in combo_choices(loader)  # the models/storymaker folder is registered
    apply = info["StoryMakerApply"]
    assert apply["output"] == ["MODEL"] and apply["category"] == "StoryMaker"
    assert set(apply["input"]["optional"]) == {"mask_1", "mask_2", "mask_3"}


def test_the_v3_node_snapshot_offline_tests_use_is_what_the_server_serves(server):
    """tests/data/storymaker_v3_nodes.json stands in for all our nodes (V3 schema) where ComfyUI is absent
    (workflow validation and node checks in CI's default run): it must be what a real server serves
    (scripts/snapshot_core_nodes.py --ours-v3), but for the files a file picker lists (none in the snapshot)."""
    info, _, _ = server
    snapshot = json.loads((REPO / "tests" / "data" / "storymaker_v3_nodes.json").read_text())["nodes"]
    assert set(snapshot) == NODES
    for name, spec in snapshot.items():
        served = json.loads(json.dumps(info[name]))
        for key in ("input", "input_order"):  # hidden inputs are not in the snapshot
            served[key] = {k: v for k, v in served[key].items() if k in ("required", "optional")}
        for section, inputs in spec["input"].items():
            for input_name, entry in inputs.items():
                if entry[0] == "COMBO" and entry[1]["options"] == []:  # a file picker: what this server has
                    served["input"][section][input_name][1]["options"] = []
        assert {k: served[k] for k in spec} == json.loads(json.dumps(spec)), name
    assert info["StoryMakerStory"]["category"] == "StoryMaker/story"


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


def assert_tells_nothing(answer: dict, base: Path, asked: str = "") -> None:
    """No path of the server (its base directory, its ComfyUI tree) and no byte of a non-model file in the
    answer; ``asked``, a path the client itself sent, may come back only as the echoed ``name``."""
    text = json.dumps(answer).replace(json.dumps(asked)[1:-1], "<asked>") if asked else json.dumps(answer)
    comfyui = os.environ.get("COMFYUI_PATH", "")
    for secret in {str(base), os.path.realpath(base), comfyui, os.path.realpath(comfyui)} - {""}:
        assert secret not in text, f"the answer names the server's path {secret}: {text}"
    for secret in (SECRET[:8].decode(), SECRET_NUMBER):
        assert secret not in text, f"the answer quotes a file's bytes ({secret}): {text}"


def test_inspect_route_judges_model_files_from_their_headers(server):
    _, log, url = server
    status, answer = inspect(url, [
        {"folder": "checkpoints", "name": "placeholder.safetensors", "kind": "sdxl_checkpoint"},
        {"folder": "checkpoints", "name": "good-sdxl.safetensors", "kind": "sdxl_checkpoint"},
        {"folder": "checkpoints", "name": "v1-5.safetensors", "kind": "sdxl_checkpoint"},
        {"folder": "checkpoints", "name": "not-there.safetensors", "kind": "checkpoint"},
        {"folder": "insightface", "name": "buffalo_l", "kind": "insightface_pack"},
        {"folder": "checkpoints", "name": "linked.safetensors", "kind": "sdxl_checkpoint"}])
    assert status == 200 and answer["version"] == 1
    empty, good, sd15, absent, pack, linked = answer["results"]
    assert not empty["ok"] and "is empty (0 bytes)" in empty["problem"] and empty["fix"]
    assert good["ok"] and "SDXL checkpoint" in good["found"], good
    assert not sd15["ok"] and "SD1.5" in sd15["problem"]
    assert not absent["ok"] and "is not in ComfyUI's 'checkpoints' folder" in absent["problem"]
    assert "ComfyUI/models/checkpoints/" in absent["fix"]
    assert not pack["ok"] and "models/insightface/models/buffalo_l" in pack["fix"] and "buffalo_l.zip" in pack["fix"]
    assert linked["ok"] and "SDXL checkpoint" in linked["found"]  # symlinked in: ComfyUI lists and loads it too
    assert all("path" not in result for result in answer["results"])
    assert_tells_nothing(answer, log.parent)


@pytest.mark.parametrize("name", ["secret-text.safetensors", "damaged-header.safetensors"])
def test_inspect_route_never_quotes_a_files_bytes(server, name):
    """A listed file with a model extension whose content is no model: judged, but its bytes are never told
    (not as a "header size", not inside a JSON or int() error)."""
    _, log, url = server
    status, answer = inspect(url, [{"folder": "checkpoints", "name": name, "kind": "checkpoint"}])
    (result,) = answer["results"]
    assert status == 200 and not result["ok"] and "not a readable .safetensors file" in result["problem"], result
    assert_tells_nothing(answer, log.parent)


@pytest.mark.parametrize("folder, name, kind", [
    ("checkpoints", "../../outside.safetensors", "sdxl_checkpoint"),
    ("checkpoints", "sub/../../../outside.safetensors", "sdxl_checkpoint"),
    ("checkpoints", "..\\..\\outside.safetensors", "sdxl_checkpoint"),
    ("checkpoints", "OUTSIDE", "sdxl_checkpoint"),  # replaced by the absolute path of the file outside
    ("checkpoints", "/etc/passwd", "checkpoint"),
    ("checkpoints", "C:\\Windows\\win.ini", "checkpoint"),
    ("checkpoints", "good-sdxl.safetensors\x00.txt", "checkpoint"),
    ("checkpoints", "\x00", "checkpoint"),
    ("../..", "outside.safetensors", "checkpoint"),
    ("no_such_folder", "outside.safetensors", "checkpoint"),
    ("insightface", "../../../outside.safetensors", "insightface_pack"),
    ("checkpoints", "good-sdxl.safetensors", "rm -rf"),
    # ComfyUI folders the story runner never asks about; custom_nodes and insightface list every file
    ("custom_nodes", "secret.safetensors", "checkpoint"),
    ("custom_nodes", "secret.safetensors", "model"),
    ("custom_nodes", "ComfyUI-StoryMaker/__init__.py", "model"),
    ("custom_nodes", "ComfyUI-StoryMaker", "insightface_pack"),
    ("configs", "secret.yaml", "checkpoint"),
    ("embeddings", "secret.safetensors", "model"),
    ("insightface", "notes.txt", "model"),
    ("user", "secret.safetensors", "model"),
    ("input", "secret.safetensors", "model"),
    ("output", "secret.safetensors", "model"),
    ("temp", "secret.safetensors", "model"),
    # an allowed folder, but a kind that is not looked up there, or an extension that is no model's
    ("storymaker_characters", "good-sdxl.safetensors", "checkpoint"),
    ("checkpoints", "notes.txt", "checkpoint"),
    ("checkpoints", "secret.pkl", "sdxl_checkpoint"),
])
def test_inspect_route_refuses_anything_outside_the_model_folders(server, folder, name, kind):
    _, log, url = server
    name = str(log.parent / "outside.safetensors") if name == "OUTSIDE" else name
    asked = name if name.startswith(("/", "C:")) else ""
    status, answer = inspect(url, [{"folder": folder, "name": name, "kind": kind}])
    (result,) = answer["results"]
    assert status == 200 and result["refused"] is True and not result["ok"]
    assert "path" not in result and not result["found"]  # nothing about the file was read or told
    assert_tells_nothing(answer, log.parent, asked)
    query = urllib.parse.urlencode({"folder": folder, "name": name, "kind": kind})
    try:
        urllib.request.urlopen(f"{url}/storymaker/inspect?{query}", timeout=30)
        pytest.fail("GET answered 200 for a path outside the model folders")
    except urllib.error.HTTPError as e:
        answer = json.loads(e.read())
        assert e.code == 400 and answer["results"][0]["refused"] is True
        assert_tells_nothing(answer, log.parent, asked)


def test_inspect_route_rejects_a_malformed_request(server):
    _, _, url = server
    status, answer = inspect(url, "not a list")
    assert status == 400 and "expected" in answer["error"]


# -- Save StoryMaker Character through /prompt ----------------------------------------------------------

def run_prompt(url: str, prompt: dict, timeout: float = 60.0) -> dict:
    """Queue ``prompt`` through HTTP and wait for its history entry."""
    request = urllib.request.Request(f"{url}/prompt", data=json.dumps({"prompt": prompt}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        prompt_id = json.load(response)["prompt_id"]
    deadline = time.time() + timeout
    while time.time() < deadline:
        with urllib.request.urlopen(f"{url}/history/{prompt_id}", timeout=30) as response:
            entry = json.load(response).get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            return entry
        time.sleep(0.1)
    pytest.fail(f"prompt {prompt_id} did not finish in {timeout} s")


@pytest.fixture(scope="module")
def saved_characters(server):
    """models/storymaker_characters with a saved character named 'ava' and ones whose name is a path."""
    from storymaker_core.characters import Character, save_character

    _, log, _ = server
    base = log.parent
    folder = base / "models" / "storymaker_characters"  # created by the pack when the server started
    names = {"ava.safetensors": "ava", "up.safetensors": "../../../escaped-by-name",
             "absolute.safetensors": str(base / "escaped-absolute")}
    for file, name in names.items():
        save_character(str(folder / file), Character(
            name=name, id_embedding=torch.zeros(512), character_image=np.zeros((1, 8, 8, 3), np.uint8),
            character_clip=torch.zeros(4, 1280), identity="appearance"))
    return base, folder


def safetensors_files(root: Path) -> set:
    return {str(p) for p in root.rglob("*.safetensors")}


def save_through_http(url: str, character_file: str, filename: str) -> dict:
    return run_prompt(url, {
        "1": {"class_type": "StoryMakerLoadCharacter", "inputs": {"character_file": character_file}},
        "2": {"class_type": "StoryMakerSaveCharacter", "inputs": {"character": ["1", 0], "filename": filename}}})


def test_save_character_through_http_writes_a_plain_name_in_its_folder(server, saved_characters):
    _, _, url = server
    base, folder = saved_characters
    entry = save_through_http(url, "ava.safetensors", "ava-through-http")
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert (folder / "ava-through-http.safetensors").is_file()


@pytest.mark.parametrize("character_file, filename, says", [
    ("ava.safetensors", "../../../escaped-by-filename", "filename '../../../escaped-by-filename' is a path"),
    ("ava.safetensors", "ABSOLUTE", "filename '/"),
    ("ava.safetensors", "..\\..\\escaped", "filename '..\\\\..\\\\escaped' is a path"),
    ("ava.safetensors", "..", "filename '..' holds '..'"),
    ("ava.safetensors", "x\x00y", "control character"),
    ("up.safetensors", "", "the character's name '../../../escaped-by-name' is a path"),
    ("absolute.safetensors", " ", "the character's name '/"),
])
def test_save_character_through_http_refuses_a_path(server, saved_characters, character_file, filename, says):
    """With a hostile filename, or an empty one and a character whose name is a path: an execution error that
    names the input, and no file written anywhere (inside the folder or out of it)."""
    _, _, url = server
    base, folder = saved_characters
    filename = str(base / "escaped-absolute-filename") if filename == "ABSOLUTE" else filename
    before = safetensors_files(base.parent)
    entry = save_through_http(url, character_file, filename)
    assert entry["status"]["status_str"] == "error", entry["status"]
    (error,) = [data for event, data in entry["status"]["messages"] if event == "execution_error"]
    assert error["node_type"] == "StoryMakerSaveCharacter" and says in error["exception_message"], error
    assert "write a plain file name in filename" in error["exception_message"]
    assert safetensors_files(base.parent) == before
