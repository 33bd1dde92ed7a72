"""The image branch inside a `torch.compile`d UNet (ComfyUI's TorchCompileModel node).

Dynamo freezes every Python decision into the graph it traces and re-checks only its guards; ComfyUI's
node drops every guard on `transformer_options`, the only way a host reaches an attention patch. The eager
patch decides from there (which characters, the scale, start/end, the chunk roles of the call, region
masks, cache hits), so a compiled graph would keep the first call's answers, or a graph traced without
the patch would run for a patched model: a wrong image without an error.

So under compilation the patch reads nothing per call through `transformer_options`: before each compiled
call, the host builds a *plan* (tensors and a few constants, see `build_plan`) outside the compiled region
and publishes it in this module's `_PLAN` slot. Dynamo guards globals: a plan of another shape (character
count, masks, batch, a chained patch) recompiles, and everything else is a graph input read on every call
(image K/V, the role of each batch row, the scale as a 0-dim tensor, so ip_scale and start/end never
recompile). See docs/compile.md.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor

_PLAN: dict = {}  # the plan of the compiled model call in progress; empty outside one

NO_PLAN = ("StoryMaker's attention patch is being compiled, but no StoryMaker plan was published for this call: "
           "the UNet was compiled by something other than ComfyUI's torch.compile wrapper (TorchCompileModel), "
           "so StoryMaker cannot keep the compiled graph in step with its settings. Compile with TorchCompileModel, "
           "or do not compile this model.")


def resolutions(latent_hw: Sequence[int], levels: int = 4) -> list:
    """The attention resolutions of an SDXL-like UNet: the latent's, then halved (rounding up) per level,
    as its stride-2 convolutions do."""
    h, w = int(latent_hw[0]), int(latent_hw[1])
    out = []
    for _ in range(levels):
        out.append((h, w))
        h, w = (h + 1) // 2, (w + 1) // 2
    return out


def build_plan(shared, patches: Mapping[tuple, object], layout: Optional[Sequence[int]], batch: int, sigmas,
               latent_hw: Sequence[int], device, dtype) -> dict:
    """Everything one compiled UNet call needs from StoryMaker, computed eagerly (outside the graph).

    Args:
        shared: the Apply's `StoryMakerAttention` (caches, settings, the host's cond-list roles).
        patches: {attn2 key: its LayerPatch}; each patch's `previous` (a chained replace) goes in the plan.
        layout: the call's `cond_or_uncond` (chunk i of the batch comes from cond list layout[i]).
        batch: rows of the call's batch `B` (a multiple of len(layout)).
        sigmas: the call's sigmas `[B]` (None: always active).
        latent_hw: the latent's `(h, w)`; region biases are made for every resolution below it.
        device, dtype: where and in which dtype the UNet computes.
    Returns: {("kv", key): (ip_k, ip_v) `[2, L, hidden]` (row 0 the characters, 1 the negative tokens),
        "rows": `[B]` long (the row of ip_k each batch row uses), "scale": 0-dim float32,
        "masked": bool, ("bias", h, w): `[1, h*w, L]` when masked, ("previous", key): callable or None}.
    """
    layout = list(layout or [0])
    if batch % len(layout):
        raise ValueError(f"batch of {batch} cannot be split into chunks {layout}")
    roles = shared.chunk_roles({"cond_or_uncond": layout})
    plan = {"rows": shared.row_roles(roles, batch // len(layout), device),
            "scale": shared.scale_tensor(shared.is_active({"sigmas": sigmas}), device),
            "masked": bool(shared.settings.region_masks)}
    for key, patch in patches.items():
        plan[("kv", key)] = shared.stacked_kv(key, device, dtype)
        plan[("previous", key)] = patch.previous
    if plan["masked"]:
        for h, w in resolutions(latent_hw):
            plan[("bias", h, w)] = shared.bias_for(h, w, device, dtype)
    return plan


@contextlib.contextmanager
def published(plan: dict):
    """Publish `plan` for the compiled call made inside this block (one at a time)."""
    if _PLAN:
        raise RuntimeError("StoryMaker: a compiled UNet call started inside another one; two Apply StoryMaker on "
                           "one compiled model are not supported: encode all characters together and apply once.")
    _PLAN.update(plan)
    try:
        yield
    finally:
        _PLAN.clear()


def compiled_layer_forward(key: tuple, q: Tensor, k: Tensor, v: Tensor, extra_options: dict,
                           attention: Callable) -> Tensor:
    """The layer patch as traced by dynamo: only the published plan decides, never `extra_options`' objects.

    q `[B, Lq, hidden]`, k/v `[B, Lk, hidden]` -> `[B, Lq, hidden]`; inactive steps have scale 0.
    """
    plan = _PLAN
    import os
    if os.environ.get("SMDBG"): print("SMDBG traced", key, len(plan))
    if not plan:
        raise RuntimeError(NO_PLAN)
    heads = extra_options["n_heads"]
    previous = plan[("previous", key)]
    text = attention(q, k, v, heads, None) if previous is None else previous(q, k, v, extra_options)
    ip_k, ip_v = plan[("kv", key)]
    rows = plan["rows"]
    mask = None
    if plan["masked"]:
        h, w = extra_options["activations_shape"][-2:]
        mask = plan[("bias", h, w)]
    image = attention(q, ip_k[rows], ip_v[rows], heads, mask)
    return text + image * plan["scale"]
