"""Attention-map previews: what each token group attends to, next to the mask it is trained towards.

Why: the attention loss is the part of StoryMaker that keeps two characters apart; a glance at these
PNGs shows whether background and character maps are converging on their regions long before samples
look right. Row 1: the training image, then the layer-averaged image-attention mass of the background
group and of each character. Row 2: blank, then the targets (1 - union, each character's mask).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

TILE = 128


def _tile(x: torch.Tensor) -> np.ndarray:
    """`[H, W]` in 0..1 -> uint8 `[TILE, TILE]` (nearest, so map cells stay visible)."""
    x = F.interpolate(x[None, None].float().clamp(0, 1), size=(TILE, TILE), mode="nearest")[0, 0]
    return (x.numpy() * 255).round().astype(np.uint8)


def save_attention_preview(preview: dict, path: str) -> str:
    maps, masks = preview["maps"], preview["masks"]  # [N+1, H', W'], [N, h, w]
    image = ((preview["image"].clamp(-1, 1) + 1) * 127.5).round().byte()  # [3, H, W]
    image = F.interpolate(image[None].float(), size=(TILE, TILE), mode="bilinear", align_corners=False)[0]
    image = image.round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    targets = [1.0 - masks.sum(0).clamp(0, 1)] + list(masks)
    gray = lambda t: np.repeat(_tile(t)[..., None], 3, axis=2)
    top = np.concatenate([image] + [gray(m) for m in maps], axis=1)
    bottom = np.concatenate([np.full_like(image, 255)] + [gray(t) for t in targets], axis=1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([top, bottom], axis=0)).save(path)
    return path
