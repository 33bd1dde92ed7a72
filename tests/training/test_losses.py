"""The attention-mask loss against a literal re-statement of the release's `get_loss_ip`, and the MSE."""

import torch
import torch.nn.functional as F

from support import measured
from training.losses import attention_mask_loss, diffusion_loss, layer_level, level_size


def release_style_loss(probs, masks_latent, h32, w32, tokens=20):
    """The release's loop (docs/method.md §5.3), written out per layer and per character, float64, B=1."""
    masks16 = F.interpolate(masks_latent.double(), scale_factor=0.5, mode="bilinear", align_corners=False)
    n = masks16.shape[1]
    bg_mask = 1 - masks16.sum(1).clamp(0, 1)
    a_bg, a_chars = 0, [0] * n
    for p in probs:
        up = F.interpolate(p.double().view(1, -1, h32, w32), scale_factor=2, mode="bilinear", align_corners=False)
        a_bg = a_bg + up[:, :tokens].sum(1)
        for k in range(n):
            a_chars[k] = a_chars[k] + up[:, tokens * (k + 1): tokens * (k + 2)].sum(1)
    layers = len(probs)
    loss = sum(((a_chars[k] / layers - masks16[:, k]) ** 2).sum() / masks16[0, 0].numel() for k in range(n))
    loss = loss + ((a_bg / layers - bg_mask) ** 2).mean()
    return loss / n


def test_attention_loss_matches_the_release_formulation():
    g = torch.Generator().manual_seed(0)
    n, tokens, h32, w32 = 2, 20, 3, 4  # latent 12x16 -> layers at 3x4 -> loss at 6x8
    probs = [torch.softmax(torch.randn(1, (n + 1) * tokens, h32 * w32, generator=g) * 3, dim=1) for _ in range(5)]
    masks = torch.rand(1, n, 12, 16, generator=g).round()
    ours = attention_mask_loss(probs, masks, latent_hw=(12, 16), level=2, tokens_per_group=tokens)
    measured("attention loss vs release-style float64 loop", abs(float(ours[0]) - float(
        release_style_loss(probs, masks, h32, w32))) / float(ours[0]), 1e-6)


def test_attention_loss_is_zero_when_maps_equal_masks_and_batches_are_per_row():
    n, tokens = 1, 4
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, :4] = 1  # left half at latent size; layer at 2x2 (level 2), loss at 4x4
    layer = torch.zeros(1, (n + 1) * tokens, 2, 2)
    layer[:, tokens:, :, 0] = 1 / tokens  # character tokens own the left column
    layer[:, :tokens, :, 1] = 1 / tokens
    loss = attention_mask_loss([layer.flatten(2)], mask, (8, 8), level=2, tokens_per_group=tokens)
    everywhere = torch.zeros_like(layer)
    everywhere[:, tokens:] = 1 / tokens  # the character owns every pixel and the mask says so: exactly 0
    assert float(attention_mask_loss([everywhere.flatten(2)], torch.ones_like(mask), (8, 8), 2, tokens)) == 0
    wrong = attention_mask_loss([layer.flip(-1).flatten(2)], mask, (8, 8), level=2, tokens_per_group=tokens)
    assert float(wrong) > 10 * float(loss)
    both = attention_mask_loss([torch.cat([layer, layer.flip(-1)]).flatten(2)], mask.expand(2, -1, -1, -1), (8, 8),
                               level=2, tokens_per_group=tokens)
    assert torch.allclose(both, torch.cat([loss, wrong]))


def test_levels_and_sizes():
    assert layer_level("down_blocks.2.attentions.0.transformer_blocks.0.attn2.processor", 3) == 2
    assert layer_level("up_blocks.0.attentions.2.transformer_blocks.9.attn2.processor", 3) == 2
    assert layer_level("up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor", 3) == 1
    assert layer_level("mid_block.attentions.0.transformer_blocks.0.attn2.processor", 3) == 2
    assert level_size((160, 120), 2) == (40, 30)  # 1280x960 image -> 1/32
    assert level_size((15, 9), 1) == (8, 5)


def test_diffusion_loss_weights_inside_masks_only_on_chosen_rows():
    pred, target = torch.ones(2, 4, 4, 4), torch.zeros(2, 4, 4, 4)
    masks = torch.zeros(2, 2, 4, 4)
    masks[:, 0, :2] = 1  # half the pixels belong to character 0
    masks[:, 1, :1] = 1  # overlaps: the union is clamped to 1
    plain = diffusion_loss(pred, target)
    weighted = diffusion_loss(pred, target, masks, 5.0, weighted=torch.tensor([True, False]))
    assert torch.allclose(plain, torch.ones(2))
    assert torch.allclose(weighted, torch.tensor([1 + 5 * 0.5, 1.0]))
