"""``/storymaker/inspect``'s confinement without ComfyUI: exactly the folders and kinds the story runner asks
about, only model extensions, and no path or file bytes in any answer (tests/comfyui/test_server_loads_pack.py
asks a real server the same)."""

import json
import os
import struct
import sys
import types

import pytest

from storymaker.story.model_check import MODEL_INPUTS, STRICTER
from support.model_headers import SDXL_KEYS, write_safetensors
from support.node_specs import node_module

SECRET = b"TOPSECRT and more secret text"
SECRET_NUMBER = str(struct.unpack("<Q", SECRET[:8])[0])  # what the old answer quoted as a "header size"
PT = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}  # ComfyUI's supported_pt_extensions


@pytest.fixture(scope="module")
def routes():
    return node_module("routes")  # the pack imported as ComfyUI would


def comfy_folder_paths(base) -> types.ModuleType:
    """A folder_paths with ComfyUI's layout and listing rules (extension filter; none for custom_nodes)."""
    module = types.ModuleType("folder_paths")
    module.base_path, module.models_dir = str(base), str(base / "models")
    module.folder_names_and_paths = {
        **{name: ([str(base / "models" / name)], PT) for name in ("checkpoints", "loras", "vae", "clip_vision",
                                                                   "controlnet", "embeddings", "diffusion_models")},
        "configs": ([str(base / "models" / "configs")], [".yaml"]),
        "custom_nodes": ([str(base / "custom_nodes")], set()),
        "insightface": ([str(base / "models" / "insightface")], set()),
        "storymaker_characters": ([str(base / "models" / "storymaker_characters")], {".safetensors"})}
    module.get_folder_paths = lambda name: module.folder_names_and_paths[name][0]

    def listing(name):
        roots, extensions = module.folder_names_and_paths[name]
        return sorted(os.path.relpath(os.path.join(d, f), root) for root in roots for d, _, files in
                      os.walk(root, followlinks=True) for f in files
                      if not extensions or os.path.splitext(f)[1].lower() in extensions)

    module.get_filename_list = listing
    module.get_full_path = lambda name, file: next((os.path.join(r, file) for r in module.get_folder_paths(name)
                                                    if os.path.isfile(os.path.join(r, file))), None)
    return module


@pytest.fixture
def base(tmp_path, monkeypatch):
    base = tmp_path / "comfy-base"
    for folder, name in [("custom_nodes/some-pack", "__init__.py"), ("custom_nodes", "secret.safetensors"),
                         ("models/checkpoints", "secret.pkl"), ("models/checkpoints", "notes.txt"),
                         ("models/checkpoints", "secret-text.safetensors"), ("models/configs", "secret.yaml"),
                         ("models/insightface", "notes.txt"), ("models/embeddings", "secret.safetensors")]:
        (base / folder).mkdir(parents=True, exist_ok=True)
        (base / folder / name).write_bytes(SECRET)
    write_safetensors(base / "models" / "checkpoints" / "good.safetensors", SDXL_KEYS)
    write_safetensors(tmp_path / "outside.safetensors", SDXL_KEYS)
    (base / "models" / "checkpoints" / "linked.safetensors").symlink_to(tmp_path / "outside.safetensors")
    monkeypatch.setitem(sys.modules, "folder_paths", comfy_folder_paths(base))
    return base


def test_the_route_allows_exactly_what_the_story_runner_asks(routes):
    asked = set(MODEL_INPUTS.values()) | {(folder, STRICTER[kind][1]) for folder, kind in MODEL_INPUTS.values()
                                          if kind in STRICTER}
    assert {(folder, kind) for kind, folders in routes.ALLOWED.items() for folder in folders} == asked


def assert_tells_nothing(text: str, base) -> None:
    for secret in (SECRET[:8].decode(), SECRET_NUMBER, str(base), os.path.realpath(base)):
        assert secret not in text, (secret, text)


@pytest.mark.parametrize("folder, name, kind", [
    ("custom_nodes", "secret.safetensors", "checkpoint"), ("custom_nodes", "some-pack/__init__.py", "model"),
    ("custom_nodes", "some-pack", "insightface_pack"), ("configs", "secret.yaml", "checkpoint"),
    ("insightface", "notes.txt", "model"), ("embeddings", "secret.safetensors", "model"),
    ("storymaker_characters", "good.safetensors", "checkpoint"), ("checkpoints", "notes.txt", "checkpoint"),
    ("checkpoints", "secret.pkl", "sdxl_checkpoint"), ("checkpoints", "good.safetensors\x00.txt", "checkpoint"),
    ("checkpoints", "../../custom_nodes/secret.safetensors", "checkpoint"), ("checkpoints", "", "checkpoint"),
    ("checkpoints", "good.safetensors", "insightface_pack"), ("user", "comfy.settings.json", "model"),
    ("input", "x.safetensors", "model"), (None, None, None), ("checkpoints", ["good.safetensors"], "checkpoint"),
])
def test_everything_else_is_refused_unread(routes, base, folder, name, kind):
    result = routes.inspect_one({"folder": folder, "name": name, "kind": kind})
    assert result["refused"] is True and result["ok"] is False and not result["found"] and "path" not in result
    assert_tells_nothing(json.dumps(result), base)


def test_an_absolute_name_is_refused_without_repeating_it(routes, base):
    name = str(base / "models" / "checkpoints" / "good.safetensors")
    result = routes.inspect_one({"folder": "checkpoints", "name": name, "kind": "checkpoint"})
    assert result["refused"] is True and result.pop("name") == name
    assert_tells_nothing(json.dumps(result), base)


def test_model_files_are_judged_without_paths_or_bytes(routes, base):
    good, linked, text, missing, pack = [routes.inspect_one(item) for item in [
        {"folder": "checkpoints", "name": "good.safetensors", "kind": "sdxl_checkpoint"},
        {"folder": "checkpoints", "name": "linked.safetensors", "kind": "sdxl_checkpoint"},  # ComfyUI lists it
        {"folder": "checkpoints", "name": "secret-text.safetensors", "kind": "checkpoint"},
        {"folder": "checkpoints", "name": "absent.safetensors", "kind": "checkpoint"},
        {"folder": "insightface", "name": "buffalo_l", "kind": "insightface_pack"}]]
    assert good["ok"] and linked["ok"] and "SDXL checkpoint" in linked["found"]
    assert not text["ok"] and "not a readable .safetensors file" in text["problem"]
    assert not missing["ok"] and missing["problem"] == "is not in ComfyUI's 'checkpoints' folder"
    assert "ComfyUI/models/checkpoints/" in missing["fix"]
    assert not pack["ok"] and "models/insightface/models/buffalo_l" in pack["fix"]
    for result in (good, linked, text, missing, pack):
        assert "path" not in result and "refused" not in result
        assert_tells_nothing(json.dumps(result), base)
