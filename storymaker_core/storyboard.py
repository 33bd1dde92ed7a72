"""Storyboard: a story's scene images laid out as one page (an image to save or preview like any other).

Two styles. ``grid``: equal cells, ``columns`` per row, each image fitted into its cell with its aspect kept;
the candidates of one scene sit side by side inside a thin accent frame so they read as alternatives of one
moment. ``comic``: tiers of panels that fill the page width (``rows`` pattern, e.g. ``"3,2"``), every image
centre-cropped to fill its panel, one panel per scene (its first candidate) unless ``all_candidates``.

Rules the page follows (tests pin them):

- Order: script order (first appearance of each scene in ``panels``), or ``PageOptions.order``. Within a scene,
  candidates are sorted by their index.
- Grid: a scene's candidates start a new row together when they do not fit in what is left of the current
  row; a group wider than ``columns`` starts at a row start and wraps. The page is as wide as its widest row.
  Every cell is ``panel_width`` wide and as high as the first laid-out image at that width.
- Comic: all tiers share one height, the mean height of the page's images when each is fitted to its
  panel's width, so no image is cropped much more than the others. The last tier holds what is left and
  still fills the page width. Cell widths in a tier differ by at most one pixel (the first ones get it).
- Captions (``"3 · candidate 2/4 · seed 7 · <text>"``): scene number and seed come first so a long prompt never
  truncates them. ``candidate k/n`` appears only where the page shows the scene's candidates.
- Flagged panels (a consistency check failed): a 3 px red frame drawn inside the panel's box, and the flag
  text in red on an extra caption line (the page's caption band grows by one line only when a panel on it
  is flagged), or over the panel's top-left corner when captions are off.
- ``background="light"``: white page, black 2 px borders around every panel (in the gutter, outside its box).

Same input, same pixels: no randomness, Pillow's built-in font, deterministic resampling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

STYLES = ("grid", "comic")
BACKGROUNDS = ("dark", "light")
LIMITS = {"columns": (1, 16), "panel_width": (64, 2048), "gutter": (0, 256), "caption_lines": (1, 8),
          "page_width": (256, 8192)}
MAX_ROW_PANELS = 16  # comic: panels per tier, like `columns`
MIN_COMIC_CELL = 32  # comic: narrowest panel a tier may have, in pixels

FLAG_RED = (235, 45, 45)
FLAG_ON_IMAGE = (255, 100, 100)  # lighter: red text on the dark overlay plate
FLAG_FRAME = 3


@dataclass(frozen=True)
class Theme:
    background: tuple
    text: tuple
    muted: tuple  # scene number / seed / candidate part of a caption
    accent: tuple  # frame around a scene's candidates
    border: tuple | None  # frame around every panel (comic-book look), or none


THEMES = {
    "dark": Theme((24, 24, 24), (230, 230, 230), (150, 170, 200), (80, 150, 240), None),
    "light": Theme((255, 255, 255), (20, 20, 20), (70, 90, 130), (30, 100, 210), (0, 0, 0)),
}


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: scalable built-in font
    except TypeError:  # older Pillow: fixed bitmap font
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap into at most ``max_lines`` lines, an ellipsis where text was cut."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1].rstrip(".") + "…"
    # one very long word; a lone "…" wider than `width` stays (it cannot get shorter)
    while lines and len(lines[-1]) > 1 and draw.textlength(lines[-1], font=font) > width:
        lines[-1] = lines[-1][:-2] + "…"
    return lines


@dataclass(frozen=True)
class Panel:
    """One scene image and what its caption says about it."""

    image: np.ndarray  # uint8 [H, W, 3]
    scene: int  # 1-based scene number
    text: str  # the scene's prompt text (caption)
    candidate: int = 1  # 1-based candidate index within its scene
    candidates: int = 1  # how many candidates the scene has
    seed: int | None = None
    flag: str | None = None  # e.g. "ava 0.21 < 0.30": below a consistency threshold -> marked red


@dataclass(frozen=True)
class PageOptions:
    """How the page is laid out; `make_storyboard` validates every field (ValueError naming it)."""

    style: str = "grid"  # "grid" or "comic"
    columns: int = 3  # grid: cells per row (a scene's candidates are kept together)
    panel_width: int = 384  # grid: cell width; cell height follows the first image's aspect
    gutter: int = 16  # pixels between panels and around the page
    order: str = ""  # "" = script order; else scene numbers, e.g. "3,1,2" (scenes not listed are left out)
    captions: bool = True  # caption under each panel
    caption_lines: int = 2  # lines of caption text under each panel (a flag adds one)
    rows: str = "3,2"  # comic: panels per tier, a repeating pattern such as "2,3,1"
    page_width: int = 1536  # comic: page width; grid ignores it (its width follows columns)
    background: str = "dark"  # "dark" or "light"
    all_candidates: bool = False  # comic: one panel per candidate instead of each scene's first


@dataclass(frozen=True)
class _Slot:
    panel: Panel
    row: int
    cell: tuple[int, int, int, int]  # the whole cell, image area only (left, top, right, bottom)
    box: tuple[int, int, int, int]  # where the image is drawn, inside `cell`
    group: int  # panels of one scene on the page share it


@dataclass(frozen=True)
class _Page:
    size: tuple[int, int]  # (width, height)
    slots: list[_Slot]
    font_size: int
    band: int  # caption band height under every cell (0 without captions)
    line_height: int
    caption_pad: int
    show_candidates: bool


def _check_int(name: str, value) -> int:
    low, high = LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")
    return value


def _rows_pattern(rows: str) -> list[int]:
    """``"3,2"`` -> [3, 2]; a bad pattern is a ValueError naming ``rows``."""
    items = [item.strip() for item in str(rows).split(",")]
    if not all(item.isdigit() and 1 <= int(item) <= MAX_ROW_PANELS for item in items):
        raise ValueError(f"rows must be comma-separated panel counts in 1..{MAX_ROW_PANELS} "
                         f"(e.g. '3,2' or '2,3,1'), got {rows!r}")
    return [int(item) for item in items]


def _order(order: str) -> list[int]:
    """``"3,1,2"`` -> [3, 1, 2]; ``""`` -> [] (script order)."""
    if not str(order).strip():
        return []
    items = [item.strip() for item in str(order).split(",")]
    bad = [item for item in items if not (item.isdigit() and int(item) >= 1)]
    if bad:
        raise ValueError(f"order must be comma-separated scene numbers (e.g. '3,1,2') or empty for script order; "
                         f"{bad[0]!r} in {order!r} is not a scene number")
    numbers = [int(item) for item in items]
    twice = next((n for i, n in enumerate(numbers) if n in numbers[:i]), None)
    if twice is not None:
        raise ValueError(f"order lists scene {twice} twice: {order!r}")
    return numbers


def validate_options(options: PageOptions) -> None:
    """Every field checked, whatever the style, so a bad value never waits for a style switch to surface."""
    if options.style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {options.style!r}")
    if options.background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}, got {options.background!r}")
    for name in LIMITS:
        _check_int(name, getattr(options, name))
    pattern = _rows_pattern(options.rows)
    _order(options.order)
    if options.style == "comic":
        for count in pattern:
            if (options.page_width - (count + 1) * options.gutter) // count < MIN_COMIC_CELL:
                raise ValueError(f"page_width {options.page_width} is too narrow for rows of {count} with gutter "
                                 f"{options.gutter} (panels need {MIN_COMIC_CELL} px)")


def _check_panel(panel: Panel) -> None:
    image = panel.image
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            and image.shape[0] > 0 and image.shape[1] > 0):
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"scene {panel.scene}: a panel image must be uint8 [H, W, 3], got {dtype} {shape}")


def laid_out_panels(panels: Sequence[Panel], options: PageOptions = PageOptions()) -> list[Panel]:
    """The panels the page shows, in page order (the order of `panel_boxes`)."""
    return [panel for group in _groups(panels, options) for panel in group]


def _groups(panels: Sequence[Panel], options: PageOptions) -> list[list[Panel]]:
    """Panels per scene, scenes in page order, candidates by index (comic: first candidate only)."""
    if not panels:
        raise ValueError("no panels")
    validate_options(options)
    for panel in panels:
        _check_panel(panel)
    by_scene: dict[int, list[Panel]] = {}
    for panel in panels:
        by_scene.setdefault(panel.scene, []).append(panel)
    order = _order(options.order)
    for scene in order:
        if scene not in by_scene:
            raise ValueError(f"order names scene {scene}, which is not among the panels "
                             f"(scenes: {', '.join(map(str, by_scene))})")
    groups = [sorted(by_scene[scene], key=lambda p: p.candidate) for scene in (order or by_scene)]
    if options.style == "comic" and not options.all_candidates:
        groups = [group[:1] for group in groups]
    return groups


def _font_size(cell_width: float) -> int:
    return int(min(28, max(11, round(cell_width / 20))))


def _layout(panels: Sequence[Panel], options: PageOptions) -> _Page:
    groups = _groups(panels, options)
    gutter = options.gutter
    placed: list[tuple[Panel, int, int, int]] = []  # panel, row, cell left, group
    if options.style == "grid":
        cell_w = options.panel_width
        first = groups[0][0].image
        cell_h = max(1, round(cell_w * first.shape[0] / first.shape[1]))
        row = col = 0
        for index, group in enumerate(groups):
            if col == options.columns or (col > 0 and col + len(group) > options.columns):
                row, col = row + 1, 0
            for panel in group:
                if col == options.columns:
                    row, col = row + 1, 0
                placed.append((panel, row, col, index))
                col += 1
        columns = max(c for _, _, c, _ in placed) + 1
        widths = {(r, c): cell_w for _, r, c, _ in placed}
        lefts = {(r, c): gutter + c * (cell_w + gutter) for _, r, c, _ in placed}
        page_w = columns * cell_w + (columns + 1) * gutter
        font_size = _font_size(cell_w)
    else:
        pattern = _rows_pattern(options.rows)
        flat = [(panel, index) for index, group in enumerate(groups) for panel in group]
        widths, lefts, start, row = {}, {}, 0, 0
        while start < len(flat):
            count = min(pattern[row % len(pattern)], len(flat) - start)
            base, extra = divmod(options.page_width - (count + 1) * gutter, count)
            x = gutter
            for col in range(count):
                widths[(row, col)] = base + (1 if col < extra else 0)
                lefts[(row, col)] = x
                x += widths[(row, col)] + gutter
                placed.append((flat[start + col][0], row, col, flat[start + col][1]))
            start, row = start + count, row + 1
        natural = [widths[(r, c)] * p.image.shape[0] / p.image.shape[1] for p, r, c, _ in placed]
        cell_h = max(MIN_COMIC_CELL, round(sum(natural) / len(natural)))
        page_w = options.page_width
        font_size = _font_size(sum(widths.values()) / len(widths))
    rows = max(r for _, r, _, _ in placed) + 1
    line_height = round(font_size * 1.3)
    caption_pad = max(4, font_size // 3)
    flagged = any(panel.flag for panel, *_ in placed)
    band = caption_pad + (options.caption_lines + flagged) * line_height if options.captions else 0
    slots = []
    for panel, r, c, group in placed:
        left, top = lefts[(r, c)], gutter + r * (cell_h + band + gutter)
        cell = (left, top, left + widths[(r, c)], top + cell_h)
        if options.style == "grid":
            h, w = panel.image.shape[:2]  # fit inside the cell, aspect kept: the longer side fills it
            if w * cell_h > h * widths[(r, c)]:
                iw, ih = widths[(r, c)], max(1, round(h * widths[(r, c)] / w))
            else:
                iw, ih = max(1, round(w * cell_h / h)), cell_h
            box = (left + (widths[(r, c)] - iw) // 2, top + (cell_h - ih) // 2)
            box = (*box, box[0] + iw, box[1] + ih)
        else:
            box = cell
        slots.append(_Slot(panel, r, cell, box, group))
    page_h = rows * (cell_h + band) + (rows + 1) * gutter
    show_candidates = options.style == "grid" or options.all_candidates
    return _Page((page_w, page_h), slots, font_size, band, line_height, caption_pad, show_candidates)


def panel_boxes(panels: Sequence[Panel], options: PageOptions = PageOptions()) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) of each laid-out panel's image, right/bottom exclusive: the image is
    exactly ``page[top:bottom, left:right]``. Same order as `laid_out_panels`."""
    return [slot.box for slot in _layout(panels, options).slots]


def _caption(panel: Panel, show_candidates: bool) -> tuple[str, str]:
    """(header, full caption): the header (scene, candidate, seed) leads so truncation only cuts prompt text."""
    parts = [str(panel.scene)]
    if show_candidates and panel.candidates > 1:
        parts.append(f"candidate {panel.candidate}/{panel.candidates}")
    if panel.seed is not None:
        parts.append(f"seed {panel.seed}")
    header = " · ".join(parts)
    text = " ".join(panel.text.split())
    return header, f"{header} · {text}" if text else header


def _group_frames(page: _Page, gutter: int) -> list[tuple[int, int, int, int]]:
    """One rectangle per row around the cells (and captions) of a scene shown with several candidates."""
    runs: dict[tuple[int, int], list[_Slot]] = {}
    for slot in page.slots:
        runs.setdefault((slot.group, slot.row), []).append(slot)
    sizes: dict[int, int] = {}
    for slot in page.slots:
        sizes[slot.group] = sizes.get(slot.group, 0) + 1
    margin = max(0, gutter // 2 - 1)  # halfway into the gutter, a pixel closer to its own cells
    frames = []
    for (group, _), slots in runs.items():
        if sizes[group] > 1:
            frames.append((min(s.cell[0] for s in slots) - margin, slots[0].cell[1] - margin,
                           max(s.cell[2] for s in slots) - 1 + margin, slots[0].cell[3] + page.band - 1 + margin))
    return frames


def make_storyboard(panels: Sequence[Panel], options: PageOptions = PageOptions()) -> np.ndarray:
    """The page as uint8 [H, W, 3]. See the module docstring for the layout rules."""
    page = _layout(panels, options)
    theme = THEMES[options.background]
    sheet = Image.new("RGB", page.size, theme.background)
    draw = ImageDraw.Draw(sheet, "RGBA")  # RGBA: the flag overlay blends over the image
    font = _font(page.font_size)
    frame_width = 2 if options.gutter >= 4 else 1
    for frame in _group_frames(page, options.gutter):
        draw.rectangle(frame, outline=theme.accent, width=frame_width)
    for slot in page.slots:
        image = Image.fromarray(np.ascontiguousarray(slot.panel.image), "RGB")
        left, top, right, bottom = slot.box
        size = (right - left, bottom - top)
        if options.style == "grid":
            image = image.resize(size, Image.Resampling.LANCZOS) if image.size != size else image
        else:
            image = ImageOps.fit(image, size, Image.Resampling.LANCZOS, centering=(0.5, 0.5))
        sheet.paste(image, (left, top))
        border = min(2, options.gutter)
        if theme.border is not None and border:
            draw.rectangle((left - border, top - border, right - 1 + border, bottom - 1 + border),
                           outline=theme.border, width=border)
        if slot.panel.flag:
            draw.rectangle((left, top, right - 1, bottom - 1), outline=FLAG_RED, width=FLAG_FRAME)
            if not options.captions:
                _flag_overlay(draw, slot, font, page.line_height)
        if options.captions:
            _draw_caption(draw, slot, page, font, theme, options.caption_lines)
    return np.array(sheet, dtype=np.uint8)


def _draw_caption(draw: ImageDraw.ImageDraw, slot: _Slot, page: _Page, font, theme: Theme, lines: int) -> None:
    left, _, right, bottom = slot.cell
    width, y = right - left, bottom + page.caption_pad
    header, caption = _caption(slot.panel, page.show_candidates)
    for j, line in enumerate(_wrap(draw, caption, font, width, lines)):
        if j == 0 and line.startswith(header):  # header in the muted colour, the prompt in the text colour
            draw.text((left, y), header, fill=theme.muted, font=font)
            draw.text((left + draw.textlength(header, font=font), y), line[len(header):], fill=theme.text, font=font)
        else:
            draw.text((left, y + j * page.line_height), line, fill=theme.text, font=font)
    if slot.panel.flag:
        for line in _wrap(draw, f"! {slot.panel.flag}", font, width, 1):
            draw.text((left, y + lines * page.line_height), line, fill=FLAG_RED, font=font)


def _flag_overlay(draw: ImageDraw.ImageDraw, slot: _Slot, font, line_height: int) -> None:
    """Flag text over the panel's top-left corner (captions off), on a dark translucent plate to stay legible."""
    left, top, right, bottom = slot.box
    inset, pad = FLAG_FRAME + 2, 3
    lines = _wrap(draw, f"! {slot.panel.flag}", font, max(1, right - left - 2 * (inset + pad)), 2)
    width = max(draw.textlength(line, font=font) for line in lines)
    plate = (left + inset, top + inset, min(right - 1 - FLAG_FRAME, round(left + inset + width + 2 * pad)),
             min(bottom - 1 - FLAG_FRAME, top + inset + len(lines) * line_height + pad))
    draw.rectangle(plate, fill=(0, 0, 0, 170))
    for j, line in enumerate(lines):
        draw.text((left + inset + pad, top + inset + pad // 2 + j * line_height), line, fill=FLAG_ON_IMAGE, font=font)
