"""Image K/V per 20-token group, shared by the scenes of a story.

A scene's image tokens are groups of 20: the background, each on-stage character at its slot, and the
negative tokens. The image K/V of a layer are a linear map of each token (`to_k_ip(tokens)`), so a group's
K/V do not depend on the other groups of its scene, and a story's scenes share most groups (the background
always, a character in the same slot, the negative groups). Projecting a layer costs moving its two weights
to the device (and to float32) whatever the token count, so making them once per group, not per scene,
removes most of a scene's fixed cost. The cache keeps the most recently used groups only: its memory follows
the cast, never the number of scenes.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Sequence

import torch
from torch import Tensor


def group_digests(tokens: Tensor, tokens_per_group: int) -> list:
    """tokens `[G, T, ctx]` -> one content digest per group (the cache's keys: equal tokens, equal K/V)."""
    rows = tokens.detach().to("cpu", torch.float32).contiguous()
    if rows.shape[1] != tokens_per_group:
        raise ValueError(f"groups of {rows.shape[1]} tokens, expected {tokens_per_group}")
    return [hashlib.blake2b(row.numpy().tobytes(), digest_size=16).hexdigest() for row in rows]


class GroupKVCache:
    """{group digest: {(layer key, device): (ip_k, ip_v) `[1, T, hidden]` float32}}, least recently used
    groups dropped beyond `max_groups` (16 groups of SDXL's 70 layers: ~200 MiB in float32)."""

    def __init__(self, max_groups: int = 16):
        self.max_groups = max_groups
        self.entries: OrderedDict = OrderedDict()

    def project(self, projections, key: tuple, tokens: Tensor, digests: Sequence[str], device) -> tuple:
        """The layer's (ip_k, ip_v) `[1, G*T, hidden]` of tokens `[G, T, ctx]` (digests from `group_digests`):
        groups seen before come from the cache, the others are projected together in one call."""
        device_key = str(torch.device(device))
        missing = [i for i, digest in enumerate(digests) if (key, device_key) not in self.entries.get(digest, {})]
        if missing:
            per_group = tokens.shape[1]
            k_new, v_new = projections.project(key, tokens[missing].flatten(0, 1)[None], device)
            for n, i in enumerate(missing):
                part = slice(n * per_group, (n + 1) * per_group)
                self.entries.setdefault(digests[i], {})[(key, device_key)] = (k_new[:, part].clone(),
                                                                               v_new[:, part].clone())
        for digest in digests:
            self.entries.move_to_end(digest)
        pairs = [self.entries[digest][(key, device_key)] for digest in digests]
        while len(self.entries) > self.max_groups:
            self.entries.popitem(last=False)
        return tuple(torch.cat([pair[i] for pair in pairs], dim=1) for i in (0, 1))

    def cached_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for layers in self.entries.values() for pair in layers.values()
                   for t in pair)

    def clear(self) -> None:
        self.entries.clear()
