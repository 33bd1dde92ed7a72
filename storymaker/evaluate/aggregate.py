"""Per-method and per-character summaries (means, CIs, missing-face counts, swap rates).

Units: every summary value is 100 x cosine ("percent", as the StoryMaker paper reports);
the per-image records keep raw cosines.  CLIP-T is 100 * cos(text, image) *without*
clamping at 0 (torchmetrics' CLIPScore clamps; the two differ only for negative cosines).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .metrics import Interval, clustered_mean_ci, wilson_interval
from .scoring import ImageScore

ALL = "ALL"
SCALE = 100.0


@dataclass(frozen=True)
class CIOptions:
    """method: "t" (Student-t, default) or "bootstrap" (percentile, fixed seed)."""

    method: str = "t"
    confidence: float = 0.95
    n_boot: int = 10_000
    seed: int = 0

    def describe(self) -> str:
        groups = "groups (ALL: characters, or prompts with one character; a character's row: prompts)"
        if self.method == "t":
            return (f"{self.confidence:.0%} Student-t interval of the mean with a cluster-robust (CR1) standard "
                    f"error over {groups}, t on groups - 1 degrees of freedom")
        return (f"{self.confidence:.0%} percentile bootstrap of the mean resampling whole {groups}, "
                f"{self.n_boot} resamples, numpy default_rng(seed={self.seed})")


def _interval(samples: Sequence[tuple], ci: CIOptions, cluster_by: str) -> dict[str, Any]:
    """samples: (value, group) pairs; the interval treats groups, not values, as independent."""
    values, groups = [v for v, _ in samples], [g for _, g in samples]
    iv: Interval = clustered_mean_ci(values, groups, ci.confidence, ci.method, cluster_by=cluster_by,
                                     n_boot=ci.n_boot, seed=ci.seed)
    return iv.scaled(SCALE).as_dict()


def prompt_key(rec: ImageScore) -> str:
    """The prompt an image was made from: its seeds share it, so they form one group."""
    return rec.prompt_id or rec.prompt or rec.file


def summarise_group(records: Iterable[ImageScore], character: str | None, ci: CIOptions) -> dict[str, Any]:
    """Stats over ``records``; ``character=None`` pools every (image, character) pair.

    Intervals are clustered: a character's row by prompt (its seeds are alike), the ALL row by character
    (its images share a reference), or by prompt when there is only one character.
    """
    records = [r for r in records if character is None or character in r.characters]
    by_character = character is None and len({c for r in records for c in r.characters}) > 1
    cluster_by = "character" if by_character else "prompt"
    face, face0, clip_i, clip_t = [], [], [], []
    n_images = found = missing = swaps = swap_n = 0
    for rec in records:
        chars = rec.characters if character is None else [character]
        n_images += 1
        if rec.clip_t_cos is not None:
            clip_t.append((rec.clip_t_cos, "+".join(rec.characters) if by_character else prompt_key(rec)))
        for c in chars:
            cs = rec.per_character[c]
            group = c if by_character else prompt_key(rec)
            if cs.clip_i_cos is not None:
                clip_i.append((cs.clip_i_cos, group))
            if rec.n_faces_detected is None:
                continue  # face metrics were not computed
            if cs.face_found:
                found += 1
                face.append((cs.face_cos, group))
                face0.append((max(cs.face_cos, 0.0), group))  # FastComposer: max(cos, 0), a missing face 0
            else:
                missing += 1
                face0.append((0.0, group))
            if cs.swapped is not None:
                swap_n += 1
                swaps += int(cs.swapped)
    pairs = found + missing
    low, high = wilson_interval(swaps, swap_n, ci.confidence)
    return {
        "n_images": n_images,
        "face_sim": _interval(face, ci, cluster_by),
        "face_found": found,
        "face_missing": missing,
        "face_detect_rate": (SCALE * found / pairs) if pairs else None,
        "face_sim_missing_as_0": _interval(face0, ci, cluster_by),
        "clip_i": _interval(clip_i, ci, cluster_by),
        "clip_t": _interval(clip_t, ci, "characters" if by_character else "prompt"),
        "swap": None if swap_n == 0 else {
            "n": swap_n, "swaps": swaps, "rate": SCALE * swaps / swap_n,
            "low": SCALE * low, "high": SCALE * high, "method": "Wilson score interval",
        },
    }


def summarise(records: Sequence[ImageScore], ci: CIOptions | None = None) -> dict[str, dict[str, Any]]:
    """``{method: {"ALL": stats, character: stats, ...}}`` in first-seen order."""
    ci = ci or CIOptions()
    out: dict[str, dict[str, Any]] = {}
    methods = list(dict.fromkeys(r.method for r in records))
    for method in methods:
        recs = [r for r in records if r.method == method]
        chars = list(dict.fromkeys(c for r in recs for c in r.characters))
        table = {ALL: summarise_group(recs, None, ci)}
        for c in chars:
            table[c] = summarise_group(recs, c, ci)
        out[method] = table
    return out
