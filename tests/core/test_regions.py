"""Named regions: exact columns on known sizes, halves/thirds identical to the bands the ViStoryBench
converter writes, spans rounded the same way, user masks left to the caller."""

import numpy as np
import pytest

from storymaker_core.regions import (
    NAMED_REGIONS,
    normalise_region,
    region_bands,
    region_mask,
    region_masks,
    user_mask_index,
)


def columns(mask):
    """The columns inside a mask that is full height where it is on (a vertical band)."""
    on = mask.max(axis=0) > 0
    assert (mask[:, on] == 1).all() and (mask[:, ~on] == 0).all()
    inside = np.flatnonzero(on)
    return (int(inside[0]), int(inside[-1]) + 1) if inside.size else (0, 0)


def test_thirds_and_halves_on_width_10():
    assert [columns(region_mask(name, 10, 4)) for name in ("left-third", "middle-third", "right-third")] == [
        (0, 3), (3, 7), (7, 10)]
    assert [columns(region_mask(name, 10, 4)) for name in ("left", "right")] == [(0, 5), (5, 10)]
    assert [columns(region_mask(name, 7, 2)) for name in ("left", "right")] == [(0, 4), (4, 7)]  # round(3.5)=4


def test_masks_are_float32_zero_one_height_by_width():
    for name in NAMED_REGIONS + ("0-0.6",):
        mask = region_mask(name, 12, 5)
        assert mask.dtype == np.float32 and mask.shape == (5, 12)
        assert set(np.unique(mask)) <= {0.0, 1.0}
    assert (region_mask("full", 3, 2) == 1).all()


def test_top_and_bottom_are_horizontal_halves():
    top, bottom = region_mask("top", 4, 5), region_mask("bottom", 4, 5)
    assert (top[:2] == 1).all() and (top[2:] == 0).all()  # round(2.5) = 2
    assert (top + bottom == 1).all()


@pytest.mark.parametrize("width, height", [(10, 3), (17, 2), (1024, 4), (1000, 1), (1, 1), (2, 3)])
def test_halves_and_thirds_equal_region_bands_exactly(width, height):
    for count, names in ((2, ("left", "right")), (3, ("left-third", "middle-third", "right-third"))):
        for name, band in zip(names, region_bands(width, height, count)):
            assert np.array_equal(region_mask(name, width, height), band.astype(np.float32) / 255)


def test_spans_use_the_same_rounding():
    assert columns(region_mask("0-0.6", 10, 2)) == (0, 6)
    assert columns(region_mask("0.25-0.75", 10, 2)) == (2, 8)  # round(2.5)=2, round(7.5)=8
    assert columns(region_mask("0.4-1", 1024, 2)) == (round(1024 * 0.4), 1024)
    assert np.array_equal(region_mask("0-0.5", 17, 3), region_mask("left", 17, 3))
    assert np.array_equal(region_mask("0.5-1", 17, 3), region_mask("right", 17, 3))
    with pytest.raises(ValueError, match="covers no column"):
        region_mask("0.01-0.04", 10, 2)


def test_normalise_region():
    assert normalise_region(" LEFT ") == "left"
    assert normalise_region("0-.60") == "0-0.6"
    assert normalise_region("0.000-1.000") == "0-1"
    assert normalise_region("0.00001-0.5") == "0.00001-0.5"
    assert normalise_region("Mask02") == "mask2"
    assert user_mask_index("mask3") == 3 and user_mask_index("left") is None
    for bad in ("lft", "0.6-0.2", "0-1.5", "0.5-0.5", "-0.1-0.5", "mask0", "halves", "", "1e-3-0.5"):
        with pytest.raises(ValueError):
            normalise_region(bad)
    with pytest.raises(ValueError, match="did you mean left-third"):
        normalise_region("left-thrid")


def test_user_masks_are_the_callers():
    with pytest.raises(ValueError, match="caller"):
        region_mask("mask1", 8, 8)
    with pytest.raises(ValueError):
        region_masks(["left", "mask2"], 8, 8)


def test_region_masks_none_for_full():
    masks = region_masks(["full", "right", "0-0.3"], 10, 2)
    assert masks[0] is None
    assert columns(masks[1]) == (5, 10) and columns(masks[2]) == (0, 3)
    assert region_masks([], 10, 2) == []


def test_vistorybench_module_gives_the_same_masks(tmp_path):
    from PIL import Image

    from storymaker.story.vistorybench import regions as vistory

    assert vistory.region_bands is region_bands
    assert "region_bands" in vistory.__all__
    files = vistory.write_region_masks(tmp_path, 10, 3)
    expected = {"left_half": (0, 5), "right_half": (5, 10),
                "left_third": (0, 3), "middle_third": (3, 7), "right_third": (7, 10)}
    assert set(files) == set(expected)
    for name, span in expected.items():
        image = np.asarray(Image.open(files[name]))
        assert image.shape == (3, 10, 3) and image.dtype == np.uint8
        assert columns(image[:, :, 0].astype(np.float32) / 255) == span
        assert np.array_equal(image[:, :, 0].astype(np.float32) / 255,
                              region_mask(name.replace("_half", "").replace("_", "-"), 10, 3))
