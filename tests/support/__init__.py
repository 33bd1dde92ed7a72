"""Test helpers shared by the test folders (importable as `support`: pytest's pythonpath has `tests/`).

Numeric comparisons record their measured error with `measured(name, value, tolerance)`; the values are
printed in the pytest summary so a run shows how close each comparison came, not only that it passed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

DATA = Path(__file__).parent.parent / "data"
MEASURED: list = []


def release_layout() -> dict:
    """The released mask.bin's key -> shape tables and processor order (from the authors' code)."""
    return json.loads((DATA / "official_mask_bin_layout.json").read_text())


def seeded_weights(shapes: dict, seed: int, scale: float = 0.02, dtype=torch.float32) -> dict:
    """The golden data's recipe: `randn(shape, generator) * scale` over the keys in order."""
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(tuple(s), generator=g) * scale).to(dtype) for k, s in shapes.items()}


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """`||ours - reference|| / ||reference||`, computed in float64."""
    ours, reference = ours.double(), reference.double()
    return float((ours - reference).norm() / reference.norm())


def measured(name: str, value: float, tolerance: float) -> None:
    """Record a measured error and assert it is within tolerance."""
    MEASURED.append((name, value, tolerance))
    assert value <= tolerance, f"{name}: measured {value:.3e} > tolerance {tolerance:.1e}"


def tiny_resampler_config(**overrides):
    """A resampler small enough for float64 references (release structure, smaller widths)."""
    from storymaker_core.resampler import ResamplerConfig

    values = dict(cross_attention_dim=64, id_dim=16, id_hidden_dim=32, clip_dim=24, face_tokens=4, face_depth=2,
                  face_heads=2, character_tokens=16, character_dim=32, character_depth=2, character_heads=2,
                  dim_head=16, ff_mult=4, max_characters=3)
    values.update(overrides)
    return ResamplerConfig(**values)


def small_unet_config(context_dim: int = 64):
    """An SDXL-shaped attention layout (same block structure, own widths, shallower)."""
    from storymaker_core.layout import UNetAttentionConfig

    return UNetAttentionConfig(block_out_channels=(32, 64, 128), transformer_layers_per_block=(0, 1, 2),
                               mid_transformer_depth=2, layers_per_block=2, cross_attention_dim=context_dim)


def random_storymaker_state(unet_config=None, resampler_config=None, rank: int = 8, seed: int = 0,
                            dtype=torch.float32) -> dict:
    """A `mask.bin`-shaped nested dict with random values for the given (small) architecture."""
    from storymaker_core.layout import unet_attention_layers
    from storymaker_core.weights import expected_image_proj_shapes, expected_ip_adapter_shapes

    unet_config = unet_config or small_unet_config()
    resampler_config = resampler_config or tiny_resampler_config(cross_attention_dim=unet_config.cross_attention_dim)
    return {
        "image_proj_model": seeded_weights(expected_image_proj_shapes(resampler_config), seed, dtype=dtype),
        "ip_adapter": seeded_weights(expected_ip_adapter_shapes(unet_attention_layers(unet_config), rank), seed + 1,
                                     dtype=dtype),
    }


def release_state(seed: int = 0, dtype=torch.float16) -> dict:
    """Random weights with the released file's exact keys and shapes (831 M values)."""
    layout = release_layout()
    return {"image_proj_model": seeded_weights(layout["image_proj_model"], seed, dtype=dtype),
            "ip_adapter": seeded_weights(layout["ip_adapter"], seed + 1, dtype=dtype)}
