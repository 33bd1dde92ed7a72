"""Node specs (as `/object_info` gives them) for the core nodes our workflows use and for our own nodes.

Core specs come from a snapshot of ComfyUI v0.14.1 (tests/data/comfyui_core_nodes.json); ours are read
from our nodes' own INPUT_TYPES, with a stand-in `folder_paths` when ComfyUI is not installed, and for our
V3-schema nodes (which need ComfyUI) from tests/data/storymaker_v3_nodes.json when ComfyUI is not there.
"""

from __future__ import annotations

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


def our_node_classes() -> dict:
    """NODE_CLASS_MAPPINGS of the pack, imported as ComfyUI would (stand-in folder_paths if needed)."""
    if "folder_paths" not in sys.modules:
        try:
            import folder_paths  # noqa: F401  (a real ComfyUI on sys.path)
        except ImportError:
            sys.modules["folder_paths"] = _stand_in_folder_paths()
    from support.comfyui import load_pack

    return load_pack().NODE_CLASS_MAPPINGS


def node_specs() -> dict:
    """`/object_info`-shaped specs for the core nodes (snapshot) and ours (live).

    File pickers have no choices offline (no models here): their spec becomes STRING, so any file name
    passes and everything else is checked as a server would.
    """
    specs = json.loads((DATA / "comfyui_core_nodes.json").read_text())["nodes"]
    # our V3 nodes import ComfyUI's comfy_api: without ComfyUI, their snapshot (checked live by a ComfyUI test)
    specs.update(json.loads((DATA / "storymaker_v3_nodes.json").read_text())["nodes"])
    for name, cls in our_node_classes().items():
        specs[name] = {"input": cls.INPUT_TYPES(), "output": list(cls.RETURN_TYPES),
                       "output_name": list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES),
                       "output_node": bool(getattr(cls, "OUTPUT_NODE", False))}
    specs = json.loads(json.dumps(specs, default=str))  # tuples -> lists, as /object_info serves them
    for spec in specs.values():
        for section in spec["input"].values():
            for name, entry in section.items():
                if isinstance(entry[0], list) and not entry[0]:
                    section[name] = ["STRING", *entry[1:]]
    return specs
