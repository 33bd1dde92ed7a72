"""What a story rendered in the editor is: the images of its output batch, each with the scene that made it.

The story node returns these records beside its IMAGE batch (same order, one record per image), so the
nodes after it (storyboard, consistency scores) know each image's scene, candidate, seed, cast and regions
without parsing the script again.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class RenderedPanel:
    """One image of the story's IMAGE batch."""

    scene: int  # 1-based scene number
    candidate: int  # 1-based candidate index within its scene
    candidates: int  # how many candidates the scene has
    seed: int
    text: str  # the scene's prompt text (tags replaced, no shared prefix/suffix)
    source: str  # the script line as written
    cast: tuple  # names on stage, slot order (slot 1 = leftmost)
    layout: tuple  # one region spec per on-stage character ("full", "left", "mask1", ...)
    file: str  # where it was saved, relative to ComfyUI's output folder
    # float32 [H, W] 0..1 per on-stage character at the render size; None = the whole image (layout "full")
    regions: tuple = field(default=(), compare=False, repr=False)
    flag: Optional[str] = None  # set by the consistency node: why the panel is below its threshold


@dataclass(frozen=True)
class StoryRender:
    """A story as rendered: its name, size and panels (in the IMAGE batch's order)."""

    name: str
    width: int
    height: int
    panels: tuple  # RenderedPanel, one per image

    def with_flags(self, flags: list) -> "StoryRender":
        """The same story with one flag (or None) per panel."""
        if len(flags) != len(self.panels):
            raise ValueError(f"got {len(flags)} flags for {len(self.panels)} panels")
        return replace(self, panels=tuple(replace(p, flag=f) for p, f in zip(self.panels, flags)))


def region_or_whole(panel: RenderedPanel, slot: int, height: int, width: int) -> np.ndarray:
    """float32 [H, W] region of the on-stage character in `slot` (0-based); the whole image without one."""
    region = panel.regions[slot] if slot < len(panel.regions) else None
    return np.ones((height, width), np.float32) if region is None else np.asarray(region, np.float32)
