"""Image K/V per token group, shared by a story's scenes: equal to projecting each scene's tokens (float64
reference), each group projected once however many scenes use it, and memory bounded by the groups kept."""

import torch

from storymaker_core.group_kv import GroupKVCache, group_digests
from storymaker_core.patch import NEGATIVE, POSITIVE, ImageBranchSettings, ImageProjections, StoryMakerAttention
from support import measured, relative_error

CTX, HIDDEN, T = 32, 16, 4
KEYS = [("input", 4, 0), ("middle", 0, 0)]


class CountingProjections(ImageProjections):
    def __init__(self, weights):
        super().__init__(weights)
        self.calls = 0

    def project(self, key, tokens, device=None):
        self.calls += 1
        return super().project(key, tokens, device)


def setup():
    g = torch.Generator().manual_seed(21)
    weights = {key: (torch.randn(HIDDEN, CTX, generator=g), torch.randn(HIDDEN, CTX, generator=g)) for key in KEYS}
    background, ava, ben = (torch.randn(1, T, CTX, generator=g) for _ in range(3))
    negative = torch.randn(3, T, CTX, generator=g)
    return weights, background, ava, ben, negative


def scene(projections, cache, groups, negative):
    cond = torch.cat(groups)
    settings = ImageBranchSettings(tokens_per_group=T)
    return StoryMakerAttention(projections, cond, negative[:len(groups)], settings, group_cache=cache)


def test_scenes_share_each_groups_kv_and_equal_the_float64_projection():
    weights, background, ava, ben, negative = setup()
    projections, cache = CountingProjections(weights), GroupKVCache()
    scenes = [[background, ava], [background, ava, ben], [background, ben, ava], [background, ava]]
    for groups in scenes:
        shared = scene(projections, cache, groups, negative)
        for key in KEYS:
            kv = shared.image_kv(key, "cpu", torch.float32)
            tokens = torch.cat(groups).flatten(0, 1).double()
            for i, w in enumerate(weights[key]):
                measured("group-cached image K/V vs float64 projection of the scene's tokens",
                         relative_error(kv[POSITIVE][i][0], tokens @ w.double().T), 1e-6)
            assert kv[NEGATIVE][0].shape == (1, len(groups) * T, HIDDEN)
    # scene 1 projects cond and uncond per layer; scene 2 only its new groups (ben, the third negative group);
    # scenes 3 and 4 reuse groups only (equal tokens, equal K/V: in StoryMaker a member's tokens carry its slot)
    assert projections.calls == 2 * len(KEYS) + 2 * len(KEYS)


def test_the_cache_keeps_the_most_recently_used_groups_only():
    weights, background, ava, ben, negative = setup()
    projections, cache = CountingProjections(weights), GroupKVCache(max_groups=3)
    scene(projections, cache, [background, ava], negative).image_kv(KEYS[0], "cpu", torch.float32)
    assert len(cache.entries) == 3  # 4 groups made (background, ava, 2 negative): the background went first
    one_group_bytes = 2 * T * HIDDEN * 4
    assert cache.cached_bytes() == 3 * one_group_bytes
    scene(projections, cache, [background, ben], negative).image_kv(KEYS[0], "cpu", torch.float32)
    assert len(cache.entries) == 3 and group_digests(ava, T)[0] not in cache.entries  # ava was least recent


def test_digests_follow_the_tokens_content():
    weights, background, ava, ben, negative = setup()
    assert group_digests(torch.cat([ava, ava.clone(), ben]), T)[:2] == group_digests(ava, T) * 2
    assert group_digests(ava, T) != group_digests(ava + 1e-6, T)
