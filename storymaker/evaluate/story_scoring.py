"""Score one :class:`~.story_input.Story`: decide each character's identity mode from its references, then
per shot match faces to on-stage characters and collect the embeddings behind reference<->shot and
shot<->shot similarity.

Rules (docs/evaluation.md, "Story consistency"):
* ``appearance`` -> CLIP-I. ``face`` -> ArcFace when a face is found in every reference, else CLIP-I.
  ``auto`` -> ArcFace when every reference has a face with detection score >= 0.6, else CLIP-I: the
  rule of the *Character from Image* node (``storymaker_core.identity.decide_identity``).
* Face characters: the K largest faces of a shot (K = on-stage face characters, plus ``extra_faces``)
  are assigned to them by the best assignment (``metrics.best_assignment``), swaps flagged as in
  ``evaluate score``. A character left without a face is counted (``no_face``), never dropped.
* Appearance characters: CLIP image embedding of the reference's character crop (its mask over white,
  as StoryMaker conditions on; the whole image without a mask) vs the character's *region* of the shot
  when the shot records one (``Shot.regions``: the region's bounding box, outside painted white, squashed:
  ``region_crop``), else the whole shot. Two appearance characters with regions in one shot get
  two embeddings, so two numbers.
* References: every page of every reference file (a multi-page file is a batch, as LoadImage reads it).
* A shot without an image (failed, pending, missing, unreadable) is reported with its reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .._core import faces as _faces  # storymaker_core's, beside this package (storymaker/_core.py)
from .embedders import EmbedderError, load_rgb
from .scoring import _progress
from .story_input import CastMember, Region, Story
from .story_metrics import (CharacterStoryScore, ShotScore, assign_faces, character_face_similarity,
                            mean_pairwise_similarity, reference_similarity)

logger = logging.getLogger(__name__)


@dataclass
class CharacterIdentity:
    """How a character is scored. face: (R, 512) ArcFace of its references; clip: (R, D) CLIP-I."""

    mode: str
    reason: str
    face: np.ndarray | None = None
    clip: np.ndarray | None = None


@dataclass
class StoryScoringOptions:
    extra_faces: int = 0
    show_progress: bool = True


@dataclass
class StoryScore:
    characters: list[CharacterStoryScore] = field(default_factory=list)
    shots: list[ShotScore] = field(default_factory=list)


def load_frames(path) -> list:
    """[(PIL RGB image, uint8 array)] of every page of an image file, as ComfyUI's LoadImage makes a batch of
    it: each page upright (EXIF), pages of another size than the first left out, an MPO's first page only.
    One page for an ordinary image; the converter writes a character's several references as the pages of
    one TIFF (``vistorybench.convert.reference_batch``)."""
    from pathlib import Path

    from PIL import Image, ImageOps, ImageSequence

    path = Path(path)
    if not path.is_file():
        raise EmbedderError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            frames = []
            for page in ImageSequence.Iterator(im):
                rgb = ImageOps.exif_transpose(page).convert("RGB")
                if frames and rgb.size != frames[0].size:
                    continue
                frames.append(rgb)
                if im.format == "MPO":
                    break
    except Exception as exc:  # PIL raises several types for unreadable files
        raise EmbedderError(f"cannot read image {path}: {exc}") from exc
    return [(f, np.asarray(f, dtype=np.uint8)) for f in frames]


def _reference_images(member: CastMember) -> list[tuple[int, str, object, np.ndarray]]:
    """(reference index, label, PIL, rgb) for every page of every reference of ``member``."""
    out = []
    for i, path in enumerate(member.references):
        frames = load_frames(path)
        for j, (pil, rgb) in enumerate(frames):
            out.append((i, str(path) if len(frames) == 1 else f"{path} (page {j + 1})", pil, rgb))
    return out


def load_region(region: Region) -> np.ndarray:
    """float32 [H, W] in 0..1 of a :class:`Region`, as the ComfyUI loader that fed StoryMaker Apply reads it
    (LoadImageMask: the channel; ``alpha``: 1 - alpha, zeros without an alpha channel)."""
    from PIL import Image, ImageOps

    if not region.path.is_file():
        raise EmbedderError(f"region mask not found: {region.path}")
    try:
        with Image.open(region.path) as im:
            im = ImageOps.exif_transpose(im)
            if region.channel == "alpha" and "A" not in im.getbands():
                return np.zeros((im.height, im.width), np.float32)
            band = np.asarray(im.convert("RGBA").getchannel(region.channel[0].upper()), np.float32) / 255.0
    except Exception as exc:
        raise EmbedderError(f"cannot read region mask {region.path}: {exc}") from exc
    return 1.0 - band if region.channel == "alpha" else band


def region_crop(image: np.ndarray, region: np.ndarray | None):
    """(PIL image CLIP-I compares, what it is) for a character placed on ``region`` of ``image``.

    Region None or covering every pixel: the whole panel, as ``evaluate story`` does without a region. Otherwise the
    region's bounding box with the outside painted white, squashed to 224x224: ``preprocess.character_crop``,
    the crop the character's references went through. A region of another size than the image (the batch was
    resized after rendering) is resized to it first. An empty region raises ``PreprocessError``.
    """
    from PIL import Image

    from .._core import preprocess

    h, w = image.shape[:2]
    if region is None:
        return Image.fromarray(image), "whole panel"
    region = np.asarray(region, np.float32)
    if region.shape != (h, w):
        region = np.asarray(Image.fromarray(region).resize((w, h), Image.BILINEAR), np.float32)
    if np.all(region >= 1.0):
        return Image.fromarray(image), "whole panel"
    x0, y0, x1, y1 = preprocess.mask_bounding_box(preprocess.mask_to_uint8(region, "region"), "region")
    crop = preprocess.character_crop(image, region, image_name="panel", mask_name="region")
    return Image.fromarray(crop), f"region x{x0}-{x1}, y{y0}-{y1}"


def _region_view(rgb: np.ndarray, region: Region):
    """(PIL image CLIP-I compares, what it is) of an appearance character placed on ``region``: the region's
    bounding box, the outside painted white, squashed to 224x224 (``region_crop``: the crop its
    references went through); a region covering the whole image is the whole shot."""
    from .._core import preprocess

    try:
        crop, compared = region_crop(rgb, load_region(region))
    except preprocess.PreprocessError as exc:
        raise EmbedderError(f"region {region.path.name}: {exc}") from exc
    return crop, compared.replace("whole panel", "whole shot")


def _reference_crop(member: CastMember, index: int, pil, rgb):
    """The character crop CLIP-I compares: mask over white when the cast gives a mask, else the image."""
    mask_path = member.mask_of(index)
    if mask_path is None:
        return pil
    from PIL import Image

    from .._core import preprocess

    _, mask = load_rgb(mask_path)
    crop = preprocess.character_crop(rgb, mask, image_name=f"reference of {member.name!r} ({member.references[index]})",
                          mask_name=f"mask of {member.name!r} ({mask_path})")
    return Image.fromarray(crop)


def _face_selector(face_embedder):
    """``select_face(image, image_name, index)`` over the embedder's faces (largest first), as
    ``FaceAnalyzer.select_face``: what :func:`storymaker_core.identity.decide_identity` asks for."""
    def select_face(image, image_name: str = "image", index: int = 0):
        faces = face_embedder.faces(image_name, image)
        if not faces:
            raise _faces.NoFaceFoundError(f"no face found in {image_name}")
        return faces[index]

    return select_face


def resolve_identity(member: CastMember, face_embedder, clip_embedder) -> CharacterIdentity:
    """Decide face vs appearance for one cast member (the node's rule, ``decide_identity``) and embed its
    references accordingly; ``face`` without a face in a reference falls back to appearance, with the reason."""
    from .._core import identity

    pages = _reference_images(member)
    loaded = [(pil, rgb) for _, _, pil, rgb in pages]
    if member.identity == "appearance":
        ident = CharacterIdentity("appearance", "identity: appearance")
    elif face_embedder is None:
        ident = CharacterIdentity("appearance", "face metrics off (--no-face)")
    else:
        try:
            decision = identity.decide_identity(_face_selector(face_embedder), [rgb for _, rgb in loaded],
                                       [label for _, label, _, _ in pages], choice=member.identity, name=member.name)
        except _faces.NoFaceFoundError as exc:
            ident = CharacterIdentity("appearance", f"identity: face, but {exc}")
        else:
            reason = f"identity: {member.identity}; " + "; ".join(decision.lines)
            faces = [f for f in decision.faces if f is not None]
            ident = CharacterIdentity(decision.identity, reason, face=np.stack(
                [f.embedding for f in faces]).astype(np.float64) if faces and decision.identity == "face" else None)
        if ident.mode == "appearance":
            logger.info("character %r scored by appearance (CLIP-I): %s", member.name, ident.reason)
    if ident.mode == "appearance" and clip_embedder is not None:
        crops = [_reference_crop(member, i, pil, rgb) for i, _, pil, rgb in pages]
        ident.clip = clip_embedder.encode_images(crops).astype(np.float64)
    return ident


def score_story(story: Story, face_embedder=None, clip_embedder=None,
                options: StoryScoringOptions | None = None) -> StoryScore:
    """Per-shot records and per-character story means for ``story``; either embedder may be None."""
    options = options or StoryScoringOptions()
    idents = {name: resolve_identity(m, face_embedder, clip_embedder) for name, m in story.cast.items()}
    has_face_cast = any(i.mode == "face" for i in idents.values())
    cells = {name: CharacterStoryScore(story.method, story.name, name, i.mode, i.reason)
             for name, i in idents.items()}
    ref_cos: dict[str, list[float]] = {n: [] for n in idents}
    shot_embs: dict[str, list[np.ndarray]] = {n: [] for n in idents}
    result = StoryScore()
    bar = _progress(len(story.shots), f"story {story.name}", options.show_progress)
    for shot in story.shots:
        bar.update(1)
        rec = ShotScore(story.method, story.name, shot.id, str(shot.file) if shot.file else None,
                        list(shot.characters), problem=shot.problem)
        result.shots.append(rec)
        for c in shot.characters:
            cells[c].on_stage += 1
        rgb = pil = None
        if rec.problem is None:
            try:
                pil, rgb = load_rgb(shot.file)
            except EmbedderError as exc:
                rec.problem = str(exc)
        if rec.problem is not None:
            logger.warning("story %s, shot %s not scored: %s", story.name, shot.id, rec.problem)
            for c in shot.characters:
                cells[c].missing_shots += 1
            continue
        rec.per_character = {c: {"mode": idents[c].mode, "ref_cos": None} for c in shot.characters}
        on_face = [c for c in shot.characters if idents[c].mode == "face"]
        if face_embedder is not None:
            faces = face_embedder.faces(shot.file, rgb)
            rec.faces_detected = len(faces)
            if has_face_cast:
                rec.faces_expected = len(on_face)
            cand = faces[: len(on_face) + max(options.extra_faces, 0)]
            embs = np.stack([f.embedding for f in cand]).astype(np.float64) if cand else np.zeros((0, 512))
            sim = character_face_similarity([idents[c].face for c in on_face], embs)
            for c in on_face:
                rec.per_character[c]["face_found"] = False
            for i, j, swapped in assign_faces(sim):
                c = on_face[i]
                rec.per_character[c].update(ref_cos=float(sim[i, j]), face_found=True, swapped=swapped)
                ref_cos[c].append(float(sim[i, j]))
                shot_embs[c].append(embs[j])
                if swapped is not None:
                    cells[c].swap_n += 1
                    cells[c].swaps += int(swapped)
            for c in on_face:
                if not rec.per_character[c]["face_found"]:
                    cells[c].no_face += 1
        on_look = [c for c in shot.characters if idents[c].mode == "appearance" and idents[c].clip is not None]
        views, scored = [], []
        for c in on_look:  # each on its own region when the shot says where it was placed, else the whole shot
            region = shot.regions.get(c)
            if region is None:
                view, compared = pil, "whole shot"
            else:
                try:
                    view, compared = _region_view(rgb, region)
                except EmbedderError as exc:
                    rec.per_character[c].update(compared=f"region {region.path.name}", problem=str(exc))
                    logger.warning("story %s, shot %s: %s not scored: %s", story.name, shot.id, c, exc)
                    continue
            rec.per_character[c]["compared"] = compared
            views.append(view)
            scored.append(c)
        if scored:
            embs = clip_embedder.encode_images(views).astype(np.float64)
            for c, emb in zip(scored, embs):
                cos = reference_similarity(idents[c].clip, emb)
                rec.per_character[c]["ref_cos"] = cos
                ref_cos[c].append(cos)
                shot_embs[c].append(emb)
    bar.close()
    for name, cell in cells.items():
        cell.ref_shot = float(np.mean(ref_cos[name])) if ref_cos[name] else None
        cell.shot_shot = mean_pairwise_similarity(shot_embs[name])
        cell.pairs = len(shot_embs[name]) * (len(shot_embs[name]) - 1) // 2
        result.characters.append(cell)
    return result
