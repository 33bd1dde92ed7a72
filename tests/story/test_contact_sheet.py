"""Contact sheet: a captioned grid, thumbnails centred with their aspect kept, placeholders for gaps."""

from __future__ import annotations

import pytest
from story_support import write_png

from storymaker.story.contact_sheet import BACKGROUND, PLACEHOLDER, make_contact_sheet, write_contact_sheet


def test_grid_thumbnails_captions_and_placeholders(tmp_path):
    tall = write_png(tmp_path / "tall.png", (255, 0, 0), size=(40, 80))
    wide = write_png(tmp_path / "wide.png", (0, 255, 0), size=(300, 150))
    cells = [(tall, "01-tall · alice · seed 1"), (wide, "02-wide " + "with a long caption " * 5), (None, "03 failed")]
    sheet = make_contact_sheet(cells, cell=64)
    pad, caption = 8, 2 * int(14 * 1.3) + 4
    assert sheet.size == (pad + 2 * (64 + pad), pad + 2 * (64 + caption + pad))  # 2 columns, 2 rows
    row2 = pad + 64 + caption + pad
    assert sheet.getpixel((pad + 32, pad + 32)) == (255, 0, 0)
    assert sheet.getpixel((pad + 2, pad + 32)) == BACKGROUND  # tall image: 32 px wide, centred
    assert sheet.getpixel((2 * pad + 64 + 32, pad + 32)) == (0, 255, 0)
    assert sheet.getpixel((2 * pad + 64 + 32, pad + 2)) == BACKGROUND  # wide image: 32 px high, centred
    assert sheet.getpixel((pad + 32, row2 + 32)) == PLACEHOLDER
    for x in (pad, 2 * pad + 64):  # every caption has drawn text
        box = sheet.crop((x, pad + 64, x + 64, pad + 64 + caption)).convert("L")
        assert box.getextrema()[1] > 150


def test_written_atomically_and_empty_story_refused(tmp_path):
    image = write_png(tmp_path / "a.png", (1, 2, 3))
    path = write_contact_sheet([(image, "a")], tmp_path / "sheet.png")
    assert path.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError):
        make_contact_sheet([])
