"""Storyboard page: exact sizes and boxes, scene order, candidate groups, comic tiers, captions, flags, options."""

from __future__ import annotations

import numpy as np
import pytest

from storymaker_core.storyboard import (FLAG_RED, THEMES, PageOptions, Panel, _caption, laid_out_panels,
                                        make_storyboard, panel_boxes)

DARK, LIGHT = THEMES["dark"], THEMES["light"]
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200),
           (120, 60, 10), (10, 120, 60), (60, 10, 120)]
SMALL = dict(columns=3, panel_width=64, gutter=8, captions=False)


def solid(colour, width=64, height=48) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (height, width, 3)).copy()


def scenes(count, **fields) -> list[Panel]:
    return [Panel(solid(COLOURS[i]), i + 1, f"scene {i + 1} text", **fields) for i in range(count)]


def region(page, box):
    left, top, right, bottom = box
    return page[top:bottom, left:right]


def test_grid_page_size_and_every_box_holds_exactly_its_panel():
    panels, options = scenes(5), PageOptions(**SMALL)
    page, boxes = make_storyboard(panels, options), panel_boxes(panels, options)
    assert page.dtype == np.uint8 and page.shape == (2 * 48 + 3 * 8, 3 * 64 + 4 * 8, 3)
    assert boxes == [(8, 8, 72, 56), (80, 8, 144, 56), (152, 8, 216, 56), (8, 64, 72, 112), (80, 64, 144, 112)]
    outside = np.ones(page.shape[:2], bool)
    for panel, box in zip(panels, boxes):
        assert (region(page, box) == panel.image).all()
        outside[box[1]:box[3], box[0]:box[2]] = False
    assert (page[outside] == DARK.background).all()  # nothing else drawn (one scene per group: no frames)
    assert (make_storyboard(panels, options) == page).all()  # deterministic


def test_grid_fits_other_sizes_centred_and_page_as_wide_as_its_widest_row():
    panels = [Panel(solid(COLOURS[0]), 1, "a"), Panel(solid(COLOURS[1], 20, 40), 2, "tall"),
              Panel(solid(COLOURS[2], 128, 32), 3, "wide")]
    options = PageOptions(**{**SMALL, "columns": 4})
    page, boxes = make_storyboard(panels, options), panel_boxes(panels, options)
    assert page.shape[1] == 3 * 64 + 4 * 8  # 3 panels, 4 columns: no empty column
    assert boxes[1] == (80 + 20, 8, 80 + 44, 56)  # 24x48, centred in its 64x48 cell
    assert boxes[2] == (152, 8 + 16, 216, 8 + 32)  # 64x16
    for panel, box in zip(panels, boxes):
        assert np.abs(region(page, box).astype(int) - panel.image[0, 0]).max() <= 1  # resampled solid colour


def test_order_puts_listed_scenes_first_and_leaves_the_rest_out():
    panels, options = scenes(4), PageOptions(**SMALL, order=" 3, 1")
    assert [p.scene for p in laid_out_panels(panels, options)] == [3, 1]
    page, boxes = make_storyboard(panels, options), panel_boxes(panels, options)
    assert page.shape == (48 + 2 * 8, 2 * 64 + 3 * 8, 3)
    assert (region(page, boxes[0]) == COLOURS[2]).all() and (region(page, boxes[1]) == COLOURS[0]).all()
    with pytest.raises(ValueError, match="order names scene 7"):
        make_storyboard(panels, PageOptions(**SMALL, order="3,7"))
    with pytest.raises(ValueError, match="scene 3 twice"):
        make_storyboard(panels, PageOptions(**SMALL, order="3,1,3"))


def candidates(scene, count, colour=0, flag_candidate=None):
    return [Panel(solid(COLOURS[(colour + k) % len(COLOURS)]), scene, f"scene {scene}", candidate=k + 1,
                  candidates=count, flag="low" if k + 1 == flag_candidate else None) for k in range(count)]


def test_candidates_stay_together_start_a_row_together_and_wrap_from_a_row_start():
    group2 = candidates(2, 3, colour=1)
    panels = scenes(1) + [group2[2], group2[0], group2[1]] + [Panel(solid(COLOURS[5]), 3, "x")] + candidates(4, 5)
    options = PageOptions(**SMALL)
    laid = laid_out_panels(panels, options)
    assert [(p.scene, p.candidate) for p in laid] == [(1, 1), (2, 1), (2, 2), (2, 3), (3, 1)] + [(4, k) for k in
                                                                                             range(1, 6)]
    cells = [((box[0] - 8) // 72, (box[1] - 8) // 56) for box in panel_boxes(panels, options)]  # (column, row)
    assert cells == [(0, 0), (0, 1), (1, 1), (2, 1), (0, 2), (0, 3), (1, 3), (2, 3), (0, 4), (1, 4)]
    page = make_storyboard(panels, options)
    margin = 8 // 2 - 1  # the accent frame: halfway into the gutter, around the group's cells
    assert (page[8 + 56 + 20, 8 - margin] == DARK.accent).all()  # left of scene 2's row
    assert (page[8 + 56 - margin, 8 + 30] == DARK.accent).all()  # above it
    assert (page[8 + 20, 8 - margin] == DARK.background).all()  # a lone scene has no frame
    assert (page[8 + 4 * 56 + 20, 8 - margin] == DARK.accent).all()  # a wrapped group: one frame per row

    fits = scenes(1) + candidates(2, 3)  # 4 columns: the group fits beside scene 1
    wide = PageOptions(**{**SMALL, "columns": 4})
    assert [box[1] for box in panel_boxes(fits, wide)] == [8] * 4


def test_comic_tiers_fill_the_page_width_and_centre_crop():
    side_bands = solid(COLOURS[1])  # green, 4 px red bands left and right: cropped away in a tall cell
    side_bands[:, :4] = side_bands[:, -4:] = COLOURS[0]
    top_bands = solid(COLOURS[1])  # green, 4 px blue bands top and bottom: cropped away in a wide cell
    top_bands[:4] = top_bands[-4:] = COLOURS[2]
    panels = [Panel(side_bands, 1, "a"), Panel(side_bands, 2, "b"), Panel(solid(COLOURS[3]), 2, "b", 2, 2),
              Panel(top_bands, 3, "c")]
    options = PageOptions(style="comic", rows="2,1", page_width=256, gutter=8, captions=False)
    assert [(p.scene, p.candidate) for p in laid_out_panels(panels, options)] == [(1, 1), (2, 1), (3, 1)]
    # tier 1: (256 - 3*8) / 2 = 116 wide; tier 2: 240 wide; one tier height, the mean fitted height:
    # (116*0.75 + 116*0.75 + 240*0.75) / 3 = 118
    boxes = panel_boxes(panels, options)
    assert boxes == [(8, 8, 124, 126), (132, 8, 248, 126), (8, 134, 248, 252)]
    page = make_storyboard(panels, options)
    assert page.shape == (260, 256, 3)
    for box in boxes:
        pixels = region(page, box).astype(int)
        assert (np.abs(pixels - COLOURS[1]) <= 3).all()  # only the green middle survives the crop
    odd = PageOptions(style="comic", rows="3", page_width=257, gutter=8, captions=False)
    widths = [box[2] - box[0] for box in panel_boxes(panels, odd)]
    assert widths == [75, 75, 75] and panel_boxes(panels, odd)[-1][2] == 257 - 8  # 225 = 3*75
    odd = PageOptions(style="comic", rows="3", page_width=258, gutter=8, captions=False)
    assert [box[2] - box[0] for box in panel_boxes(panels, odd)] == [76, 75, 75]


def test_comic_all_candidates_and_light_borders():
    panels = candidates(1, 2) + scenes(1)
    options = PageOptions(style="comic", rows="3", page_width=256, gutter=8, captions=False, all_candidates=True,
                          background="light")
    assert len(laid_out_panels(panels, options)) == 3
    page, boxes = make_storyboard(panels, options), panel_boxes(panels, options)
    left, top, right, bottom = boxes[0]
    assert (page[top + 10, left - 1] == LIGHT.border).all() and (page[top + 10, left - 2] == LIGHT.border).all()
    assert (page[top + 10, left - 5] == LIGHT.background).all()
    assert (region(page, boxes[0]) == COLOURS[0]).all()  # the border stays outside the box


def test_captions_make_the_page_taller_and_draw_text_in_the_band():
    panels = scenes(5, seed=7)
    bare, captioned = PageOptions(**SMALL), PageOptions(**{**SMALL, "captions": True})
    page = make_storyboard(panels, captioned)
    assert page.shape[1] == make_storyboard(panels, bare).shape[1]
    band = (page.shape[0] - make_storyboard(panels, bare).shape[0]) // 2  # two rows
    assert band > 2 * 11  # two lines of at least 11 px text
    boxes = panel_boxes(panels, captioned)
    for left, top, right, bottom in boxes:
        caption = page[bottom:bottom + band, left:right]
        assert caption.max() > 150 and (page[bottom:bottom + band, left:right] != DARK.background).any()
    assert boxes[3][1] == 8 + 48 + band + 8  # the second row starts below the first row's captions
    three_lines = make_storyboard(panels, PageOptions(**{**SMALL, "captions": True, "caption_lines": 3}))
    assert three_lines.shape[0] > page.shape[0]


def test_caption_text_leads_with_scene_candidate_and_seed():
    panel = Panel(solid(COLOURS[0]), 3, "  a   rainy street ", candidate=2, candidates=4, seed=7)
    assert _caption(panel, True) == ("3 · candidate 2/4 · seed 7", "3 · candidate 2/4 · seed 7 · a rainy street")
    assert _caption(panel, False)[1] == "3 · seed 7 · a rainy street"  # comic, one candidate per scene
    assert _caption(Panel(solid(COLOURS[0]), 1, ""), True) == ("1", "1")


def is_red(pixels) -> np.ndarray:
    pixels = pixels.astype(int)
    return (pixels[..., 0] > 200) & (pixels[..., 1] < 120) & (pixels[..., 2] < 120)


def test_flagged_panel_has_a_red_frame_and_red_flag_text():
    panels = [Panel(solid(COLOURS[1]), 1, "fine"), Panel(solid(COLOURS[1]), 2, "off", flag="ava 0.21 < 0.30")]
    options = PageOptions(**{**SMALL, "captions": True})
    page, boxes = make_storyboard(panels, options), panel_boxes(panels, options)
    left, top, right, bottom = boxes[1]
    for edge in (page[top:top + 3, left:right], page[bottom - 3:bottom, left:right],
                 page[top:bottom, left:left + 3], page[top:bottom, right - 3:right]):
        assert (edge == FLAG_RED).all()
    assert (page[top + 3:bottom - 3, left + 3:right - 3] == COLOURS[1]).all()
    assert (region(page, boxes[0]) == COLOURS[1]).all()  # the other panel is untouched
    caption_fine, caption_flagged = page[boxes[0][3]:, boxes[0][0]:boxes[0][2]], page[bottom:, left:right]
    assert is_red(caption_flagged).sum() > 10 and not is_red(caption_fine).any()
    unflagged = make_storyboard(panels[:1] + [Panel(solid(COLOURS[1]), 2, "off")], options)
    assert page.shape[0] > unflagged.shape[0]  # one more caption line for the flag

    bare = PageOptions(**SMALL)
    page = make_storyboard(panels, bare)
    inner = region(page, panel_boxes(panels, bare)[1])[3:-3, 3:-3]
    assert is_red(inner[:24, :]).sum() > 10 and not is_red(inner[30:, :]).any()  # flag over the top-left corner


@pytest.mark.parametrize("field, value", [
    ("style", "manga"), ("background", "grey"), ("columns", 0), ("columns", 17), ("columns", "3"), ("columns", True),
    ("panel_width", 63), ("panel_width", 2049), ("gutter", -1), ("gutter", 257), ("caption_lines", 0),
    ("page_width", 100), ("rows", "3,0"), ("rows", "a"), ("rows", ""), ("rows", "3,,2"), ("rows", "17"),
    ("order", "3;1"), ("order", "x"), ("order", "0"), ("order", "1,"),
])
def test_bad_options_raise_naming_the_option(field, value):
    with pytest.raises(ValueError, match=field):
        make_storyboard(scenes(3), PageOptions(**{**SMALL, field: value}))


def test_no_panels_bad_images_and_too_narrow_comic_pages_are_refused():
    with pytest.raises(ValueError, match="no panels"):
        make_storyboard([])
    with pytest.raises(ValueError, match="uint8"):
        make_storyboard([Panel(np.zeros((8, 8, 3), np.float32), 1, "x")])
    with pytest.raises(ValueError, match="uint8"):
        make_storyboard([Panel(np.zeros((8, 8, 4), np.uint8), 1, "x")])
    with pytest.raises(ValueError, match="page_width"):
        make_storyboard(scenes(3), PageOptions(style="comic", rows="8", page_width=256, gutter=16))
