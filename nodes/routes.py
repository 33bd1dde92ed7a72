"""``/storymaker/inspect``: lets the story runner judge the model files a story names before it queues it.

``POST /storymaker/inspect`` with ``{"files": [{"folder": "checkpoints", "name": "sd_xl_base_1.0.safetensors",
"kind": "sdxl_checkpoint"}, ...]}`` answers ``{"version": 1, "results": [{folder, name, kind, ok, found, problem,
fix}, ...]}`` in the same order (``refused: true`` on a request it does not look up); ``GET
/storymaker/inspect?folder=&name=&kind=`` answers one result (HTTP 400 when refused). Only headers are read
(``storymaker_core.model_files``), in a worker thread.

Read-only and confined to what the story runner's ``--check`` asks (``storymaker/story/model_check.py``):
each ``kind`` is looked up only in its own model folders (``ALLOWED``), and only for a file with a model
extension for that kind that ComfyUI itself lists there (``folder_paths.get_filename_list``; for
``insightface_pack`` a plain pack folder name, of which only the ``.onnx`` files are read). Every other folder
(``custom_nodes``, ``configs``, ``insightface`` for files, ...), extension, absolute name, ``..``, NUL is
refused before anything is looked up. A file the user symlinked into a model folder is answered for, as
ComfyUI lists and loads it too. No answer holds a path of the server (its model folders are shown as
``models/<folder>``) nor a file's raw bytes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re

from ..storymaker_core.model_files import TABLE, Verdict, inspect_file, inspect_insightface_pack

log = logging.getLogger(__name__)
ROUTE = "/storymaker/inspect"
VERSION = 1
_PACK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MAX_FILES = 256
TORCH_FILES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")  # what ComfyUI's load_torch_file reads
#: kind -> {ComfyUI model folder it is looked up in: the extensions read there}: exactly the (folder, kind)
#: pairs the story runner asks about (model_check.MODEL_INPUTS, with STRICTER's SDXL / ViT-H kinds).
ALLOWED: dict[str, dict[str, tuple[str, ...]]] = {
    "checkpoint": {"checkpoints": TORCH_FILES},
    "sdxl_checkpoint": {"checkpoints": TORCH_FILES},
    "clip_vision": {"clip_vision": TORCH_FILES},
    "clip_vision_vit_h": {"clip_vision": TORCH_FILES},
    "controlnet": {"controlnet": TORCH_FILES},
    "lora": {"loras": TORCH_FILES},
    "vae": {"vae": TORCH_FILES},
    "model": {"diffusion_models": TORCH_FILES},
    "storymaker_character": {"storymaker_characters": (".safetensors",)},
    "storymaker": {"storymaker": (".bin", ".safetensors")},
    "sam": {"sams": (".pth", ".pt", ".safetensors")},
    "insightface_pack": {"insightface": ()},  # a pack folder name (buffalo_l), not a file
}


class Refused(ValueError):
    """A request for something outside what the story runner checks (or malformed): answered, never looked up."""


def _plain_relative(name: object) -> str:
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise Refused("the name must be a non-empty file name without NUL")
    parts = re.split(r"[\\/]", name)
    if os.path.isabs(name) or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise Refused("the name must be relative to the model folder (absolute paths, drive letters and '..' are "
                      "refused)")
    return name


def resolve(folder: object, name: object, kind: object) -> str:
    """The full path ``name`` has in ComfyUI's ``folder``; ``Refused`` unless ``kind`` is looked up in that
    folder, ``name`` has one of its extensions (or is a pack name) and is plain; ``LookupError`` unless
    ComfyUI lists it there."""
    import folder_paths

    if not isinstance(kind, str) or kind not in ALLOWED:
        raise Refused(f"unknown kind; one of {', '.join(ALLOWED)}")
    folders = ALLOWED[kind]
    if not isinstance(folder, str) or folder not in folders:
        raise Refused(f"a '{kind}' is looked up only in ComfyUI's {' or '.join(repr(f) for f in folders)} model "
                      f"folder")
    if folder not in folder_paths.folder_names_and_paths:
        raise Refused(f"this ComfyUI has no '{folder}' model folder")
    name = _plain_relative(name)
    if kind == "insightface_pack":
        if not _PACK_NAME.match(name):
            raise Refused("the name must be a model pack folder name such as buffalo_l")
        return os.path.join(folder_paths.get_folder_paths(folder)[0], "models", name)
    extensions = folders[folder]
    if not name.lower().endswith(extensions):
        raise Refused(f"only {', '.join(extensions)} files are inspected as '{kind}'")
    if name not in folder_paths.get_filename_list(folder):
        raise LookupError(name)
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise LookupError(name)
    return path


def _pack(folder: str, name: str) -> Verdict:
    """The verdict for the first root of the folder that holds the pack, else the one for the first root."""
    import folder_paths

    verdicts = [inspect_insightface_pack(root, name) for root in folder_paths.get_folder_paths(folder)]
    return next((v for v in verdicts if v.ok), verdicts[0])


def _shown(text: str, folder: str) -> str:
    """``text`` with every path of the server's model folders (as configured and resolved) as ``models/...``."""
    import folder_paths

    places = []
    for root in folder_paths.get_folder_paths(folder):
        places += [(root, f"models/{folder}"), (os.path.realpath(root), f"models/{folder}")]
    for attribute, label in (("models_dir", "models"), ("base_path", "ComfyUI")):
        path = getattr(folder_paths, attribute, None)
        if isinstance(path, str) and path:
            places += [(path, label), (os.path.realpath(path), label)]
    for path, label in sorted(places, key=lambda place: -len(place[0])):
        if len(path) > 1:  # a root that resolves to "/" would take every slash with it
            text = text.replace(path, label)
    return text


def inspect_one(item: object) -> dict:
    """One request item -> one result (refusals and missing files are results too, marked as such)."""
    item = item if isinstance(item, dict) else {}
    folder, name, kind = item.get("folder"), item.get("name"), item.get("kind")
    answer = {"folder": folder, "name": name, "kind": kind}
    try:
        path = resolve(folder, name, kind)
    except Refused as exc:
        return {**answer, "ok": False, "refused": True, "problem": str(exc), "fix": "", "found": ""}
    except LookupError:
        return {**answer, "ok": False, "problem": f"is not in ComfyUI's '{folder}' folder",
                "fix": f"put the file in ComfyUI/models/{folder}/ ({TABLE} says where from)", "found": ""}
    verdict = _pack(folder, name) if kind == "insightface_pack" else inspect_file(path, kind)
    return {**answer, **{key: _shown(value, folder) for key, value in verdict.to_json().items()
                         if isinstance(value, str)}, "ok": verdict.ok}


def register(routes) -> None:
    """Add the route to ComfyUI's ``PromptServer.instance.routes`` (before the server starts)."""
    from aiohttp import web

    @routes.post(ROUTE)
    async def inspect_files(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            files = body["files"]
            if not isinstance(files, list) or len(files) > _MAX_FILES:
                raise ValueError(f"'files' must be a list of at most {_MAX_FILES}")
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": f"expected {{\"files\": [{{folder, name, kind}}, ...]}}: {exc}"},
                                     status=400)
        results = await asyncio.to_thread(lambda: [inspect_one(item) for item in files])
        return web.json_response({"version": VERSION, "results": results})

    @routes.get(ROUTE)
    async def inspect_file_get(request: web.Request) -> web.Response:
        result = await asyncio.to_thread(inspect_one, dict(request.query))
        status = 400 if result.get("refused") else 200
        return web.json_response({"version": VERSION, "results": [result]}, status=status)

    log.debug("StoryMaker: registered %s", ROUTE)
