"""Consistency per panel of a story rendered in the editor: each on-stage character of each panel against the
cast's references, with the rules of ``evaluate story`` (docs/evaluation.md, "Consistency per panel").

The numbers are those of ``story_scoring.score_story`` for the same images, references and embedders: face
characters by ArcFace, the K largest faces of the panel (K = on-stage face characters, plus ``extra_faces``)
given to them by the best assignment (``story_metrics.assign_faces``), the similarity being the mean cosine
over the character's references (``character_face_similarity``); appearance characters by CLIP-I
(``reference_similarity``). One difference: the story node records where each character was placed
(``RenderedPanel.regions``), so an appearance character is compared on *its region* of the panel -- the region's
bounding box, outside the region painted white, squashed to 224x224: the crop its references went through
(``preprocess.character_crop``). A character placed on the whole image (region None, layout "full") is
compared on the whole panel, as ``evaluate story`` compares a shot whose placement it does not know.

Nothing here imports ComfyUI: the node converts its inputs and calls :func:`score_panels`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from .._core import story_render  # storymaker_core's, beside this package (storymaker/_core.py)
from .story_metrics import assign_faces, character_face_similarity, reference_similarity
from .story_scoring import CharacterIdentity, region_crop  # region_crop: the crop of `evaluate story` too

FORMAT = "storymaker-panel-scores/1"
FACE, APPEARANCE = "face", "appearance"
# insightface's face-comparison demo (web-demos/src_recognition/main.py, buffalo_l's w600k_r50) calls an ArcFace
# cosine >= 0.28 "the same person" and 0.2-0.28 "likely"; 0.30 is that line rounded up. CLIP-I has no such
# calibration: 0.75 is a judgement (pictures of one style score high even when unrelated); tune it.
DEFAULT_FACE_THRESHOLD = 0.30
DEFAULT_CLIP_THRESHOLD = 0.75
METRICS = {FACE: "ArcFace cosine (insightface) of the matched face to the character's identity",
           APPEARANCE: "CLIP-I cosine of the character's region to its character crops"}


class PanelScoringError(ValueError):
    """Inputs that cannot be scored together; the message says which and what to do."""


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class CharacterPanelScore:
    """One on-stage character of one panel. ``similarity`` is a raw cosine, None when not found (``reason``)."""

    name: str
    slot: int  # 0-based place on stage (0 = leftmost), the index of its region
    mode: str  # "face" (ArcFace) or "appearance" (CLIP-I)
    similarity: Optional[float]
    threshold: float
    reason: Optional[str] = None  # why there is no similarity ("no face detected", ...)
    swapped: Optional[bool] = None  # face, >= 2 face characters: the matched face is closer to another of them
    compared: str = ""  # what was compared: "largest faces", "whole panel", "region x0,y0-x1,y1"

    @property
    def below(self) -> bool:
        """Below the threshold; a character not found in the panel counts as below."""
        return self.similarity is None or self.similarity < self.threshold

    @property
    def flag(self) -> Optional[str]:
        """``"ava 0.21 < 0.30"`` or ``"ava: no face detected"`` when below, else None."""
        if not self.below:
            return None
        if self.similarity is None:
            return f"{self.name}: {self.reason}"
        sim, thr = _pair(self.similarity, self.threshold)
        return f"{self.name} {sim} < {thr}"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "slot": self.slot + 1, "mode": self.mode, "similarity": self.similarity,
                "threshold": self.threshold, "below": self.below, "reason": self.reason, "swapped": self.swapped,
                "compared": self.compared}


@dataclass(frozen=True)
class PanelScore:
    """One image of the story's batch and its on-stage characters' scores."""

    index: int  # 0-based position in the IMAGE batch
    scene: int
    candidate: int
    candidates: int
    file: str
    characters: tuple  # CharacterPanelScore, in slot order
    faces_detected: Optional[int] = None  # None when the panel has no face character (no detection run)
    faces_expected: int = 0  # on-stage face characters

    @property
    def flag(self) -> Optional[str]:
        """Why the panel is below its threshold (its characters' flags joined by "; "), None when it is not."""
        flags = [c.flag for c in self.characters if c.below]
        return "; ".join(flags) if flags else None

    def as_dict(self) -> dict[str, Any]:
        return {"panel": self.index + 1, "scene": self.scene, "candidate": self.candidate,
                "candidates": self.candidates, "file": self.file, "faces_detected": self.faces_detected,
                "faces_expected": self.faces_expected, "flag": self.flag,
                "characters": [c.as_dict() for c in self.characters]}


@dataclass(frozen=True)
class PanelScores:
    """Every panel of a story, with the thresholds and how each character's references were made."""

    story: str
    face_threshold: float
    clip_threshold: float
    panels: tuple  # PanelScore, in the batch's order
    references: Mapping[str, str]  # name -> mode and where its reference embeddings come from

    def flags(self) -> list:
        """One flag (or None) per panel, for ``StoryRender.with_flags``."""
        return [p.flag for p in self.panels]

    @property
    def flagged(self) -> int:
        return sum(p.flag is not None for p in self.panels)

    def as_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "story": self.story,
                "thresholds": {FACE: self.face_threshold, APPEARANCE: self.clip_threshold},
                "metrics": dict(METRICS), "references": dict(self.references),
                "panels_flagged": self.flagged, "panels": [p.as_dict() for p in self.panels]}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, ensure_ascii=False)

    def markdown(self) -> str:
        """The table the node shows: a row per (panel, on-stage character)."""
        lines = [f"**{self.story}**: {self.flagged} of {len(self.panels)} panels below threshold "
                 f"(face: ArcFace >= {self.face_threshold:g}; appearance: CLIP-I >= {self.clip_threshold:g})", "",
                 "| panel | scene | character | mode | similarity | threshold | result |",
                 "|---|---|---|---|---|---|---|"]
        for p in self.panels:
            where = f"{p.scene}" + (f" ({p.candidate}/{p.candidates})" if p.candidates > 1 else "")
            if not p.characters:
                lines.append(f"| {p.index + 1} | {where} | (nobody on stage) | | | | |")
            for c in p.characters:
                sim = "" if c.similarity is None else f"{c.similarity:.3f}"
                result = ("ok" if not c.below else "**below**" if c.similarity is not None else f"**{c.reason}**")
                if c.swapped:
                    result += " (closer to another character)"
                lines.append(f"| {p.index + 1} | {where} | {c.name} | {c.mode} | {sim} | {c.threshold:g} | {result} |")
        lines += ["", "References: " + "; ".join(f"{n}: {r}" for n, r in self.references.items())]
        return "\n".join(lines)


def _pair(similarity: float, threshold: float) -> tuple:
    """Both numbers with 2 decimals, more when 2 would print them equal (0.2996 < 0.30)."""
    for digits in (2, 3, 4, 6):
        sim, thr = f"{similarity:.{digits}f}", f"{threshold:.{digits}f}"
        if sim != thr:
            return sim, thr
    return f"{similarity!r}", f"{threshold!r}"


# --------------------------------------------------------------------------- references from a cast
def _vector(x) -> np.ndarray:
    """float64 (D,) from a torch tensor or an array."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, np.float64).reshape(-1)


def _members(character) -> list:
    members = getattr(character, "members", None)
    return members() if callable(members) else [character]


def identity_mode(character) -> str:
    """"face" when the character (every character of a blend) has a face, else "appearance"."""
    return FACE if all(getattr(m, "identity", FACE) == FACE for m in _members(character)) else APPEARANCE


def cast_identities(cast, names: Sequence[str], clip_embedder=None) -> dict[str, CharacterIdentity]:
    """The reference embeddings of the cast members ``names`` (a story's on-stage characters).

    ``cast`` has ``names``, ``characters`` and ``character(name)`` (``storymaker_core.cast.Cast``).
    A face character's reference is its ``id_embedding``: the ArcFace identity StoryMaker conditioned on (a
    character holds its crops, not its reference photos, so they cannot be embedded again; with several
    references it is their re-normalised mean). An appearance character's references are the CLIP-I
    embeddings of its character crops (``character_image``, the masked crops on white), one per reference.
    A blend is compared with both of its characters' references (weight not used): face when both have a
    face, else appearance.
    """
    out: dict[str, CharacterIdentity] = {}
    for name in dict.fromkeys(names):
        try:
            character = cast.character(name)
        except (KeyError, ValueError) as exc:  # the cast's own error (CastError, KeyError) names those it knows
            raise PanelScoringError(f"{name!r} is on stage but not in the cast ({exc}); connect the cast the "
                                    f"story was rendered with") from exc
        members = _members(character)
        blend = len(members) > 1
        if identity_mode(character) == FACE:
            ids = np.stack([_vector(m.id_embedding) for m in members])
            if not np.all(np.linalg.norm(ids, axis=1) > 0):
                raise PanelScoringError(f"character {name!r} is a face character but its identity embedding is zero; "
                                        f"build it again with StoryMaker Character from Image")
            reason = ("face: the ArcFace identity it was built with (id_embedding)" if not blend else
                      f"face: the ArcFace identities of its {len(members)} blended characters (mean cosine)")
            out[name] = CharacterIdentity(FACE, reason, face=ids)
            continue
        crops = [m.character_image for m in members]
        if any(c is None for c in crops):
            raise PanelScoringError(f"character {name!r} is scored by its appearance but has no character crop to "
                                    f"compare with; build it again with StoryMaker Character from Image")
        crops = np.concatenate([np.asarray(c, np.uint8).reshape((-1,) + np.shape(c)[-3:]) for c in crops])
        reason = (f"appearance: CLIP-I of its {len(crops)} character crop(s)" if not blend else
                  f"appearance: CLIP-I of the {len(crops)} character crops of its blended characters")
        clip = None
        if clip_embedder is not None:
            from PIL import Image

            clip = np.asarray(clip_embedder.encode_images([Image.fromarray(c) for c in crops]), np.float64)
        out[name] = CharacterIdentity(APPEARANCE, reason, clip=clip)
    return out


def on_stage_names(story: story_render.StoryRender) -> list:
    """Every name on stage in the story, first-seen order."""
    return list(dict.fromkeys(n for p in story.panels for n in p.cast))


# --------------------------------------------------------------------------- scoring
def score_panels(images: Sequence[np.ndarray], story: story_render.StoryRender,
                 references: Mapping[str, CharacterIdentity], face_embedder=None, clip_embedder=None,
                 face_threshold: float = DEFAULT_FACE_THRESHOLD, clip_threshold: float = DEFAULT_CLIP_THRESHOLD,
                 extra_faces: int = 0,
                 progress: Optional[Callable[[], None]] = None) -> PanelScores:
    """Score every panel of ``story`` (``images``: its batch, RGB uint8 ``[H, W, 3]``, one per panel).

    references: name -> ``CharacterIdentity`` (``mode`` and ``face`` (R, 512) or ``clip`` (R, D)), e.g. from
    :func:`cast_identities` or ``story_scoring.resolve_identity``. face_embedder: ``faces(name, image)`` ->
    detected faces, largest first (``embedders.FaceEmbedder``); clip_embedder: ``encode_images(PIL images)`` ->
    (N, D). ``progress()`` is called once per panel.
    """
    images = list(images)
    if len(images) != len(story.panels):
        raise PanelScoringError(f"{len(images)} images for the {len(story.panels)} panels of story {story.name!r}: "
                                f"give the story's own image batch")
    needed = on_stage_names(story)
    unknown = [n for n in needed if n not in references]
    if unknown:
        raise PanelScoringError(f"no references for {unknown} (on stage in story {story.name!r}); known: "
                                f"{sorted(references)}")
    for name in needed:
        ident = references[name]
        if ident.mode == FACE and (face_embedder is None or ident.face is None):
            raise PanelScoringError(f"{name!r} is scored by its face (ArcFace): a face embedder (InsightFace) and "
                                    f"its face references are needed")
        if ident.mode == APPEARANCE and (clip_embedder is None or ident.clip is None):
            raise PanelScoringError(f"{name!r} is scored by its appearance (CLIP-I): a CLIP embedder and its CLIP "
                                    f"references are needed")
    panels = []
    for index, (image, panel) in enumerate(zip(images, story.panels)):
        panels.append(_score_panel(index, np.asarray(image), panel, references, face_embedder, clip_embedder,
                                   face_threshold, clip_threshold, extra_faces))
        if progress is not None:
            progress()
    return PanelScores(story.name, float(face_threshold), float(clip_threshold), tuple(panels),
                       {n: references[n].reason for n in needed})


def _score_panel(index, image, panel, references, face_embedder, clip_embedder, face_threshold, clip_threshold,
                 extra_faces) -> PanelScore:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise PanelScoringError(f"panel {index + 1}: expected an RGB uint8 image [H, W, 3], got {image.dtype} "
                                f"{image.shape}")
    results: dict[int, CharacterPanelScore] = {}  # by slot
    on_face = [(slot, c) for slot, c in enumerate(panel.cast) if references[c].mode == FACE]
    faces_detected = None
    if on_face:  # the face rules of story_scoring.score_story, shot by shot
        faces = face_embedder.faces(panel.file or f"panel {index + 1} (scene {panel.scene})", image)
        faces_detected = len(faces)
        cand = faces[: len(on_face) + max(extra_faces, 0)]
        embs = np.stack([f.embedding for f in cand]).astype(np.float64) if cand else np.zeros((0, 512))
        sim = character_face_similarity([references[c].face for _, c in on_face], embs)
        matched = {i: (float(sim[i, j]), swapped) for i, j, swapped in assign_faces(sim)}
        for i, (slot, c) in enumerate(on_face):
            if i in matched:
                cos, swapped = matched[i]
                results[slot] = CharacterPanelScore(c, slot, FACE, cos, float(face_threshold), swapped=swapped,
                                                    compared="largest faces")
            else:
                why = ("no face detected" if not faces else
                       f"no face left for it ({len(faces)} detected, {len(on_face)} face characters on stage)")
                results[slot] = CharacterPanelScore(c, slot, FACE, None, float(face_threshold), reason=why,
                                                    compared="largest faces")
    h, w = image.shape[:2]
    embedded: dict[Any, np.ndarray] = {}  # CLIP embedding per compared crop ("whole panel" shared)
    for slot, c in enumerate(panel.cast):
        if references[c].mode != APPEARANCE:
            continue
        try:
            crop, compared = region_crop(image, story_render.region_or_whole(panel, slot, h, w))
        except ValueError as exc:  # PreprocessError: an empty region
            results[slot] = CharacterPanelScore(c, slot, APPEARANCE, None, float(clip_threshold),
                                                reason="its region is empty", compared=f"region ({exc})")
            continue
        key = compared if compared == "whole panel" else slot
        if key not in embedded:
            embedded[key] = np.asarray(clip_embedder.encode_images([crop])[0], np.float64)
        results[slot] = CharacterPanelScore(c, slot, APPEARANCE, reference_similarity(references[c].clip,
                                                                                      embedded[key]),
                                            float(clip_threshold), compared=compared)
    return PanelScore(index, panel.scene, panel.candidate, panel.candidates, panel.file,
                      tuple(results[slot] for slot in range(len(panel.cast))), faces_detected, len(on_face))
