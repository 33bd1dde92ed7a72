"""Pure numpy maths for the evaluation: cosines, confidence intervals, face matching, swaps.

Nothing here loads a model or a file, so every number the harness reports can be
checked on constructed inputs with known answers (see tests/evaluate/test_metrics.py).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, replace
from typing import Hashable, Optional, Sequence

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
    clusters: Optional[int] = None  # independent groups the interval rests on (None: every value independent)
    cluster_by: Optional[str] = None  # what a group is, e.g. "character" or "prompt"

    def scaled(self, factor: float) -> "Interval":
        """Same interval in other units (e.g. x100 for percent)."""
        return replace(self, mean=self.mean * factor, std=self.std * factor, low=self.low * factor,
                       high=self.high * factor)

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


def clustered_mean_ci(values: Sequence[float], clusters: Sequence[Hashable], confidence: float = 0.95,
                      method: str = "t", *, cluster_by: str = "cluster", n_boot: int = 10_000,
                      seed: int = 0) -> Interval:
    """Mean of all values with a CI that treats *groups* as the independent samples.

    Why: the images of one character (or the seeds of one prompt) are correlated, so an interval that
    counts every image as independent is far too narrow. method="t": the cluster-robust (CR1) standard
    error of the mean, ``sqrt(G/(G-1) * sum_g (sum_{i in g} (x_i - mean))^2) / N`` with t on G-1 degrees
    of freedom (G groups, N values); with one value per group it is exactly the ordinary t interval.
    method="bootstrap": whole groups resampled with replacement, percentile interval of the pooled mean.
    Fewer than two groups: no interval (low/high NaN).
    """
    x = _as_sample(values)
    keys = list(clusters)
    if len(keys) != x.size:
        raise ValueError(f"{x.size} values but {len(keys)} cluster labels")
    codes = np.unique(np.array([str(k) for k in keys], dtype=object), return_inverse=True)[1].reshape(-1)
    g = int(codes.max()) + 1 if x.size else 0
    base = mean_ci(x, confidence, "t")
    nan = float("nan")
    if g < 2:
        return replace(base, low=nan, high=nan, method=method, clusters=g, cluster_by=cluster_by)
    n, mean = x.size, float(x.mean())
    if method == "t":
        sums = np.bincount(codes, weights=x - mean, minlength=g)
        se = math.sqrt(g / (g - 1) * float(np.sum(sums ** 2))) / n
        half = student_t_quantile(0.5 + confidence / 2.0, g - 1) * se
        return replace(base, low=mean - half, high=mean + half, method="t", clusters=g, cluster_by=cluster_by)
    if method == "bootstrap":
        totals = np.bincount(codes, weights=x, minlength=g)
        counts = np.bincount(codes, minlength=g).astype(np.float64)
        rng = np.random.default_rng(seed)
        picks = rng.integers(0, g, size=(n_boot, g))
        means = totals[picks].sum(axis=1) / counts[picks].sum(axis=1)
        alpha = (1.0 - confidence) / 2.0
        low, high = np.quantile(means, [alpha, 1.0 - alpha])
        return replace(base, low=float(low), high=float(high), method="bootstrap", clusters=g, cluster_by=cluster_by)
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
