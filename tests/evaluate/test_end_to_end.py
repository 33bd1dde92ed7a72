"""`python -m storymaker evaluate` on CPU with tiny insightface + tiny OpenCLIP models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from storymaker.evaluate.cli import main
from storymaker.evaluate.manifest import load_manifest
from storymaker.evaluate.scoring import ScoringOptions, score_manifest


def _cli(insightface_root, clip_cfg, out, *manifests, extra=()):
    args = ["score"]
    for m in manifests:
        args += ["--manifest", str(m)]
    args += [
        "--out", str(out), "--insightface-root", str(insightface_root), "--providers", "CPU",
        "--clip-model", "TinyCLIP-storymaker-test", "--clip-pretrained", "none",
        "--clip-model-config", str(clip_cfg), "--device", "cpu", "-q", *extra,
    ]
    return main(args)


def test_score_two_methods_known_face_numbers(insightface_root, tiny_clip_config, run_dirs, tmp_path):
    good, bad = run_dirs
    out = tmp_path / "results"
    assert _cli(insightface_root, tiny_clip_config, out, good, bad) == 0
    doc = json.loads((out / "results.json").read_text())
    s = doc["summary"]
    assert list(s) == ["Good", "Bad"]

    g = s["Good"]["ALL"]
    assert g["n_images"] == 5
    assert (g["face_found"], g["face_missing"]) == (7, 0)
    assert g["face_sim"]["mean"] == pytest.approx(100.0, abs=0.2)  # same patterns (one at another size)
    assert g["swap"]["swaps"] == 0 and g["swap"]["n"] == 4
    assert s["Good"]["alice"]["n_images"] == 4 and s["Good"]["bob"]["n_images"] == 3

    b = s["Bad"]["ALL"]
    assert (b["face_found"], b["face_missing"]) == (6, 1)  # the black image is counted, not dropped
    assert b["face_detect_rate"] == pytest.approx(100 * 6 / 7)
    assert b["face_sim"]["mean"] < g["face_sim"]["mean"] - 5
    assert b["face_sim_missing_as_0"]["mean"] < b["face_sim"]["mean"]
    assert b["swap"] == {**b["swap"], "swaps": 1, "n": 4, "rate": 25.0}
    assert s["Bad"]["alice"]["face_missing"] == 1 and s["Bad"]["bob"]["face_missing"] == 0

    # per-image raw cosines
    imgs = {(r["method"], Path(r["file"]).name): r for r in doc["images"]}
    assert imgs[("Good", "a0.png")]["per_character"]["alice"]["face_cos"] == pytest.approx(1.0, abs=1e-5)
    leak = imgs[("Bad", "ab.png")]["per_character"]
    assert leak["alice"]["swapped"] is False and leak["bob"]["swapped"] is True
    assert imgs[("Bad", "a1.png")]["n_faces_detected"] == 0
    assert imgs[("Bad", "a1.png")]["per_character"]["alice"]["face_cos"] is None
    # CLIP-I of an image identical to its reference is 100 (any weights)
    assert imgs[("Good", "a0.png")]["per_character"]["alice"]["clip_i_cos"] == pytest.approx(1.0, abs=1e-5)
    for r in doc["images"]:
        assert -1.0 <= r["clip_t_cos"] <= 1.0

    ci = g["clip_t"]
    assert ci["n"] == 5 and ci["low"] <= ci["mean"] <= ci["high"] and ci["method"] == "t"
    assert "Student-t" in doc["meta"]["ci"] and "TinyCLIP" in doc["meta"]["clip_model"]
    md = (out / "results.md").read_text()
    assert "| Bad | alice |" in md and "1/4" in md and "25.0%" in md
    png = out / "metrics.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_clip_t_equals_manual_cosine(insightface_root, tiny_clip_config, run_dirs):
    from PIL import Image

    from storymaker.evaluate.embedders import ClipEmbedder, ClipConfig

    clip = ClipEmbedder(ClipConfig(model="TinyCLIP-storymaker-test", pretrained=None, batch_size=2))
    manifest = load_manifest(run_dirs[0])
    records = score_manifest(manifest, None, clip, ScoringOptions(show_progress=False))
    for rec, entry in zip(records, manifest.images):
        with Image.open(entry.file) as im:
            img = clip.encode_images([im.convert("RGB")])[0]
        txt = clip.encode_texts([entry.prompt])[0]
        assert rec.clip_t_cos == pytest.approx(float(txt @ img), abs=1e-5)
        assert rec.n_faces_detected is None  # face metrics skipped


def test_bootstrap_option_and_face_only(insightface_root, tiny_clip_config, run_dirs, tmp_path):
    out = tmp_path / "r"
    assert _cli(insightface_root, tiny_clip_config, out, run_dirs[1],
                extra=["--no-clip", "--ci", "bootstrap", "--n-boot", "500", "--seed", "3", "--no-plot"]) == 0
    doc = json.loads((out / "results.json").read_text())
    s = doc["summary"]["Bad"]["ALL"]
    assert s["face_sim"]["method"] == "bootstrap" and s["clip_t"]["n"] == 0
    assert "seed=3" in doc["meta"]["ci"] and not (out / "metrics.png").exists()


def test_missing_image_is_reported_before_loading_models(tmp_path, run_dirs, capsys):
    (run_dirs[0].parent / "images" / "a1.png").unlink()
    rc = main(["--manifest", str(run_dirs[0]), "--out", str(tmp_path / "o"), "--insightface-root",
               str(tmp_path / "nowhere")])  # "score" is implied
    assert rc == 2
    err = capsys.readouterr().err
    assert "image not found" in err and "a1.png" in err


def test_missing_face_models_message(tmp_path, run_dirs, capsys):
    pytest.importorskip("insightface")
    rc = main(["score", "--manifest", str(run_dirs[0]), "--out", str(tmp_path / "o"),
               "--insightface-root", str(tmp_path / "nowhere"), "--providers", "CPU", "--no-clip"])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere" / "models" / "buffalo_l") in err and "buffalo_l.zip" in err


def test_reference_without_face(insightface_root, image_tools, tmp_path, capsys):
    scene, save_png = image_tools
    save_png(tmp_path / "ref.png", np.zeros((640, 640, 3), np.uint8))
    save_png(tmp_path / "img.png", scene("alice", None))
    (tmp_path / "m.json").write_text(json.dumps(
        {"references": {"x": "ref.png"}, "images": [{"file": "img.png", "prompt": "p"}]}))
    rc = main(["score", "-m", str(tmp_path / "m.json"), "-o", str(tmp_path / "o"), "--insightface-root",
               str(insightface_root), "--providers", "CPU", "--no-clip", "-q"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no face found in reference image of 'x'" in err and "ref.png" in err


def test_prompts_plan_round_trip(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # references given relative to the current folder, the plan elsewhere
    plan = tmp_path / "runs" / "plan" / "manifest.json"
    rc = main(["prompts", "--reference", "alice=refs/alice.png", "--reference", "bob=refs/bob.png",
               "--class-token", "alice=woman", "--class-token", "man", "--out", str(plan)])
    assert rc == 0
    m = load_manifest(plan)
    assert m.references["alice"].resolve() == (tmp_path / "refs" / "alice.png").resolve()
    assert len(m.images) == 2 * 20 * 4
    first = m.images[0]
    assert first.prompt == "a woman wearing a red hat" and first.characters == ("alice",)
    assert m.images[80].prompt == "a man wearing a red hat"
    assert {img.seed for img in m.images} == {0, 1, 2, 3}
    assert main(["prompts", "--subset", "all", "--class-token", "person"]) == 0
    listed = capsys.readouterr().out
    assert "context/09\ta person on top of a purple rug in a forest" in listed
    assert "mit-han-lab/fastcomposer" in listed


def test_module_entry_point_help():
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run([sys.executable, "-m", "storymaker", "evaluate", "score", "--help"],
                         cwd=root, capture_output=True, text=True)
    assert res.returncode == 0 and "--insightface-root" in res.stdout


def test_package_imports_stay_light():
    """Importing the harness (and its CLI module) must not load models' libraries."""
    root = Path(__file__).resolve().parents[2]
    code = (
        "import sys, storymaker.evaluate, storymaker.evaluate.cli, storymaker.cli\n"
        "heavy = [m for m in ('torch', 'open_clip', 'insightface', 'onnxruntime', 'matplotlib', 'cv2')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)
