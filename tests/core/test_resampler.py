"""The resampler against the authors' module (golden outputs) and a float64 reference from the equations."""

import copy
import math

import pytest
import torch

from storymaker_core.resampler import ResamplerConfig, StoryMakerResampler, interpolate_character_tokens
from support import measured, relative_error, seeded_weights, tiny_resampler_config

GOLDEN_SEED = 20261127


@pytest.fixture(scope="module")
def release_resampler(layout):
    """Full-size resampler with the golden data's weights (built on meta: no time lost on random init)."""
    with torch.device("meta"):
        model = StoryMakerResampler()
    model.load_state_dict(seeded_weights(layout["image_proj_model"], GOLDEN_SEED), strict=True, assign=True)
    return model.eval()


def test_state_dict_keys_and_shapes_are_the_releases(layout):
    with torch.device("meta"):
        model = StoryMakerResampler()
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(shapes) == list(layout["image_proj_model"])  # same keys, same order
    assert shapes == layout["image_proj_model"]
    assert ResamplerConfig.from_state_dict(model.state_dict()) == ResamplerConfig()


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tokens_equal_the_authors_module(release_resampler, golden, n):
    g = golden["resampler"]
    with torch.no_grad():
        tokens = release_resampler(g["id_embeds"][:n], g["character_clip"][:n], g["face_clip"][:n])
        uncond = release_resampler.uncond_tokens(n)
    assert tokens.shape == (n + 1, 20, 2048)
    measured(f"resampler tokens N={n} vs authors' module (fp32)", relative_error(tokens, g[f"tokens_N{n}"]), 1e-5)
    measured(f"resampler uncond tokens N={n} vs authors' module (fp32)",
             relative_error(uncond, g[f"uncond_tokens_N{n}"]), 1e-5)
    assert torch.equal(uncond[0], release_resampler.bg_embed[0])  # the release keeps bg_embed in the negative


# ---- independent float64 reference, written from the equations in docs/method.md §2 ----

def ref_layer_norm(x, w, b):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * w + b


def ref_gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def ref_perceiver_attention(p, prefix, x, latents, heads, dim_head):
    x = ref_layer_norm(x, p[prefix + "norm1.weight"], p[prefix + "norm1.bias"])
    latents = ref_layer_norm(latents, p[prefix + "norm2.weight"], p[prefix + "norm2.bias"])
    q = latents @ p[prefix + "to_q.weight"].T
    kv = torch.cat([x, latents], dim=1) @ p[prefix + "to_kv.weight"].T
    k, v = kv[..., : kv.shape[-1] // 2], kv[..., kv.shape[-1] // 2:]
    out = []
    for h in range(heads):
        s = slice(h * dim_head, (h + 1) * dim_head)
        w = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(dim_head), dim=-1)
        out.append(w @ v[..., s])
    return torch.cat(out, dim=-1) @ p[prefix + "to_out.weight"].T


def ref_perceiver(p, prefix, latents, x, depth, heads, dim_head):
    x = x @ p[prefix + "proj_in.weight"].T + p[prefix + "proj_in.bias"]
    for i in range(depth):
        a = f"{prefix}layers.{i}."
        latents = ref_perceiver_attention(p, a + "0.", x, latents, heads, dim_head) + latents
        h = ref_layer_norm(latents, p[a + "1.0.weight"], p[a + "1.0.bias"])
        latents = ref_gelu(h @ p[a + "1.1.weight"].T) @ p[a + "1.3.weight"].T + latents
    latents = latents @ p[prefix + "proj_out.weight"].T + p[prefix + "proj_out.bias"]
    return ref_layer_norm(latents, p[prefix + "norm_out.weight"], p[prefix + "norm_out.bias"])


def ref_tokens(p, c, id_embeds, character_clip, face_clip, zero_body=False):
    n, d = id_embeds.shape[0], c.cross_attention_dim
    x = ref_gelu(id_embeds @ p["proj.0.weight"].T + p["proj.0.bias"]) @ p["proj.2.weight"].T + p["proj.2.bias"]
    x = ref_layer_norm(x.reshape(n, c.face_tokens, d), p["norm.weight"], p["norm.bias"])
    face = x + ref_perceiver(p, "perceiver_resampler.", x, face_clip, c.face_depth, c.face_heads, c.dim_head)
    latents = p["resample.latents"].expand(n, -1, -1)
    body = ref_perceiver(p, "resample.", latents, character_clip, c.character_depth, c.character_heads, c.dim_head)
    if zero_body:
        body = torch.zeros_like(body)
    cat = torch.cat([face, body], dim=1) + p["pos_embed"][:n]
    fused = ref_layer_norm(cat @ p["proj_out.weight"].T + p["proj_out.bias"], p["norm_out.weight"], p["norm_out.bias"])
    return torch.cat([p["bg_embed"], fused + cat], dim=0)


@pytest.fixture(scope="module")
def tiny():
    config = tiny_resampler_config()
    with torch.device("meta"):
        model = StoryMakerResampler(config)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    weights = seeded_weights(shapes, seed=7, scale=0.2)  # larger than golden so every term matters
    model.load_state_dict(weights, strict=True, assign=True)
    g = torch.Generator().manual_seed(8)
    inputs = (torch.randn(3, config.id_dim, generator=g), torch.randn(3, 9, config.clip_dim, generator=g),
              torch.randn(3, 9, config.clip_dim, generator=g))
    return model.eval(), config, {k: v.double() for k, v in weights.items()}, inputs


@pytest.mark.parametrize("n", [1, 2, 3])
def test_matches_float64_reference(tiny, n):
    model, config, ref_weights, inputs = tiny
    inputs = [t[:n] for t in inputs]
    reference = ref_tokens(ref_weights, config, *[t.double() for t in inputs])
    with torch.no_grad():
        measured(f"resampler N={n} fp32 vs float64 reference", relative_error(model(*inputs), reference), 1e-5)
        measured(f"resampler N={n} fp64 vs float64 reference",
                 relative_error(copy.deepcopy(model).double()(*[t.double() for t in inputs]), reference), 1e-12)


def test_face_only_zeroes_the_character_branch(tiny):
    model, config, ref_weights, inputs = tiny
    with torch.no_grad():
        face_only = model(*[t[:2] for t in inputs], zero_character=True)
        normal = model(*[t[:2] for t in inputs])
    reference = ref_tokens(ref_weights, config, *[t[:2].double() for t in inputs], zero_body=True)
    measured("resampler face-only vs float64 reference", relative_error(face_only, reference), 1e-5)
    assert not torch.allclose(face_only, normal)


def test_per_character_flags_touch_only_that_character(tiny):
    model, _, _, inputs = tiny
    two = [t[:2] for t in inputs]
    with torch.no_grad():
        raw = model.character_tokens(*two)
        mixed = model.character_tokens(*two, zero_character=[False, True])
    assert torch.equal(mixed[0], raw[0])
    assert torch.equal(mixed[1, :4], raw[1, :4]) and torch.count_nonzero(mixed[1, 4:]) == 0
    with pytest.raises(ValueError, match="2 characters"):
        model.character_tokens(*two, zero_face=[True])


def test_interpolation_blends_character_tokens_before_position(tiny):
    model, _, _, inputs = tiny
    with torch.no_grad():
        raw = model.character_tokens(*[t[:2] for t in inputs])
        a, b = raw[0:1], raw[1:2]
        assert torch.equal(interpolate_character_tokens(a, b, 0.0), a)
        assert torch.allclose(interpolate_character_tokens(a, b, 1.0), b)
        mid = interpolate_character_tokens(a, b, 0.25)
        assert torch.allclose(mid, 0.75 * a + 0.25 * b, atol=1e-6)
        tokens = model.assemble(mid)
    assert tokens.shape == (2, 20, 64)


def test_too_many_characters_is_a_clear_error(tiny):
    model, config, _, _ = tiny
    inputs = (torch.randn(4, config.id_dim), torch.randn(4, 9, config.clip_dim), torch.randn(4, 9, config.clip_dim))
    with pytest.raises(ValueError, match="1 to 3 characters"):
        model(*inputs)


def test_mismatched_inputs_are_a_clear_error(tiny):
    model, config, _, _ = tiny
    with pytest.raises(ValueError, match="one row per character"):
        model(torch.randn(2, config.id_dim), torch.randn(1, 9, config.clip_dim), torch.randn(2, 9, config.clip_dim))


def test_fresh_module_fusion_is_identity_like_the_release():
    """At init proj_out is zero, so tokens = concat + pos_embed (what training starts from)."""
    config = tiny_resampler_config()
    torch.manual_seed(0)
    model = StoryMakerResampler(config)
    with torch.no_grad():
        model.pos_embed.normal_()
        inputs = (torch.randn(2, config.id_dim), torch.randn(2, 9, config.clip_dim), torch.randn(2, 9, config.clip_dim))
        raw = model.character_tokens(*inputs)
        tokens = model(*inputs)
    assert torch.allclose(tokens[1:], raw + model.pos_embed[:2], atol=1e-6)
