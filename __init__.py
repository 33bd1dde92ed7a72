"""ComfyUI-StoryMaker: consistent characters across a story of SDXL images (StoryMaker, arXiv 2409.12576).

ComfyUI imports this file; it registers the model folders and exports the nodes. Optional dependencies
(insightface, segment-anything) are imported by the nodes that use them, so the pack always loads.
"""

import os

try:
    import folder_paths
except ImportError:  # imported outside ComfyUI (pytest collects the repo root as a package): nothing to register
    folder_paths = None

NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

if folder_paths is not None:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    _FOLDERS = {
        "storymaker": {".bin", ".safetensors"},  # StoryMaker weights
        "storymaker_characters": {".safetensors"},  # saved characters
        "insightface": set(),  # models/insightface/models/<buffalo_l|antelopev2>/*.onnx
        "sams": {".pth", ".pt", ".safetensors"},  # Segment Anything
    }
    for _name, _extensions in _FOLDERS.items():
        folder_paths.add_model_folder_path(_name, os.path.join(folder_paths.models_dir, _name))
        _paths, _known = folder_paths.folder_names_and_paths[_name]
        folder_paths.folder_names_and_paths[_name] = (_paths, set(_known) | _extensions)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
