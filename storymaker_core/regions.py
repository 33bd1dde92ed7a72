"""Where each character of a scene may appear: named regions of the image and their masks.

Apply StoryMaker's ``mask_N`` keeps character N's image tokens inside a region (white = inside). A story
script names regions (``left``, ``middle-third``, ``0-0.6``, ...) instead of drawing masks; this module is
the one place that knows those names and turns them into masks at the render size, so the script
parser, the story node and the ViStoryBench converter agree column for column.

Region names (case-insensitive; :func:`normalise_region` gives the canonical spelling):

- ``full``: the whole image (no mask: the character may appear anywhere);
- ``left``, ``right``: vertical halves; ``left-third``, ``middle-third``, ``right-third``: vertical thirds;
- ``top``, ``bottom``: horizontal halves;
- ``A-B``: the columns from ``round(width*A)`` to ``round(width*B)``, ``0 <= A < B <= 1`` (``0-0.6``);
- ``maskN``: the N-th MASK the artist connected (1-based); resolved by the caller, not here.
"""

from __future__ import annotations

import difflib
import re
from decimal import Decimal, InvalidOperation
from typing import Optional, Sequence

import numpy as np

__all__ = [
    "NAMED_REGIONS",
    "normalise_region",
    "region_bands",
    "region_mask",
    "region_masks",
    "user_mask_index",
]

#: every fixed region name, in the order an error message lists them
NAMED_REGIONS = ("full", "left", "right", "left-third", "middle-third", "right-third", "top", "bottom")

#: fixed name -> (axis, band count, band index): axis 1 = columns (vertical bands), 0 = rows
_BANDS = {
    "left": (1, 2, 0),
    "right": (1, 2, 1),
    "left-third": (1, 3, 0),
    "middle-third": (1, 3, 1),
    "right-third": (1, 3, 2),
    "top": (0, 2, 0),
    "bottom": (0, 2, 1),
}

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_SPAN = re.compile(rf"({_NUMBER})-({_NUMBER})")
_USER_MASK = re.compile(r"mask(\d+)")


def region_bands(width: int, height: int, count: int) -> list[np.ndarray]:
    """``count`` masks [height, width] (uint8, 255 inside): equal vertical bands, left to right, that
    together cover every column exactly once."""
    edges = [round(width * i / count) for i in range(count + 1)]
    masks = []
    for left, right in zip(edges, edges[1:]):
        mask = np.zeros((height, width), np.uint8)
        mask[:, left:right] = 255
        masks.append(mask)
    return masks


def _decimal_text(number: Decimal) -> str:
    """``0.60`` -> ``0.6``, ``1.0`` -> ``1``, ``.5`` -> ``0.5``: one spelling per value, never an exponent."""
    text = format(number.normalize(), "f")
    return text if "." not in text else text.rstrip("0").rstrip(".")


def normalise_region(spec: str) -> str:
    """The canonical spelling of one region name (lower case, spans as ``A-B`` with plain decimals,
    ``mask01`` -> ``mask1``); a ValueError that says what to write instead for anything else."""
    text = str(spec).strip().lower()
    if text in NAMED_REGIONS:
        return text
    mask = _USER_MASK.fullmatch(text)
    if mask:
        number = int(mask.group(1))
        if number < 1:
            raise ValueError(f"'{spec}' is no MASK: MASKs are numbered from 1; write mask1 for the first one")
        return f"mask{number}"
    span = _SPAN.fullmatch(text)
    if span:
        try:
            start, end = Decimal(span.group(1)), Decimal(span.group(2))
        except InvalidOperation:  # pragma: no cover - the pattern admits only plain decimals
            start = end = Decimal(-1)
        if not (0 <= start < end <= 1):
            raise ValueError(
                f"'{spec}' is no span of the width: it needs 0 <= A < B <= 1; write e.g. 0-0.6 or 0.4-1"
            )
        return f"{_decimal_text(start)}-{_decimal_text(end)}"
    close = difflib.get_close_matches(text, NAMED_REGIONS, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise ValueError(
        f"'{spec}' is not a region; {hint}write one of {', '.join(NAMED_REGIONS)}, "
        f"a span of the width such as 0-0.6, or maskN for the N-th connected MASK"
    )


def user_mask_index(spec: str) -> Optional[int]:
    """N (1-based) for ``maskN``, None for any other region: the caller resolves those masks."""
    match = _USER_MASK.fullmatch(normalise_region(spec))
    return int(match.group(1)) if match else None


def region_mask(spec: str, width: int, height: int) -> np.ndarray:
    """The mask [height, width] (float32, 1 inside, 0 outside) of one region name. Halves and thirds are
    exactly :func:`region_bands`; spans use the same rounding. ``maskN`` is a ValueError: it is an image
    the artist connected, which only the caller has."""
    name = normalise_region(spec)
    if width < 1 or height < 1:
        raise ValueError(f"region masks need a positive size, got {width}x{height}")
    if _USER_MASK.fullmatch(name):
        raise ValueError(f"'{name}' is a MASK the artist connected: the caller resolves it, not region_mask")
    mask = np.zeros((height, width), np.float32)
    if name == "full":
        mask[:] = 1.0
    elif name in _BANDS:
        axis, count, index = _BANDS[name]
        size = width if axis == 1 else height
        edges = [round(size * i / count) for i in range(count + 1)]
        if axis == 1:
            mask[:, edges[index]:edges[index + 1]] = 1.0
        else:
            mask[edges[index]:edges[index + 1], :] = 1.0
    else:
        start_text, end_text = name.split("-")
        left, right = round(width * float(start_text)), round(width * float(end_text))
        if left >= right:
            raise ValueError(
                f"region '{name}' covers no column of an image {width} wide; widen the span"
            )
        mask[:, left:right] = 1.0
    return mask


def region_masks(layout: Sequence[str], width: int, height: int) -> list[Optional[np.ndarray]]:
    """One mask per character of a scene layout (slot order), None for ``full`` (no mask: anywhere)."""
    return [None if normalise_region(spec) == "full" else region_mask(spec, width, height) for spec in layout]
