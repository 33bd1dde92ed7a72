"""Pure numpy maths of story consistency: reference<->shot and shot<->shot similarity, face assignment,
and the summary over stories with cluster-robust intervals.

Nothing here loads a model or a file (see ``story_scoring.py`` for that), so every number can be checked
on constructed vectors. Summary units are 100 x cosine and percent, as ``evaluate score`` reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from .metrics import best_assignment, clustered_mean_ci, l2_normalize, swap_flags, wilson_interval

SCALE = 100.0
MODES = ("face", "appearance")


def reference_similarity(references: np.ndarray, embedding: np.ndarray) -> float:
    """Mean cosine of one shot embedding (D,) to each of a character's references (R, D)."""
    refs = l2_normalize(np.atleast_2d(references))
    return float(np.mean(refs @ l2_normalize(np.asarray(embedding).reshape(-1))))


def mean_pairwise_similarity(embeddings: Sequence[np.ndarray]) -> float | None:
    """Mean cosine over all unordered pairs of a character's shot embeddings (S, D); None below 2 shots."""
    if len(embeddings) < 2:
        return None
    e = l2_normalize(np.stack([np.asarray(x).reshape(-1) for x in embeddings]))
    upper = np.triu_indices(len(e), k=1)
    return float(np.mean((e @ e.T)[upper]))


def character_face_similarity(references: Sequence[np.ndarray], faces: np.ndarray) -> np.ndarray:
    """(K, M) similarity of K characters (each (R_k, 512) references) to M detected faces (M, 512):
    the mean cosine over each character's references, as :func:`reference_similarity`."""
    faces = l2_normalize(np.atleast_2d(faces)) if len(faces) else np.zeros((0, 1))
    sim = np.zeros((len(references), len(faces)))
    for k, refs in enumerate(references):
        if len(faces):
            sim[k] = (l2_normalize(np.atleast_2d(refs)) @ faces.T).mean(axis=0)
    return sim


def assign_faces(sim: np.ndarray) -> list[tuple[int, int, bool | None]]:
    """(character, face, swapped) for the best assignment of ``sim`` (K, M); ``swapped`` is None with one
    character (no other to be confused with), else the face is closer to another character of the shot."""
    pairs = best_assignment(sim)
    flags = swap_flags(sim, pairs) if sim.shape[0] >= 2 else [None] * len(pairs)
    return [(i, j, f) for (i, j), f in zip(pairs, flags)]


# --------------------------------------------------------------------------- summary
@dataclass
class CharacterStoryScore:
    """One character across one story. Similarities are raw cosines (None: nothing to average)."""

    method: str
    story: str
    character: str
    mode: str  # "face" (ArcFace) or "appearance" (CLIP-I)
    reason: str  # why this mode
    on_stage: int = 0  # shots listing the character
    missing_shots: int = 0  # of those, shots without an image
    no_face: int = 0  # face characters: shots with an image but no face matched to the character
    ref_shot: float | None = None
    shot_shot: float | None = None
    pairs: int = 0  # shot pairs behind shot_shot
    swaps: int = 0
    swap_n: int = 0


@dataclass
class ShotScore:
    """One shot: counts and, per on-stage character, its similarity to the references."""

    method: str
    story: str
    shot: str
    file: str | None
    characters: list[str]
    problem: str | None = None  # why there is no score (no image, unreadable)
    faces_detected: int | None = None
    faces_expected: int | None = None  # on-stage face characters (count accuracy), None when not scored
    per_character: dict[str, dict[str, Any]] | None = None  # name -> {mode, ref_cos, face_found, swapped}

    @property
    def count_correct(self) -> bool | None:
        if self.faces_expected is None or self.faces_detected is None:
            return None
        return self.faces_detected == self.faces_expected


def _interval(values: Sequence[float], stories: Sequence[str], ci, scale: float = SCALE) -> dict[str, Any]:
    iv = clustered_mean_ci(values, stories, ci.confidence, ci.method, cluster_by="story", n_boot=ci.n_boot,
                           seed=ci.seed)
    return iv.scaled(scale).as_dict()


def summarise_method(characters: Iterable[CharacterStoryScore], shots: Iterable[ShotScore], ci) -> dict[str, Any]:
    """One method's numbers. Similarities: the mean over (story, character) of each character's story mean,
    so a character with many shots does not outweigh the others; count accuracy: the share of shots with
    as many detected faces as face characters on stage. Intervals treat *stories* as the independent
    samples (cluster-robust, see ``clustered_mean_ci``); the swap rate uses the Wilson interval."""
    characters, shots = list(characters), list(shots)
    out: dict[str, Any] = {
        "stories": len({s.story for s in shots}),
        "shots": len(shots),
        "shots_missing": sum(s.problem is not None for s in shots),
    }
    for mode in MODES:
        cells = [c for c in characters if c.mode == mode]
        entry: dict[str, Any] = {"characters": len(cells), "on_stage": sum(c.on_stage for c in cells),
                                 "missing_shots": sum(c.missing_shots for c in cells)}
        for key in ("ref_shot", "shot_shot"):
            have = [c for c in cells if getattr(c, key) is not None]
            entry[key] = _interval([getattr(c, key) for c in have], [c.story for c in have], ci)
        if mode == "face":
            entry["no_face"] = sum(c.no_face for c in cells)
        out[mode] = entry
    counted = [s for s in shots if s.count_correct is not None]
    out["count_accuracy"] = _interval([float(s.count_correct) for s in counted], [s.story for s in counted], ci)
    out["count"] = {
        "shots": len(counted),
        "exact": sum(s.faces_detected == s.faces_expected for s in counted),
        "too_few": sum(s.faces_detected < s.faces_expected for s in counted),
        "too_many": sum(s.faces_detected > s.faces_expected for s in counted),
    }
    swaps = sum(c.swaps for c in characters)
    swap_n = sum(c.swap_n for c in characters)
    low, high = wilson_interval(swaps, swap_n, ci.confidence)
    out["swap"] = None if swap_n == 0 else {"n": swap_n, "swaps": swaps, "rate": SCALE * swaps / swap_n,
                                            "low": SCALE * low, "high": SCALE * high,
                                            "method": "Wilson score interval"}
    return out


def summarise_stories(characters: Sequence[CharacterStoryScore], shots: Sequence[ShotScore], ci) -> dict[str, Any]:
    """``{method: summarise_method(...)}`` in first-seen order."""
    methods = list(dict.fromkeys([s.method for s in shots] + [c.method for c in characters]))
    return {m: summarise_method([c for c in characters if c.method == m], [s for s in shots if s.method == m], ci)
            for m in methods}
