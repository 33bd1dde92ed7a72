"""Where StoryMaker's 140 attention processors sit in an SDXL UNet, under every naming the pack meets.

The released `mask.bin` keys its attention weights by *processor index* (diffusers'
`unet.attn_processors` order: down blocks, then up blocks, then the mid block last; `attn1` at even,
`attn2` at odd indices). ComfyUI names the same layers by ldm module path
(`input_blocks.4.1.transformer_blocks.0.attn2`) and patches `attn2` under keys such as
`("input", 4, 0)` -- the middle block is `("middle", 0, i)`. This module is the one place that
translates between the three, for the real SDXL and for smaller SDXL-shaped test UNets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

PatchKey = tuple  # ("input" | "middle" | "output", block number, transformer block index)


@dataclass(frozen=True)
class AttentionLayer:
    """One attention processor of the UNet (an `attn1` or an `attn2`)."""

    index: int  # processor index = key prefix in mask.bin["ip_adapter"]
    processor: str  # diffusers name, e.g. "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"
    ldm_prefix: str  # ComfyUI/ldm module path, e.g. "input_blocks.4.1.transformer_blocks.0.attn2"
    patch_key: PatchKey  # ComfyUI attn2-replace key, e.g. ("input", 4, 0)
    hidden_size: int  # query/output width of the layer (640 or 1280 in SDXL)
    cross_attention_dim: Optional[int]  # context width for attn2 (2048 in SDXL); None for attn1

    @property
    def is_cross_attention(self) -> bool:
        return self.cross_attention_dim is not None


@dataclass(frozen=True)
class UNetAttentionConfig:
    """The few UNet hyper-parameters that decide the attention layout (diffusers names)."""

    block_out_channels: tuple = (320, 640, 1280)
    transformer_layers_per_block: tuple = (0, 2, 10)  # per down block; up blocks mirror it
    mid_transformer_depth: int = 10
    layers_per_block: int = 2  # ResNets per down block (ldm `num_res_blocks`)
    cross_attention_dim: int = 2048


SDXL = UNetAttentionConfig()


def _layer_pair(index: int, diffusers_block: str, ldm_block: str, patch_key: PatchKey, hidden: int,
                cross_dim: int) -> list[AttentionLayer]:
    """The attn1 (self) and attn2 (cross) processors of one transformer block."""
    return [
        AttentionLayer(index + i, f"{diffusers_block}.{name}.processor", f"{ldm_block}.{name}", patch_key,
                       hidden, cross_dim if name == "attn2" else None)
        for i, name in enumerate(("attn1", "attn2"))
    ]


def unet_attention_layers(config: UNetAttentionConfig = SDXL) -> list[AttentionLayer]:
    """All attention processors of an SDXL-shaped UNet in diffusers' `attn_processors` order."""
    layers: list[AttentionLayer] = []
    per_block = config.layers_per_block
    for i, (hidden, depth) in enumerate(zip(config.block_out_channels, config.transformer_layers_per_block)):
        for a in range(per_block if depth else 0):
            ldm_number = 1 + i * (per_block + 1) + a
            for t in range(depth):
                layers += _layer_pair(len(layers), f"down_blocks.{i}.attentions.{a}.transformer_blocks.{t}",
                                      f"input_blocks.{ldm_number}.1.transformer_blocks.{t}",
                                      ("input", ldm_number, t), hidden, config.cross_attention_dim)
    up = list(zip(reversed(config.block_out_channels), reversed(config.transformer_layers_per_block)))
    for j, (hidden, depth) in enumerate(up):
        for a in range(per_block + 1 if depth else 0):
            ldm_number = j * (per_block + 1) + a
            for t in range(depth):
                layers += _layer_pair(len(layers), f"up_blocks.{j}.attentions.{a}.transformer_blocks.{t}",
                                      f"output_blocks.{ldm_number}.1.transformer_blocks.{t}",
                                      ("output", ldm_number, t), hidden, config.cross_attention_dim)
    for t in range(config.mid_transformer_depth):
        layers += _layer_pair(len(layers), f"mid_block.attentions.0.transformer_blocks.{t}",
                              f"middle_block.1.transformer_blocks.{t}", ("middle", 0, t),
                              config.block_out_channels[-1], config.cross_attention_dim)
    return layers


_LDM_ATTENTION = re.compile(
    r"^(?:.*\.)?(input_blocks|output_blocks|middle_block)(?:\.(\d+))?\.1\.transformer_blocks\.(\d+)\.(attn[12])"
    r"\.to_q\.weight$"
)
_SECTION_ORDER = {"input_blocks": 0, "output_blocks": 1, "middle_block": 2}  # diffusers puts mid last


def unet_attention_layers_from_state_dict(shapes: Mapping[str, Sequence[int]],
                                          layers_per_block: int = 2) -> list[AttentionLayer]:
    """The attention layers of an ldm/ComfyUI UNet, read from its state-dict *shapes*.

    This is how weights are checked against the model they will patch (not a hard-coded table): hidden
    sizes come from each `to_q`, context widths from each `attn2.to_k`. Keys may carry any prefix
    (`diffusion_model.`, `model.diffusion_model.`). `layers_per_block` is ldm's `num_res_blocks`; it
    only matters for the diffusers names.
    """
    found = []
    for key, shape in shapes.items():
        m = _LDM_ATTENTION.match(key)
        if m:
            section, number, t, attn = m.group(1), int(m.group(2) or 0), int(m.group(3)), m.group(4)
            prefix = key[: -len(".to_q.weight")]
            found.append(((_SECTION_ORDER[section], number, t, attn), section, number, t, attn, prefix, shape))
    found.sort(key=lambda item: item[0])
    per_block = layers_per_block + 1
    layers = []
    for _, section, number, t, attn, prefix, shape in found:
        if section == "input_blocks":
            diffusers = f"down_blocks.{(number - 1) // per_block}.attentions.{(number - 1) % per_block}"
            patch_key = ("input", number, t)
        elif section == "output_blocks":
            diffusers = f"up_blocks.{number // per_block}.attentions.{number % per_block}"
            patch_key = ("output", number, t)
        else:
            diffusers = "mid_block.attentions.0"
            patch_key = ("middle", 0, t)
        cross_dim = None
        if attn == "attn2":
            k_shape = shapes.get(prefix + ".to_k.weight")
            cross_dim = int(k_shape[1]) if k_shape is not None else None
        ldm_prefix = prefix[prefix.index(section):]
        layers.append(AttentionLayer(len(layers), f"{diffusers}.transformer_blocks.{t}.{attn}.processor",
                                     ldm_prefix, patch_key, int(shape[0]), cross_dim))
    return layers


def cross_attention_layers(layers: Sequence[AttentionLayer]) -> list[AttentionLayer]:
    """The `attn2` layers only: those that get the image branch (70 in SDXL)."""
    return [layer for layer in layers if layer.is_cross_attention]
