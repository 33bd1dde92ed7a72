"""Where a character's identity comes from: its face, or its appearance only (and why, for the graph).

Anime and cartoon people, animals and mascots have no face the ArcFace detector can find with confidence,
yet the character crop still describes them. `auto` takes the face when every reference has one found with
confidence (and the requested `face_index` exists), and otherwise the appearance alone; a character is one
mode, so a single reference without a face makes the whole character appearance-only (mixing would average a
real identity with none). A character's own `face_only` choice (`default` / `on` / `off`) is also decided
here. docs/characters.md explains the modes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from .characters import APPEARANCE, FACE
from .faces import WEAK_DET_SCORE, DetectedFace, FaceIndexError, NoFaceFoundError

logger = logging.getLogger(__name__)

AUTO = "auto"
IDENTITY_CHOICES = (AUTO, FACE, APPEARANCE)
MIN_FACE_SCORE = WEAK_DET_SCORE  # below it the detector is unsure, and so is the identity it would embed

# A character's own face_only: `default` follows the Encode/Cast node's switch; `on`/`off` override it.
FACE_ONLY_DEFAULT = "default"
FACE_ONLY_CHOICES = (FACE_ONLY_DEFAULT, "on", "off")


@dataclass
class IdentityDecision:
    identity: str  # FACE or APPEARANCE, for the whole character
    faces: list  # one DetectedFace per reference (FACE) or one None per reference (APPEARANCE)
    lines: list  # one line per reference: the mode used and why

    @property
    def report(self) -> str:
        return "\n".join(self.lines)


def decide_identity(select_face: Callable[..., DetectedFace], images: Sequence[np.ndarray], labels: Sequence[str],
                    choice: str = AUTO, index: int = 0, name: str = "character") -> IdentityDecision:
    """The identity mode of a character from its reference images, and the face of each reference.

    Args:
        select_face: `FaceAnalyzer.select_face(image, image_name=, index=)`; raises `NoFaceFoundError`, or
            `FaceIndexError` when the image has no face number `index` (`auto` falls back to appearance on
            either; `face` lets both through).
        images: RGB uint8 `[H, W, 3]` references of one character.
        labels: how each image is named in messages ("image #2").
        choice: `auto`, `face` (no face = the analyzer's error, as before) or `appearance` (no detection).
        index: which face by size (0 = largest), as the node's face_index.
    """
    if choice not in IDENTITY_CHOICES:
        raise ValueError(f"{name}: identity must be one of {IDENTITY_CHOICES}, got {choice!r}.")
    if choice == APPEARANCE:
        return IdentityDecision(APPEARANCE, [None] * len(images),
                                [f"{label}: appearance (chosen: no face is used)" for label in labels])
    if choice == FACE:
        faces = [select_face(image, image_name=label, index=index) for image, label in zip(images, labels)]
        return IdentityDecision(FACE, faces, [f"{label}: face (confidence {face.det_score:.2f})"
                                              for face, label in zip(faces, labels)])
    found, reasons = [], []
    for image, label in zip(images, labels):
        face, reason = _confident_face(select_face, image, label, index)
        found.append(face)
        reasons.append(reason)
    if all(face is not None for face in found):
        return IdentityDecision(FACE, found, [f"{label}: face (auto: {reason})" for label, reason in zip(labels, reasons)])
    missing = [label for label, face in zip(labels, found) if face is None]
    lines = [f"{label}: appearance (auto: {reason})" if face is None else
             f"{label}: appearance (auto: {reason}, but {', '.join(missing)} has none; a character is one mode)"
             for label, face, reason in zip(labels, found, reasons)]
    log = logger.warning if len(missing) < len(found) else logger.info
    log("%s: no confident face in %s: using appearance only (the character crop alone carries the identity). "
        "Set identity to 'face' to require a face.\n%s", name, ", ".join(missing), "\n".join(lines))
    return IdentityDecision(APPEARANCE, [None] * len(images), lines)


def _confident_face(select_face, image, label, index) -> tuple:
    """`(face or None, why)`: the chosen face if found with at least MIN_FACE_SCORE confidence."""
    try:
        face: Optional[DetectedFace] = select_face(image, image_name=label, index=index)
    except NoFaceFoundError:
        return None, "no face found"
    except FaceIndexError:
        return None, f"no face at face_index {index} (fewer faces found)"
    if face.det_score < MIN_FACE_SCORE:
        return None, f"face confidence {face.det_score:.2f} is below {MIN_FACE_SCORE:.2f}"
    return face, f"face found, confidence {face.det_score:.2f}"


def face_only_setting(choice: str, name: str = "character") -> Optional[bool]:
    """The node's `face_only` choice -> the character's own setting (None: the Encode/Cast node decides)."""
    if choice not in FACE_ONLY_CHOICES:
        raise ValueError(f"{name}: face_only must be one of {FACE_ONLY_CHOICES}, got {choice!r}.")
    return None if choice == FACE_ONLY_DEFAULT else choice == "on"


def face_only_line(choice: str, identity: str) -> Optional[str]:
    """What a character's own face_only does, for `identity_used` (None for `default`: nothing to say)."""
    setting = face_only_setting(choice)
    if setting is None:
        return None
    if not setting:
        return "face_only: off (this character keeps its character crop whatever the Encode/Cast node's face_only says)"
    if identity == APPEARANCE:
        return ("face_only: on, not applied: appearance only (no face tokens), so its character crop is kept and "
                "carries the character")
    return "face_only: on (only its face is kept; the prompt decides clothing and body)"
