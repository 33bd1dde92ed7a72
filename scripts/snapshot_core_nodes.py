"""Write the input/output specs of the core ComfyUI nodes our workflows use (interface data, no code).

    python scripts/snapshot_core_nodes.py /path/to/ComfyUI > tests/data/comfyui_core_nodes.json
    python scripts/snapshot_core_nodes.py /path/to/ComfyUI --ours-v3 > tests/data/storymaker_v3_nodes.json

Lets CI validate the example workflows without ComfyUI. `--ours-v3` writes the specs of the pack's own V3-schema
nodes, which import ComfyUI's `comfy_api` and so cannot be read without it (a ComfyUI test checks the file
still equals the live specs). File-name lists (checkpoints, images) are empty
here; the validator treats an empty choice list as "any file name".
"""

import json
import sys

CORE_NODES = ["CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode", "SaveImage",
              "LoadImage", "LoadImageMask", "CLIPVisionLoader", "ControlNetLoader", "ControlNetApplyAdvanced",
              "LoraLoader", "PreviewImage", "UNETLoader", "SaveLatent"]


def our_v3_nodes() -> dict:
    """The pack's V3 node classes, imported as ComfyUI imports a custom node pack."""
    import importlib.util
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("storymaker_pack", repo / "__init__.py",
                                                  submodule_search_locations=[str(repo)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["storymaker_pack"] = pack
    spec.loader.exec_module(pack)
    return {name: cls for name, cls in pack.NODE_CLASS_MAPPINGS.items() if hasattr(cls, "define_schema")}


def main():
    sys.path.insert(0, sys.argv[1])
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import folder_paths

    for name in list(folder_paths.folder_names_and_paths):  # no model files: empty choice lists
        folder_paths.folder_names_and_paths[name] = ([], folder_paths.folder_names_and_paths[name][1])
    folder_paths.get_input_directory = lambda: "/nonexistent"
    import os
    os.listdir_orig = os.listdir
    import nodes

    specs = {}
    classes = our_v3_nodes() if "--ours-v3" in sys.argv else {name: nodes.NODE_CLASS_MAPPINGS[name] for name in CORE_NODES}
    for name, cls in classes.items():
        try:
            inputs = cls.INPUT_TYPES()
        except FileNotFoundError:
            os.makedirs("/tmp/empty-input", exist_ok=True)
            folder_paths.get_input_directory = lambda: "/tmp/empty-input"
            inputs = cls.INPUT_TYPES()
        specs[name] = {"input": {k: v for k, v in inputs.items() if k in ("required", "optional")},
                       "output": list(cls.RETURN_TYPES),
                       "output_name": list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES),
                       "output_node": bool(getattr(cls, "OUTPUT_NODE", False))}
    json.dump({"comfyui": "v0.14.1", "nodes": specs}, sys.stdout, indent=1, default=str)


if __name__ == "__main__":
    main()
