"""Per-method and per-character summaries (means, CIs, missing-face counts, swap rates).

Units: every summary value is 100 x cosine ("percent", as the StoryMaker paper reports);
the per-image records keep raw cosines.  CLIP-T is 100 * cos(text, image) *without*
clamping at 0 (torchmetrics' CLIPScore clamps; the two differ only for negative cosines).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .metrics import Interval, mean_ci, wilson_interval
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
        if self.method == "t":
            return f"{self.confidence:.0%} Student-t interval of the mean (sample std, ddof=1)"
        return (f"{self.confidence:.0%} percentile bootstrap of the mean, {self.n_boot} resamples, "
                f"numpy default_rng(seed={self.seed})")


def _interval(values: Sequence[float], ci: CIOptions) -> dict[str, Any]:
    iv: Interval = mean_ci(values, ci.confidence, ci.method, n_boot=ci.n_boot, seed=ci.seed)
    return iv.scaled(SCALE).as_dict()


def summarise_group(records: Iterable[ImageScore], character: str | None, ci: CIOptions) -> dict[str, Any]:
    """Stats over ``records``; ``character=None`` pools every (image, character) pair."""
    face, face0, clip_i, clip_t = [], [], [], []
    n_images = found = missing = swaps = swap_n = 0
    for rec in records:
        chars = rec.characters if character is None else [c for c in rec.characters if c == character]
        if character is not None and not chars:
            continue
        n_images += 1
        if rec.clip_t_cos is not None:
            clip_t.append(rec.clip_t_cos)
        for c in chars:
            cs = rec.per_character[c]
            if cs.clip_i_cos is not None:
                clip_i.append(cs.clip_i_cos)
            if rec.n_faces_detected is None:
                continue  # face metrics were not computed
            if cs.face_found:
                found += 1
                face.append(cs.face_cos)
                face0.append(cs.face_cos)
            else:
                missing += 1
                face0.append(0.0)
            if cs.swapped is not None:
                swap_n += 1
                swaps += int(cs.swapped)
    pairs = found + missing
    low, high = wilson_interval(swaps, swap_n, ci.confidence)
    return {
        "n_images": n_images,
        "face_sim": _interval(face, ci),
        "face_found": found,
        "face_missing": missing,
        "face_detect_rate": (SCALE * found / pairs) if pairs else None,
        "face_sim_missing_as_0": _interval(face0, ci),
        "clip_i": _interval(clip_i, ci),
        "clip_t": _interval(clip_t, ci),
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
