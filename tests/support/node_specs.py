"""Node specs (as `/object_info` gives them) for the core nodes our workflows use and for our own nodes, and the
pack imported as ComfyUI imports it.

Core specs come from a snapshot of ComfyUI v0.14.1 (tests/data/comfyui_core_nodes.json). Our nodes are all on
ComfyUI's V3 schema, which imports ComfyUI's `comfy_api`: offline their specs come from
tests/data/storymaker_v3_nodes.json (written by scripts/snapshot_core_nodes.py --ours-v3; a ComfyUI test checks it
equals what a live server serves). Offline tests reach what the nodes do through the comfy_api-free modules beside
them (`node_module("character_ops")`, ...).
"""

from __future__ import annotations

import importlib
import json
import sys
import types

from support import DATA


def _stand_in_folder_paths():
    module = types.ModuleType("folder_paths")
    module.models_dir = "/nonexistent/models"
    module.folder_names_and_paths = {}
    module.add_model_folder_path = lambda name, path, is_default=False: module.folder_names_and_paths.setdefault(name, ([path], set()))
    module.get_filename_list = lambda name: []
    module.get_folder_paths = lambda name: module.folder_names_and_paths.get(name, ([], set()))[0]
    return module


def pack():
    """The pack, imported as ComfyUI would import it (a stand-in `folder_paths` when ComfyUI is not installed)."""
    if "folder_paths" not in sys.modules:
        try:
            importlib.import_module("folder_paths")  # a real ComfyUI on sys.path
        except ImportError:
            sys.modules["folder_paths"] = _stand_in_folder_paths()
    from support.comfyui import load_pack

    return load_pack()


def node_module(name: str):
    """A module of the pack's nodes/ package, e.g. `node_module("character_ops")` (the `*_ops` modules, common,
    patching and routes import without ComfyUI)."""
    return importlib.import_module(f"{pack().__name__}.nodes.{name}")


def our_node_classes() -> dict:
    """{node id: V3 class} of every node of the pack, as ComfyUI registers them through `comfy_entrypoint`
    (needs ComfyUI's comfy_api: a ComfyUI test)."""
    import asyncio

    extension = asyncio.run(pack().comfy_entrypoint())
    return {cls.GET_SCHEMA().node_id: cls for cls in asyncio.run(extension.get_node_list())}


def our_snapshot() -> dict:
    """{node id: spec} of the pack's nodes from tests/data/storymaker_v3_nodes.json."""
    return json.loads((DATA / "storymaker_v3_nodes.json").read_text())["nodes"]


def _is_file_picker(entry: list) -> bool:
    """A choice list with no choices: a file picker with no files here (either COMBO format)."""
    if isinstance(entry[0], list):
        return not entry[0]
    return entry[0] == "COMBO" and len(entry) > 1 and not entry[1].get("options")


def node_specs() -> dict:
    """`/object_info`-shaped specs for the core nodes and ours (both snapshots).

    File pickers have no choices offline (no models here): their spec becomes STRING, so any file name
    passes and everything else is checked as a server would.
    """
    specs = json.loads((DATA / "comfyui_core_nodes.json").read_text())["nodes"]
    specs.update(our_snapshot())
    specs = json.loads(json.dumps(specs))  # a copy
    for spec in specs.values():
        for section in spec["input"].values():
            for name, entry in section.items():
                if _is_file_picker(entry):
                    section[name] = ["STRING", *entry[1:]]
    return specs
