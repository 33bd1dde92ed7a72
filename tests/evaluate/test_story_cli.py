"""`python -m storymaker evaluate story` end to end on CPU with the tiny insightface and OpenCLIP models.

Every non-black image has two faces for the tiny detector (a big and a small slot, see conftest), painted
with the characters' patterns, so which face is whose, and how many faces a shot has, are known.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from storymaker.evaluate.cli import main


def _models(insightface_root, clip_cfg):
    return ["--insightface-root", str(insightface_root), "--providers", "CPU", "--clip-model",
            "TinyCLIP-storymaker-test", "--clip-pretrained", "none", "--clip-model-config", str(clip_cfg),
            "--device", "cpu", "-q"]


def _cast(tmp_path, scene, save_png):
    refs = {"alice": scene("alice", "filler"), "bob": scene("bob", "filler"),
            "toy": np.full((64, 64, 3), (200, 40, 40), np.uint8)}
    return {n: {"image": str(save_png(tmp_path / "refs" / f"{n}.png", rgb)), **(
        {"identity": "appearance"} if n == "toy" else {})} for n, rgb in refs.items()}


def test_story_runner_stories_scored_end_to_end(insightface_root, tiny_clip_config, image_tools, story_builders,
                                                tmp_path):
    scene, save_png = image_tools
    runner_manifest = story_builders[2]
    cast = _cast(tmp_path, scene, save_png)
    black = np.zeros((640, 640, 3), np.uint8)
    one = runner_manifest(tmp_path / "one", "one", cast, [
        ("duo", 1, ["alice", "bob"], "done", scene("alice", "bob")),
        ("swapped-places", 2, ["bob", "alice"], "done", scene("bob", "alice")),  # matched by identity: no swap
        ("alone", 3, ["alice"], "done", scene("alice", "filler")),  # 2 faces, 1 expected
        ("leak", 4, ["alice", "bob"], "done", scene("alice", "alice")),  # bob's face is alice's: a swap
        ("dark", 5, ["alice", "toy"], "done", black),  # no face at all
        ("crash", 6, ["bob"], "failed", None),
    ])
    two = runner_manifest(tmp_path / "two", "two", cast, [
        ("a", 1, ["alice", "bob"], "done", scene("alice", "bob")),
        ("b", 2, ["bob", "toy"], "done", scene("bob", "filler")),
    ])
    out = tmp_path / "results"
    assert main(["story", "--manifest", str(one), "--manifest", str(two / "manifest.json"), "--out", str(out),
                 *_models(insightface_root, tiny_clip_config)]) == 0
    doc = json.loads((out / "results.json").read_text())

    # the reference<->face cosine bob gets for alice's face, measured on the reference images directly
    from storymaker.evaluate.embedders import FaceEmbedder
    from storymaker_core.faces import FaceAnalyzerConfig

    fe = FaceEmbedder(config=FaceAnalyzerConfig(root=str(insightface_root), providers="CPU"))
    a, b = (fe.faces(cast[n]["image"])[0].embedding.astype(np.float64) for n in ("alice", "bob"))
    bob_alice = float(a @ b)

    cells = {(c["story"], c["character"]): c for c in doc["characters"]}
    alice, bob, toy = cells[("one", "alice")], cells[("one", "bob")], cells[("one", "toy")]
    assert (alice["mode"], bob["mode"], toy["mode"]) == ("face", "face", "appearance")
    assert alice["ref_shot"] == pytest.approx(1.0, abs=2e-3) and alice["shot_shot"] == pytest.approx(1.0, abs=2e-3)
    assert (alice["on_stage"], alice["no_face"], alice["pairs"]) == (5, 1, 6)  # the dark shot: counted, not dropped
    assert bob["ref_shot"] == pytest.approx((1 + 1 + bob_alice) / 3, abs=2e-3)
    assert (bob["swaps"], bob["swap_n"], alice["swaps"], alice["swap_n"]) == (1, 3, 0, 3)
    assert (bob["on_stage"], bob["missing_shots"]) == (4, 1)
    assert toy["ref_shot"] is not None and -1 <= toy["ref_shot"] <= 1  # random-weight CLIP: only computed

    s = doc["summary"]["StoryMaker"]
    assert (s["stories"], s["shots"], s["shots_missing"]) == (2, 8, 1)
    # correct counts: duo, swapped-places, leak, a (2 faces, 2 expected); wrong: alone, dark, b (2 faces, 1)
    assert s["count"] == {"shots": 7, "exact": 4, "too_few": 1, "too_many": 2}
    assert s["count_accuracy"]["mean"] == pytest.approx(100 * 4 / 7) and s["count_accuracy"]["clusters"] == 2
    assert s["face"]["characters"] == 4 and s["appearance"]["characters"] == 2
    assert s["swap"]["swaps"] == 1 and s["swap"]["n"] == 8
    shots = {(r["story"], r["shot"]): r for r in doc["shots"]}
    assert "failed" in shots[("one", "crash")]["problem"] and shots[("one", "dark")]["faces_detected"] == 0

    md = (out / "results.md").read_text()
    assert "| StoryMaker | one | bob | face |" in md and "crash" in md and "## Shots with a wrong face count" in md
    assert (out / "story_consistency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_vistorybench_run_scored_end_to_end(insightface_root, tiny_clip_config, image_tools, story_builders,
                                            tmp_path, capsys):
    scene, _ = image_tools
    stories = {"01": ({"Lily": "realistic_human", "Bunny": "non_human"}, [(1, ["Lily"]), (2, ["Lily", "Bunny"])]),
               "03": ({"Tom": "realistic_human"}, [(1, ["Tom"]), (2, ["Tom"])])}
    images = {("01", "Lily"): scene("alice", "filler"), ("01", 1): scene("alice", "filler"),
              ("01", 2): scene("alice", "bob"), ("03", "Tom"): scene("bob", "filler"), ("03", 1): scene("bob", None)}
    dataset, run = story_builders[1](tmp_path, stories, {"01": [1, 2], "03": [1]}, images)
    out = tmp_path / "results"
    assert main(["story", "--vistorybench-outputs", str(run), "--dataset", str(dataset), "--out", str(out),
                 "--no-plot", *_models(insightface_root, tiny_clip_config)]) == 0
    doc = json.loads((out / "results.json").read_text())
    cells = {(c["story"], c["character"]): c for c in doc["characters"]}
    assert cells[("01", "Lily")]["mode"] == "face" and cells[("01", "Bunny")]["mode"] == "appearance"
    assert cells[("01", "Lily")]["ref_shot"] == pytest.approx(1.0, abs=2e-3)
    assert cells[("03", "Tom")]["missing_shots"] == 1  # shot 2 has no image in the run
    s = doc["summary"]["StoryMaker"]
    assert (s["stories"], s["shots"], s["shots_missing"]) == (2, 4, 1)
    assert not (out / "story_consistency.png").exists()
    assert main(["story", "--vistorybench-outputs", str(run), "--vistorybench-outputs", str(run),
                 "--dataset", str(dataset), "--out", str(out)]) == 2
    assert "several ViStoryBench runs of method(s) ['StoryMaker']" in capsys.readouterr().err


def test_story_cli_bad_input_is_a_clear_error_before_models_load(tmp_path, capsys):
    assert main(["story", "--manifest", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"),
                 "--insightface-root", str(tmp_path / "no-models")]) == 2
    assert "story manifest not found" in capsys.readouterr().err
    assert main(["story", "--vistorybench-outputs", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "needs --dataset" in capsys.readouterr().err
    assert main(["story", "--out", str(tmp_path / "o")]) == 2
    assert "--manifest" in capsys.readouterr().err
    assert main(["story", "--vistorybench-outputs", str(tmp_path), "--dataset", str(tmp_path),
                 "--out", str(tmp_path / "o")]) == 2
    assert "timestamp like" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
