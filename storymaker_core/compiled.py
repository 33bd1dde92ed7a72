"""The image branch inside a `torch.compile`d UNet (ComfyUI's TorchCompileModel node).

Dynamo freezes every Python decision into the graph it traces and re-checks only its guards; ComfyUI's
node drops every guard on `transformer_options`, the only way a host reaches an attention patch. Worse, where
ComfyUI's own attention breaks the graph (on the CPU, every attention call), each transformer block is
compiled as a frame of its own and one graph serves every block of the same shape: the block's key, and so
which patch object and which layer, is whatever the first traced block had.

So under compilation the patch reads nothing through `transformer_options`, not even its own key: before
each compiled call, the host builds a *plan* (tensors and a few constants, see `build_plan`) outside the
compiled region and publishes it in this module's `_PLAN` slot, which dynamo does guard. The layer is
found by a call counter (a 0-dim tensor each patch call reads and increments in the graph: the UNet calls its
attn2 layers in a fixed order), so every block graph reads the right layer's image K/V, and the host checks
that every layer ran exactly once (`CallCheck`: read back once per new call shape and once per sampling, not
per call). The counter is one tensor per device for the whole process, marked as a static input: its in-graph
increments are then the only input mutation, and one that CUDA graphs (`mode="reduce-overhead"`) record. Everything call-dependent is a graph input read on every
call (image K/V, the role of each batch row, the scale as a 0-dim tensor: ip_scale and start/end never
recompile); a plan of another shape (character count, masks, batch) fails a guard and recompiles.
See docs/compile.md.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

_PLAN: dict = {}  # the plan of the compiled model call in progress; empty outside one
_COUNTERS: dict = {}  # device -> the layer-call counter every plan on that device shares

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


def math_attention(q: Tensor, k: Tensor, v: Tensor, heads: int, mask: Optional[Tensor] = None) -> Tensor:
    """softmax(q k^T / sqrt(d) + mask) v per head, written out: the image branch of a compiled call. It adds no
    graph break and rounds like the single-chunk attention ComfyUI runs on the CPU (a fused SDPA kernel
    differs by ~1e-7 per call, which CFG-style guiders amplify over a few steps)."""
    b, lq, inner = q.shape
    qh, kh, vh = (t.unflatten(-1, (heads, inner // heads)).transpose(1, 2) for t in (q, k, v))
    scores = qh @ kh.transpose(-2, -1) * (inner // heads) ** -0.5
    if mask is not None:
        scores = scores + (mask.unsqueeze(1) if mask.dim() == 3 else mask)
    return (scores.softmax(dim=-1) @ vh).transpose(1, 2).reshape(b, lq, inner)


def layer_order(keys) -> list:
    """attn2 keys in the order an SDXL UNet calls them: input blocks, middle, output blocks, then depth."""
    rank = {"input": 0, "middle": 1, "output": 2}
    return sorted(keys, key=lambda key: (rank[key[0]], key[1], key[2]))


def chain_of(previous: Sequence) -> tuple:
    """How the layers chain another pack's replace: ("none", None), ("uniform", the one callable every layer
    chains: called through the plan, so it is guarded) or ("per_layer", None): a callable per layer, which a
    graph shared by several blocks cannot tell apart (the host should warn)."""
    if all(p is None for p in previous):
        return "none", None
    if all(p is previous[0] for p in previous):
        return "uniform", previous[0]
    return "per_layer", None


def build_plan(shared, keys: Sequence[tuple], layout: Optional[Sequence[int]], batch: int, sigmas,
               latent_hw: Sequence[int], device, dtype, previous: Sequence = ()) -> dict:
    """Everything one compiled UNet call needs from StoryMaker, computed eagerly (outside the graph).

    Args:
        shared: the Apply's `StoryMakerAttention` (caches, settings, the host's cond-list roles).
        keys: the patched attn2 keys in call order (`layer_order`).
        layout: the call's `cond_or_uncond` (chunk i of the batch comes from cond list layout[i]).
        batch: rows of the call's batch `B` (a multiple of len(layout)).
        sigmas: the call's sigmas `[B]` (None: always active).
        latent_hw: the latent's `(h, w)`; region biases are made for every resolution below it.
        device, dtype: where and in which dtype the UNet computes.
        previous: each layer's chained replace (another pack's) or None, in the order of `keys`.
    Returns: {"k", "v": `[layers, 2, L, max hidden]` (row 0 the characters, 1 the negative tokens, zero-padded),
        "counter": 0-dim long set to 0, "rows": `[B]` long (the row each batch row uses), "scale": 0-dim
        float32, "masked": bool, ("bias", h*w): `[1, h*w, L]` per resolution when masked, "layers": int,
        "chain", "previous": see `chain_of`}.
    """
    layout = list(layout or [0])
    if batch % len(layout):
        raise ValueError(f"batch of {batch} cannot be split into chunks {layout}")
    roles = shared.chunk_roles({"cond_or_uncond": layout})
    k_all, v_all = shared.layer_stack(tuple(keys), device, dtype)
    plan = {"k": k_all, "v": v_all, "counter": layer_counter(device), "layers": len(keys),
            "rows": shared.row_roles(roles, batch // len(layout), device),
            "scale": shared.scale_tensor(shared.is_active({"sigmas": sigmas}), device),
            "masked": bool(shared.settings.region_masks)}
    plan["chain"], plan["previous"] = chain_of(list(previous) or [None])
    if plan["masked"]:
        for h, w in resolutions(latent_hw):
            plan[("bias", h * w)] = shared.bias_for(h, w, device, dtype)
    return plan


def layer_counter(device) -> Tensor:
    """The 0-dim long tensor compiled layer calls count themselves in: one per device for the process (one
    compiled call runs at a time, see `published`), marked as a static input. Inductor's CUDA-graph trees
    (`mode="reduce-overhead"`) replay a graph that mutates a static input, but run a graph that mutates any
    other input without CUDA graphs; and a tensor of its own per Apply would be a new static address (a
    recompile) per scene."""
    import torch._dynamo

    key = str(torch.device(device))
    if key not in _COUNTERS:
        counter = torch.zeros((), dtype=torch.long, device=device)
        torch._dynamo.mark_static_address(counter)
        _COUNTERS[key] = counter
    return _COUNTERS[key]


def call_shape(plan: dict, *tensors) -> tuple:
    """What decides which compiled graphs a call runs: the shapes, dtypes and devices of the UNet's inputs and
    of the plan, and the plan's constants. Graphs reused by mistake show on the first call of each shape."""
    described = [(tuple(t.shape), t.dtype, str(t.device)) for t in tensors if isinstance(t, Tensor)]
    return (tuple(described), tuple(plan["k"].shape), tuple(plan["rows"].shape), plan["masked"], plan["chain"],
            str(plan["k"].dtype))


class CallCheck:
    """Checks that every compiled call ran all StoryMaker layers, with few host reads: the first call of each
    call shape in a sampling is read back at once (graphs traced without StoryMaker could run it, and the
    host can still recompile and call again); the others add their miss to a device tensor, read once when
    the sampling ends. Outside a sampling every call is read at once."""

    def __init__(self):
        self.sampling, self.seen, self.missed = False, set(), None

    def start_sampling(self) -> tuple:
        previous = (self.sampling, self.seen, self.missed)
        self.sampling, self.seen, self.missed = True, set(), None
        return previous

    def end_sampling(self, previous: tuple) -> int:
        """Layers missed by the sampling's unread calls (one host read), and the state before it."""
        missed = 0 if self.missed is None else int(self.missed)
        self.sampling, self.seen, self.missed = previous
        return missed

    def needs_read(self, shape: tuple) -> bool:
        return not self.sampling or shape not in self.seen

    def read(self, plan: dict, shape: tuple) -> int:
        """Layer calls of the call just made (one host read); a complete call marks its shape as seen."""
        calls = layer_calls(plan)
        if calls == plan["layers"]:
            self.seen.add(shape)
        return calls

    def add_unread(self, plan: dict) -> None:
        """Count the call just made, if incomplete, on the device (no host read)."""
        miss = (plan["counter"] - plan["layers"]).abs()
        self.missed = miss if self.missed is None else self.missed + miss


def forget_compiled_code(module: torch.nn.Module) -> int:
    """Drop dynamo's compiled code for the frames of `module`'s own classes (their source files, and the resume
    functions dynamo made from them), not the whole process's as `torch._dynamo.reset()` would: other compiled
    models keep theirs (models built from the same classes, which share the code objects, recompile once).
    Returns how many code objects lost their compiled code."""
    from torch._dynamo import convert_frame

    torch_dir = os.path.dirname(torch.__file__)
    files = set()
    for m in module.modules():
        try:
            source = inspect.getsourcefile(type(m))
        except TypeError:  # a class defined in C
            continue
        if source and not source.startswith(torch_dir):
            files.add(source)
    with convert_frame.compile_lock:
        codes = {code for code in (ref() for ref in convert_frame.input_codes.seen)
                 if code is not None and code.co_filename in files}
        for code in codes:
            torch._dynamo.reset_code(code)
    return len(codes)


def count_eager_call() -> None:
    """A layer of a compiled call that dynamo left to Python (a frame it skipped) is right as it is, but it
    takes its place in the call order: count it, or the next compiled layer would read this layer's K/V."""
    if _PLAN:
        _PLAN["counter"].add_(1)


def layer_calls(plan: dict) -> int:
    """How many layers ran StoryMaker in the call `plan` was published for (one host read)."""
    return int(plan["counter"])


@contextlib.contextmanager
def published(plan: dict):
    """Publish `plan` for the compiled call made inside this block (one at a time); after the call,
    `plan["counter"]` holds how many layer calls the compiled UNet made."""
    if _PLAN:
        raise RuntimeError("StoryMaker: a compiled UNet call started inside another one; two Apply StoryMaker on "
                           "one compiled model are not supported: encode all characters together and apply once.")
    plan["counter"].zero_()
    _PLAN.update(plan)
    try:
        yield
    finally:
        _PLAN.clear()


def compiled_layer_forward(q: Tensor, k: Tensor, v: Tensor, extra_options: dict, attention: Callable,
                           previous: Optional[Callable], image_attention: Optional[Callable] = None) -> Tensor:
    """The layer patch as traced by dynamo: only the published plan decides, never `extra_options`' objects
    (`previous`, the patch's own chained replace, only where the layers chain different ones).

    q `[B, Lq, hidden]`, k/v `[B, Lk, hidden]` -> `[B, Lq, hidden]`; inactive steps have scale 0.
    attention: the host's kernel for the text branch; image_attention (default: `math_attention`) for the
    image branch, which should not break the graph (a host kernel that does would add one per layer).
    """
    plan = _PLAN
    if not plan:
        raise RuntimeError(NO_PLAN)
    heads = extra_options["n_heads"]
    chain = plan["chain"]
    previous = None if chain == "none" else plan["previous"] if chain == "uniform" else previous
    text = attention(q, k, v, heads, None) if previous is None else previous(q, k, v, extra_options)
    counter, hidden = plan["counter"], q.shape[-1]
    # [2, L, hidden]: this layer's (index_select: a tensor index, never a Python int read back from it)
    ip_k, ip_v = (plan[name].index_select(0, counter.reshape(1))[0, ..., :hidden] for name in ("k", "v"))
    counter.add_(1)
    rows = plan["rows"]
    mask = plan[("bias", q.shape[1])] if plan["masked"] else None
    image = (image_attention or math_attention)(q, ip_k[rows], ip_v[rows], heads, mask)
    return text + image * plan["scale"]
