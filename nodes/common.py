"""ComfyUI <-> numpy/torch conversions shared by the nodes (IMAGE is [B, H, W, C] float in 0..1)."""

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


def progress_bar(total: int):
    """ComfyUI's progress bar (drives the editor's bar for this node)."""
    import comfy.utils

    return comfy.utils.ProgressBar(total)
