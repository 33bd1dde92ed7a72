"""Exceptions of the story runner, and plain-word rendering of ComfyUI's HTTP 400 ``node_errors``.

The reader of these messages is someone at a terminal who wrote a story file, not a developer with a
debugger: every message names the file, field or node at fault and says what to do about it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable


class StoryError(Exception):
    """Base class: anything the runner reports to the user as a message instead of a traceback."""


def _join(head: str, problems: list[str]) -> str:
    if len(problems) == 1:
        return f"{head}: {problems[0]}"
    return f"{head}: {len(problems)} problems:\n  - " + "\n  - ".join(problems)


class StoryFileError(StoryError):
    """The story file (or a workflow template it names) is malformed. ``problems`` are ``field: message``."""

    def __init__(self, path: str | Path, problems: str | Iterable[str]):
        self.path = Path(path)
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(_join(str(path), self.problems))


class ValidationFailed(StoryError):
    """The built prompts do not fit what a server offers (``/object_info``); raised before anything is queued."""

    def __init__(self, url: str, problems: Iterable[str]):
        self.url = url
        self.problems = list(problems)
        super().__init__(_join(f"the workflow does not fit the server {url}", self.problems))


class ModelFilesUnusable(ValidationFailed):
    """A model file the prompts load is missing, damaged or of the wrong kind (the server read its header)."""

    def __init__(self, url: str, problems: Iterable[str]):
        self.url = url
        self.problems = list(problems)
        StoryError.__init__(self, _join(f"model files on {url} cannot be used", self.problems))


class CannotInspectModels(StoryError):
    """The server has no ``/storymaker/inspect`` route, so the model files' contents could not be checked."""

    def __init__(self, url: str):
        self.url = url
        super().__init__(f"{url} cannot inspect model files (it has no /storymaker/inspect route: the "
                         f"ComfyUI-StoryMaker pack there is missing or older than this runner), so empty, truncated "
                         f"or wrong model files would only be found when a scene runs. Update the pack on that "
                         f"server and restart it")


class ServerUnavailable(StoryError):
    """A server did not answer (refused, reset, timed out, 5xx). Its scenes go to another server."""

    def __init__(self, url: str, reason: str):
        self.url = url
        super().__init__(f"ComfyUI server {url} is not answering: {reason}")


class SceneTimeout(StoryError):
    """A queued prompt did not finish within the configured scene timeout."""


class SceneFailed(StoryError):
    """The server ran the prompt and it failed (rejected with HTTP 400, node exception, no image saved)."""


class PromptRejected(SceneFailed):
    """HTTP 400 from ``POST /prompt``; the message lists ``node_errors`` node by node."""

    def __init__(self, url: str, body: Any, prompt: dict | None = None, scene: str = "prompt"):
        self.url = url
        self.body = body
        super().__init__(format_rejection(body, prompt or {}, f"ComfyUI ({url}) rejected {scene}"))


class NoServerLeft(StoryError):
    """Every server is gone while scenes remain; a rerun resumes where this one stopped."""


def describe_node(node_id: str, prompt: dict) -> str:
    """``node 12 (KSampler "Sampler")``: the id, the class and the title the user sees in the editor."""
    node = prompt.get(str(node_id)) or {}
    class_type = node.get("class_type") or "?"
    title = (node.get("_meta") or {}).get("title")
    if title and title != class_type:
        return f'node {node_id} ({class_type} "{title}")'
    return f"node {node_id} ({class_type})"


_HINTS = {
    "missing_node_type": "install the custom node pack that provides it (or update ComfyUI), then retry",
    "prompt_no_outputs": "the workflow has no output node; add a SaveImage node",
    "invalid_prompt": "export the workflow again with 'Export (API)' in the editor",
}


def _shorten(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _plain(error: dict) -> str:
    message = str(error.get("message") or error.get("type") or "error").strip()
    details = str(error.get("details") or "").strip()
    input_name = (error.get("extra_info") or {}).get("input_name")
    if error.get("type") == "required_input_missing" and (input_name or details):
        return f"input '{input_name or details}' is required but missing"
    text = f"{message}: {details}" if details and details not in message else message
    if input_name and input_name not in text:
        text = f"input '{input_name}': {text}"
    return _shorten(text)


def format_rejection(body: Any, prompt: dict, head: str) -> str:
    """Turn ``{"error": {...}, "node_errors": {id: {"errors": [...]}}}`` into one readable block."""
    if not isinstance(body, dict):
        return f"{head}: {_shorten(str(body))}"
    lines: list[str] = []
    node_errors = body.get("node_errors") or {}
    for node_id, entry in node_errors.items():
        errors = (entry or {}).get("errors") or [{"message": "invalid"}]
        node = describe_node(node_id, prompt)
        if node_id not in prompt and entry.get("class_type"):
            node = f"node {node_id} ({entry['class_type']})"
        for error in errors:
            lines.append(f"{node}: {_plain(error)}")
    top = body.get("error")
    if isinstance(top, dict):
        summary = _plain(top)
        hint = _HINTS.get(str(top.get("type")))
        if hint:
            summary += f" ({hint})"
    else:
        summary = _shorten(str(top)) if top else "invalid prompt"
    if not lines:
        return f"{head}: {summary}"
    return f"{head}: {summary}\n  - " + "\n  - ".join(lines)
