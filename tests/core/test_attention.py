"""Decoupled cross-attention against the authors' processor (golden) and a float64 reference."""

import math

import pytest
import torch

from storymaker_core.attention import (
    batch_for_chunks,
    decoupled_attention,
    image_attention_probs,
    region_attention_bias,
    sdpa_attention,
)
from storymaker_core.lora import LoRAPair, merge_lora
from support import measured, relative_error, seeded_weights

HEADS, HIDDEN, SCALE = 10, 640, 0.8


@pytest.fixture(scope="module")
def layer_weights(layout):
    """The golden layer's weights: base projections, then processor 1's ten tensors, in recipe order."""
    shapes = {"to_q.weight": (640, 640), "to_k.weight": (640, 2048), "to_v.weight": (640, 2048),
              "to_out.0.weight": (640, 640), "to_out.0.bias": (640,)}
    shapes.update({k[2:]: v for k, v in layout["ip_adapter"].items() if k.startswith("1.")})
    assert len(shapes) == 15
    return seeded_weights(shapes, seed=20261128)


def lora(w, name):
    return LoRAPair(w[f"{name}_lora.up.weight"], w[f"{name}_lora.down.weight"])


def storymaker_layer(w, hidden_states, text, image_tokens, attention=sdpa_attention, ip_mask=None):
    """Our path: LoRA merged into the projections, then `decoupled_attention`, then to_out."""
    wq, wk, wv, wo = (merge_lora(w[f"{n}.weight"] if n != "to_out" else w["to_out.0.weight"], lora(w, n), SCALE)
                      for n in ("to_q", "to_k", "to_v", "to_out"))
    q, k, v = hidden_states @ wq.T, text @ wk.T, text @ wv.T
    ip_k, ip_v = image_tokens @ w["to_k_ip.weight"].T, image_tokens @ w["to_v_ip.weight"].T
    out = decoupled_attention(q, k, v, ip_k, ip_v, HEADS, SCALE, ip_mask=ip_mask, attention=attention)
    return out @ wo.T + w["to_out.0.bias"]


def reference_layer(w, x, text, image, bias=None):
    """float64, from the equations: unmerged LoRA (W x + s up(down(x))), per-head explicit softmax."""
    w = {k: v.double() for k, v in w.items()}
    x, text, image = x.double(), text.double(), image.double()

    def proj(z, name, base):
        return z @ w[base].T + SCALE * (z @ w[f"{name}_lora.down.weight"].T) @ w[f"{name}_lora.up.weight"].T

    q, k, v = proj(x, "to_q", "to_q.weight"), proj(text, "to_k", "to_k.weight"), proj(text, "to_v", "to_v.weight")
    ik, iv = image @ w["to_k_ip.weight"].T, image @ w["to_v_ip.weight"].T
    d = HIDDEN // HEADS
    heads = []
    for h in range(HEADS):
        s = slice(h * d, (h + 1) * d)
        text_h = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(d), -1) @ v[..., s]
        scores = q[..., s] @ ik[..., s].transpose(1, 2) / math.sqrt(d)
        if bias is not None:
            scores = scores + bias.double()
        heads.append(text_h + SCALE * torch.softmax(scores, -1) @ iv[..., s])
    h = torch.cat(heads, dim=-1)
    return h @ w["to_out.0.weight"].T + w["to_out.0.bias"] + SCALE * (h @ w["to_out_lora.down.weight"].T) @ w["to_out_lora.up.weight"].T


@pytest.mark.parametrize("n", [1, 2])
def test_layer_equals_the_authors_processor(layer_weights, golden, n):
    g = golden["attention_layer"]
    image = g["image_tokens"][:, : 20 * (n + 1)]
    with torch.no_grad():
        ours = storymaker_layer(layer_weights, g["hidden_states"], g["text_context"], image)
    measured(f"attn2 layer N={n}, merged LoRA, vs authors' LoRAIPAttnProcessor2_0 (fp32)",
             relative_error(ours, g[f"output_N{n}"]), 1e-5)
    reference = reference_layer(layer_weights, g["hidden_states"], g["text_context"], image)
    measured(f"attn2 layer N={n} vs float64 reference", relative_error(ours, reference), 1e-5)
    measured(f"authors' golden N={n} vs float64 reference (checks the reference)",
             relative_error(g[f"output_N{n}"], reference), 1e-5)


def test_region_mask_matches_reference_and_no_mask_is_exact(layer_weights, golden):
    g = golden["attention_layer"]
    x, text, image = g["hidden_states"], g["text_context"], g["image_tokens"][:, :60]  # 96 queries = 8 x 12
    left = torch.zeros(64, 96)
    left[:, :48] = 1
    right = 1 - left
    bias = region_attention_bias([left, right], (8, 12), tokens_per_group=20)
    assert bias.shape == (1, 96, 60)
    assert torch.all(bias[0, :, :20] == 0)  # background visible everywhere
    assert torch.isinf(bias[0, 0, 40:60]).all() and torch.all(bias[0, 0, 20:40] == 0)  # query 0 is left
    with torch.no_grad():
        ours = storymaker_layer(layer_weights, x, text, image, ip_mask=bias)
        unmasked = storymaker_layer(layer_weights, x, text, image)
    measured("attn2 layer with region masks vs float64 reference",
             relative_error(ours, reference_layer(layer_weights, x, text, image, bias=bias)), 1e-5)
    assert region_attention_bias([None, None], (8, 12), 20) is None
    with torch.no_grad():
        assert torch.equal(storymaker_layer(layer_weights, x, text, image, ip_mask=None), unmasked)
    assert relative_error(ours, unmasked) > 1e-3  # the mask really changes the result


def test_a_character_without_mask_stays_visible_everywhere():
    mask = torch.zeros(16, 16)
    mask[:8] = 1
    bias = region_attention_bias([None, mask], (4, 4), tokens_per_group=2)
    assert torch.all(bias[0, :, :4] == 0)
    assert torch.all(bias[0, :8, 4:] == 0) and torch.isinf(bias[0, 8:, 4:]).all()


def test_image_probs_are_the_head_averaged_softmax():
    g = torch.Generator().manual_seed(3)
    q, ip_k = torch.randn(2, 12, 32, generator=g), torch.randn(2, 40, 32, generator=g)
    probs = image_attention_probs(q, ip_k, heads=4)
    assert probs.shape == (2, 40, 12)
    qd, kd = q.double().view(2, 12, 4, 8), ip_k.double().view(2, 40, 4, 8)
    reference = torch.stack([torch.softmax(qd[:, :, h] @ kd[:, :, h].transpose(1, 2) / math.sqrt(8), -1)
                             for h in range(4)]).mean(0).transpose(1, 2)
    measured("image-branch attention map vs float64 reference", relative_error(probs, reference), 1e-6)
    assert torch.allclose(probs.sum(1), torch.ones(2, 12))


def test_returned_probs_do_not_change_the_output():
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 12, 32, generator=g) for _ in range(3))
    ip_k, ip_v = torch.randn(2, 40, 32, generator=g), torch.randn(2, 40, 32, generator=g)
    plain = decoupled_attention(q, k, v, ip_k, ip_v, 4, 0.7)
    out, probs = decoupled_attention(q, k, v, ip_k, ip_v, 4, 0.7, return_image_probs=True)
    assert torch.equal(out, plain) and probs.shape == (2, 40, 12)
    assert torch.equal(decoupled_attention(q, k, v, ip_k, ip_v, 4, 0.0), sdpa_attention(q, k, v, 4))


@pytest.mark.parametrize("layout", [[0], [1], [1, 0], [0, 1], [1, 0, 0]])
def test_batch_for_chunks_follows_cond_or_uncond(layout):
    cond, uncond = torch.full((1, 3, 2), 1.0), torch.full((1, 3, 2), -1.0)
    batch = batch_for_chunks({0: cond, 1: uncond}, layout, batch=2 * len(layout))
    expected = torch.cat([(cond if kind == 0 else uncond).expand(2, 3, 2) for kind in layout])
    assert torch.equal(batch, expected)


def test_batch_for_chunks_rejects_uneven_batches():
    with pytest.raises(ValueError, match="cannot be split"):
        batch_for_chunks({0: torch.zeros(1, 1), 1: torch.zeros(1, 1)}, [1, 0], batch=3)
