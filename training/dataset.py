"""The training dataset: manifest records -> tensors for one step, grouped into aspect-ratio buckets.

Why it is built this way:
* Batches hold images of one bucket *and* one character count, so the image-token sequence
  `(N+1)*20` is the same for every row: batch size > 1 works (the release needed batch size 1).
* Every random choice of a sample (null-condition drops, token dropout, crop rotation) comes from a
  generator seeded by `(seed, epoch, index)`, not from worker state, so any number of dataloader workers
  gives the same batches and a resumed run sees exactly the samples it would have seen.
* References are made with `storymaker_core.preprocess` (the inference crops): train and inference
  see the same kind of character crop (mask over white, squashed to 224) and face crop (aligned from the
  original image). The release aligned the training face from the white-composited crop instead.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

from storymaker_core.preprocess import character_composite, face_crop, squash_resize

from .config import DataConfig, DropConfig

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
LATENT_FACTOR = 8  # SDXL VAE downsampling


class DatasetError(ValueError):
    """A manifest or sample that cannot be used, naming the file."""


def make_buckets(resolution: int, step: int = 64, max_aspect: float = 2.0) -> list:
    """`[(height, width), ...]` with area close to resolution^2, sides multiples of `step`."""
    area = resolution * resolution
    buckets = set()
    h = step
    while h <= area // step:
        w = int(area / h) // step * step
        if w >= step and max(h / w, w / h) <= max_aspect:
            buckets.update({(h, w), (w, h)})  # both orientations: landscape reaches the same aspects as portrait
        h += step
    if not buckets:
        raise DatasetError(f"no bucket of area ~{resolution}^2 with sides multiple of {step}")
    return sorted(buckets)


def nearest_bucket(height: int, width: int, buckets: Sequence) -> tuple:
    ratio = math.log(height / width)
    return tuple(min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1])))


def read_manifest(path: str) -> list:
    """Manifest JSONL -> records, each with paths made absolute (they are relative to the manifest)."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{path}: no manifest; build one with `python -m storymaker prepare`")
    root, records = p.parent, []
    for line_no, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            r["image"] = str(root / r["image"])
            r["embeddings"] = str(root / r["embeddings"])
            r["pose"] = str(root / r["pose"]) if r.get("pose") else None
            for c in r["characters"]:
                c["mask"] = str(root / c["mask"])
                c["kps"] = np.asarray(c["kps"], np.float32).reshape(5, 2)
            if not r["characters"]:
                raise ValueError("no characters")
        except (ValueError, KeyError, TypeError) as e:
            raise DatasetError(f"{path}:{line_no}: not a StoryMaker manifest record ({e})") from e
        records.append(r)
    if not records:
        raise DatasetError(f"{path}: the manifest is empty")
    return records


class PackedRecords(Sequence):
    """Manifest records stored as one JSON byte buffer + offsets instead of a list of dicts.

    Every training process and data-loader worker holds the records. Forked workers share the parent's
    memory only until a page is written, and merely reading a Python object writes its reference count:
    a list of dicts is copied into every worker as it is read (hundreds of thousands of records × workers
    × GPUs). Two numpy arrays are never written, so they stay shared; a record is decoded when asked for.
    `benchmarks/dataset_memory.py` measures the difference.
    """

    def __init__(self, records: Sequence[dict]):
        encoded = [json.dumps(r, default=_json_default, separators=(",", ":")).encode() for r in records]
        self._offsets = np.cumsum([0] + [len(e) for e in encoded], dtype=np.int64)
        self._buffer = np.frombuffer(b"".join(encoded), np.uint8) if encoded else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index):
        """A fresh copy of record `index` (a list for a slice): editing it does not change the stored one."""
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        r = json.loads(self._buffer[self._offsets[index]:self._offsets[index + 1]].tobytes())
        for c in r["characters"]:
            c["kps"] = np.asarray(c["kps"], np.float32).reshape(5, 2)
        return r

    @property
    def nbytes(self) -> int:
        return self._buffer.nbytes + self._offsets.nbytes


def _json_default(value):
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _load_rgb(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def _load_mask(path: str, hw: tuple) -> np.ndarray:
    """uint8 0/255 `[H, W]` at the image's size."""
    with Image.open(path) as im:
        m = np.asarray(im.convert("L"))
    if m.shape != hw:
        m = cv2.resize(m, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)
    return np.where(m > 127, 255, 0).astype(np.uint8)


def _union_box(masks: Sequence[np.ndarray]) -> Optional[tuple]:
    """(y0, x0, y1, x1) around every character's mask, or None when all are empty."""
    union = np.any(np.stack(masks) > 0, axis=0) if masks else None
    if union is None or not union.any():
        return None
    rows, cols = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    return rows[0], cols[0], rows[-1] + 1, cols[-1] + 1


def clip_normalise(image_u8: np.ndarray) -> torch.Tensor:
    """uint8 `[224, 224, 3]` -> CLIP-normalised `[3, 224, 224]` float32."""
    x = (image_u8.astype(np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD
    return torch.from_numpy(x.transpose(2, 0, 1).copy())


def resize_and_crop(shape_hw: tuple, bucket: tuple, keep_box: Optional[tuple] = None) -> tuple:
    """Cover the bucket keeping aspect, then crop: (resized (h, w), crop top, crop left).

    The crop is centred (as the release) unless that would cut `keep_box` (y0, x0, y1, x1 in original
    pixels: the characters): then it moves just enough to keep the box, or centres on it when the box is
    larger than the bucket. A character cut out of the target would still have its reference tokens, and
    the attention loss would teach them to attend nowhere.
    """
    h0, w0 = shape_hw
    bh, bw = bucket
    scale = max(bh / h0, bw / w0)
    rh, rw = max(bh, round(h0 * scale)), max(bw, round(w0 * scale))
    top, left = (rh - bh) // 2, (rw - bw) // 2
    if keep_box is not None:
        y0, x0, y1, x1 = (v * scale for v in keep_box)
        top = _keep_inside(top, y0, y1, bh, rh)
        left = _keep_inside(left, x0, x1, bw, rw)
    return (rh, rw), top, left


def _keep_inside(offset: int, lo: float, hi: float, size: int, total: int) -> int:
    """The crop offset nearest `offset` whose window [offset, offset + size) holds [lo, hi)."""
    if hi - lo > size:
        offset = round((lo + hi - size) / 2)
    elif lo < offset:
        offset = math.floor(lo)
    elif hi > offset + size:
        offset = math.ceil(hi - size)
    return int(min(max(offset, 0), total - size))


@dataclass
class Drops:
    image: bool
    text: bool
    face_tokens: bool
    character_tokens: bool


def draw_drops(rng: np.random.Generator, drop: DropConfig) -> Drops:
    """One uniform draw decides image/text/both (release order); token dropouts are independent."""
    u = rng.random()
    image_only, text_only, both = drop.image, drop.image + drop.text, drop.image + drop.text + drop.both
    return Drops(image=u < image_only or text_only <= u < both, text=image_only <= u < both,
                 face_tokens=bool(rng.random() < drop.face_tokens),
                 character_tokens=bool(rng.random() < drop.character_tokens))


class StoryMakerDataset(torch.utils.data.Dataset):
    """Index with `(record index, epoch)`; returns one sample's tensors at its bucket's size."""

    def __init__(self, records: list, data: DataConfig, drop: DropConfig, seed: int = 0,
                 buckets: Optional[Sequence] = None):
        self.data, self.drop, self.seed = data, drop, seed
        self.buckets = [tuple(b) for b in (buckets or data.buckets or
                                           make_buckets(data.resolution, data.bucket_step, data.max_aspect))]
        for b in self.buckets:
            if b[0] % data.bucket_step or b[1] % data.bucket_step:
                raise DatasetError(f"bucket {b} is not a multiple of data.bucket_step={data.bucket_step}")
        too_many = [r["id"] for r in records if len(r["characters"]) > data.max_characters]
        if too_many:
            raise DatasetError(f"{len(too_many)} records have more than {data.max_characters} characters "
                               f"(e.g. {too_many[:3]}); rebuild the dataset or raise data.max_characters")
        bucket_index = {b: i for i, b in enumerate(self.buckets)}
        # per-record numbers in numpy arrays, records packed: nothing per record that workers would copy
        self.bucket_of = np.array([bucket_index[nearest_bucket(r["height"], r["width"], self.buckets)]
                                   for r in records], np.int32)
        self.character_counts = np.array([len(r["characters"]) for r in records], np.int32)
        self.records = records if isinstance(records, PackedRecords) else PackedRecords(records)

    def groups(self) -> dict:
        """(bucket, number of characters) -> record indices: the units a batch is drawn from."""
        out: dict = {}
        for i, (b, n) in enumerate(zip(self.bucket_of.tolist(), self.character_counts.tolist())):
            out.setdefault((self.buckets[b], n), []).append(i)
        return out

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key) -> dict:
        index, epoch = key
        r = self.records[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        try:
            return self._sample(r, self.buckets[self.bucket_of[index]], rng)
        except (OSError, ValueError, cv2.error) as e:
            raise DatasetError(f"record {r['id']} ({r['image']}): {e}") from e

    def _sample(self, r: dict, bucket: tuple, rng: np.random.Generator) -> dict:
        image = _load_rgb(r["image"])  # uint8 [H0, W0, 3]
        h0, w0 = image.shape[:2]
        masks = [_load_mask(c["mask"], (h0, w0)) for c in r["characters"]]
        (rh, rw), top, left = resize_and_crop((h0, w0), bucket, _union_box(masks))
        bh, bw = bucket

        def fit(array: np.ndarray, interpolation) -> np.ndarray:  # to the bucket, as the target image
            return cv2.resize(array, (rw, rh), interpolation=interpolation)[top:top + bh, left:left + bw]

        pixels = fit(image, cv2.INTER_AREA if rh < h0 else cv2.INTER_CUBIC)
        k = self.data.mask_dilate
        loss_masks, char_pixels, face_pixels = [], [], []
        angle_draws = rng.uniform(-1.0, 1.0, size=len(r["characters"]))
        for c, mask, a in zip(r["characters"], masks, angle_draws):
            if k > 0:
                mask = cv2.dilate(mask, np.ones((k, k), np.uint8))
            soft = cv2.GaussianBlur(mask, (5, 5), 0)  # the release's loss mask: dilated, blurred
            loss_masks.append(cv2.resize(fit(soft, cv2.INTER_LINEAR), (bw // LATENT_FACTOR, bh // LATENT_FACTOR),
                                         interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0)
            crop = character_composite(image, mask)  # blur + composite over white, as inference
            if self.data.reference_rotation:
                crop = np.asarray(Image.fromarray(crop).rotate(float(a) * self.data.reference_rotation,
                                                               resample=Image.BICUBIC, fillcolor=(255, 255, 255)))
            char_pixels.append(clip_normalise(squash_resize(crop)))
            face_pixels.append(clip_normalise(face_crop(image, c["kps"])))
        ids = np.load(r["embeddings"]).astype(np.float32).reshape(len(r["characters"]), -1)  # [N, 512]
        drops = draw_drops(rng, self.drop)
        pose = None
        if r.get("pose"):
            pose_image = _load_rgb(r["pose"])
            if pose_image.shape[:2] != (h0, w0):
                pose_image = cv2.resize(pose_image, (w0, h0), interpolation=cv2.INTER_LINEAR)
            pose = torch.from_numpy(fit(pose_image, cv2.INTER_LINEAR).transpose(2, 0, 1).copy()).float() / 255.0
        return {
            "pixel_values": torch.from_numpy(pixels.transpose(2, 0, 1).copy()).float() / 127.5 - 1.0,  # [3, H, W]
            "masks": torch.from_numpy(np.stack(loss_masks)),  # [N, H/8, W/8] in 0..1
            "id_embeds": torch.from_numpy(ids),  # [N, 512]
            "character_pixels": torch.stack(char_pixels),  # [N, 3, 224, 224] CLIP-normalised
            "face_pixels": torch.stack(face_pixels),  # [N, 3, 224, 224]
            "caption": "" if drops.text else r.get("caption", ""),
            # SDXL micro-conditioning: original size, crop top-left, target size
            "time_ids": torch.tensor([h0, w0, top, left, bh, bw], dtype=torch.float32),
            "drop_image": drops.image, "drop_text": drops.text,
            "zero_face": drops.face_tokens, "zero_character": drops.character_tokens,
            "pose": pose,  # [3, H, W] in 0..1, or None
            "id": r["id"],
        }


def collate(samples: list) -> dict:
    """Samples of one bucket and one character count -> a batch (shapes gain a leading B)."""
    batch = {k: torch.stack([s[k] for s in samples]) for k in
             ("pixel_values", "masks", "id_embeds", "character_pixels", "face_pixels", "time_ids")}
    for k in ("drop_image", "drop_text", "zero_face", "zero_character"):
        batch[k] = torch.tensor([s[k] for s in samples])
    batch["captions"] = [s["caption"] for s in samples]
    batch["ids"] = [s["id"] for s in samples]
    if any(s["pose"] is not None for s in samples):
        like = batch["pixel_values"][0]
        batch["pose"] = torch.stack([s["pose"] if s["pose"] is not None else torch.zeros_like(like) for s in samples])
    return batch


class BucketBatchSampler(torch.utils.data.Sampler):
    """Deterministic bucketed batches, sharded across processes, resumable at any batch.

    Each epoch: records of each (bucket, character count) group are shuffled and cut into batches, the
    batches are shuffled, trimmed to a multiple of the number of processes, and process `rank` takes
    every `num_replicas`-th one. `set_epoch(epoch, start)` skips the first `start` batches of this
    process (exact resume).
    """

    def __init__(self, groups: dict, batch_size: int, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        self.groups = {k: list(v) for k, v in sorted(groups.items())}
        self.batch_size, self.seed, self.num_replicas, self.rank = batch_size, seed, num_replicas, rank
        self.epoch, self.start = 0, 0
        if self.batches_per_epoch() == 0:
            raise DatasetError(f"{sum(map(len, groups.values()))} records make fewer batches than the "
                               f"{num_replicas} processes; add data or use fewer processes")

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _all_batches(self, epoch: int) -> list:
        rng = np.random.default_rng([self.seed, epoch, 7919])
        batches = []
        for indices in self.groups.values():
            order = [indices[i] for i in rng.permutation(len(indices))]
            batches += [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches[: len(batches) // self.num_replicas * self.num_replicas]

    def batches_per_epoch(self) -> int:
        return len(self._all_batches(0)) // self.num_replicas

    def __iter__(self) -> Iterator[list]:
        mine = self._all_batches(self.epoch)[self.rank::self.num_replicas]
        for batch in mine[self.start:]:
            yield [(i, self.epoch) for i in batch]

    def __len__(self) -> int:
        return max(self.batches_per_epoch() - self.start, 0)
