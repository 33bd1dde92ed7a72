"""StoryMaker's LoRA and image-branch weights, re-keyed for the engines that apply them.

The release keys LoRA by processor index (`"9.to_k_lora.down.weight"`). ComfyUI's LoRA engine wants
either diffusers processor names (`"down_blocks.2....attn2.processor.to_k_lora.down.weight"`) or ldm
weight keys (`"input_blocks.7.1.transformer_blocks.0.attn2.to_k.weight"`). The LoRA has no alpha, so
`W' = W + lora_scale * up @ down` is exact and costs nothing per step once merged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor

from .layout import AttentionLayer
from .weights import LORA_NAMES

LDM_PROJECTION = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}


@dataclass(frozen=True)
class LoRAPair:
    up: Tensor  # [out, rank]
    down: Tensor  # [rank, in]

    def delta(self) -> Tensor:
        """`up @ down` in float32: the weight change at lora_scale 1."""
        return self.up.float() @ self.down.float()


def _pairs(ip_adapter: Mapping[str, Tensor], layers: Sequence[AttentionLayer]):
    for layer in layers:
        for name in LORA_NAMES:
            yield layer, name, LoRAPair(ip_adapter[f"{layer.index}.{name}_lora.up.weight"],
                                        ip_adapter[f"{layer.index}.{name}_lora.down.weight"])


def processor_keyed_lora(ip_adapter: Mapping[str, Tensor], layers: Sequence[AttentionLayer]) -> dict:
    """`{"<processor name>.to_q_lora.up.weight": t, ...}`: diffusers' processor-LoRA naming."""
    out = {}
    for layer, name, pair in _pairs(ip_adapter, layers):
        out[f"{layer.processor}.{name}_lora.up.weight"] = pair.up
        out[f"{layer.processor}.{name}_lora.down.weight"] = pair.down
    return out


def ldm_keyed_lora(ip_adapter: Mapping[str, Tensor], layers: Sequence[AttentionLayer]) -> dict:
    """`{"input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight": LoRAPair, ...}` (prefix-free ldm keys)."""
    return {f"{layer.ldm_prefix}.{LDM_PROJECTION[name]}.weight": pair for layer, name, pair in _pairs(ip_adapter, layers)}


def image_kv_weights(ip_adapter: Mapping[str, Tensor], layers: Sequence[AttentionLayer]) -> dict:
    """`{patch_key: (to_k_ip [h, ctx], to_v_ip [h, ctx])}` for every cross-attention layer."""
    return {layer.patch_key: (ip_adapter[f"{layer.index}.to_k_ip.weight"], ip_adapter[f"{layer.index}.to_v_ip.weight"])
            for layer in layers if layer.is_cross_attention}


def merge_lora(weight: Tensor, pair: LoRAPair, scale: float) -> Tensor:
    """`W + scale * up @ down`, computed in float32 and returned in W's dtype."""
    return (weight.float() + scale * pair.delta().to(weight.device)).to(weight.dtype)


def merge_lora_into_state_dict(state_dict: Mapping[str, Tensor], ip_adapter: Mapping[str, Tensor],
                               layers: Sequence[AttentionLayer], scale: float, prefix: str = "") -> dict:
    """A copy of an ldm UNet state dict with StoryMaker's LoRA merged (reference path for tests/export)."""
    merged = dict(state_dict)
    with torch.no_grad():
        for key, pair in ldm_keyed_lora(ip_adapter, layers).items():
            merged[prefix + key] = merge_lora(state_dict[prefix + key], pair, scale)
    return merged
