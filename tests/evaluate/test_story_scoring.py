"""Story consistency scoring on a constructed story with embedders that return known vectors: every
number is recomputed here from the vectors (float64 loops, brute-force assignment), not read back."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from storymaker.evaluate.story_input import CastMember, Shot, Story
from storymaker.evaluate.story_scoring import score_story

RED, CAROL_COLOUR = (200, 30, 30), (40, 90, 200)
SHOT_COLOURS = {"s1": (120, 120, 120), "s2": (100, 110, 90), "s3": (190, 40, 35), "s6": (60, 80, 190),
                "s7": (128, 128, 128)}


def _cos(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def _png(path: Path, colour, size=32) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), colour, np.uint8)).save(path)
    return path


def _best(sim: np.ndarray) -> list[tuple[int, int]]:
    """Exhaustive assignment (rows <= cols here), independent of the harness's matcher."""
    k, m = sim.shape
    best = max(itertools.permutations(range(m), k), key=lambda cols: sum(sim[i, c] for i, c in enumerate(cols)))
    return list(enumerate(best))


@pytest.fixture
def constructed(tmp_path, story_fakes):
    FakeFace, FakeClip = story_fakes
    rng = np.random.default_rng(7)
    A, B, C = (rng.normal(size=16) for _ in range(3))
    noise = lambda s: s * rng.normal(size=16)  # noqa: E731
    faces = {
        "alice.png": [(A, 0.9, 100)],
        "bob.png": [(B, 0.55, 100)],  # identity "face": a weak face is still taken
        "carol.png": [(C, 0.55, 100)],  # identity "auto": weak -> appearance
        "s1.png": [(B + noise(0.3), 0.9, 90), (A + noise(0.3), 0.9, 80), (rng.normal(size=16), 0.8, 20)],
        "s2.png": [(A + noise(0.5), 0.9, 100)],
        "s3.png": [(A + noise(0.2), 0.9, 100)],
        "s7.png": [(A + noise(0.1), 0.9, 90), (A + noise(0.1), 0.9, 85)],  # identity leak: two alices
    }
    refs = {n: _png(tmp_path / "refs" / f"{n}.png", c) for n, c in
            (("alice", (128, 120, 110)), ("bob", (110, 120, 128)), ("carol", CAROL_COLOUR), ("cat", RED))}
    files = {s: _png(tmp_path / "shots" / f"{s}.png", c) for s, c in SHOT_COLOURS.items()}
    cast = {"alice": CastMember("alice", (refs["alice"],), "auto"), "bob": CastMember("bob", (refs["bob"],), "face"),
            "carol": CastMember("carol", (refs["carol"],), "auto"),
            "cat": CastMember("cat", (refs["cat"],), "appearance")}
    shots = (Shot("s1", files["s1"], ("alice", "bob")), Shot("s2", files["s2"], ("alice",)),
             Shot("s3", files["s3"], ("alice", "cat")), Shot("s4", None, ("bob",), problem="status 'failed'"),
             Shot("s5", tmp_path / "shots" / "gone.png", ("bob",)), Shot("s6", files["s6"], ("carol", "cat")),
             Shot("s7", files["s7"], ("alice", "bob")))
    story = Story("tale", "M", tmp_path / "manifest.json", cast, shots)
    result = score_story(story, FakeFace(faces), FakeClip())
    return result, faces, {"A": A, "B": B}


def test_identity_modes_follow_the_reference_rule(constructed):
    result, _, _ = constructed
    modes = {c.character: c.mode for c in result.characters}
    assert modes == {"alice": "face", "bob": "face", "carol": "appearance", "cat": "appearance"}
    carol = next(c for c in result.characters if c.character == "carol")
    assert "0.55" in carol.reason and "0.60" in carol.reason  # says why: confidence below the threshold


def test_face_assignment_swaps_and_similarities_match_an_independent_computation(constructed):
    result, faces, refs = constructed
    unit = lambda v: np.asarray(v, np.float64) / np.linalg.norm(v)  # noqa: E731
    matched = {"alice": [], "bob": []}
    swaps = {"alice": [], "bob": []}
    for shot, chars in (("s1", ["alice", "bob"]), ("s2", ["alice"]), ("s3", ["alice"]), ("s7", ["alice", "bob"])):
        cand = [unit(e) for e, _, _ in sorted(faces[f"{shot}.png"], key=lambda f: -f[2])][: len(chars)]
        sim = np.array([[_cos(refs[c[0].upper()], f) for f in cand] for c in chars])
        for i, j in _best(sim):
            matched[chars[i]].append(cand[j])
            if len(chars) > 1:
                swaps[chars[i]].append(bool(sim[1 - i, j] > sim[i, j]))
    cells = {c.character: c for c in result.characters}
    for name in ("alice", "bob"):
        ref = refs[name[0].upper()]
        want_ref = np.mean([_cos(ref, e) for e in matched[name]])
        pairs = [_cos(x, y) for x, y in itertools.combinations(matched[name], 2)]
        assert cells[name].ref_shot == pytest.approx(want_ref, abs=1e-6)
        assert cells[name].shot_shot == pytest.approx(np.mean(pairs), abs=1e-6)
        assert cells[name].pairs == len(pairs)
        assert (cells[name].swaps, cells[name].swap_n) == (sum(swaps[name]), len(swaps[name]))
    assert cells["bob"].swaps == 1  # s7: both faces are alice's, so bob's face is closer to alice
    assert (cells["bob"].on_stage, cells["bob"].missing_shots, cells["bob"].no_face) == (4, 2, 0)
    s1 = next(s for s in result.shots if s.shot == "s1")
    assert s1.per_character["alice"]["swapped"] is False and s1.per_character["bob"]["swapped"] is False


def test_appearance_similarities_are_clip_cosines_of_the_known_colours(constructed):
    result, _, _ = constructed
    cells = {c.character: c for c in result.characters}
    c3, c6, red = (np.subtract(SHOT_COLOURS["s3"], 127.5), np.subtract(SHOT_COLOURS["s6"], 127.5),
                   np.subtract(RED, 127.5))
    assert cells["cat"].ref_shot == pytest.approx((_cos(red, c3) + _cos(red, c6)) / 2, abs=1e-9)
    assert cells["cat"].shot_shot == pytest.approx(_cos(c3, c6), abs=1e-9)
    assert cells["carol"].ref_shot == pytest.approx(_cos(np.subtract(CAROL_COLOUR, 127.5), c6), abs=1e-9)
    assert cells["carol"].shot_shot is None and cells["carol"].pairs == 0  # one shot: no pair


def test_count_accuracy_and_missing_shots_are_reported(constructed):
    result, _, _ = constructed
    by_id = {s.shot: s for s in result.shots}
    assert [s.shot for s in result.shots] == ["s1", "s2", "s3", "s4", "s5", "s6", "s7"]  # nothing dropped
    assert (by_id["s1"].faces_detected, by_id["s1"].faces_expected, by_id["s1"].count_correct) == (3, 2, False)
    assert (by_id["s3"].faces_expected, by_id["s3"].count_correct) == (1, True)  # the cat is not a face
    assert (by_id["s6"].faces_detected, by_id["s6"].faces_expected, by_id["s6"].count_correct) == (0, 0, True)
    assert by_id["s4"].problem == "status 'failed'" and by_id["s4"].count_correct is None
    assert "gone.png" in by_id["s5"].problem and by_id["s5"].per_character is None


def test_mask_gives_the_character_crop_and_face_without_a_face_falls_back(tmp_path, story_fakes):
    from PIL import Image

    FakeFace, FakeClip = story_fakes
    ref = np.zeros((64, 64, 3), np.uint8)
    ref[:, :32], ref[:, 32:] = RED, (30, 200, 30)
    mask = np.zeros((64, 64), np.uint8)
    mask[8:56, 4:28] = 255  # inside the red half
    Image.fromarray(ref).save(tmp_path / "cat.png")
    Image.fromarray(mask).save(tmp_path / "cat-mask.png")
    shot = _png(tmp_path / "shot.png", RED)
    for masks, want in (((tmp_path / "cat-mask.png",), 1.0),
                        ((), _cos(ref.reshape(-1, 3).mean(0) - 127.5, np.subtract(RED, 127.5)))):
        cast = {"cat": CastMember("cat", (tmp_path / "cat.png",), "face", masks)}
        story = Story("s", "M", tmp_path, cast, (Shot("1", shot, ("cat",)),))
        cell = score_story(story, FakeFace({}), FakeClip()).characters[0]
        assert cell.mode == "appearance" and "no face" in cell.reason
        assert cell.ref_shot == pytest.approx(want, abs=1e-9)
    assert want < 0.95  # the whole image is a different vector: the mask matters
