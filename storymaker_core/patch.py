"""The per-layer cross-attention patch a host (ComfyUI) installs on every SDXL `attn2`.

The host projects `q = to_q(x)`, `k = to_k(text)`, `v = to_v(text)` (with StoryMaker's LoRA already
merged into those weights) and hands them to `LayerPatch(q, k, v, extra_options)`; the result goes
through the layer's `to_out`. The patch adds the image branch:

    out = text_attention + ip_scale * Attention(q, to_k_ip(tokens), to_v_ip(tokens))

* Image K/V depend only on the weights and the tokens, so they are computed once per layer, device and
  dtype and then reused for every step and every later sampling.
* Each chunk of the CFG batch gets tokens by its conditioning's role: the positive prompt the characters',
  every other (negative, DualCFG's middle, PerpNeg's empty prompt) the release's negative tokens. The host
  says which of the cond lists batched in this call is the positive one (`cond_list_roles`); without it
  the chunk index decides.
* A replace already registered under the same key (another pack's) is chained: its output is the text
  branch we add to.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from .attention import (REGION_THRESHOLD, AttentionFn, batch_for_chunks, decoupled_attention, region_attention_bias,
                        sdpa_attention, vanished_regions)
from .compiled import compiled_layer_forward, count_eager_call
from .group_kv import GroupKVCache, group_digests

POSITIVE, NEGATIVE = 0, 1
logger = logging.getLogger(__name__)
_REPORTED_CHUNKS: set = set()  # chunk indices beyond 0/1 already logged


def image_token_roles(cond_or_uncond: Sequence[int]) -> tuple:
    """Roles by chunk index alone, when the host named none: index 0 the characters, every other the negative.

    ComfyUI numbers chunks by their place in the guider's cond list: CFG sends [0 positive, 1 negative] and
    PerpNeg [0 positive, 1 negative, 2 empty], but DualCFG [0 negative, 1 middle, 2 positive]: the index
    alone cannot tell, so indices beyond 0/1 are logged once.
    """
    extra = tuple(sorted({i for i in cond_or_uncond if i not in (POSITIVE, NEGATIVE)}))
    if extra and extra not in _REPORTED_CHUNKS:
        _REPORTED_CHUNKS.add(extra)
        logger.warning("StoryMaker: the sampler sends CFG chunks %s beyond positive/negative and did not say "
                       "which is the positive prompt; only chunk 0 gets the characters", list(extra))
    return tuple(POSITIVE if i == POSITIVE else NEGATIVE for i in cond_or_uncond)


def roles_of_cond_lists(cond_lists: Sequence, positive) -> Optional[tuple]:
    """The role of each cond list a host batches into one model call: the list that *is* the guider's
    positive one gets the characters, every other the negative tokens. None (decide by index) when the
    positive list is not among them or unknown: a guider without one, or lists rebuilt on the way."""
    if positive is None or not any(c is positive for c in cond_lists):
        return None
    return tuple(POSITIVE if c is positive else NEGATIVE for c in cond_lists)


def patch_key_name(key: tuple) -> str:
    """("input", 4, 0) -> "input_4_0": a valid module name."""
    return "_".join(str(part) for part in key)


class ImageProjections(nn.Module):
    """All `to_k_ip`/`to_v_ip` of a UNet in one module (SDXL: 0.33 B weights, 650 MiB in fp16).

    They stay where they were loaded (host memory): each layer's pair is used once per Apply, to make that
    layer's image K/V on the compute device, and only the K/V (a few MiB) are kept there. So the patched
    model costs almost no extra device memory, and a host never has to load or offload these weights.
    """

    def __init__(self, weights: dict):
        """weights: {patch_key: (to_k_ip [hidden, ctx], to_v_ip [hidden, ctx])}."""
        super().__init__()
        self.to_k_ip = nn.ParameterDict()
        self.to_v_ip = nn.ParameterDict()
        for key, (k_weight, v_weight) in weights.items():
            self.to_k_ip[patch_key_name(key)] = nn.Parameter(k_weight, requires_grad=False)
            self.to_v_ip[patch_key_name(key)] = nn.Parameter(v_weight, requires_grad=False)

    def project(self, key: tuple, tokens: Tensor, device=None) -> tuple:
        """tokens `[B, L, ctx]` -> (ip_k, ip_v) `[B, L, hidden]` in float32 on `device` (default: the tokens').

        The layer's two weights travel to `device` for this call only, in their stored dtype.
        """
        name = patch_key_name(key)
        device = tokens.device if device is None else device
        tokens = tokens.to(device=device, dtype=torch.float32)
        return tuple(tokens @ w.to(device).float().T for w in (self.to_k_ip[name], self.to_v_ip[name]))


def _warn_if_stretched(region_masks: Sequence[Optional[Tensor]], latent_hw: tuple) -> None:
    """Region masks are resized to the image: say so when that stretches them (a mask of another aspect)."""
    image_aspect = latent_hw[1] / latent_hw[0]
    for i, mask in enumerate(region_masks):
        if mask is not None and abs(mask.shape[-1] / mask.shape[-2] / image_aspect - 1) > 0.05:
            logger.warning("StoryMaker: region mask %d is %dx%d (width/height %.2f) but the image's width/height is "
                           "%.2f: the mask is stretched to fit; draw it at the image's size.", i + 1, mask.shape[-1],
                           mask.shape[-2], mask.shape[-1] / mask.shape[-2], image_aspect)


@dataclass
class ImageBranchSettings:
    ip_scale: float = 0.8
    sigma_start: float = float("inf")  # active while sigma_end <= sigma <= sigma_start
    sigma_end: float = 0.0
    region_masks: Optional[Sequence[Optional[Tensor]]] = None  # per character `[H, W]` in 0..1, or None
    tokens_per_group: int = 20


class StoryMakerAttention:
    """State shared by the 70 layer patches of one Apply: projections, tokens, K/V and mask caches."""

    def __init__(self, projections: ImageProjections, cond_tokens: Tensor, uncond_tokens: Tensor,
                 settings: ImageBranchSettings, group_cache: Optional[GroupKVCache] = None):
        """cond_tokens / uncond_tokens: `[N+1, 20, ctx]` image tokens (background first). group_cache: K/V
        per token group shared with other patches (a story's scenes), else each layer projects its tokens."""
        if cond_tokens.shape != uncond_tokens.shape:
            raise ValueError(f"cond tokens {tuple(cond_tokens.shape)} and uncond tokens "
                             f"{tuple(uncond_tokens.shape)} must have the same shape")
        masks = settings.region_masks
        if masks is not None and len(masks) != cond_tokens.shape[0] - 1:
            raise ValueError(f"{len(masks)} region masks for {cond_tokens.shape[0] - 1} characters")
        self.projections = projections
        self.tokens = {POSITIVE: cond_tokens.flatten(0, 1)[None], NEGATIVE: uncond_tokens.flatten(0, 1)[None]}
        self.group_cache = group_cache
        if group_cache is not None:
            self.groups = {kind: (tokens, group_digests(tokens, settings.tokens_per_group))
                           for kind, tokens in ((POSITIVE, cond_tokens), (NEGATIVE, uncond_tokens))}
        self.settings = settings
        self._kv: dict = {}  # (key, device, dtype) -> {kind: (ip_k [1, L, hidden], ip_v)}
        self._batched: dict = {}  # (key, device, dtype, layout, batch) -> (ip_k, ip_v) [B, L, hidden]
        self._bias: dict = {}  # (h, w, device, dtype) -> [1, h*w, L] or None
        self._stacked: dict = {}  # (keys, device, dtype) -> (ip_k, ip_v) [layers, 2, L, hidden]: compiled calls
        self._small: dict = {}  # row-role index and scale tensors of compiled calls
        self._step_sigmas, self._step_active = None, True
        self.cond_list_roles: Optional[tuple] = None  # role per cond list of the model call in progress (host)

    def is_active(self, extra_options: dict) -> bool:
        """Inside [start_at, end_at] of sampling? Decided once per step (all layers share one sigmas tensor).

        The full range (inf, 0) never looks at sigma: no host sync, so the step can be captured in a CUDA graph.
        """
        settings = self.settings
        if settings.ip_scale == 0:
            return False
        sigmas = extra_options.get("sigmas")
        if sigmas is None or (settings.sigma_start == float("inf") and settings.sigma_end <= 0):
            return True
        if sigmas is not self._step_sigmas:  # one host sync per step, not one per layer
            self._step_sigmas = sigmas
            self._step_active = settings.sigma_end <= float(sigmas.max()) <= settings.sigma_start
        return self._step_active

    def image_kv(self, key: tuple, device, dtype) -> dict:
        cache_key = (key, str(device), dtype)
        if cache_key not in self._kv:
            with torch.no_grad():
                if self.group_cache is None:
                    pairs = {kind: self.projections.project(key, tokens, device) for kind, tokens in self.tokens.items()}
                else:
                    pairs = {kind: self.group_cache.project(self.projections, key, tokens, digests, device)
                             for kind, (tokens, digests) in self.groups.items()}
                self._kv[cache_key] = {kind: tuple(t.to(dtype) for t in pair) for kind, pair in pairs.items()}
        return self._kv[cache_key]

    def chunk_roles(self, extra_options: dict) -> tuple:
        """The role of each CFG chunk of this call: chunk values index the cond lists the host batched."""
        layout = extra_options.get("cond_or_uncond") or [POSITIVE]
        roles = self.cond_list_roles
        if roles is not None and all(0 <= i < len(roles) for i in layout):
            return tuple(roles[i] for i in layout)
        return image_token_roles(layout)

    def batched_kv(self, key: tuple, q: Tensor, roles: Sequence[int]) -> tuple:
        """Image K/V stacked for these chunk roles `[B, L, hidden]`, cached: no copies per step."""
        cache_key = (key, str(q.device), q.dtype, tuple(roles), q.shape[0])
        if cache_key not in self._batched:
            kv = self.image_kv(key, q.device, q.dtype)
            self._batched[cache_key] = tuple(batch_for_chunks({kind: pair[i] for kind, pair in kv.items()}, roles,
                                                              q.shape[0]) for i in (0, 1))
        return self._batched[cache_key]

    def region_bias(self, extra_options: dict, q: Tensor) -> Optional[Tensor]:
        if not self.settings.region_masks:
            return None
        h, w = extra_options["activations_shape"][-2:]
        return self.bias_for(h, w, q.device, q.dtype)

    def bias_for(self, h: int, w: int, device, dtype) -> Optional[Tensor]:
        """The region bias `[1, h*w, L]` at one resolution, cached (None without masks)."""
        cache_key = (h, w, str(device), dtype)
        if cache_key not in self._bias:
            if not self._bias:
                _warn_if_stretched(self.settings.region_masks, (h, w))
            for slot in vanished_regions(self.settings.region_masks, (h, w)):
                logger.warning("StoryMaker: region mask %d keeps no pixel at the %dx%d attention resolution (it is "
                               "thinner than one attention pixel there, or fainter than %.1f): character %d is left "
                               "out of those layers. Widen or brighten its mask.", slot, h, w, REGION_THRESHOLD, slot)
            self._bias[cache_key] = region_attention_bias(self.settings.region_masks, (h, w),
                                                          self.settings.tokens_per_group, device, dtype)
        return self._bias[cache_key]

    # What a compiled call reads (see compiled.py): tensors only, made once and reused.
    def layer_stack(self, keys: tuple, device, dtype) -> tuple:
        """(ip_k, ip_v) of the layers `keys`, stacked `[layers, 2, L, max hidden]` (zero-padded): row
        POSITIVE the characters', row NEGATIVE the negative tokens'."""
        cache_key = (keys, str(device), dtype)
        if cache_key not in self._stacked:
            kvs = [self.image_kv(key, device, dtype) for key in keys]
            length, hidden = kvs[0][POSITIVE][0].shape[1], max(kv[POSITIVE][0].shape[2] for kv in kvs)
            stacks = tuple(torch.zeros(len(keys), 2, length, hidden, device=device, dtype=dtype) for _ in range(2))
            for i, kv in enumerate(kvs):
                for role in (POSITIVE, NEGATIVE):
                    for stack, t in zip(stacks, kv[role]):
                        stack[i, role, :, :t.shape[-1]] = t[0]
            self._stacked[cache_key] = stacks
        return self._stacked[cache_key]

    def row_roles(self, roles: Sequence[int], per_chunk: int, device) -> Tensor:
        """`[len(roles) * per_chunk]` long: the role of each batch row (chunks in order)."""
        cache_key = ("rows", tuple(roles), per_chunk, str(device))
        if cache_key not in self._small:
            self._small[cache_key] = torch.tensor(roles, dtype=torch.long).repeat_interleave(per_chunk).to(device)
        return self._small[cache_key]

    def scale_tensor(self, active: bool, device) -> Tensor:
        """ip_scale (or 0 outside start/end) as a 0-dim float32 tensor: a graph input, not a constant."""
        cache_key = ("scale", bool(active), str(device))
        if cache_key not in self._small:
            self._small[cache_key] = torch.tensor(self.settings.ip_scale if active else 0.0, device=device)
        return self._small[cache_key]

    def forward(self, key: tuple, q: Tensor, k: Tensor, v: Tensor, extra_options: dict, attention: AttentionFn,
                text_attention: Optional[Tensor]) -> Tensor:
        heads = extra_options["n_heads"]
        if not self.is_active(extra_options):
            return attention(q, k, v, heads, None) if text_attention is None else text_attention
        ip_k, ip_v = self.batched_kv(key, q, self.chunk_roles(extra_options))
        return decoupled_attention(q, k, v, ip_k, ip_v, heads, self.settings.ip_scale,
                                   ip_mask=self.region_bias(extra_options, q), attention=attention,
                                   text_attention=text_attention)

    def cached_bytes(self) -> int:
        """Memory held by the image K/V caches (per layer, device and CFG layout): the patch's whole
        footprint on the compute device."""
        tensors = [t for kv in self._kv.values() for pair in kv.values() for t in pair]
        tensors += [t for cache in (self._batched, self._stacked) for pair in cache.values() for t in pair]
        tensors += [t for t in self._bias.values() if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def release_caches(self) -> None:
        """Drop every cached K/V, bias and plan tensor (rebuilt on the next call): a story's scene frees its
        device memory when its sampling ends, so a long story holds one scene's K/V at a time."""
        for cache in (self._kv, self._batched, self._bias, self._stacked, self._small):
            cache.clear()


class LayerPatch:
    """What the host registers under one attn2 key: `patch(q, k, v, extra_options) -> out`."""

    def __init__(self, shared: StoryMakerAttention, key: tuple, previous: Optional[Callable] = None):
        self.shared, self.key, self.previous = shared, key, previous

    def attention_function(self, extra_options: dict) -> AttentionFn:
        """The attention kernel; hosts override this to use their own (e.g. ComfyUI's)."""
        return sdpa_attention

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, extra_options: dict) -> Tensor:
        if torch.compiler.is_compiling():  # inside a traced UNet: only the plan published for the call decides
            return compiled_layer_forward(q, k, v, extra_options, self.attention_function(extra_options), self.previous)
        count_eager_call()
        text = self.previous(q, k, v, extra_options) if self.previous is not None else None
        return self.shared.forward(self.key, q, k, v, extra_options, self.attention_function(extra_options), text)

    def to(self, device_or_dtype) -> "LayerPatch":
        """Follow a host's model move. Only a chained patch moves: the image K/V are made on the queries'
        device and in their dtype (the caches are keyed by both), the projections stay in host memory."""
        if self.previous is not None and hasattr(self.previous, "to"):
            self.previous = self.previous.to(device_or_dtype)
        return self
