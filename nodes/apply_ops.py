"""What Apply StoryMaker does to an SDXL MODEL: LoRA through ComfyUI's weight patches, the image branch on all 70
attn2 (nodes/patching.py). Imports nothing of ComfyUI at import time; nodes/apply.py holds the V3 node."""

from __future__ import annotations

from .common import NoProgress, finite
from .patching import add_image_branch, add_lora, region_masks, unet_layers


def apply_storymaker(model, storymaker, embeds, ip_scale: float, lora_scale: float, start_at: float, end_at: float,
                     masks=(None, None, None), progress=NoProgress):
    """A clone of `model` (a ModelPatcher) with StoryMaker's LoRA and the characters' image tokens; `masks`
    (mask_1..mask_3, None = not connected) keep each character in its region. `progress(total)` gives the bar
    to advance: LoRA, then the image branch."""
    for name, value in (("ip_scale", ip_scale), ("lora_scale", lora_scale), ("start_at", start_at),
                        ("end_at", end_at)):
        finite(value, name)  # a linked FLOAT is not seen by the node's validation
    if start_at >= end_at:
        raise ValueError(f"start_at ({start_at}) must be below end_at ({end_at}).")
    layers = unet_layers(model, storymaker)
    bar = progress(2)
    patched = model.clone()
    add_lora(patched, storymaker, layers, lora_scale)
    bar.update(1)
    add_image_branch(patched, storymaker, layers, embeds, ip_scale, start_at, end_at,
                     region_masks(masks=list(masks), num_characters=embeds.num_characters))
    bar.update(1)
    return patched
