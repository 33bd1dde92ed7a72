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
  as StoryMaker conditions on; the whole image without a mask) vs the whole shot.
* A shot without an image (failed, pending, missing, unreadable) is reported with its reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..faces import NoFaceFoundError
from .embedders import EmbedderError, load_rgb
from .scoring import _progress
from .story_input import CastMember, Story
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


def _reference_crop(member: CastMember, index: int, pil, rgb):
    """The character crop CLIP-I compares: mask over white when the cast gives a mask, else the image."""
    mask_path = member.mask_of(index)
    if mask_path is None:
        return pil
    from PIL import Image

    from ..preprocess import character_crop

    _, mask = load_rgb(mask_path)
    crop = character_crop(rgb, mask, image_name=f"reference of {member.name!r} ({member.references[index]})",
                          mask_name=f"mask of {member.name!r} ({mask_path})")
    return Image.fromarray(crop)


def _face_selector(face_embedder):
    """``select_face(image, image_name, index)`` over the embedder's faces (largest first), as
    ``FaceAnalyzer.select_face``: what :func:`storymaker_core.identity.decide_identity` asks for."""
    def select_face(image, image_name: str = "image", index: int = 0):
        faces = face_embedder.faces(image_name, image)
        if not faces:
            raise NoFaceFoundError(f"no face found in {image_name}")
        return faces[index]

    return select_face


def resolve_identity(member: CastMember, face_embedder, clip_embedder) -> CharacterIdentity:
    """Decide face vs appearance for one cast member (the node's rule, ``decide_identity``) and embed its
    references accordingly; ``face`` without a face in a reference falls back to appearance, with the reason."""
    from ..identity import decide_identity

    loaded = [load_rgb(p) for p in member.references]
    if member.identity == "appearance":
        ident = CharacterIdentity("appearance", "identity: appearance")
    elif face_embedder is None:
        ident = CharacterIdentity("appearance", "face metrics off (--no-face)")
    else:
        try:
            decision = decide_identity(_face_selector(face_embedder), [rgb for _, rgb in loaded],
                                       [str(p) for p in member.references], choice=member.identity, name=member.name)
        except NoFaceFoundError as exc:
            ident = CharacterIdentity("appearance", f"identity: face, but {exc}")
        else:
            reason = f"identity: {member.identity}; " + "; ".join(decision.lines)
            faces = [f for f in decision.faces if f is not None]
            ident = CharacterIdentity(decision.identity, reason, face=np.stack(
                [f.embedding for f in faces]).astype(np.float64) if faces and decision.identity == "face" else None)
        if ident.mode == "appearance":
            logger.info("character %r scored by appearance (CLIP-I): %s", member.name, ident.reason)
    if ident.mode == "appearance" and clip_embedder is not None:
        crops = [_reference_crop(member, i, pil, rgb) for i, (pil, rgb) in enumerate(loaded)]
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
        if on_look:
            emb = clip_embedder.encode_images([pil])[0].astype(np.float64)
            for c in on_look:
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
