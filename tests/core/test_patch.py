"""The per-layer attn2 patch, driven the way ComfyUI drives it (projected q/k/v + extra_options)."""

import math

import pytest
import torch

from storymaker_core.attention import region_attention_bias, sdpa_attention
from storymaker_core.patch import (NEGATIVE, POSITIVE, ImageBranchSettings, ImageProjections, LayerPatch,
                                   StoryMakerAttention, roles_of_cond_lists)
from support import measured, relative_error

HEADS, HIDDEN, CTX, KEY = 2, 16, 32, ("input", 4, 0)


@pytest.fixture
def parts():
    g = torch.Generator().manual_seed(11)
    weights = {KEY: (torch.randn(HIDDEN, CTX, generator=g), torch.randn(HIDDEN, CTX, generator=g)),
               ("middle", 0, 0): (torch.randn(HIDDEN, CTX, generator=g), torch.randn(HIDDEN, CTX, generator=g))}
    cond, uncond = torch.randn(3, 4, CTX, generator=g), torch.randn(3, 4, CTX, generator=g)  # N=2, 4 tokens each
    q, k, v = torch.randn(6, 12, HIDDEN, generator=g), torch.randn(6, 7, HIDDEN, generator=g), torch.randn(6, 7, HIDDEN, generator=g)
    return weights, cond, uncond, (q, k, v)


def options(layout, sigma=5.0, hw=(3, 4)):
    return {"n_heads": HEADS, "cond_or_uncond": layout, "sigmas": torch.tensor([sigma]),
            "activations_shape": [6, HIDDEN, *hw], "block": KEY[:2], "block_index": KEY[2]}


def reference(weights, tokens_per_row, q, k, v, scale, bias=None):
    """float64: per row, text softmax + scale * image softmax, heads split by hand."""
    kw, vw = (w.double() for w in weights[KEY])
    out = []
    d = HIDDEN // HEADS
    for row, tokens in enumerate(tokens_per_row):
        t = tokens.flatten(0, 1).double()
        ik, iv = t @ kw.T, t @ vw.T
        heads = []
        for h in range(HEADS):
            s = slice(h * d, (h + 1) * d)
            qh, kh, vh = q[row, :, s].double(), k[row, :, s].double(), v[row, :, s].double()
            text = torch.softmax(qh @ kh.T / math.sqrt(d), -1) @ vh
            scores = qh @ ik[:, s].T / math.sqrt(d)
            if bias is not None:
                scores = scores + bias[0].double()
            heads.append(text + scale * torch.softmax(scores, -1) @ iv[:, s])
        out.append(torch.cat(heads, -1))
    return torch.stack(out)


@pytest.mark.parametrize("layout", [[0], [1], [1, 0], [0, 1], [1, 0, 0]])
def test_each_cfg_chunk_gets_its_own_tokens(parts, layout):
    weights, cond, uncond, (q, k, v) = parts
    batch = 2 * len(layout)
    q, k, v = q[:batch], k[:batch], v[:batch]
    shared = StoryMakerAttention(ImageProjections(weights), cond, uncond, ImageBranchSettings(ip_scale=0.7, tokens_per_group=4))
    out = LayerPatch(shared, KEY)(q, k, v, options(layout))
    rows = [cond if kind == 0 else uncond for kind in layout for _ in range(2)]
    measured(f"attn2 patch, cond_or_uncond={layout}, vs float64 reference",
             relative_error(out, reference(weights, rows, q, k, v, 0.7)), 1e-5)


def test_image_kv_is_computed_once_and_reused(parts, monkeypatch):
    weights, cond, uncond, (q, k, v) = parts
    projections = ImageProjections(weights)
    calls = []
    original = projections.project
    monkeypatch.setattr(projections, "project", lambda key, *args: calls.append(key) or original(key, *args))
    patch = LayerPatch(StoryMakerAttention(projections, cond, uncond, ImageBranchSettings(tokens_per_group=4)), KEY)
    for step in range(5):
        patch(q[:4], k[:4], v[:4], options([1, 0], sigma=10.0 - step))
    assert calls == [KEY, KEY]  # once for cond, once for uncond: not per step


def test_outside_start_end_window_the_layer_is_plain_attention(parts):
    weights, cond, uncond, (q, k, v) = parts
    settings = ImageBranchSettings(ip_scale=0.8, sigma_start=5.0, sigma_end=1.0, tokens_per_group=4)
    patch = LayerPatch(StoryMakerAttention(ImageProjections(weights), cond, uncond, settings), KEY)
    plain = sdpa_attention(q[:2], k[:2], v[:2], HEADS)
    assert torch.equal(patch(q[:2], k[:2], v[:2], options([0], sigma=9.0)), plain)
    assert torch.equal(patch(q[:2], k[:2], v[:2], options([0], sigma=0.5)), plain)
    assert not torch.allclose(patch(q[:2], k[:2], v[:2], options([0], sigma=3.0)), plain)


def test_an_existing_replace_is_chained_not_overwritten(parts):
    weights, cond, uncond, (q, k, v) = parts
    seen = []

    def other_pack(q_, k_, v_, extra_options):
        seen.append(extra_options["block"])
        return torch.full_like(q_, 2.0)

    shared = StoryMakerAttention(ImageProjections(weights), cond, uncond, ImageBranchSettings(ip_scale=0.5, tokens_per_group=4))
    chained = LayerPatch(shared, KEY, previous=other_pack)(q[:2], k[:2], v[:2], options([0]))
    alone = LayerPatch(shared, KEY)(q[:2], k[:2], v[:2], options([0]))
    text = sdpa_attention(q[:2], k[:2], v[:2], HEADS)
    assert seen == [("input", 4)]
    assert torch.allclose(chained - 2.0, alone - text, atol=1e-6)


def test_region_masks_follow_the_layer_resolution(parts):
    weights, cond, uncond, (q, k, v) = parts
    left = torch.zeros(30, 40)
    left[:, :20] = 1
    settings = ImageBranchSettings(ip_scale=0.9, region_masks=[left, 1 - left], tokens_per_group=4)
    out = LayerPatch(StoryMakerAttention(ImageProjections(weights), cond, uncond, settings), KEY)(q[:2], k[:2], v[:2], options([0]))
    bias = region_attention_bias([left, 1 - left], (3, 4), 4)
    measured("attn2 patch with region masks vs float64 reference",
             relative_error(out, reference(weights, [cond, cond], q[:2], k[:2], v[:2], 0.9, bias=bias)), 1e-5)


def test_bad_settings_are_reported(parts):
    weights, cond, uncond, _ = parts
    with pytest.raises(ValueError, match="3 region masks for 2 characters"):
        StoryMakerAttention(ImageProjections(weights), cond, uncond,
                            ImageBranchSettings(region_masks=[None] * 3, tokens_per_group=4))
    with pytest.raises(ValueError, match="same shape"):
        StoryMakerAttention(ImageProjections(weights), cond, uncond[:2], ImageBranchSettings())


def test_to_returns_the_patch_and_moves_projections(parts):
    weights, cond, uncond, _ = parts
    patch = LayerPatch(StoryMakerAttention(ImageProjections(weights), cond, uncond, ImageBranchSettings()), KEY)
    assert patch.to(torch.device("cpu")) is patch and patch.to(torch.float16) is patch
    assert patch.shared.projections.to_k_ip["input_4_0"].dtype == torch.float32


class _UnreadableSigmas:
    """A sigmas stand-in that fails if the patch reads it (a read is a device->host sync on a GPU)."""

    def max(self):
        raise AssertionError("the full start/end range must not read sigma")


def test_full_range_never_reads_sigma(parts):
    weights, cond, uncond, (q, k, v) = parts
    patch = LayerPatch(StoryMakerAttention(ImageProjections(weights), cond, uncond,
                                           ImageBranchSettings(ip_scale=0.8, tokens_per_group=4)), KEY)
    opts = dict(options([0]), sigmas=_UnreadableSigmas())
    with_image = patch(q[:2], k[:2], v[:2], opts)
    assert not torch.allclose(with_image, sdpa_attention(q[:2], k[:2], v[:2], HEADS))


def test_image_kv_are_made_on_the_queries_device_and_the_weights_stay_put(parts):
    """Only the K/V live on the compute device (here the meta device stands in for a GPU); the projection
    weights stay in host memory however the host moves the model."""
    weights, cond, uncond, (q, k, v) = parts
    projections = ImageProjections({key: (kw.half(), vw.half()) for key, (kw, vw) in weights.items()})
    shared = StoryMakerAttention(projections, cond, uncond, ImageBranchSettings(tokens_per_group=4))
    patch = LayerPatch(shared, KEY)
    assert patch.to(torch.device("meta")) is patch
    kv = shared.image_kv(KEY, torch.device("meta"), torch.bfloat16)
    assert all(t.device.type == "meta" and t.dtype == torch.bfloat16 and t.shape == (1, 12, HIDDEN)
               for pair in kv.values() for t in pair)
    assert {p.device.type for p in projections.parameters()} == {"cpu"}
    assert {p.dtype for p in projections.parameters()} == {torch.float16}
    ip_k, _ = shared.image_kv(KEY, torch.device("cpu"), torch.float32)[0]  # cond K from fp16-stored weights
    expected = cond.flatten(0, 1).double() @ weights[KEY][0].half().double().T
    measured("image K from fp16 weights vs float64", relative_error(ip_k[0], expected), 1e-6)


def test_chunks_beyond_positive_and_negative_get_the_negative_tokens(parts, caplog, monkeypatch):
    """PerpNeg sends cond_or_uncond [0, 1, 2] (positive, negative, empty): no crash, chunk 2 is unconditional."""
    import storymaker_core.patch

    monkeypatch.setattr(storymaker_core.patch, "_REPORTED_CHUNKS", set())  # logged once per process
    weights, cond, uncond, (q, k, v) = parts
    shared = StoryMakerAttention(ImageProjections(weights), cond, uncond, ImageBranchSettings(ip_scale=0.7, tokens_per_group=4))
    with caplog.at_level("WARNING"):
        out = LayerPatch(shared, KEY)(q, k, v, options([0, 1, 2]))
    rows = [cond] * 2 + [uncond] * 4  # 6 rows = 3 chunks of 2
    measured("attn2 patch, cond_or_uncond=[0, 1, 2], vs float64 reference",
             relative_error(out, reference(weights, rows, q, k, v, 0.7)), 1e-5)
    assert "[2]" in caplog.text and "only chunk 0 gets the characters" in caplog.text


def test_the_host_named_positive_list_decides_over_the_chunk_index(parts, caplog):
    """DualCFG batches [0 negative, 1 middle, 2 positive]: with the positive list named, chunk 2 gets the
    characters and nothing is logged; without it (or when the host's lists do not hold it) the index decides."""
    weights, cond, uncond, (q, k, v) = parts
    negative, middle, positive = [{"uuid": "n"}], [{"uuid": "m"}], [{"uuid": "p"}]
    assert roles_of_cond_lists([negative, middle, positive], positive) == (NEGATIVE, NEGATIVE, POSITIVE)
    assert roles_of_cond_lists([negative, list(positive)], positive) is None  # an equal copy is not the list
    assert roles_of_cond_lists([negative, middle], None) is None
    shared = StoryMakerAttention(ImageProjections(weights), cond, uncond, ImageBranchSettings(ip_scale=0.7, tokens_per_group=4))
    shared.cond_list_roles = roles_of_cond_lists([negative, middle, positive], positive)
    with caplog.at_level("WARNING"):
        out = LayerPatch(shared, KEY)(q, k, v, options([0, 1, 2]))
    measured("attn2 patch, DualCFG layout with the positive list named, vs float64 reference",
             relative_error(out, reference(weights, [uncond] * 4 + [cond] * 2, q, k, v, 0.7)), 1e-5)
    assert "beyond positive/negative" not in caplog.text
    assert shared.chunk_roles(options([2, 0])) == (POSITIVE, NEGATIVE)  # chunk order follows the batching
    assert shared.chunk_roles(options([0, 3])) == (POSITIVE, NEGATIVE)  # an index beyond the lists: index rule
    shared.cond_list_roles = None
    assert shared.chunk_roles(options([1, 0])) == (NEGATIVE, POSITIVE)


def test_a_region_mask_of_another_aspect_is_reported_once(parts, caplog):
    weights, cond, uncond, (q, k, v) = parts
    square = torch.zeros(40, 40)
    square[:, :20] = 1
    settings = ImageBranchSettings(region_masks=[square, 1 - square], tokens_per_group=4)
    patch = LayerPatch(StoryMakerAttention(ImageProjections(weights), cond, uncond, settings), KEY)
    with caplog.at_level("WARNING"):
        for _ in range(3):
            patch(q[:2], k[:2], v[:2], options([0], hw=(3, 4)))  # a 3x4 latent: width/height 1.33
    assert caplog.text.count("stretched") == 2  # masks 1 and 2, at the first step only


def test_compiled_layers_follow_the_published_plan_not_what_the_graph_baked(parts):
    """A host like ComfyUI's compiled UNet: it reaches the patches through an options dict whose guards are
    dropped (TorchCompileModel's filter), so only the published plan may decide. A second scene (new tokens,
    ip_scale, start/end) and another CFG layout must run right, the former without a recompile."""
    from storymaker_core.compiled import build_plan, layer_order, published

    weights, cond, uncond, (q, k, v) = parts
    keys = layer_order(weights)
    assert keys == [KEY, ("middle", 0, 0)]

    def host(q, k, v, transformer_options):
        return torch.stack([transformer_options["patches_replace"][key](q, k, v, {**transformer_options, "n_heads": HEADS})
                            for key in keys])

    compiled = torch.compile(host, backend="eager", options={
        "guard_filter_fn": lambda entries: ["transformer_options" not in e.name for e in entries]})
    frames = []

    def scene(cond, uncond, ip_scale, layout, sigma):
        shared = StoryMakerAttention(ImageProjections(weights), cond, uncond,
                                     ImageBranchSettings(ip_scale=ip_scale, sigma_start=4.0, tokens_per_group=4))
        options = {"patches_replace": {key: LayerPatch(shared, key) for key in keys}, "cond_or_uncond": layout,
                   "sigmas": torch.tensor([sigma])}
        plan = build_plan(shared, keys, layout, q.shape[0], options["sigmas"], (3, 4), q.device, q.dtype)
        with published(plan):
            out = compiled(q, k, v, options)
        assert int(plan["counter"]) == len(keys)
        frames.append(torch._dynamo.utils.counters["stats"]["unique_graphs"])
        return out, torch.stack([options["patches_replace"][key](q, k, v, {**options, "n_heads": HEADS}) for key in keys])

    torch._dynamo.reset()
    g = torch.Generator().manual_seed(12)
    for cond_, uncond_, ip_scale, layout, sigma in [(cond, uncond, 0.7, [1, 0], 3.0),
                                                    (torch.randn(3, 4, CTX, generator=g), uncond, 0.4, [1, 0], 3.0),
                                                    (cond, uncond, 0.7, [1, 0], 5.0),  # outside start/end
                                                    (cond, uncond, 0.7, [0, 1, 0], 3.0)]:
        ours, eager = scene(cond_, uncond_, ip_scale, layout, sigma)
        measured(f"compiled patch vs eager, layout {layout}, scale {ip_scale}, sigma {sigma}", relative_error(ours, eager), 1e-5)
        if sigma <= 4.0:
            rows = [cond_ if kind == 0 else uncond_ for kind in layout for _ in range(q.shape[0] // len(layout))]
            measured("compiled patch vs float64 reference", relative_error(ours[0], reference(weights, rows, q, k, v, ip_scale)), 1e-5)
    assert frames[0] == frames[1] == frames[2]  # new tokens, ip_scale, start/end: no recompile
