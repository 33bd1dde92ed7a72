"""Write the example stories' reference photos and masks (public-domain photos shipped with scikit-image).

    python scripts/make_example_refs.py

ava = scikit-image's `astronaut` (NASA portrait of Eileen Collins), ben = its `camera` (cameraman);
masks are hand-drawn polygons around each person, region masks split the frame in halves.
"""

from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage import data

STORIES = Path(__file__).resolve().parents[1] / "stories"


def polygon_mask(shape, polygons, ellipses=()):
    mask = np.zeros(shape, np.uint8)
    for points in polygons:
        cv2.fillPoly(mask, [np.array(points, np.int32)], 255)
    for center, axes in ellipses:
        cv2.ellipse(mask, center, axes, 0, 0, 360, 255, -1)
    return mask


def main():
    refs, masks = STORIES / "refs", STORIES / "masks"
    refs.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.astronaut()).save(refs / "ava.png")
    Image.fromarray(polygon_mask((512, 512), [[(110, 160), (310, 160), (350, 300), (365, 511), (20, 511), (30, 300), (90, 220)]],
                                 [((225, 105), (78, 98))])).save(refs / "ava-mask.png")
    Image.fromarray(np.repeat(data.camera()[..., None], 3, axis=2)).save(refs / "ben.png")
    Image.fromarray(polygon_mask((512, 512), [[(150, 70), (270, 70), (285, 150), (335, 170), (335, 235), (285, 300),
                                               (150, 511), (0, 511), (0, 230), (90, 140), (150, 110)]])).save(refs / "ben-mask.png")
    left = np.zeros((960, 1280), np.uint8)
    left[:, :640] = 255
    Image.fromarray(left).save(masks / "left-half.png")
    Image.fromarray(255 - left).save(masks / "right-half.png")


if __name__ == "__main__":
    main()
