"""Write the input/output specs of the core ComfyUI nodes our workflows use (interface data, no code).

    python scripts/snapshot_core_nodes.py /path/to/ComfyUI > tests/data/comfyui_core_nodes.json

Lets CI validate the example workflows without ComfyUI. File-name lists (checkpoints, images) are empty
here; the validator treats an empty choice list as "any file name".
"""

import json
import sys

CORE_NODES = ["CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode", "SaveImage",
              "LoadImage", "LoadImageMask", "CLIPVisionLoader", "ControlNetLoader", "ControlNetApplyAdvanced",
              "LoraLoader", "PreviewImage", "UNETLoader", "SaveLatent"]


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
