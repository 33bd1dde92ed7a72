"""Build a StoryMaker training set from a folder of images: `python -m training.prepare IMAGES OUT [...]`.

Per image it writes the per-character instance masks, ArcFace embeddings, face keypoints, the character
order (left to right by mask centre, which is the position slot the model learns), the caption and the
pose map, and appends one JSON line to `OUT/manifest.jsonl`. Anything it cannot use -- an image, a
mask, a face -- goes to `OUT/rejected.jsonl` with the reason; nothing is dropped silently. Re-running
continues where it stopped (images already in either file are skipped).

Inputs, by file stem (`IMAGES/sub/001.jpg` -> id `sub__001`):
* captions: `IMAGES/sub/001.txt` (or `--captions DIR/sub/001.txt`); none -> empty caption (counted);
* masks (`--masks DIR`): `001.png` with one colour per character (the release's blue/green/red masks,
  a grey-level label map, or a single white mask), or `001_0.png`, `001_1.png`, ... one per character.
  Without a mask file, Segment Anything (`--sam CHECKPOINT`) segments each face's person;
* poses (`--poses DIR`): `001.png`; or `--openpose` runs controlnet_aux's OpenPose detector;
* faces: insightface `buffalo_l` from `--insightface-root` (ComfyUI/models/insightface).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass
class PrepareOptions:
    images: str
    output: str
    masks: Optional[str] = None
    poses: Optional[str] = None
    captions: Optional[str] = None
    min_side: int = 512  # shorter image side, px
    min_face: int = 32  # shorter face-box side, px
    min_score: float = 0.5  # detector score
    max_characters: int = 3
    min_mask_fraction: float = 0.002  # mask colours covering less of the image are edge noise


@dataclass
class Summary:
    accepted: int = 0
    rejected_images: int = 0
    rejected_faces: int = 0
    skipped_existing: int = 0
    missing_captions: int = 0
    reasons: dict = field(default_factory=dict)


class Rejected(Exception):
    """This image cannot be used, for the stated reason."""


def image_id(path: Path, root: Path) -> str:
    return str(path.relative_to(root).with_suffix("")).replace(os.sep, "__")


def _find(folder: Optional[str], rel: Path, suffixes: tuple) -> Optional[Path]:
    if not folder:
        return None
    for s in suffixes:
        p = Path(folder) / rel.with_suffix(s)
        if p.is_file():
            return p
    return None


def read_user_masks(folder: Optional[str], rel: Path, hw: tuple, min_fraction: float) -> tuple:
    """(list of bool [H, W] masks, notes). One file with a colour per character, or `<stem>_<k>.png`."""
    if not folder:
        return [], []
    notes, masks = [], []
    single = _find(folder, rel, (".png", ".webp", ".bmp"))
    own = re.compile(re.escape(rel.stem) + r"_(\d+)\.png$")  # shot_1.png, shot_2.png; not take_2_final.png
    numbered = [(int(m.group(1)), p) for p in Path(folder, rel.parent).glob(rel.stem + "_*.png")
                if (m := own.fullmatch(p.name))]
    files = [single] if single else [p for _, p in sorted(numbered)]
    for f in files:
        with Image.open(f) as im:
            array = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))  # upright, as the image is read
        if array.shape[:2] != hw:
            if abs(array.shape[1] / array.shape[0] - hw[1] / hw[0]) > 0.02 * hw[1] / hw[0]:
                raise Rejected(f"mask {f.name} is {array.shape[1]}x{array.shape[0]} but the image is {hw[1]}x{hw[0]}: "
                               f"another aspect ratio, so it was drawn for another picture or orientation")
            notes.append(f"{f.name} is {array.shape[1]}x{array.shape[0]}, resized to the image")
            array = np.asarray(Image.fromarray(array).resize((hw[1], hw[0]), Image.NEAREST))
        if single:
            colours, counts = np.unique(array.reshape(-1, 3), axis=0, return_counts=True)
            for colour, count in zip(colours, counts):
                if not colour.any():
                    continue
                if count < min_fraction * array.shape[0] * array.shape[1]:
                    notes.append(f"{f.name}: colour {tuple(int(v) for v in colour)} covers only {count} px, ignored")
                    continue
                masks.append((array == colour).all(axis=2))
        else:
            masks.append(array.max(axis=2) > 127)
    return masks, notes


def _face_centre(face) -> np.ndarray:
    return np.asarray(face.kps, np.float64)[:3].mean(axis=0)  # between eyes and nose


def _inside(mask: np.ndarray, point: np.ndarray) -> bool:
    x, y = int(round(point[0])), int(round(point[1]))
    return 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and bool(mask[y, x])


def make_disjoint(masks: list, centres: list) -> list:
    """Pixels claimed by several masks go to the mask whose face centre is nearest."""
    stack = np.stack(masks)  # [N, H, W]
    overlap = stack.sum(0) > 1
    if not overlap.any():
        return masks
    ys, xs = np.nonzero(overlap)
    d = np.stack([(xs - c[0]) ** 2 + (ys - c[1]) ** 2 for c in centres])  # [N, P]
    d = np.where(stack[:, ys, xs], d, np.inf)
    owner = d.argmin(0)
    for k in range(len(masks)):
        stack[k, ys, xs] = owner == k
    return list(stack)


class Preparer:
    """Does the per-image work; `analyzer.detect(rgb) -> [DetectedFace]` (storymaker_core.faces) and
    `segmenter.segment(rgb, box) -> bool mask` (storymaker_core.segment) are injected, so tests and other
    detectors plug in."""

    def __init__(self, options: PrepareOptions, analyzer, segmenter=None, pose_detector=None):
        self.o, self.analyzer, self.segmenter, self.pose_detector = options, analyzer, segmenter, pose_detector
        self.root, self.out = Path(options.images), Path(options.output)

    def faces(self, image: np.ndarray, face_rejects: list) -> list:
        usable = []
        for i, f in enumerate(self.analyzer.detect(image)):
            side = min(f.bbox[2] - f.bbox[0], f.bbox[3] - f.bbox[1])
            if f.det_score < self.o.min_score:
                face_rejects.append((i, f"detection score {f.det_score:.2f} < {self.o.min_score}"))
            elif side < self.o.min_face:
                face_rejects.append((i, f"face too small ({side:.0f} px < {self.o.min_face} px)"))
            else:
                usable.append((i, f))
        return usable

    def characters(self, image: np.ndarray, rel: Path, faces: list, face_rejects: list, notes: list) -> list:
        """[(mask, face)] for each character, in no particular order yet."""
        hw = image.shape[:2]
        masks, mask_notes = read_user_masks(self.o.masks, rel, hw, self.o.min_mask_fraction)
        notes += mask_notes
        if not masks:
            if self.segmenter is None:
                raise Rejected("no mask file and no Segment Anything checkpoint (--sam) to make one")
            if not faces:
                raise Rejected("no usable face")
            if len(faces) > self.o.max_characters:
                raise Rejected(f"{len(faces)} usable faces; at most {self.o.max_characters} characters per image")
            from storymaker_core.characters import person_box_from_face

            pairs = []
            for i, f in faces:
                m = np.asarray(self.segmenter.segment(image, person_box_from_face(f.bbox, hw)), bool)
                if not m.any():
                    raise Rejected(f"Segment Anything found no person for face {i}")
                pairs.append((m, (i, f)))
        else:
            if len(masks) > self.o.max_characters:
                raise Rejected(f"{len(masks)} character masks; at most {self.o.max_characters}")
            pairs, used = [], {}
            for k, m in enumerate(masks):
                inside = [(i, f) for i, f in faces if _inside(m, _face_centre(f))]
                if not inside:
                    raise Rejected(f"mask {k} contains no usable face (every character needs a detectable face)")
                i, f = max(inside, key=lambda item: item[1].area)
                if i in used:
                    raise Rejected(f"masks {used[i]} and {k} contain the same face {i}")
                used[i] = k
                pairs.append((m, (i, f)))
            for i, _ in faces:
                if i not in used:
                    face_rejects.append((i, "face outside every character mask (not a character)"))
        disjoint = make_disjoint([m for m, _ in pairs], [_face_centre(f) for _, (_, f) in pairs])
        for (_, (i, f)), d in zip(pairs, disjoint):
            if not _inside(d, _face_centre(f)):
                raise Rejected(f"face {i} is not inside its own character mask after resolving overlaps")
        return [(d, face) for d, (_, face) in zip(disjoint, pairs)]

    def process(self, path: Path) -> tuple:
        """-> (manifest record or None, [(face index or None, reason)], notes)."""
        rel = path.relative_to(self.root)
        iid = image_id(path, self.root)
        face_rejects, notes = [], []
        try:
            with Image.open(path) as im:
                image = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        except Exception as e:  # noqa: BLE001 - any decoder failure is "cannot read this file"
            return None, [(None, f"unreadable image ({type(e).__name__}: {e})")], notes
        h, w = image.shape[:2]
        try:
            if min(h, w) < self.o.min_side:
                raise Rejected(f"image too small ({w}x{h}; shorter side < {self.o.min_side} px)")
            chars = self.characters(image, rel, self.faces(image, face_rejects), face_rejects, notes)
        except Rejected as e:
            return None, face_rejects + [(None, str(e))], notes
        chars.sort(key=lambda item: float(np.nonzero(item[0])[1].mean()))  # left to right by mask centre
        return self.write(iid, path, rel, image, chars, notes), face_rejects, notes

    def write(self, iid: str, path: Path, rel: Path, image: np.ndarray, chars: list, notes: list) -> dict:
        (self.out / "masks").mkdir(parents=True, exist_ok=True)
        (self.out / "faces").mkdir(parents=True, exist_ok=True)
        characters = []
        for k, (mask, (i, face)) in enumerate(chars):
            mask_path = self.out / "masks" / f"{iid}_{k}.png"
            Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
            characters.append({"mask": f"masks/{iid}_{k}.png", "face_index": i,
                               "bbox": [round(float(v), 2) for v in face.bbox],
                               "kps": [[round(float(x), 2), round(float(y), 2)] for x, y in face.kps],
                               "det_score": round(float(face.det_score), 4)})
        np.save(self.out / "faces" / f"{iid}.npy", np.stack([f.embedding for _, (_, f) in chars]).astype(np.float32))
        beside = path.with_suffix(".txt")
        caption_file = _find(self.o.captions, rel, (".txt",)) or (beside if beside.is_file() else None)
        caption = caption_file.read_text(encoding="utf-8").strip() if caption_file else ""
        return {"id": iid, "image": os.path.relpath(path, self.out), "width": int(image.shape[1]),
                "height": int(image.shape[0]), "caption": caption, "caption_missing": caption_file is None,
                "characters": characters, "embeddings": f"faces/{iid}.npy", "pose": self.pose(iid, rel, image),
                "notes": notes}

    def pose(self, iid: str, rel: Path, image: np.ndarray) -> Optional[str]:
        given = _find(self.o.poses, rel, (".png", ".jpg", ".jpeg", ".webp"))
        if given:
            return os.path.relpath(given, self.out)
        if self.pose_detector is None:
            return None
        (self.out / "poses").mkdir(parents=True, exist_ok=True)
        pose = self.pose_detector(Image.fromarray(image))
        pose = pose if isinstance(pose, Image.Image) else Image.fromarray(np.asarray(pose))
        pose.save(self.out / "poses" / f"{iid}.png")
        return f"poses/{iid}.png"


def _done_ids(out: Path) -> tuple:
    done, seen_rejects = set(), set()
    for name in ("manifest.jsonl", "rejected.jsonl"):
        p = out / name
        if p.is_file():
            for line in p.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    if name == "manifest.jsonl" or r.get("face") is None:
                        done.add(r["id"])
                    if name == "rejected.jsonl":
                        seen_rejects.add((r["id"], r.get("face"), r["reason"]))
    return done, seen_rejects


def build_dataset(options: PrepareOptions, analyzer, segmenter=None, pose_detector=None,
                  progress: bool = True) -> Summary:
    """Process every image not yet in the manifest or the rejects; append results as they come."""
    from tqdm.auto import tqdm

    root, out = Path(options.images), Path(options.output)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such image folder")
    out.mkdir(parents=True, exist_ok=True)
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                    and out.resolve() not in p.resolve().parents)
    done, seen_rejects = _done_ids(out)
    preparer, summary = Preparer(options, analyzer, segmenter, pose_detector), Summary()
    with open(out / "manifest.jsonl", "a") as manifest, open(out / "rejected.jsonl", "a") as rejected:
        for path in tqdm(images, desc="preparing", unit="image", disable=not progress):
            iid = image_id(path, root)
            if iid in done:
                summary.skipped_existing += 1
                continue
            record, rejects, _ = preparer.process(path)
            for face, reason in rejects:  # written before the manifest line: a crash re-does the image
                if (iid, face, reason) not in seen_rejects:
                    rejected.write(json.dumps({"id": iid, "image": str(path), "face": face, "reason": reason}) + "\n")
                key = reason.split(" (")[0].split(":")[0]
                summary.reasons[key] = summary.reasons.get(key, 0) + 1
                if face is None:
                    summary.rejected_images += 1
                else:
                    summary.rejected_faces += 1
            rejected.flush()
            if record is not None:
                manifest.write(json.dumps(record) + "\n")
                manifest.flush()
                os.fsync(manifest.fileno())
                summary.accepted += 1
                summary.missing_captions += record["caption_missing"]
    return summary


def _openpose(path: Optional[str]):
    try:
        from controlnet_aux import OpenposeDetector
    except ImportError as e:
        raise SystemExit(f"--openpose needs controlnet_aux ({e}): pip install controlnet-aux") from e
    return OpenposeDetector.from_pretrained(path or "lllyasviel/Annotators")


def main(argv: Optional[list] = None, prog: str = "python -m training.prepare") -> int:
    """``python -m storymaker prepare`` (``prog``: that name), or ``python -m training.prepare``."""
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"example:\n  {prog} photos/ runs/my-data --sam ComfyUI/models/sams/sam_vit_b_01ec64.pth "
               f"--insightface-root ComfyUI/models/insightface")
    p.add_argument("images", help="folder of images (searched recursively)")
    p.add_argument("output", help="dataset folder (manifest.jsonl, rejected.jsonl, masks/, faces/, poses/)")
    p.add_argument("--masks", help="folder of masks named like the images")
    p.add_argument("--poses", help="folder of pose maps named like the images")
    p.add_argument("--captions", help="folder of .txt captions (default: beside the images)")
    p.add_argument("--sam", help="Segment Anything checkpoint for images without masks (models/sams/...)")
    p.add_argument("--openpose", nargs="?", const="", default=None, help="detect pose maps (controlnet_aux), "
                   "optionally from a local Annotators folder")
    p.add_argument("--insightface-root", default="models/insightface", help="folder holding models/buffalo_l/")
    p.add_argument("--insightface-model", default="buffalo_l")
    p.add_argument("--providers", default="CUDA,CPU")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu", help="for Segment Anything")
    for name, default in (("min-side", 512), ("min-face", 32), ("max-characters", 3)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--min-score", type=float, default=0.5)
    args = p.parse_args(argv)
    from storymaker_core.faces import FaceAnalysisError, FaceAnalyzer, FaceAnalyzerConfig
    from storymaker_core.segment import PersonSegmenter, SegmentError

    try:
        analyzer = FaceAnalyzer(FaceAnalyzerConfig(root=args.insightface_root, name=args.insightface_model,
                                                   providers=args.providers))
        segmenter = PersonSegmenter(args.sam, device=args.device) if args.sam else None
    except (FaceAnalysisError, SegmentError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    options = PrepareOptions(args.images, args.output, args.masks, args.poses, args.captions, args.min_side,
                             args.min_face, args.min_score, args.max_characters)
    pose = _openpose(args.openpose or None) if args.openpose is not None else None
    s = build_dataset(options, analyzer, segmenter, pose)
    print(f"{s.accepted} images added, {s.skipped_existing} already done, {s.rejected_images} images and "
          f"{s.rejected_faces} faces rejected (see {Path(args.output) / 'rejected.jsonl'}), "
          f"{s.missing_captions} without caption")
    for reason, n in sorted(s.reasons.items(), key=lambda kv: -kv[1]):
        print(f"  {n:6d}  {reason}")
    return 0


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
