"""Turn one manifest's images into per-image, per-character raw cosines.

Rules (documented in docs/evaluation.md):
* Face Sim: ArcFace cosine between the reference's largest face and the generated
  face matched to that character.  An image with K characters uses its K largest
  detected faces (plus ``extra_faces`` more, default 0, so background faces do not
  inflate scores) and matches them to characters by the best assignment (max summed
  cosine).  A character left without a face is recorded as *missing*, never dropped.
* Swap: in images with >= 2 characters, a matched face that is more similar to another
  character's reference than to its own.
* CLIP-I: cosine of CLIP image embeddings, reference image vs generated image (per character).
* CLIP-T: cosine of CLIP text (prompt) and image embeddings (per image).
Values are raw cosines here; aggregate.py scales to percent.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .embedders import load_rgb
from .manifest import Manifest
from .metrics import best_assignment, swap_flags

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoringOptions:
    """extra_faces: how many faces beyond the K largest may be matched to K characters."""

    extra_faces: int = 0
    show_progress: bool = True


@dataclass
class CharacterScore:
    """Raw cosines for one character in one image (None = not computed / no face)."""

    face_cos: float | None = None
    face_found: bool = False
    clip_i_cos: float | None = None
    swapped: bool | None = None  # only for images with >= 2 characters and a matched face


@dataclass
class ImageScore:
    method: str
    file: str
    prompt: str | None
    prompt_id: str | None
    characters: list[str]
    n_faces_detected: int | None
    clip_t_cos: float | None
    per_character: dict[str, CharacterScore] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ReferenceEmbeddings:
    """Per reference image path: face embedding (512,) and CLIP image embedding (D,)."""

    face: dict[Path, np.ndarray] = field(default_factory=dict)
    clip: dict[Path, np.ndarray] = field(default_factory=dict)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool):
    """A tqdm bar over images (or a no-op when disabled / tqdm missing)."""
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a listed dependency
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="img")


def embed_references(manifest: Manifest, face_embedder, clip_embedder, cache: ReferenceEmbeddings) -> None:
    """Fill ``cache`` for the references this manifest uses (shared across methods)."""
    used = sorted({c for img in manifest.images for c in img.characters})
    for name in used:
        path = manifest.references[name]
        if (face_embedder is None or path in cache.face) and (clip_embedder is None or path in cache.clip):
            continue
        pil, rgb = load_rgb(path)
        if face_embedder is not None and path not in cache.face:
            faces = face_embedder.faces(path, rgb)
            if not faces:
                # Reuse FaceAnalyzer's message (names the file, suggests det_size / crop).
                face_embedder.analyzer.largest_face(rgb, f"reference image of {name!r} ({path})")
            if len(faces) > 1:
                logger.warning("reference %s (%s) has %d faces; using the largest", name, path, len(faces))
            cache.face[path] = faces[0].embedding.astype(np.float64)
        if clip_embedder is not None and path not in cache.clip:
            cache.clip[path] = clip_embedder.encode_images([pil])[0].astype(np.float64)


def match_faces(ref_embs: np.ndarray, face_embs: np.ndarray) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Best assignment of characters (rows of ``ref_embs`` (K, 512)) to faces (``face_embs``
    (F, 512), both L2-normalised); returns (pairs, cosine matrix (K, F))."""
    if face_embs.size == 0:
        return [], np.zeros((ref_embs.shape[0], 0))
    sim = ref_embs @ face_embs.T
    return best_assignment(sim), sim


def score_manifest(manifest: Manifest, face_embedder=None, clip_embedder=None,
                   options: ScoringOptions | None = None,
                   cache: ReferenceEmbeddings | None = None) -> list[ImageScore]:
    """Score every image of ``manifest``; either embedder may be None to skip its metrics."""
    options = options or ScoringOptions()
    cache = cache if cache is not None else ReferenceEmbeddings()
    embed_references(manifest, face_embedder, clip_embedder, cache)

    text_cache: dict[str, np.ndarray] = {}
    if clip_embedder is not None:
        prompts = sorted({img.clip_t_text for img in manifest.images if img.clip_t_text})
        if prompts:
            text_cache = dict(zip(prompts, clip_embedder.encode_texts(prompts).astype(np.float64)))

    batch_size = getattr(getattr(clip_embedder, "config", None), "batch_size", 8) or 8
    records: list[ImageScore] = []
    images = list(manifest.images)
    bar = _progress(len(images), f"scoring {manifest.method}", options.show_progress)
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        loaded = [load_rgb(img.file) for img in batch]
        clip_embs = (
            clip_embedder.encode_images([pil for pil, _ in loaded]).astype(np.float64)
            if clip_embedder is not None else [None] * len(batch)
        )
        for img, (_, rgb), clip_emb in zip(batch, loaded, clip_embs):
            bar.update(1)
            rec = ImageScore(
                method=manifest.method, file=str(img.file), prompt=img.prompt, prompt_id=img.prompt_id,
                characters=list(img.characters), n_faces_detected=None, clip_t_cos=None,
                per_character={c: CharacterScore() for c in img.characters},
            )
            if clip_emb is not None:
                if img.clip_t_text:
                    rec.clip_t_cos = float(text_cache[img.clip_t_text] @ clip_emb)
                for c in img.characters:
                    rec.per_character[c].clip_i_cos = float(cache.clip[manifest.references[c]] @ clip_emb)
            if face_embedder is not None and img.characters:
                faces = face_embedder.faces(img.file, rgb)
                rec.n_faces_detected = len(faces)
                k = len(img.characters)
                cand = faces[: k + max(options.extra_faces, 0)]
                refs = np.stack([cache.face[manifest.references[c]] for c in img.characters])  # (K, 512)
                face_embs = np.stack([f.embedding for f in cand]).astype(np.float64) if cand else np.zeros((0, 512))
                pairs, sim = match_faces(refs, face_embs)
                flags = swap_flags(sim, pairs) if k >= 2 else [None] * len(pairs)
                for (i, j), flag in zip(pairs, flags):
                    cs = rec.per_character[img.characters[i]]
                    cs.face_cos, cs.face_found, cs.swapped = float(sim[i, j]), True, flag
                missing = [c for c, cs in rec.per_character.items() if not cs.face_found]
                if missing:
                    logger.info("%s: no face matched for %s (%d detected)", img.file, missing, len(faces))
            records.append(rec)
    bar.close()
    return records
