"""Story consistency maths against independent float64 computations (explicit loops, scipy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from storymaker.evaluate.aggregate import CIOptions
from storymaker.evaluate.story_metrics import (CharacterStoryScore, ShotScore, assign_faces,
                                                    character_face_similarity, mean_pairwise_similarity,
                                                    reference_similarity, summarise_method, summarise_stories)


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_reference_and_pairwise_similarity_against_loops():
    rng = np.random.default_rng(0)
    refs, shots = rng.normal(size=(3, 8)), rng.normal(size=(5, 8))
    assert reference_similarity(refs, shots[0]) == pytest.approx(np.mean([_cos(r, shots[0]) for r in refs]), abs=1e-12)
    pairs = [_cos(shots[i], shots[j]) for i in range(5) for j in range(i + 1, 5)]
    assert mean_pairwise_similarity(list(shots)) == pytest.approx(sum(pairs) / 10, abs=1e-12)
    assert mean_pairwise_similarity([shots[0]]) is None


def test_face_similarity_matrix_and_assignment_with_swap():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=16), rng.normal(size=16)
    refs = [np.stack([a, a + 0.1 * rng.normal(size=16)]), b[None]]  # alice has two references
    faces = np.stack([b, a, a])  # bob's face first; two alices
    sim = character_face_similarity(refs, faces)
    want = [[np.mean([_cos(r, f) for r in refs[k]]) for f in faces] for k in range(2)]
    assert sim == pytest.approx(np.array(want), abs=1e-12)
    assert [(i, j) for i, j, _ in assign_faces(sim)] == [(0, 1), (1, 0)]  # by identity, not by position
    assert [s for *_, s in assign_faces(sim)] == [False, False]
    leak = character_face_similarity(refs, np.stack([a, a]))
    got = assign_faces(leak)
    assert sum(s for *_, s in got) == 1 and got[1][2] is True  # bob's matched face is alice's
    assert assign_faces(character_face_similarity(refs[:1], faces))[0][2] is None  # one character: no swap flag
    assert assign_faces(character_face_similarity(refs, np.zeros((0, 16)))) == []


def _cells(rng, n_stories=6):
    cells, shots = [], []
    for s in range(n_stories):
        for c in range(rng.integers(1, 4)):
            cells.append(CharacterStoryScore("M", f"story{s}", f"c{c}", "face", "", on_stage=3,
                                             ref_shot=float(rng.normal(0.5, 0.1)),
                                             shot_shot=float(rng.normal(0.6, 0.1))))
        cells.append(CharacterStoryScore("M", f"story{s}", "pet", "appearance", "", on_stage=2,
                                         ref_shot=float(rng.normal(0.8, 0.05)), shot_shot=None))
        for k in range(rng.integers(2, 6)):
            expected = int(rng.integers(0, 3))
            found = expected + int(rng.random() < 0.3)
            shots.append(ShotScore("M", f"story{s}", str(k), "x.png", [], faces_detected=found,
                                   faces_expected=expected))
        shots.append(ShotScore("M", f"story{s}", "gone", None, ["c0"], problem="no image"))
    return cells, shots


def _cr1(values, groups, confidence=0.95):
    """Cluster-robust (CR1) t interval of a mean, written out: G/(G-1) * sum_g (sum_{i in g} e_i)^2 / N^2."""
    from scipy import stats

    x = np.asarray(values, np.float64)
    mean = x.mean()
    labels = sorted(set(groups))
    g = len(labels)
    meat = sum(sum(x[i] - mean for i in range(len(x)) if groups[i] == lab) ** 2 for lab in labels)
    se = math.sqrt(g / (g - 1) * meat) / len(x)
    half = stats.t.ppf(0.5 + confidence / 2, g - 1) * se
    return 100 * mean, 100 * (mean - half), 100 * (mean + half)


def test_summary_intervals_are_cluster_robust_over_stories():
    rng = np.random.default_rng(2)
    cells, shots = _cells(rng)
    s = summarise_method(cells, shots, CIOptions())
    faces = [c for c in cells if c.mode == "face"]
    for key in ("ref_shot", "shot_shot"):
        mean, low, high = _cr1([getattr(c, key) for c in faces], [c.story for c in faces])
        iv = s["face"][key]
        assert (iv["mean"], iv["low"], iv["high"]) == pytest.approx((mean, low, high), rel=1e-9)
        assert iv["clusters"] == 6 and iv["cluster_by"] == "story"
    pets = [c for c in cells if c.mode == "appearance"]
    assert s["appearance"]["ref_shot"]["mean"] == pytest.approx(100 * np.mean([c.ref_shot for c in pets]))
    assert s["appearance"]["shot_shot"]["n"] == 0  # never computed: reported empty, not as 0
    counted = [sh for sh in shots if sh.problem is None]
    mean, low, high = _cr1([float(sh.faces_detected == sh.faces_expected) for sh in counted],
                           [sh.story for sh in counted])
    assert (s["count_accuracy"]["mean"], s["count_accuracy"]["low"]) == pytest.approx((mean, low), rel=1e-9)
    assert s["count"]["exact"] + s["count"]["too_many"] == len(counted) and s["count"]["too_few"] == 0
    assert (s["stories"], s["shots_missing"]) == (6, 6)


def test_one_character_per_story_is_the_ordinary_t_interval_and_bootstrap_is_close():
    from scipy import stats

    rng = np.random.default_rng(3)
    values = rng.normal(0.5, 0.1, size=40)
    cells = [CharacterStoryScore("M", f"s{i}", "a", "face", "", ref_shot=float(v)) for i, v in enumerate(values)]
    iv = summarise_method(cells, [], CIOptions())["face"]["ref_shot"]
    low, high = stats.t.interval(0.95, 39, loc=values.mean(), scale=stats.sem(values))
    assert (iv["low"], iv["high"]) == pytest.approx((100 * low, 100 * high), rel=1e-9)
    boot = summarise_method(cells, [], CIOptions(method="bootstrap", n_boot=4000))["face"]["ref_shot"]
    assert boot["low"] == pytest.approx(iv["low"], abs=0.25 * (iv["high"] - iv["low"]))
    assert boot["high"] == pytest.approx(iv["high"], abs=0.25 * (iv["high"] - iv["low"]))


def test_swap_rate_is_wilson_and_methods_are_kept_apart():
    cells = [CharacterStoryScore("A", "s1", "x", "face", "", swaps=1, swap_n=4),
             CharacterStoryScore("A", "s2", "y", "face", "", swaps=0, swap_n=4),
             CharacterStoryScore("B", "s1", "x", "face", "", swaps=0, swap_n=0)]
    out = summarise_stories(cells, [], CIOptions())
    assert list(out) == ["A", "B"]
    z = 1.959963984540054
    p, n = 1 / 8, 8
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert out["A"]["swap"]["rate"] == pytest.approx(12.5)
    assert (out["A"]["swap"]["low"], out["A"]["swap"]["high"]) == pytest.approx((100 * (centre - half),
                                                                                 100 * (centre + half)), rel=1e-9)
    assert out["B"]["swap"] is None
    assert out["A"]["face"]["characters"] == 2 and out["B"]["face"]["characters"] == 1
