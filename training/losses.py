"""StoryMaker's training losses: the denoising MSE and the attention-mask loss (docs/method.md §5.3).

Attention loss, the release's, generalised so nothing SDXL-specific is hard-coded:
1. take the head-averaged image-branch probabilities `[B, (N+1)*T, h*w]` of the cross-attention layers
   at the UNet's lowest resolution (SDXL: down_blocks.2, mid_block, up_blocks.0 = 60 layers at 1/32);
2. average over those layers and upsample x2 (SDXL: to 1/16 of the image), bilinear;
3. sum each group of T tokens (T = tokens per character, 20): background, character 1, ..., N;
4. MSE of each character's map against its mask, plus MSE of the background map against
   1 - union(masks), masks resized to the same size; divide by N.
Averaging over layers before upsampling equals upsampling each layer first (both are linear).
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from storymaker_core.layout import AttentionLayer

_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.|^(mid_block)\.")


def layer_level(processor_name: str, num_levels: int) -> int:
    """Resolution level of a processor: 0 = latent size, k = latent / 2^k (down i -> i, up j -> n-1-j, mid -> n-1)."""
    m = _BLOCK.match(processor_name)
    if not m:
        raise ValueError(f"cannot tell the resolution of attention layer {processor_name}")
    if m.group(3):
        return num_levels - 1
    i = int(m.group(2))
    return i if m.group(1) == "down_blocks" else num_levels - 1 - i


def attention_loss_layers(layers: Sequence[AttentionLayer], num_levels: int, which="lowest") -> tuple:
    """(processor names of the cross-attention layers the loss reads, their level).

    `which`: "lowest" (the release's choice, derived from the UNet) or a list of name prefixes.
    """
    cross = [layer for layer in layers if layer.is_cross_attention]
    if which == "lowest":
        level = max(layer_level(layer.processor, num_levels) for layer in cross)
        return tuple(layer.processor for layer in cross if layer_level(layer.processor, num_levels) == level), level
    if isinstance(which, str):
        which = [which]
    chosen = [layer for layer in cross if any(layer.processor.startswith(p) for p in which)]
    if not chosen:
        raise ValueError(f"loss.attention_loss_layers {list(which)} matches no cross-attention layer")
    levels = {layer_level(layer.processor, num_levels) for layer in chosen}
    if len(levels) != 1:
        raise ValueError(f"loss.attention_loss_layers must all be at one resolution; got levels {sorted(levels)}")
    return tuple(layer.processor for layer in chosen), levels.pop()


def level_size(latent_hw: tuple, level: int) -> tuple:
    """Spatial size after `level` stride-2 downsamplings (kernel 3, padding 1: ceil(x / 2) each)."""
    h, w = latent_hw
    for _ in range(level):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


def attention_group_maps(probs: Sequence[Tensor], layer_hw: tuple, tokens_per_group: int,
                         size: tuple) -> Tensor:
    """Layer-averaged image-attention mass per token group at `size`: `[B, N+1, H, W]` (bg first)."""
    stacked = torch.stack([p.float() for p in probs]).mean(0)  # [B, (N+1)*T, h*w]
    b, tokens, pixels = stacked.shape
    if pixels != layer_hw[0] * layer_hw[1]:
        raise ValueError(f"attention maps have {pixels} query positions, expected {layer_hw[0]}x{layer_hw[1]}")
    if tokens % tokens_per_group:
        raise ValueError(f"{tokens} image tokens are not a multiple of {tokens_per_group} tokens per group")
    maps = stacked.view(b, tokens, *layer_hw)
    maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    return maps.view(b, tokens // tokens_per_group, tokens_per_group, *size).sum(2)


def attention_mask_loss(probs: Sequence[Tensor], masks: Tensor, latent_hw: tuple, level: int,
                        tokens_per_group: int, upsample: int = 2) -> Tensor:
    """Per-sample attention loss `[B]`.

    probs: per loss layer `[B, (N+1)*T, h*w]` (head-averaged softmax over the image tokens).
    masks: `[B, N, H/8, W/8]` character masks in 0..1 at latent resolution, in slot order.
    """
    if not probs:
        raise ValueError("the attention loss is on but no attention maps were recorded")
    layer_hw = level_size(latent_hw, level)
    size = (layer_hw[0] * upsample, layer_hw[1] * upsample)
    maps = attention_group_maps(probs, layer_hw, tokens_per_group, size)  # [B, N+1, H', W']
    n = masks.shape[1]
    if maps.shape[1] != n + 1:
        raise ValueError(f"{maps.shape[1] - 1} character token groups but {n} masks")
    target = F.interpolate(masks.float(), size=size, mode="bilinear", align_corners=False)  # [B, N, H', W']
    background = 1.0 - target.sum(1).clamp(0, 1)  # [B, H', W']
    characters = ((maps[:, 1:] - target) ** 2).mean((2, 3)).sum(1)  # [B]
    bg = ((maps[:, 0] - background) ** 2).mean((1, 2))  # [B]
    return (characters + bg) / n


def diffusion_loss(prediction: Tensor, target: Tensor, masks: Optional[Tensor] = None, mask_weight: float = 0.0,
                   weighted: Optional[Tensor] = None) -> Tensor:
    """Per-sample MSE `[B]`, optionally `(1 + mask_weight * M)`-weighted inside the characters.

    masks: `[B, N, h, w]` at latent resolution; M = clamp(sum of masks, 0, 1). weighted: `[B]` bool,
    which rows get the weighting (the release skips it on image-dropped rows).
    """
    error = (prediction.float() - target.float()) ** 2  # [B, C, h, w]
    if mask_weight and masks is not None:
        union = masks.float().sum(1, keepdim=True).clamp(0, 1)  # [B, 1, h, w]
        if weighted is not None:
            union = union * weighted.to(union.dtype).view(-1, 1, 1, 1)
        error = error * (1.0 + mask_weight * union)
    return error.mean((1, 2, 3))
