"""Render docs/images/storyboard-example.png: what StoryMaker Storyboard's page looks like.

    python scripts/storyboard_example.py docs/images/storyboard-example.png

The panels are the shipped example references (stories/refs), recoloured: a layout illustration, not model
output (no weights can be downloaded where the docs are built). One scene has three candidates (framed
together), one candidate is flagged by the consistency scores (red frame and reason).
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from storymaker_core.storyboard import PageOptions, Panel, make_storyboard  # noqa: E402


def tinted(image: np.ndarray, rgb, mirror: bool = False) -> np.ndarray:
    out = (image.astype(np.float32) * 0.7 + np.array(rgb, np.float32) * 0.3).astype(np.uint8)
    return np.ascontiguousarray(out[:, ::-1]) if mirror else out


def main(out: str) -> None:
    ava, ben = (np.array(Image.open(REPO / "stories" / "refs" / f"{n}.png").convert("RGB")) for n in ("ava", "ben"))
    rain = "ava walking down a rainy street at dusk, red umbrella"
    panels = [Panel(ava, 1, "ava drinking coffee in a sunny kitchen, morning light", seed=1000),
              Panel(tinted(ava, (60, 120, 255)), 2, rain, candidate=1, candidates=3, seed=42),
              Panel(tinted(ava, (255, 150, 60), True), 2, rain, candidate=2, candidates=3, seed=43),
              Panel(tinted(ben, (60, 255, 120)), 2, rain, candidate=3, candidates=3, seed=44, flag="ava 0.21 < 0.30"),
              Panel(ben, 3, "ben reading a newspaper on a bench", seed=2417),
              Panel(tinted(ben, (200, 60, 200), True), 4, "ben and ava on a rooftop at night, city lights", seed=808)]
    Image.fromarray(make_storyboard(panels, PageOptions(columns=4, panel_width=256))).save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(REPO / "docs" / "images" / "storyboard-example.png"))
