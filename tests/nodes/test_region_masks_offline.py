"""Region masks that would silently drop a character: refused (faint) or warned about (thin, or a character
left without a mask while another has one), naming the mask."""

import logging

import pytest
import torch

from storymaker_core.attention import vanished_regions
from support.node_specs import node_module


@pytest.fixture(scope="module")
def region_masks():
    return node_module("patching").region_masks  # the pack imported as ComfyUI does (stand-in folder_paths offline)


def test_a_faint_mask_is_refused_naming_it(region_masks):
    faint = torch.full((64, 64), 100 / 255)
    with pytest.raises(ValueError, match=r"mask_2 is faint \(its brightest value is 0.39\)"):
        region_masks([torch.ones(64, 64), faint], 2)


def test_a_character_left_without_a_mask_is_named(region_masks, caplog):
    with caplog.at_level(logging.WARNING):
        masks = region_masks([torch.ones(64, 64), None], 2)
    assert masks[1] is None
    assert "mask_1 connected, but not mask_2: character 2 is not confined" in caplog.text


def test_a_thin_mask_vanishes_at_the_coarse_attention_resolutions():
    stripe = torch.zeros(1024, 1024)
    stripe[:, 512:516] = 1.0  # 4 image pixels wide
    assert vanished_regions([None, stripe], (128, 128)) == []  # half of one 8-pixel cell: kept (>= 0.5)
    assert vanished_regions([None, stripe], (64, 64)) == [2]  # a quarter of one 16-pixel cell: gone
    assert vanished_regions([torch.ones(8, 8), stripe], (32, 32)) == [2]


def test_the_same_character_in_two_slots_is_named(caplog):
    import numpy as np

    from storymaker_core.characters import Character

    encode = node_module("encode_ops")
    ava = Character(name="ava", id_embedding=torch.zeros(512), character_image=np.zeros((1, 8, 8, 3), np.uint8),
                    character_clip=torch.zeros(4, 8), identity="appearance")
    with caplog.at_level(logging.WARNING):
        encode.warn_about_repeats([ava, ava])
    assert "character_1 and character_2 are the same character ('ava')" in caplog.text
