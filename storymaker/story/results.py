"""Reading a finished prompt's result off a server: the error it raised, the image it saved, and a
download verified to be a complete image (a damaged transfer is fetched again, never saved).
"""

from __future__ import annotations

import io
import logging

from PIL import Image

from .client import ComfyClient
from .errors import SceneFailed, describe_node

log = logging.getLogger(__name__)


def image_problem(data: bytes) -> str | None:
    """Why ``data`` is not a complete image (PNG chunk CRCs, truncation), or None when it is one."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception as exc:  # PIL raises many types for damaged data
        return str(exc) or type(exc).__name__
    return None


def _id_order(node_id: str):
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def output_images(entry: dict, prompt: dict, output_nodes: tuple[str, ...] = ()) -> list[dict]:
    """The images (``{filename, subfolder, type}``) of the first node that saved any, looking at
    ``output_nodes`` (or every node, by id): one, or a whole batch (``batch_size`` > 1). A failed prompt
    raises ``SceneFailed`` naming the node."""
    status = entry.get("status") or {}
    for message in status.get("messages") or []:
        if isinstance(message, list) and len(message) == 2 and message[0] == "execution_error":
            d = message[1] or {}
            raise SceneFailed(f"{describe_node(str(d.get('node_id')), prompt)} raised "
                              f"{d.get('exception_type', 'an error')}: {str(d.get('exception_message', '')).strip()}")
        if isinstance(message, list) and message[:1] == ["execution_interrupted"]:
            raise SceneFailed("the prompt was interrupted on the server")
    if status.get("status_str") == "error":
        raise SceneFailed("the server reports that the prompt failed (no details in /history)")
    outputs = entry.get("outputs") or {}
    for node_id in output_nodes or sorted(outputs, key=_id_order):
        images = [{k: image.get(k) or "" for k in ("filename", "subfolder", "type")}
                  for image in (outputs.get(node_id) or {}).get("images") or []
                  if image.get("type", "output") == "output" and image.get("filename")]
        if images:
            return images
    raise SceneFailed("the workflow saved no image (no output image in /history); does it end in SaveImage?")


def output_image(entry: dict, prompt: dict, output_nodes: tuple[str, ...] = ()) -> dict:
    """The first image ``output_images`` finds: the scene's image."""
    return output_images(entry, prompt, output_nodes)[0]


async def download_image(client: ComfyClient, image: dict, label: str, tries: int = 3) -> bytes:
    """``/view`` the image, fetching it again while it does not decode as a complete image."""
    problem = ""
    for _ in range(tries):
        try:
            data = await client.view(image["filename"], image.get("subfolder", ""), image.get("type") or "output")
        except FileNotFoundError as exc:
            raise SceneFailed(str(exc)) from None
        problem = image_problem(data)
        if problem is None:
            return data
        log.warning("%s: the download from %s is damaged (%s); fetching it again", label, client.url, problem)
    raise SceneFailed(f"{client.url} sent a damaged image {tries} times ({problem})")
