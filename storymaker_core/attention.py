"""StoryMaker's decoupled cross-attention, on already-projected tensors.

    out = Attention(Q, K_text, V_text) + ip_scale * Attention(Q, K_img, V_img)      (then the layer's to_out)

Text and image tokens each get their own softmax and share the (LoRA'd) query. This single function
serves the ComfyUI patch (which passes ComfyUI's `optimized_attention` as `attention`) and the trainer
(which also asks for the image-branch attention maps for the attention loss).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# (q [B, Lq, heads*dh], k [B, Lk, heads*dh], v [B, Lk, heads*dh], heads, additive mask or None) -> [B, Lq, heads*dh]
AttentionFn = Callable[..., Tensor]


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, heads: int, mask: Optional[Tensor] = None) -> Tensor:
    """Multi-head attention with ComfyUI's `optimized_attention` calling convention, on torch SDPA."""
    b, lq, inner = q.shape
    q, k, v = (t.unflatten(-1, (heads, inner // heads)).transpose(1, 2) for t in (q, k, v))
    if mask is not None and mask.dim() == 3:  # [B, Lq, Lk] -> [B, 1, Lq, Lk]
        mask = mask.unsqueeze(1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, lq, inner)


def image_attention_probs(q: Tensor, ip_k: Tensor, heads: int, ip_mask: Optional[Tensor] = None) -> Tensor:
    """Head-averaged softmax of the image branch, in float32: `[B, L_img, Lq]` (sums to 1 over L_img).

    This is the map the attention loss compares with the character masks.
    """
    b, lq, inner = q.shape
    dh = inner // heads
    qh = q.unflatten(-1, (heads, dh)).transpose(1, 2).float()  # [B, h, Lq, dh]
    kh = ip_k.unflatten(-1, (heads, dh)).transpose(1, 2).float()  # [B, h, Li, dh]
    scores = qh @ kh.transpose(-2, -1) * dh ** -0.5  # [B, h, Lq, Li]
    if ip_mask is not None:
        scores = scores + (ip_mask.unsqueeze(1) if ip_mask.dim() == 3 else ip_mask).float()
    return scores.softmax(dim=-1).mean(dim=1).transpose(1, 2)


def decoupled_attention(q: Tensor, k: Tensor, v: Tensor, ip_k: Tensor, ip_v: Tensor, heads: int,
                        ip_scale: float, ip_mask: Optional[Tensor] = None,
                        attention: AttentionFn = sdpa_attention, text_attention: Optional[Tensor] = None,
                        return_image_probs: bool = False):
    """StoryMaker cross-attention on projected tensors `(B, L, heads*dim_head)` -> `(B, Lq, heads*dim_head)`.

    q, k, v: the layer's (LoRA'd) `to_q(x)`, `to_k(text)`, `to_v(text)`.
    ip_k, ip_v: `to_k_ip(image_tokens)`, `to_v_ip(image_tokens)`, `[B, (N+1)*20, heads*dh]`.
    ip_mask: optional additive float mask `[B or 1, Lq, L_img]` (see `region_attention_bias`).
    text_attention: the text branch already computed (e.g. by a patch this one chains onto).
    return_image_probs: also return the image-branch map `[B, L_img, Lq]` (for the attention loss).
    """
    text = attention(q, k, v, heads, None) if text_attention is None else text_attention
    if not return_image_probs:
        if ip_scale == 0:
            return text
        return torch.add(text, attention(q, ip_k, ip_v, heads, ip_mask), alpha=ip_scale)  # one kernel, not two
    probs = image_attention_probs(q, ip_k, heads, ip_mask)  # [B, Li, Lq], float32, head-averaged
    image = attention(q, ip_k, ip_v, heads, ip_mask)
    return torch.add(text, image, alpha=ip_scale), probs


REGION_THRESHOLD = 0.5  # a query pixel is inside a character's region where its resized mask is at least this


def vanished_regions(region_masks: Sequence[Optional[Tensor]], latent_hw: tuple) -> list:
    """1-based slots whose mask keeps no pixel at the layer resolution `h x w` (a mask thinner than one
    attention pixel there, or faint): that character's tokens would reach no query in those layers."""
    h, w = latent_hw
    return [slot for slot, mask in enumerate(region_masks, start=1) if mask is not None and not bool(
        (F.interpolate(mask.float()[None, None], size=(h, w), mode="area") >= REGION_THRESHOLD).any())]


def region_attention_bias(region_masks: Sequence[Optional[Tensor]], latent_hw: tuple, tokens_per_group: int,
                          device=None, dtype=torch.float32) -> Optional[Tensor]:
    """Additive mask `[1, h*w, (N+1)*T]` that keeps character j's tokens inside its region only.

    region_masks: one entry per character (slot order), each a `[H, W]` mask in 0..1 in image space, or
    None for "everywhere". Masks are resized to the layer's `h x w` (area average) and a query pixel is
    inside when the resized value is >= 0.5. Background tokens stay visible to every query, so no query
    ever loses all its keys. Returns None when no character has a mask (the exact reference path).
    """
    if all(m is None for m in region_masks):
        return None
    h, w = latent_hw
    groups = [torch.zeros(h * w, tokens_per_group, device=device, dtype=dtype)]  # background: visible
    for mask in region_masks:
        if mask is None:
            groups.append(torch.zeros(h * w, tokens_per_group, device=device, dtype=dtype))
            continue
        resized = F.interpolate(mask.to(device=device, dtype=torch.float32)[None, None], size=(h, w), mode="area")
        inside = resized.flatten() >= REGION_THRESHOLD  # [h*w]
        bias = torch.zeros(h * w, device=device, dtype=dtype).masked_fill(~inside, float("-inf"))
        groups.append(bias[:, None].expand(h * w, tokens_per_group))
    return torch.cat(groups, dim=1)[None]


def batch_for_chunks(per_kind: dict, cond_or_uncond: Sequence[int], batch: int) -> Tensor:
    """Stack per-chunk rows for a CFG batch laid out as ComfyUI's `cond_or_uncond` says.

    per_kind: {0: cond tensor `[1, ...]`, 1: uncond tensor `[1, ...]`}. The batch holds
    `len(cond_or_uncond)` equal chunks in that order (e.g. `[1, 0]`, `[0]`, `[1, 0, 0]`); never assume two.
    """
    chunks = len(cond_or_uncond)
    if chunks == 0 or batch % chunks:
        raise ValueError(f"batch of {batch} cannot be split into chunks {list(cond_or_uncond)}")
    per_chunk = batch // chunks
    return torch.cat([per_kind[kind].expand(per_chunk, *per_kind[kind].shape[1:]) for kind in cond_or_uncond])
