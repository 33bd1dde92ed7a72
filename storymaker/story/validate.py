"""Check built prompts against a server's ``/object_info`` before anything is queued.

ComfyUI validates a prompt only when it is queued, one prompt at a time; a story of forty scenes should
not fail at scene 23 because a checkpoint name is misspelled. The checks mirror ComfyUI's own (node
type installed, required inputs present, link types, COMBO choices, INT/FLOAT ranges) and are phrased
for the person who wrote the story file.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable

from ..workflow_format import declared_inputs
from .errors import ValidationFailed, describe_node
from .workflow import is_link


def combo_choices(spec: list) -> list | None:
    """Choices of a COMBO input, in either format: ``[[a, b], {...}]`` or ``["COMBO", {"options": [a, b]}]``."""
    kind = spec[0] if spec else None
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        return list(options.get("options") or [])
    return None


def _types_match(received: Any, expected: Any) -> bool:
    received = "COMBO" if isinstance(received, list) else str(received)
    expected = "COMBO" if isinstance(expected, list) else str(expected)
    if "*" in (received, expected):
        return True
    return bool(set(received.split(",")) & set(expected.split(",")))


# Where ComfyUI looks for the file a loader input names (folder inside ComfyUI/), for the inputs our
# workflows use; README "Models: which file goes where" has each download.
FILE_FOLDERS = {
    ("CheckpointLoaderSimple", "ckpt_name"): "models/checkpoints",
    ("CLIPVisionLoader", "clip_name"): "models/clip_vision",
    ("ControlNetLoader", "control_net_name"): "models/controlnet",
    ("LoraLoader", "lora_name"): "models/loras",
    ("LoraLoaderModelOnly", "lora_name"): "models/loras",
    ("VAELoader", "vae_name"): "models/vae",
    ("UNETLoader", "unet_name"): "models/diffusion_models",
    ("StoryMakerLoader", "storymaker_file"): "models/storymaker",
    ("StoryMakerSAMLoader", "sam_file"): "models/sams",
    ("StoryMakerLoadCharacter", "character_file"): "models/storymaker_characters",
    ("LoadImage", "image"): "input",
    ("LoadImageMask", "image"): "input",
}


def where_the_file_goes(class_type: str, input_name: str, value: Any, choices: list) -> str:
    """What to do when a loader's file is not among the server's `choices`, naming ComfyUI's folder for it."""
    folder = FILE_FOLDERS.get((class_type, input_name))
    if folder is None:
        return "" if choices else " (is the model/file installed in the right models/ folder?)"
    if folder == "input":
        return f" -> put {value!r} in ComfyUI/input/, or give that node an image in the story file (the runner uploads it)"
    if folder == "models/storymaker_characters":
        return f" -> save that character first (workflows/07-save-character.json writes it to ComfyUI/{folder}/)"
    return (f" -> put {value!r} in ComfyUI/{folder}/ (the README's \"Models: which file goes where\" says where to "
            f"download it), then run again")


def _choices_text(choices: list, value: Any) -> str:
    if not choices:
        return "the server offers no choices for it"
    shown = ", ".join(repr(c) for c in choices[:8]) + (f", ... ({len(choices)} in all)" if len(choices) > 8 else "")
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f"choices: {shown}" + (f"; did you mean {close[0]!r}?" if close else "")


def _check_link(prompt: dict, object_info: dict, value: list, expected: Any) -> str | None:
    source = str(value[0])
    if source not in prompt:
        return f"links to node {source}, which is not in the prompt"
    info = object_info.get(prompt[source].get("class_type"))
    if info is None:
        return None  # reported on the source node itself
    outputs = info.get("output") or []
    if not 0 <= value[1] < len(outputs):
        return (f"links to output {value[1]} of {describe_node(source, prompt)}, "
                f"which has {len(outputs)} output(s)")
    if not _types_match(outputs[value[1]], expected):
        wanted = "COMBO" if isinstance(expected, list) else expected
        return (f"expects {wanted} but is linked to {describe_node(source, prompt)} "
                f"output {value[1]} ({outputs[value[1]]})")
    return None


def _check_range(value: float, options: dict) -> str | None:
    low, high = options.get("min"), options.get("max")
    if low is not None and value < low:
        return f"is {value}, below the minimum {low}"
    if high is not None and value > high:
        return f"is {value}, above the maximum {high}"
    return None


def check_value(prompt: dict, object_info: dict, value: Any, spec: Any) -> str | None:
    """Problem with one input value (or link) against its ``/object_info`` spec, or None."""
    spec = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    kind = spec[0] if spec else "*"
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if is_link(value):
        return _check_link(prompt, object_info, value, kind)
    if value is None:
        return "has no value"
    choices = combo_choices(spec)
    if choices is not None:
        if value in choices:
            return None
        return f"is {value!r}, not offered by this server; {_choices_text(choices, value)}"
    if kind == "INT":
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expects a whole number; got {value!r}"
        return _check_range(value, options)
    if kind == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expects a number; got {value!r}"
        return _check_range(value, options)
    if kind == "STRING":
        return None if isinstance(value, str) else f"expects text; got {value!r}"
    if kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"expects true or false; got {value!r}"
    if kind == "*":
        return None
    return f"expects a link from a {kind} output, not the value {value!r}"


def check_prompt(prompt: dict, object_info: dict) -> list[str]:
    """Every problem of one API prompt against ``/object_info``."""
    problems: list[str] = []
    has_output = False
    for node_id, node in prompt.items():
        class_type = node.get("class_type")
        who = describe_node(node_id, prompt)
        info = object_info.get(class_type)
        if info is None:
            problems.append(f"{who}: node type '{class_type}' is not installed on this server "
                            f"(install the custom node pack that provides it, or update ComfyUI)")
            continue
        has_output = has_output or bool(info.get("output_node"))
        required, optional = declared_inputs(info)
        inputs = node.get("inputs") or {}
        for name in required:
            if name not in inputs:
                problems.append(f"{who}: required input '{name}' is missing")
        for name, value in inputs.items():
            spec = required.get(name, optional.get(name))
            if spec is None:
                continue  # ComfyUI ignores inputs a node does not declare
            problem = check_value(prompt, object_info, value, spec)
            if problem:
                choices = combo_choices(spec) if isinstance(spec, (list, tuple)) and not is_link(value) else None
                if choices is not None and value not in choices:  # a file the server does not have?
                    problem += where_the_file_goes(class_type, name, value, choices)
                problems.append(f"{who}: input '{name}' {problem}")
    if not has_output:
        problems.append("the workflow has no output node (such as SaveImage), so nothing would be saved")
    return problems


def validate_prompts(labelled: Iterable[tuple[str, dict]], object_info: dict, url: str) -> None:
    """Raise ``ValidationFailed`` listing every problem once, with the scenes it affects."""
    where: dict[str, list[str]] = {}
    for label, prompt in labelled:
        for problem in check_prompt(prompt, object_info):
            where.setdefault(problem, []).append(label)
    if where:
        raise ValidationFailed(url, [f"{scene_labels(labels)}: {problem}" for problem, labels in where.items()])


def scene_labels(labels: list[str]) -> str:
    """``scene 01-a`` / ``scenes 01-a, 02-b, 03-c and 4 more``."""
    if len(labels) == 1:
        return f"scene {labels[0]}"
    more = f" and {len(labels) - 3} more" if len(labels) > 3 else ""
    return f"scenes {', '.join(labels[:3])}{more}"
