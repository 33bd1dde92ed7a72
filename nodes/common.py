"""ComfyUI <-> numpy/torch conversions shared by the nodes (IMAGE is [B, H, W, C] float in 0..1), progress and
FLOAT checks. Imports nothing of ComfyUI at import time (offline tests use it)."""

from __future__ import annotations

import numpy as np
import torch

CATEGORY = "StoryMaker"


def images_to_numpy(image: torch.Tensor) -> list:
    """IMAGE [B, H, W, C] -> B RGB uint8 arrays [H, W, 3]."""
    array = (image[..., :3].clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
    return list(array)


def numpy_to_images(arrays: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> IMAGE."""
    return torch.from_numpy(np.array(arrays, dtype=np.float32)) / 255.0  # a copy: saved arrays are read-only


def mask_row(mask, index: int, input_name: str):
    """Row `index` of a MASK ([B, H, W] or [H, W]); a single mask serves every image of a batch."""
    if mask is None:
        return None
    mask = mask if mask.dim() == 3 else mask[None]
    if mask.shape[0] > 1 and index >= mask.shape[0]:
        raise ValueError(f"{input_name} has {mask.shape[0]} masks but the image batch needs #{index + 1}: give one "
                         f"mask per image, or a single mask for all.")
    return mask[min(index, mask.shape[0] - 1)].float().cpu().numpy()


class NoProgress:
    """What the nodes' work functions report progress to when no editor is watching (offline tests, scripts)."""

    def __init__(self, total: int = 0):
        self.total = total

    def update(self, n: int = 1) -> None:
        pass


class Progress:
    """The running node's progress bar in the editor, through ComfyUI's V3 progress API
    (`ComfyAPISync().execution.set_progress`); silent when no prompt is executing (a node called as a library)."""

    _api = None

    def __init__(self, total: int):
        self.total, self.value = total, 0

    def update(self, n: int = 1) -> None:
        from comfy_execution.utils import get_executing_context

        self.value = min(self.value + n, self.total)
        if get_executing_context() is None:
            return
        if Progress._api is None:
            from comfy_api.latest import ComfyAPISync

            Progress._api = ComfyAPISync()
        Progress._api.execution.set_progress(self.value, self.total)


def progress_bar(total: int) -> Progress:
    """A progress bar of `total` steps for the running node (see `Progress`)."""
    return Progress(total)


def finite(value: float, name: str) -> float:
    """The float, or a ValueError naming the input: the JSON literal NaN passes ComfyUI's min/max checks."""
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} is {value}: give a number (NaN and infinity are not allowed).")
    return value


def checked_floats(node_class, **values):
    """True, or what is wrong with these FLOAT inputs of `node_class`: a validator for ComfyUI's V3
    `validate_inputs` (the limits are read from `node_class.INPUT_TYPES()`, which a V3 node derives from its
    schema). ComfyUI skips its own min/max check for the inputs a validator names,
    and the JSON literal NaN passes that check anyway (a NaN ip_scale renders black, a NaN start_at crashes
    the sampler), so this does both. A linked input (None here) is checked when the node runs."""
    spec = node_class.INPUT_TYPES()
    declared = {**spec.get("required", {}), **spec.get("optional", {})}
    problems = []
    for name, value in values.items():
        if value is None:
            continue
        options = declared[name][1] if len(declared[name]) > 1 else {}
        low, high = options.get("min", float("-inf")), options.get("max", float("inf"))
        if not isinstance(value, (int, float)) or value != value or value in (float("inf"), float("-inf")):
            problems.append(f"{name} is {value!r}: give a number from {low} to {high} (NaN and infinity are not "
                            f"allowed)")
        elif not low <= value <= high:
            problems.append(f"{name} is {value}: give a number from {low} to {high}")
    return "; ".join(problems) or True
