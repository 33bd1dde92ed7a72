"""Left-to-right region masks for shots with two or three characters.

StoryMaker Apply's ``mask_N`` keeps character N's image tokens inside its region. ViStoryBench gives no
positions, so the converter splits the image into equal vertical bands in the order the shot lists its
characters: halves for two (left, right), thirds for three (left, middle, right). White = the region.
The bands come from ``storymaker_core.regions`` (the story script's ``halves``/``thirds`` are the same
columns).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..._core import regions as _regions  # storymaker_core's, beside this package (storymaker/_core.py)

region_bands = _regions.region_bands  # the one definition, shared with the story script's layouts

__all__ = ["REGION_NAMES", "region_bands", "write_region_masks"]

#: characters in the shot -> value names of their region masks, slot order (left to right)
REGION_NAMES = {2: ("left_half", "right_half"), 3: ("left_third", "middle_third", "right_third")}


def write_region_masks(folder: Path, width: int, height: int) -> dict[str, Path]:
    """Write every region mask (RGB PNG, the render size) to ``folder``; return value name -> file."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for count, names in REGION_NAMES.items():
        for name, mask in zip(names, region_bands(width, height, count)):
            path = folder / f"{name.replace('_', '-')}.png"
            Image.fromarray(np.repeat(mask[:, :, None], 3, axis=2)).save(path)
            files[name] = path
    return files
