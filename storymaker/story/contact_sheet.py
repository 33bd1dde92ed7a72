"""Contact sheet: every scene of a story in one captioned grid, to judge the one thing a story is for
at a glance (is it the same person in every frame?). Scenes without an image get a grey placeholder.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from .._core import storyboard  # one font and wrap rule for every page the pack draws (storymaker/_core.py)
from .files import atomic_write

BACKGROUND = (24, 24, 24)
PLACEHOLDER = (64, 64, 64)
TEXT = (230, 230, 230)


def make_contact_sheet(cells: list[tuple[Path | None, str]], cell: int = 256,
                       columns: int | None = None, font_size: int = 14) -> Image.Image:
    """Grid of ``cell``-sized thumbnails (aspect kept, centred) with up to two caption lines each."""
    if not cells:
        raise ValueError("a contact sheet needs at least one scene")
    columns = columns or math.ceil(math.sqrt(len(cells)))
    rows = math.ceil(len(cells) / columns)
    font, pad = storyboard._font(font_size), 8
    line_height = int(font_size * 1.3)
    caption_height = 2 * line_height + pad // 2
    sheet = Image.new("RGB", (pad + columns * (cell + pad), pad + rows * (cell + caption_height + pad)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for i, (path, caption) in enumerate(cells):
        x = pad + (i % columns) * (cell + pad)
        y = pad + (i // columns) * (cell + caption_height + pad)
        if path is not None:
            with Image.open(path) as image:
                thumb = ImageOps.contain(image.convert("RGB"), (cell, cell), Image.Resampling.LANCZOS)
            sheet.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
        else:
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=PLACEHOLDER)
        for j, line in enumerate(storyboard._wrap(draw, caption, font, cell, 2)):
            draw.text((x, y + cell + pad // 2 + j * line_height), line, fill=TEXT, font=font)
    return sheet


def write_contact_sheet(cells: list[tuple[Path | None, str]], path: Path, **options) -> Path:
    """Render and store the sheet atomically (it is derived from the scenes, so it is replaced each run)."""
    buffer = io.BytesIO()
    make_contact_sheet(cells, **options).save(buffer, format="PNG")
    atomic_write(path, buffer.getvalue())
    return path
