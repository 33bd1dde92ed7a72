"""A toy dataset that needs no photos and no face models: `python -m training.toy OUT [--images 16]`.

Why: the tiny config, the tests and the throughput benchmark must run the real dataset builder and the
real data pipeline on a laptop or a CI runner. Each toy image holds one or two "characters": a coloured
body with a white square face. `ToyFaceAnalyzer` stands in for insightface: it finds the white squares,
gives them 5 keypoints laid out like ArcFace's template, and an identity embedding that depends only on
the body colour (so a character keeps its "identity" across images). Masks are written in the release's
colour-coded format (blue, green, red per character).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from PIL import Image

from storymaker_core.faces import DetectedFace
from storymaker_core.preprocess import ARCFACE_TEMPLATE_112

BODY_COLOURS = [(200, 40, 40), (40, 160, 60), (50, 70, 200), (220, 170, 30), (150, 60, 170), (30, 170, 170)]
MASK_COLOURS = [(0, 0, 255), (0, 255, 0), (255, 0, 0)]  # the release's slot colours (RGB)
FACE_FRACTION = 0.16  # face side / image side


def identity_embedding(colour) -> np.ndarray:
    """A fixed unit vector [512] per body colour: the toy "ArcFace" identity."""
    rng = np.random.default_rng(list(int(c) for c in colour))
    v = rng.standard_normal(512).astype(np.float32)
    return v / np.linalg.norm(v)


def toy_scene(size: int, num_characters: int, rng: np.random.Generator) -> tuple:
    """(RGB uint8 [size, size, 3], colour-coded mask [size, size, 3], caption)."""
    yy, xx = np.mgrid[0:size, 0:size]
    base = rng.integers(60, 120)
    image = np.stack([base + 40 * xx / size, base + 30 * yy / size, np.full_like(xx, base, dtype=float)], -1)
    image = image.astype(np.uint8)
    mask = np.zeros_like(image)
    colours = rng.choice(len(BODY_COLOURS), size=num_characters, replace=False)
    face = int(size * FACE_FRACTION)
    slot_w = size // num_characters
    words = []
    for k, c in enumerate(colours):
        cx = int(slot_w * k + slot_w / 2 + rng.integers(-slot_w // 8, slot_w // 8 + 1))
        top = int(size * 0.15 + rng.integers(0, size // 10))
        body_w = int(slot_w * rng.uniform(0.45, 0.7))
        x0, x1 = max(cx - body_w // 2, 1), min(cx + body_w // 2, size - 2)
        body_top = top + face
        region = np.zeros((size, size), bool)
        region[body_top:size - 2, x0:x1] = True
        fx0 = cx - face // 2
        region[top:body_top, fx0:fx0 + face] = True
        image[region] = BODY_COLOURS[c]
        image[top + 1:body_top - 1, fx0 + 1:fx0 + face - 1] = 255  # the white face
        mask[region] = MASK_COLOURS[k]
        words.append(["red", "green", "blue", "yellow", "purple", "teal"][c])
    caption = " and ".join(f"a {w} character" for w in words) + " standing side by side"
    return image, mask, caption


class ToyFaceAnalyzer:
    """`detect(rgb) -> [DetectedFace]` for toy images (white squares), largest first."""

    def __init__(self, min_area: int = 16):
        self.min_area = min_area

    def detect(self, image_rgb_uint8: np.ndarray, image_name: str = "image") -> list:
        white = (image_rgb_uint8 == 255).all(axis=2).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(white, connectivity=4)
        faces = []
        for x, y, w, h, area in stats[1:]:
            if area < self.min_area:
                continue
            kps = ARCFACE_TEMPLATE_112 / 112.0 * np.array([w, h]) + np.array([x, y])
            below = image_rgb_uint8[min(y + h + 2, image_rgb_uint8.shape[0] - 1), x + w // 2]
            faces.append(DetectedFace(bbox=np.array([x, y, x + w, y + h], np.float32), kps=kps.astype(np.float32),
                                      embedding=identity_embedding(below), det_score=0.99))
        return sorted(faces, key=lambda f: f.area, reverse=True)


def toy_pose(mask: np.ndarray) -> np.ndarray:
    """An OpenPose-like map for a toy image: a coloured vertical "spine" through each character."""
    pose = np.zeros_like(mask)
    for k, colour in enumerate(MASK_COLOURS):
        ys, xs = np.nonzero((mask == colour).all(axis=2))
        if len(xs):
            cx = int(xs.mean())
            pose[ys.min():ys.max() + 1, max(cx - 1, 0):cx + 2] = (255, 128 + 60 * k, 60 * k)
    return pose


def write_toy_images(folder: str, count: int = 8, size: int = 128, seed: int = 0,
                     masks_folder: Optional[str] = None, characters: Optional[int] = None,
                     poses_folder: Optional[str] = None) -> Path:
    """`count` toy images (`characters` each, or 1 and 2 alternating) with captions and colour-coded masks
    (and pose maps when `poses_folder` is given)."""
    folder = Path(folder)
    masks = Path(masks_folder) if masks_folder else folder.parent / (folder.name + "-masks")
    folder.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        image, mask, caption = toy_scene(size, characters or 1 + i % 2, rng)
        Image.fromarray(image).save(folder / f"toy_{i:04d}.png")
        Image.fromarray(mask).save(masks / f"toy_{i:04d}.png")
        (folder / f"toy_{i:04d}.txt").write_text(caption)
        if poses_folder:
            Path(poses_folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(toy_pose(mask)).save(Path(poses_folder) / f"toy_{i:04d}.png")
    return masks


def build_toy_dataset(output: str, count: int = 8, size: int = 128, seed: int = 0, progress: bool = False,
                      characters: Optional[int] = None, poses: bool = False) -> Path:
    """Toy images + `training.prepare` with the toy face analyzer -> `output/dataset/manifest.jsonl`."""
    from .prepare import PrepareOptions, build_dataset

    out = Path(output)
    poses = str(out / "poses") if poses else None
    masks = write_toy_images(str(out / "images"), count, size, seed, str(out / "masks"), characters, poses)
    options = PrepareOptions(images=str(out / "images"), output=str(out / "dataset"), masks=str(masks),
                             poses=poses, min_side=min(64, size), min_face=4)
    summary = build_dataset(options, ToyFaceAnalyzer(), progress=progress)
    if summary.accepted + summary.skipped_existing < count:
        raise RuntimeError(f"toy dataset: only {summary.accepted} of {count} images accepted ({summary.reasons})")
    return out / "dataset" / "manifest.jsonl"


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.toy", description=__doc__.split("\n\n")[0])
    p.add_argument("output", help="folder for images/, masks/ and dataset/manifest.jsonl")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--characters", type=int, choices=(1, 2, 3), help="per image (default: 1 and 2 alternating)")
    p.add_argument("--poses", action="store_true", help="also write pose maps (for the ControlNet option)")
    args = p.parse_args(argv)
    print(build_toy_dataset(args.output, args.images, args.size, args.seed, progress=True, characters=args.characters,
                            poses=args.poses))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
