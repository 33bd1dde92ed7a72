"""The harness's maths on constructed inputs with known answers."""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pytest

from storymaker.evaluate import metrics as M


def test_cosine_known_vectors():
    assert M.cosine([1, 0, 0], [0, 1, 0]) == pytest.approx(0.0)
    assert M.cosine([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert M.cosine([1, 1], [-1, -1]) == pytest.approx(-1.0)
    assert M.cosine([3, 4], [4, 3]) == pytest.approx(24 / 25)  # (12+12)/(5*5)
    assert M.cosine([1, 0], [1, math.sqrt(3)]) == pytest.approx(0.5)  # 60 degrees
    with pytest.raises(ValueError, match="different sizes"):
        M.cosine([1, 2], [1, 2, 3])


def test_cosine_matrix_shape_and_values():
    a = np.array([[1, 0], [0, 2]])  # (2, 2)
    b = np.array([[1, 1], [0, 5], [-3, 0]])  # (3, 2)
    sim = M.cosine_matrix(a, b)
    assert sim.shape == (2, 3)
    np.testing.assert_allclose(sim, [[1 / math.sqrt(2), 0, -1], [1 / math.sqrt(2), 1, 0]], atol=1e-12)


@pytest.mark.parametrize("p,df,expected", [
    (0.975, 1, 12.706204736174705),
    (0.975, 2, 4.302652729749464),
    (0.975, 9, 2.2621571628540993),
    (0.975, 30, 2.0422724563012373),
    (0.995, 5, 4.032142983557536),
    (0.05, 4, -2.131846786326649),
])
def test_t_quantile_known_values(p, df, expected):
    assert M.student_t_quantile(p, df) == pytest.approx(expected, rel=1e-9)


def test_t_quantile_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 4, 7, 10, 19, 79, 320, 5000):
        for p in (0.6, 0.9, 0.975, 0.999):
            assert M.student_t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9, abs=1e-10)


def test_mean_ci_t_against_statistics_and_scipy():
    sample = [0.61, 0.72, 0.55, 0.68, 0.70, 0.64, 0.59, 0.75, 0.66, 0.62]
    iv = M.mean_ci(sample, 0.95, "t")
    mean, sd = statistics.fmean(sample), statistics.stdev(sample)
    half = 2.2621571628540993 * sd / math.sqrt(len(sample))  # t_{0.975, 9}
    assert (iv.n, iv.mean, iv.std) == (10, pytest.approx(mean), pytest.approx(sd))
    assert iv.low == pytest.approx(mean - half) and iv.high == pytest.approx(mean + half)
    stats = pytest.importorskip("scipy.stats")
    lo, hi = stats.t.interval(0.95, len(sample) - 1, loc=mean, scale=stats.sem(sample))
    assert (iv.low, iv.high) == (pytest.approx(lo, rel=1e-9), pytest.approx(hi, rel=1e-9))


def test_mean_ci_edge_cases():
    assert M.mean_ci([]).n == 0 and math.isnan(M.mean_ci([]).mean)
    one = M.mean_ci([0.5])
    assert one.mean == 0.5 and math.isnan(one.low) and one.as_dict()["low"] is None
    const = M.mean_ci([0.3] * 5)
    assert const.low == pytest.approx(0.3) and const.high == pytest.approx(0.3)
    with pytest.raises(ValueError, match="NaN"):
        M.mean_ci([0.1, float("nan")])
    with pytest.raises(ValueError, match="unknown CI method"):
        M.mean_ci([0.1, 0.2], method="wald")
    assert M.mean_ci([0.1, 0.3]).scaled(100).mean == pytest.approx(20.0)


def test_bootstrap_is_reproducible_and_close_to_t():
    rng = np.random.default_rng(123)
    sample = rng.normal(0.6, 0.1, size=200)
    a = M.mean_ci(sample, method="bootstrap", n_boot=4000, seed=7)
    b = M.mean_ci(sample, method="bootstrap", n_boot=4000, seed=7)
    t = M.mean_ci(sample, method="t")
    assert (a.low, a.high) == (b.low, b.high)
    assert a.low < a.mean < a.high
    assert a.low == pytest.approx(t.low, abs=0.004) and a.high == pytest.approx(t.high, abs=0.004)
    c = M.mean_ci(sample, method="bootstrap", n_boot=4000, seed=8)
    assert (c.low, c.high) != (a.low, a.high)


def test_wilson_interval_known_values():
    lo, hi = M.wilson_interval(0, 10)
    z2 = 1.959963984540054 ** 2
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(z2 / (10 + z2))
    lo, hi = M.wilson_interval(5, 10)
    assert lo == pytest.approx(0.2365931, abs=1e-6) and hi == pytest.approx(0.7634069, abs=1e-6)
    assert all(math.isnan(v) for v in M.wilson_interval(0, 0))


def test_assignment_beats_greedy_on_constructed_matrix():
    sim = np.array([[0.9, 0.8], [0.85, 0.1]])  # greedy: (0,0)+(1,1)=1.0; optimum: 0.8+0.85
    assert M.best_assignment(sim) == [(0, 1), (1, 0)]


def test_assignment_rectangular_and_three_characters():
    # 3 characters, 4 faces: optimum = (0,3) (1,0) (2,1) with total 0.9+0.8+0.7
    sim = np.array([
        [0.5, 0.1, 0.2, 0.9],
        [0.8, 0.6, 0.1, 0.85],
        [0.1, 0.7, 0.65, 0.3],
    ])
    assert M.best_assignment(sim) == [(0, 3), (1, 0), (2, 1)]
    # more characters than faces: only min(K, M) pairs
    assert M.best_assignment(sim[:, :2]) == [(1, 0), (2, 1)]
    assert M.best_assignment(np.zeros((2, 0))) == []


def test_assignment_matches_exhaustive_and_scipy_on_random():
    rng = np.random.default_rng(0)
    opt = pytest.importorskip("scipy.optimize")
    for _ in range(50):
        k, m = rng.integers(1, 5, size=2)
        sim = rng.uniform(-1, 1, size=(k, m))
        pairs = M.best_assignment(sim)
        total = sum(sim[i, j] for i, j in pairs)
        rr, cc = opt.linear_sum_assignment(sim, maximize=True)
        assert total == pytest.approx(sim[rr, cc].sum())
        assert len(pairs) == min(k, m)
        assert len({i for i, _ in pairs}) == len({j for _, j in pairs}) == len(pairs)


def test_swap_flags_on_constructed_embeddings():
    ref = M.l2_normalize(np.eye(3)[:2])  # alice = e0, bob = e1
    faces = M.l2_normalize(np.array([
        [1.0, 0.2, 0.0],  # clearly alice
        [0.9, 0.5, 0.0],  # looks like alice too (identity leak)
    ]))
    sim = ref @ faces.T  # (2 chars, 2 faces)
    pairs = M.best_assignment(sim)
    assert pairs == [(0, 0), (1, 1)]
    assert M.swap_flags(sim, pairs) == [False, True]  # bob's face is closer to alice
    clean = M.l2_normalize(np.array([[1.0, 0.1, 0], [0.1, 1.0, 0]]))
    s2 = ref @ clean.T
    assert M.swap_flags(s2, M.best_assignment(s2)) == [False, False]
    # single character never swaps
    assert M.swap_flags(sim[:1], [(0, 0)]) == [False]


def test_brute_force_limit_consistent():
    # 3 x 8 -> 336 permutations: brute force; check against explicit enumeration
    rng = np.random.default_rng(3)
    sim = rng.normal(size=(3, 8))
    best = max(itertools.permutations(range(8), 3), key=lambda cols: sim[[0, 1, 2], list(cols)].sum())
    assert M.best_assignment(sim) == sorted(zip(range(3), best))


def test_clustered_ci_with_one_value_per_group_is_the_ordinary_t_interval():
    x = np.random.default_rng(3).normal(size=40)
    plain, clustered = M.mean_ci(x), M.clustered_mean_ci(x, range(40), cluster_by="image")
    assert (clustered.low, clustered.high) == pytest.approx((plain.low, plain.high), abs=1e-12)
    assert clustered.clusters == 40 and clustered.cluster_by == "image"
    assert math.isnan(M.clustered_mean_ci(x, [0] * 40).low)  # one group: no interval


def test_clustered_ci_cr1_against_an_explicit_sandwich_in_float64():
    rng = np.random.default_rng(4)
    groups = np.repeat(np.arange(6), [3, 5, 2, 4, 4, 6])
    x = rng.normal(size=groups.size) + rng.normal(size=6)[groups]
    X = np.ones((x.size, 1))  # intercept-only regression: the CR1 sandwich, written out independently
    u = x - x.mean()
    meat = sum(np.outer(X[groups == g].T @ u[groups == g], X[groups == g].T @ u[groups == g]) for g in range(6))
    bread = np.linalg.inv(X.T @ X)
    se = math.sqrt((bread @ meat @ bread)[0, 0] * 6 / 5)
    iv = M.clustered_mean_ci(x, groups)
    assert iv.high - iv.mean == pytest.approx(M.student_t_quantile(0.975, 5) * se, rel=1e-12)


@pytest.mark.parametrize("method", ["t", "bootstrap"])
def test_clustered_ci_covers_where_per_image_intervals_do_not(method):
    """10 characters x 20 prompts x 4 seeds, most variance between characters (the review's simulation):
    intervals over images cover the true mean far below 95 %, clustered ones close to it."""
    rng = np.random.default_rng(5)
    hits = {"clustered": 0, "per image": 0}
    trials = 200
    for _ in range(trials):
        char = rng.normal(0, 0.08, 10)[:, None, None]
        prompt = rng.normal(0, 0.05, (10, 20))[:, :, None]
        x = (0.5 + char + prompt + rng.normal(0, 0.04, (10, 20, 4))).reshape(-1)
        groups = np.repeat(np.arange(10), 80)
        clustered = M.clustered_mean_ci(x, groups, method=method, n_boot=400, seed=1)
        plain = M.mean_ci(x, method=method, n_boot=400, seed=1)
        hits["clustered"] += clustered.low <= 0.5 <= clustered.high
        hits["per image"] += plain.low <= 0.5 <= plain.high
    assert hits["clustered"] / trials > 0.85 and hits["per image"] / trials < 0.5, hits
