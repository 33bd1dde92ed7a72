"""ComfyUI-StoryMaker: consistent characters across a story of SDXL images (StoryMaker, arXiv 2409.12576).

ComfyUI imports this file; it registers the model folders, and `comfy_entrypoint` gives ComfyUI the nodes (all on
ComfyUI's V3 schema; the module has no NODE_CLASS_MAPPINGS, which ComfyUI would read instead). Optional
dependencies (insightface, segment-anything) are imported by the nodes that use them, so the pack always loads.

When the ComfyUI server loads the pack, it also creates its model folders if they are missing (so a fresh
ComfyUI shows where each file goes) and adds the read-only ``/storymaker/inspect`` route the story runner
uses to check model files before it queues a story. Imported as a library (tests, scripts), it touches no disk.
"""

import importlib
import logging
import os
import sys

try:
    import folder_paths
except ImportError:  # imported outside ComfyUI (pytest collects the repo root as a package): nothing to register
    folder_paths = None

if folder_paths is not None:
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
    # inside ComfyUI this imports the node modules too (they need comfy_api): a broken one fails the import here
    importlib.import_module(f"{__name__}.nodes")

    # ComfyUI's server module is loaded (and its PromptServer made) before custom nodes are imported
    _prompt_server = getattr(getattr(sys.modules.get("server"), "PromptServer", None), "instance", None)
    if _prompt_server is not None:
        for _folder in ("storymaker", "storymaker_characters", os.path.join("insightface", "models"), "sams"):
            try:
                os.makedirs(os.path.join(folder_paths.models_dir, _folder), exist_ok=True)
            except OSError as _exc:  # a read-only install still works with extra_model_paths.yaml
                logging.getLogger(__name__).warning("StoryMaker: could not create models/%s: %s", _folder, _exc)
        from .nodes.routes import register as _register_routes

        _register_routes(_prompt_server.routes)


async def comfy_entrypoint():
    """ComfyUI's V3 entry point: the pack's `ComfyExtension`, whose node list is every StoryMaker node."""
    from .nodes import extension

    return extension()


__all__ = ["comfy_entrypoint"]
