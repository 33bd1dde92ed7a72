"""StoryMaker's trainable attention processors for a diffusers UNet (LoRA everywhere, image branch on attn2).

Why a processor and not a wrapper around the UNet: the released weights are the state dict of
`torch.nn.ModuleList(unet.attn_processors.values())`, so the parameter names of these modules *are* the
file format (`{i}.to_q_lora.down.weight`, ..., `{i}.to_k_ip.weight`). Exporting is `state_dict()`, and
`mask.bin` or IP-Adapter-FaceID-PlusV2's `ip_adapter` dict loads back with `load_state_dict`.

The attention math is `storymaker_core.attention.decoupled_attention`, the function the ComfyUI nodes
call; the image-branch probabilities are only computed on the layers the attention loss reads, and only
while the loss is on (`AttentionContext.record`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from storymaker_core.attention import decoupled_attention, sdpa_attention
from storymaker_core.layout import AttentionLayer


class LoRALinear(nn.Module):
    """`up(down(x))`, no bias, no alpha (the release's `LoRALinearLayer`): down ~ N(0, 1/rank^2), up = 0."""

    def __init__(self, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)
        nn.init.normal_(self.down.weight, std=1.0 / rank)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: Tensor) -> Tensor:
        if _autocast_enabled(x.device.type):  # autocast picks the dtype; no fp32 copy of activations
            return self.up(self.down(x))
        return self.up(self.down(x.to(self.down.weight.dtype))).to(x.dtype)


def _autocast_enabled(device_type: str) -> bool:
    """`torch.is_autocast_enabled(device_type)`; torch < 2.4 takes no argument and has a CPU twin."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


@dataclass
class AttentionContext:
    """State shared by all processors for one UNet call (set by the training model before the call)."""

    num_image_tokens: int = 0  # trailing image tokens in encoder_hidden_states: (N+1)*20
    record: bool = False  # store image-branch probs on loss layers (only when the loss needs them)
    lora_scale: float = 1.0
    ip_scale: float = 1.0
    probs: dict = field(default_factory=dict)  # processor name -> [B, L_img, Lq] float32


class StoryMakerAttnProcessor(nn.Module):
    """attn1: LoRA on q/k/v/out. attn2: the same + `to_k_ip`/`to_v_ip` and the decoupled image branch.

    Text and image tokens are split by the context's explicit image-token count (never at 77), so
    long or chunked prompts keep working.
    """

    def __init__(self, layer: AttentionLayer, context: AttentionContext, rank: int = 128,
                 records_probs: bool = False):
        super().__init__()
        h, ctx = layer.hidden_size, layer.cross_attention_dim
        self.name, self.is_cross = layer.processor, ctx is not None
        self.records_probs = records_probs and self.is_cross
        self._context = [context]  # in a list: not a submodule, not in the state dict
        kv_in = ctx if self.is_cross else h
        self.to_q_lora = LoRALinear(h, h, rank)
        self.to_k_lora = LoRALinear(kv_in, h, rank)
        self.to_v_lora = LoRALinear(kv_in, h, rank)
        self.to_out_lora = LoRALinear(h, h, rank)
        if self.is_cross:
            self.to_k_ip = nn.Linear(ctx, h, bias=False)
            self.to_v_ip = nn.Linear(ctx, h, bias=False)

    @property
    def context(self) -> AttentionContext:
        return self._context[0]

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Optional[Tensor] = None,
                 attention_mask: Optional[Tensor] = None, temb: Optional[Tensor] = None, *args, **kwargs) -> Tensor:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)

    def forward(self, attn, hidden_states: Tensor, encoder_hidden_states: Optional[Tensor] = None,
                attention_mask: Optional[Tensor] = None, temb: Optional[Tensor] = None) -> Tensor:
        c = self.context
        s = c.lora_scale
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:  # [B, C, H, W] -> [B, H*W, C]
            b, ch, height, width = hidden_states.shape
            hidden_states = hidden_states.view(b, ch, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        image_tokens = None
        if encoder_hidden_states is None:
            text = hidden_states
        else:
            text = encoder_hidden_states
            if self.is_cross and c.num_image_tokens:
                if c.num_image_tokens >= encoder_hidden_states.shape[1]:
                    raise ValueError(f"{self.name}: context has {encoder_hidden_states.shape[1]} tokens, fewer than "
                                     f"the {c.num_image_tokens} image tokens announced")
                text = encoder_hidden_states[:, :-c.num_image_tokens]  # [B, L_text, D]
                image_tokens = encoder_hidden_states[:, -c.num_image_tokens:]  # [B, (N+1)*20, D]
            if attn.norm_cross:
                text = attn.norm_encoder_hidden_states(text)
        batch, lk = text.shape[0], text.shape[1]

        q = attn.to_q(hidden_states) + s * self.to_q_lora(hidden_states)  # [B, Lq, heads*dh]
        k = attn.to_k(text) + s * self.to_k_lora(text)  # [B, Lk, heads*dh]
        v = attn.to_v(text) + s * self.to_v_lora(text)
        heads = attn.heads

        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, lk, batch).view(batch, heads, -1, lk)
        if image_tokens is None:
            out = sdpa_attention(q, k, v, heads, mask)
        else:
            text_out = sdpa_attention(q, k, v, heads, mask) if mask is not None else None
            ip_k, ip_v = self.to_k_ip(image_tokens), self.to_v_ip(image_tokens)  # [B, L_img, heads*dh]
            record = c.record and self.records_probs
            out = decoupled_attention(q, k, v, ip_k, ip_v, heads, c.ip_scale, text_attention=text_out,
                                      return_image_probs=record)
            if record:
                out, c.probs[self.name] = out
        out = out.to(q.dtype)
        out = attn.to_out[0](out) + s * self.to_out_lora(out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, ch, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install_processors(unet, layers: Sequence[AttentionLayer], context: AttentionContext, rank: int,
                       loss_layers: Sequence[str] = ()) -> nn.ModuleList:
    """Put a StoryMaker processor on every attention layer; returns them in `attn_processors` order.

    The UNet's processor names and order are checked against `layers` (from `storymaker_core.layout`),
    so the index keys of an exported file mean the same layers as in the release.
    """
    names = list(unet.attn_processors)
    expected = [layer.processor for layer in layers]
    if names != expected:
        diff = next((i for i, (a, b) in enumerate(zip(names, expected)) if a != b), min(len(names), len(expected)))
        raise ValueError(f"the UNet's attention processors do not follow StoryMaker's SDXL layout: {len(names)} "
                         f"processors vs {len(expected)} expected; first difference at index {diff} "
                         f"({names[diff] if diff < len(names) else '-'} vs "
                         f"{expected[diff] if diff < len(expected) else '-'})")
    unknown = set(loss_layers) - set(expected)
    if unknown:
        raise ValueError(f"attention-loss layers not in the UNet: {sorted(unknown)[:3]}")
    for module in unet.modules():  # SDXL has none of these; refuse rather than compute something else
        if getattr(module, "norm_q", None) is not None or getattr(module, "added_kv_proj_dim", None):
            raise ValueError("attention layers with q/k norms or added KV projections are not SDXL's; unsupported")
    device = next(unet.parameters()).device
    processors = {layer.processor: StoryMakerAttnProcessor(layer, context, rank, layer.processor in loss_layers)
                  for layer in layers}
    unet.set_attn_processor(dict(processors))  # diffusers pops entries from the dict it is given
    return nn.ModuleList(processors[name] for name in names).to(device=device, dtype=torch.float32)
