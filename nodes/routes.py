"""``/storymaker/inspect``: lets the story runner judge the model files a story names before it queues it.

``POST /storymaker/inspect`` with ``{"files": [{"folder": "checkpoints", "name": "sd_xl_base_1.0.safetensors",
"kind": "sdxl_checkpoint"}, ...]}`` answers ``{"version": 1, "results": [{folder, name, kind, ok, found, problem,
fix, path}, ...]}`` in the same order; ``GET /storymaker/inspect?folder=&name=&kind=`` answers one result.
Only headers are read (``storymaker_core.model_files``), in a worker thread.

Read-only and confined: ``folder`` must be one of ComfyUI's model folders and ``name`` one of the files
ComfyUI offers the loaders from it (``folder_paths.get_filename_list``; for ``insightface_pack`` a plain
folder name), so no path outside the model folders can be asked about. Absolute names and ``..`` are refused
outright. A file the user symlinked into a model folder is answered for, as ComfyUI loads it too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re

from ..storymaker_core.model_files import KINDS, Verdict, inspect_file, inspect_insightface_pack

log = logging.getLogger(__name__)
ROUTE = "/storymaker/inspect"
VERSION = 1
_PACK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MAX_FILES = 256


class Refused(ValueError):
    """A request for something outside ComfyUI's model folders (or malformed): answered, never looked up."""


def _plain_relative(name: object) -> str:
    if not isinstance(name, str) or not name or "\x00" in name:
        raise Refused("the file name must be non-empty text")
    parts = re.split(r"[\\/]", name)
    if os.path.isabs(name) or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise Refused(f"{name!r} is not a name inside a model folder (absolute paths and '..' are refused)")
    return name


def resolve(folder: object, name: object, kind: object) -> str:
    """The full path ``name`` has in ComfyUI's ``folder``; ``Refused`` unless it is one ComfyUI offers."""
    import folder_paths

    if kind not in KINDS:
        raise Refused(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    if not isinstance(folder, str) or folder not in folder_paths.folder_names_and_paths:
        raise Refused(f"{folder!r} is not one of ComfyUI's model folders")
    name = _plain_relative(name)
    if kind == "insightface_pack":
        if not _PACK_NAME.match(name):
            raise Refused(f"{name!r} is not a model pack name such as buffalo_l")
        return os.path.join(folder_paths.get_folder_paths(folder)[0], "models", name)
    if name not in folder_paths.get_filename_list(folder):
        raise LookupError(name)
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise LookupError(name)
    return path


def _pack(folder: str, name: str) -> tuple[Verdict, str]:
    """The first root of the folder that holds the pack, else the verdict for the first root."""
    import folder_paths

    roots = folder_paths.get_folder_paths(folder)
    verdicts = [(inspect_insightface_pack(root, name), os.path.join(root, "models", name)) for root in roots]
    return next((v for v in verdicts if v[0].ok), verdicts[0])


def inspect_one(item: object) -> dict:
    """One request item -> one result (refusals and missing files are results too, marked as such)."""
    item = item if isinstance(item, dict) else {}
    folder, name, kind = item.get("folder"), item.get("name"), item.get("kind")
    answer = {"folder": folder, "name": name, "kind": kind}
    try:
        path = resolve(folder, name, kind)
    except Refused as exc:
        return {**answer, "ok": False, "refused": True, "problem": str(exc), "fix": "", "found": "", "path": None}
    except LookupError:
        import folder_paths

        places = ", ".join(folder_paths.get_folder_paths(folder))
        return {**answer, "ok": False, "problem": f"is not in ComfyUI's '{folder}' folder ({places})",
                "fix": "put the file there (the README's \"Models: which file goes where\" says where from)",
                "found": "", "path": None}
    if kind == "insightface_pack":
        verdict, path = _pack(folder, name)
    else:
        verdict = inspect_file(path, kind)
    return {**answer, **verdict.to_json(), "path": path}


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
