"""Write the input/output specs of the core ComfyUI nodes our workflows use (interface data, no code).

    python scripts/snapshot_core_nodes.py /path/to/ComfyUI > tests/data/comfyui_core_nodes.json
    python scripts/snapshot_core_nodes.py /path/to/ComfyUI --ours-v3 > tests/data/storymaker_v3_nodes.json

Lets CI validate the example workflows without ComfyUI. `--ours-v3` writes the specs of every node of the pack
(all on ComfyUI's V3 schema: they import ComfyUI's `comfy_api` and so cannot be read without it; a ComfyUI test
checks the file still equals the live specs). File-name lists (checkpoints, images) are empty
here; the validator treats an empty choice list as "any file name".
"""

import json
import sys

CORE_NODES = ["CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode", "SaveImage",
              "LoadImage", "LoadImageMask", "CLIPVisionLoader", "ControlNetLoader", "ControlNetApplyAdvanced",
              "LoraLoader", "PreviewImage", "UNETLoader", "SaveLatent"]
#: what the snapshot of our nodes keeps of /object_info (the workflow checks read the first four; the offline
#: tests check names, tooltips and descriptions)
OUR_KEYS = ("input", "input_order", "output", "output_name", "output_tooltips", "output_node", "name", "display_name",
            "description", "category")


def our_v3_nodes() -> dict:
    """Every node of the pack (all on the V3 schema), imported as ComfyUI imports a custom node pack and listed
    through its `comfy_entrypoint`, as ComfyUI registers them."""
    import asyncio
    import importlib.util
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("storymaker_pack", repo / "__init__.py",
                                                  submodule_search_locations=[str(repo)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["storymaker_pack"] = pack
    spec.loader.exec_module(pack)
    extension = asyncio.run(pack.comfy_entrypoint())
    return {cls.GET_SCHEMA().node_id: cls for cls in asyncio.run(extension.get_node_list())}


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
    if "--ours-v3" in sys.argv:
        ours = our_v3_nodes()
        for name in list(folder_paths.folder_names_and_paths):  # the pack's own folders too: no files listed
            folder_paths.folder_names_and_paths[name] = ([], folder_paths.folder_names_and_paths[name][1])
        for name, cls in ours.items():  # what /object_info serves, less the hidden inputs
            info = cls.GET_NODE_INFO_V1()
            specs[name] = {key: info[key] for key in OUR_KEYS}
            for key in ("input", "input_order"):
                specs[name][key] = {k: v for k, v in info[key].items() if k in ("required", "optional")}
        json.dump({"comfyui": "v0.14.1", "nodes": specs}, sys.stdout, indent=1, default=str)
        return
    for name in CORE_NODES:
        cls = nodes.NODE_CLASS_MAPPINGS[name]
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
