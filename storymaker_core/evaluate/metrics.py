"""Pure numpy maths for the evaluation: cosines, confidence intervals, face matching, swaps.

Nothing here loads a model or a file, so every number the harness reports can be
checked on constructed inputs with known answers (see tests/evaluate/test_metrics.py).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

__all__ = [
    "Interval",
    "best_assignment",
    "bootstrap_ci",
    "cosine",
    "cosine_matrix",
    "l2_normalize",
    "mean_ci",
    "student_t_quantile",
    "swap_flags",
    "wilson_interval",
]


# --------------------------------------------------------------------------- cosines
def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` (N, D) (or a single (D,) vector) scaled to unit L2 norm, float64."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, eps)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two (D,) vectors (they need not be normalised)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"cosine of vectors with different sizes {a.shape} and {b.shape}")
    return float(l2_normalize(a) @ l2_normalize(b))


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) cosines between rows of ``a`` (N, D) and ``b`` (M, D)."""
    a2 = l2_normalize(np.atleast_2d(a))
    b2 = l2_normalize(np.atleast_2d(b))
    return a2 @ b2.T


# --------------------------------------------------------------------------- intervals
def _t_abs_cdf_theta(theta: float, df: int) -> float:
    """P(|T| <= sqrt(df) * tan(theta)) for Student's t with integer ``df``.

    Exact finite series of Abramowitz & Stegun 26.7.3 / 26.7.4 (no scipy needed).
    """
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 1:
        if df == 1:
            return 2.0 * theta / math.pi
        k = np.arange(1, (df - 3) // 2 + 1, dtype=np.float64)
        series = 1.0 + float(np.cumprod((2 * k) / (2 * k + 1) * c2).sum()) if k.size else 1.0
        return 2.0 / math.pi * (theta + s * math.cos(theta) * series)
    k = np.arange(1, (df - 2) // 2 + 1, dtype=np.float64)
    series = 1.0 + float(np.cumprod((2 * k - 1) / (2 * k) * c2).sum()) if k.size else 1.0
    return s * series


def student_t_quantile(p: float, df: int) -> float:
    """Quantile ``t`` with P(T <= t) = p for Student's t with integer ``df`` >= 1.

    Bisection on the exact CDF; agrees with ``scipy.stats.t.ppf`` to ~1e-10.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if int(df) != df or df < 1:
        raise ValueError(f"df must be a positive integer, got {df}")
    df = int(df)
    if p == 0.5:
        return 0.0
    target = abs(2.0 * p - 1.0)  # two-sided mass P(|T| <= t)
    lo, hi = 0.0, math.pi / 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_abs_cdf_theta(mid, df) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    t = math.sqrt(df) * math.tan(0.5 * (lo + hi))
    return t if p > 0.5 else -t


@dataclass(frozen=True)
class Interval:
    """A mean with its confidence interval (``low``/``high`` are NaN when n < 2)."""

    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); NaN when n < 2
    low: float
    high: float
    method: str  # "t" or "bootstrap"
    confidence: float

    def scaled(self, factor: float) -> "Interval":
        """Same interval in other units (e.g. x100 for percent)."""
        return Interval(
            self.n, self.mean * factor, self.std * factor, self.low * factor, self.high * factor,
            self.method, self.confidence,
        )

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def _as_sample(values: Sequence[float]) -> np.ndarray:
    x = np.asarray(list(values), dtype=np.float64).reshape(-1)
    if np.isnan(x).any():
        raise ValueError("sample contains NaN: drop missing values explicitly before summarising")
    return x


def mean_ci(values: Sequence[float], confidence: float = 0.95, method: str = "t", *,
            n_boot: int = 10_000, seed: int = 0) -> Interval:
    """Mean and two-sided CI of a sample.

    method="t": Student-t interval ``mean +- t_{(1+c)/2, n-1} * s / sqrt(n)`` (s with
    ddof=1) -- the default, exact for normal data and accurate for the hundreds of
    images a run has.  method="bootstrap": percentile bootstrap of the mean with
    ``n_boot`` resamples from ``numpy.random.default_rng(seed)`` (reproducible).
    """
    x = _as_sample(values)
    n = x.size
    if n == 0:
        nan = float("nan")
        return Interval(0, nan, nan, nan, nan, method, confidence)
    mean = float(x.mean())
    if n < 2:
        nan = float("nan")
        return Interval(1, mean, nan, nan, nan, method, confidence)
    std = float(x.std(ddof=1))
    if method == "t":
        half = student_t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
        return Interval(n, mean, std, mean - half, mean + half, "t", confidence)
    if method == "bootstrap":
        low, high = bootstrap_ci(x, confidence, n_boot=n_boot, seed=seed)
        return Interval(n, mean, std, low, high, "bootstrap", confidence)
    raise ValueError(f"unknown CI method {method!r}; use 't' or 'bootstrap'")


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, *, n_boot: int = 10_000,
                 seed: int = 0, chunk: int = 1000) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean; resamples drawn in chunks to bound memory."""
    x = _as_sample(values)
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        idx = rng.integers(0, x.size, size=(stop - start, x.size))  # (chunk, n)
        means[start:stop] = x[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (used for the swap rate); (nan, nan) if n == 0.

    Why Wilson: swaps are rare, and the normal (Wald) interval collapses to [0, 0]
    when none is observed.
    """
    if n == 0:
        return float("nan"), float("nan")
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


# --------------------------------------------------------------------------- matching
_BRUTE_FORCE_LIMIT = 40_320  # 8! candidate assignments


def best_assignment(sim: np.ndarray) -> list[tuple[int, int]]:
    """Pairs (row, col) maximising the summed similarity, one per row/col (rows = characters,
    cols = detected faces; K x M, either may be larger; min(K, M) pairs returned, by row).

    Brute force over permutations while there are at most 8! candidates (every story
    scene has <= 3 characters), otherwise scipy's Hungarian solver.  Ties resolve to
    the lexicographically first assignment, so results are deterministic.
    """
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim != 2:
        raise ValueError(f"similarity matrix must be 2-D (characters x faces), got shape {sim.shape}")
    k, m = sim.shape
    if k == 0 or m == 0:
        return []
    transposed = k > m
    s = sim.T if transposed else sim  # rows <= cols
    r, c = s.shape
    if math.perm(c, r) <= _BRUTE_FORCE_LIMIT:
        rows = np.arange(r)
        best_cols, best_total = None, -math.inf
        for cols in itertools.permutations(range(c), r):
            total = float(s[rows, list(cols)].sum())
            if total > best_total + 1e-12:
                best_cols, best_total = cols, total
        pairs = list(zip(rows.tolist(), list(best_cols)))
    else:  # pragma: no cover - only for unusually crowded images
        from scipy.optimize import linear_sum_assignment

        rr, cc = linear_sum_assignment(s, maximize=True)
        pairs = list(zip(rr.tolist(), cc.tolist()))
    if transposed:
        pairs = [(j, i) for i, j in pairs]
    return sorted((int(i), int(j)) for i, j in pairs)


def swap_flags(sim: np.ndarray, pairs: Sequence[tuple[int, int]]) -> list[bool]:
    """For each matched (character i, face j): True if face j is *more* similar to another
    character of the image than to i -- an identity swap/blend the assignment hid."""
    sim = np.asarray(sim, dtype=np.float64)
    flags = []
    for i, j in pairs:
        others = np.delete(sim[:, j], i)
        flags.append(bool(others.size and others.max() > sim[i, j]))
    return flags
