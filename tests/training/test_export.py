"""Exported files record what the loader needs (head width, character slots) and load with no extra parameter."""

import pytest
import torch
from safetensors import safe_open

from storymaker_core.resampler import StoryMakerResampler
from storymaker_core.weights import load_storymaker_weights
from support import random_storymaker_state, relative_error, tiny_resampler_config
from training.export import save_storymaker_file

TINY = tiny_resampler_config()  # head width 16: not the release's 64


def tokens(resampler, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randn(2, TINY.id_dim, generator=g)
    clip = torch.randn(2, 20, TINY.clip_dim, generator=g)
    with torch.no_grad():
        return resampler.eval()(ids, clip, clip)


def test_a_tiny_config_export_loads_with_no_extra_parameter(tmp_path):
    state = random_storymaker_state(resampler_config=TINY)
    # weights large enough that attention is far from uniform, so the head split shows in the tokens
    state["image_proj_model"] = {k: v * 25 for k, v in state["image_proj_model"].items()}
    path = tmp_path / "tiny.safetensors"
    save_storymaker_file(state, str(path), dim_head=TINY.dim_head)
    with safe_open(str(path), "pt") as f:
        assert {k: f.metadata()[k] for k in ("dim_head", "max_characters")} == {"dim_head": "16", "max_characters": "3"}

    weights = load_storymaker_weights(str(path))  # what Load StoryMaker calls: no head width passed
    assert weights.info.resampler == TINY

    reference = StoryMakerResampler(TINY)
    reference.load_state_dict(state["image_proj_model"])
    assert torch.equal(tokens(weights.build_resampler()), tokens(reference))
    # the head width changes the tokens while every shape stays the same: only the metadata can tell
    eight = StoryMakerResampler(tiny_resampler_config(dim_head=8, face_heads=4, character_heads=4))
    eight.load_state_dict(state["image_proj_model"])
    assert relative_error(tokens(eight), tokens(reference)) > 0.05


def test_a_bin_is_written_only_for_the_release_head_width(tmp_path):
    """A pickle has no room for metadata and every loader assumes 64 for it: 16 is refused, not written."""
    with pytest.raises(ValueError, match=r"cannot record the head width \(16\).*export to .safetensors"):
        save_storymaker_file(random_storymaker_state(resampler_config=TINY), str(tmp_path / "tiny.bin"), dim_head=16)
    assert not list(tmp_path.iterdir())

    wide = tiny_resampler_config(dim_head=64, face_heads=1, character_heads=1)
    state = random_storymaker_state(resampler_config=wide)
    save_storymaker_file(state, str(tmp_path / "wide.bin"), dim_head=64)
    data = torch.load(tmp_path / "wide.bin", weights_only=True)
    assert list(data) == ["image_proj_model", "ip_adapter"]
    assert load_storymaker_weights(str(tmp_path / "wide.bin")).info.resampler == wide


def test_export_refuses_a_head_width_that_does_not_fit_before_writing(tmp_path):
    path = tmp_path / "bad.safetensors"
    with pytest.raises(ValueError, match="not a multiple of the head width 7"):
        save_storymaker_file(random_storymaker_state(resampler_config=TINY), str(path), dim_head=7)
    assert not path.exists()
