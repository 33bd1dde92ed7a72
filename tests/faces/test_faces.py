"""storymaker_core.faces against real insightface + tiny ONNX models (tests/fixtures/tiny_insightface.py)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from storymaker_core import faces as F
from tests.fixtures.tiny_insightface import (
    blank_image,
    face_at,
    face_pattern,
    letterbox_scale,
    paint_face,
    write_tiny_insightface,
)

BIG = face_at(200, 300, 180)
SMALL = face_at(480, 250, 120, score=0.8)


def _need_models():
    pytest.importorskip("insightface")
    pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def two_face_root(tmp_path_factory):
    _need_models()
    return write_tiny_insightface(tmp_path_factory.mktemp("if2"), faces=[SMALL, BIG])


@pytest.fixture(scope="module")
def analyzer(two_face_root):
    return F.FaceAnalyzer(root=two_face_root, providers="CPU")


def _scene(pattern_big, pattern_small, value=128):
    img = blank_image(value=value)
    paint_face(img, BIG, pattern_big)
    paint_face(img, SMALL, pattern_small)
    return img


def test_core_imports_without_insightface():
    code = (
        "import sys; import storymaker_core.faces; "
        "assert 'insightface' not in sys.modules and 'onnxruntime' not in sys.modules, 'eager import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(Path(__file__).resolve().parents[2]))


def test_detect_sorted_largest_first_with_geometry(analyzer):
    img = _scene(face_pattern(1), face_pattern(2))
    found = analyzer.detect(img, "scene.png")
    assert len(found) == 2
    assert found[0].area > found[1].area
    np.testing.assert_allclose(found[0].bbox, BIG.bbox, atol=1e-3)
    np.testing.assert_allclose(found[0].kps, np.array(BIG.kps), atol=1e-3)
    np.testing.assert_allclose(found[1].bbox, SMALL.bbox, atol=1e-3)
    assert found[0].det_score == pytest.approx(0.9)
    assert found[1].det_score == pytest.approx(0.8)
    for face in found:
        assert face.embedding.shape == (512,) and face.embedding.dtype == np.float32
        assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-5)
        assert face.kps.shape == (5, 2) and face.bbox.shape == (4,)


def test_embeddings_follow_identity(analyzer):
    a, b = face_pattern(11), face_pattern(12)
    e1 = analyzer.embed(_scene(a, b), "one.png")
    e2 = analyzer.embed(_scene(a, face_pattern(99), value=200), "two.png")  # same big face, new background
    e3 = analyzer.embed(_scene(b, a), "three.png")  # other identity in the big slot
    assert float(e1 @ e2) == pytest.approx(1.0, abs=1e-5)
    assert float(e1 @ e3) < 0.9
    # index 1 = the smaller face: same pattern, other size -> only resampling differs
    e_small = analyzer.embed(_scene(b, a), "three.png", index=1)
    assert float(e_small @ e1) > 0.99


def test_rgb_to_bgr_conversion_matters(analyzer):
    pat = face_pattern(5)
    e_rgb = analyzer.embed(_scene(pat, pat), "x")
    e_swapped = analyzer.embed(_scene(pat[:, :, ::-1].copy(), pat), "x")
    assert float(e_rgb @ e_swapped) < 0.999  # channel order reaches the model


def test_largest_and_index_errors(analyzer):
    img = _scene(face_pattern(1), face_pattern(2))
    assert analyzer.largest_face(img, "s.png").area == pytest.approx(180 * 180, rel=1e-4)
    with pytest.raises(F.FaceIndexError, match=r"face index 2 out of range for s\.png: 2 face\(s\)"):
        analyzer.select_face(img, "s.png", index=2)
    with pytest.raises(IndexError):  # also a plain IndexError
        analyzer.select_face(img, "s.png", index=5)


def test_no_face_names_image_and_suggests_det_size(analyzer):
    black = np.zeros((640, 640, 3), np.uint8)  # the tiny detector's "no face" input
    assert analyzer.detect(black, "black.png") == []
    with pytest.raises(F.NoFaceFoundError, match=r"no face found in black\.png .*det_size") as err:
        analyzer.largest_face(black, "black.png")
    assert "crop" in str(err.value)


def test_non_square_image_coordinates(analyzer):
    img = blank_image(480, 960)
    scale = letterbox_scale(480, 960)
    found = analyzer.detect(img, "wide.png")
    np.testing.assert_allclose(found[0].bbox, np.array(BIG.bbox) / scale, atol=1e-2)


def test_rejects_wrong_image_format(analyzer):
    with pytest.raises(ValueError, match=r"img\.png: expected an RGB uint8"):
        analyzer.detect(np.zeros((64, 64, 3), np.float32), "img.png")
    with pytest.raises(ValueError, match="RGB uint8"):
        analyzer.detect(np.zeros((64, 64, 4), np.uint8), "rgba.png")


def test_logs_providers_in_use(two_face_root, caplog):
    caplog.set_level(logging.INFO, logger="storymaker_core.faces")
    fa = F.FaceAnalyzer(root=two_face_root, providers=["CUDA", "CPU"], det_size=(640, 640))
    assert fa.providers_in_use["detection"] == ["CPUExecutionProvider"]
    assert fa.providers_in_use["recognition"] == ["CPUExecutionProvider"]
    text = caplog.text
    assert "providers in use" in text and "CPUExecutionProvider" in text
    if "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers():
        assert "not available" in text  # CUDA asked for but dropped, loudly


def test_nested_folder_is_fixed_and_logged(tmp_path, caplog):
    _need_models()
    root = write_tiny_insightface(tmp_path, nested=True)
    assert (root / "models" / "buffalo_l" / "buffalo_l" / "det_10g.onnx").exists()
    caplog.set_level(logging.WARNING, logger="storymaker_core.faces")
    fa = F.FaceAnalyzer(root=root, providers="CPU")
    assert fa.model_dir == (root / "models" / "buffalo_l" / "buffalo_l").resolve()
    assert "common unzip mistake" in caplog.text
    assert len(fa.detect(blank_image(), "x")) == 1


def test_layout_mistakes_are_fixed(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="storymaker_core.faces")
    (tmp_path / "a" / "antelopev2").mkdir(parents=True)  # root/antelopev2/*.onnx ("models" level missing)
    (tmp_path / "a" / "antelopev2" / "glintr100.onnx").write_bytes(b"")
    assert F.resolve_model_dir(tmp_path / "a", "antelopev2") == (tmp_path / "a" / "antelopev2").resolve()
    odd = tmp_path / "b" / "models" / "buffalo_l" / "buffalo_l-main"  # a single, oddly named subfolder
    odd.mkdir(parents=True)
    (odd / "det_10g.onnx").write_bytes(b"")
    assert F.resolve_model_dir(tmp_path / "b") == odd.resolve()
    assert caplog.text.count("common unzip mistake") == 2
    with pytest.raises(ValueError, match="folder name"):
        F.resolve_model_dir(tmp_path, "models/buffalo_l")


@pytest.mark.parametrize("layout", ["no_root", "no_folder", "empty", "zip_only"])
def test_missing_models_message(tmp_path, layout):
    root = tmp_path / "insightface"
    folder = root / "models" / "buffalo_l"
    if layout != "no_root":
        root.mkdir()
    if layout in ("empty", "zip_only"):
        folder.mkdir(parents=True)
    if layout == "zip_only":
        (folder / "buffalo_l.zip").write_bytes(b"PK")
    with pytest.raises(F.FaceModelsNotFoundError) as err:
        F.resolve_model_dir(root, "buffalo_l")
    msg = str(err.value)
    assert str(folder.resolve()) in msg
    assert "buffalo_l.zip" in msg and "github.com/deepinsight/insightface" in msg
    if layout == "zip_only":
        assert "unzip it there" in msg
    assert isinstance(err.value, FileNotFoundError)


def test_pack_without_detector_gives_folder_message(tmp_path):
    _need_models()
    root = write_tiny_insightface(tmp_path)
    (root / "models" / "buffalo_l" / "det_10g.onnx").unlink()  # insightface: bare AssertionError
    with pytest.raises(F.FaceModelsNotFoundError, match="no face detector among"):
        F.FaceAnalyzer(root=root, providers="CPU")


def test_corrupt_onnx_file_message(tmp_path):
    _need_models()
    root = write_tiny_insightface(tmp_path)
    (root / "models" / "buffalo_l" / "w600k_r50.onnx").write_bytes(b"<html>rate limited</html>")
    with pytest.raises(F.FaceAnalysisError, match=r"probably truncated.*re-download"):
        F.FaceAnalyzer(root=root, providers="CPU")


def test_download_attempt_is_turned_into_folder_message(tmp_path, monkeypatch):
    requests = pytest.importorskip("requests")
    _need_models()
    root = write_tiny_insightface(tmp_path)

    class OfflineFaceAnalysis:  # what insightface does when it decides to download offline
        def __init__(self, *a, **k):
            raise requests.exceptions.ConnectionError("HTTPSConnectionPool(host='github.com'): Max retries")

    monkeypatch.setattr(F, "_import_face_analysis", lambda: OfflineFaceAnalysis)
    with pytest.raises(F.FaceModelsNotFoundError, match="tried to download") as err:
        F.FaceAnalyzer(root=root, providers="CPU")
    assert str(root / "models" / "buffalo_l") in str(err.value)


def test_insightface_missing_message(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "insightface", None)
    monkeypatch.setitem(sys.modules, "insightface.app", None)
    with pytest.raises(F.InsightFaceNotInstalledError, match="pip install insightface onnxruntime-gpu") as err:
        F.FaceAnalyzer(root=tmp_path, providers="CPU")
    assert isinstance(err.value, ImportError)


def test_resolve_providers_mapping():
    avail = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert F.resolve_providers("CUDA", avail) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert F.resolve_providers(["cpu"], avail) == ["CPUExecutionProvider"]
    assert F.resolve_providers("CoreML,CPU", ["CoreMLExecutionProvider", "CPUExecutionProvider"]) == [
        "CoreMLExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert F.resolve_providers(["ROCM"], ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="unknown execution provider"):
        F.resolve_providers(["TPU"], avail)


@pytest.mark.parametrize("bad", [0, 100, (640, 100)])
def test_det_size_validation(tmp_path, bad):
    with pytest.raises(ValueError, match="multiple of 32"):  # checked before anything is loaded
        F.FaceAnalyzer(root=tmp_path, providers="CPU", det_size=bad)


def test_small_or_unsure_faces_are_warned_about(tmp_path, caplog):
    _need_models()
    weak = F.FaceAnalyzer(root=write_tiny_insightface(tmp_path, faces=[face_at(300, 300, 70, score=0.5)]),
                          providers="CPU")
    img = blank_image()
    paint_face(img, face_at(300, 300, 70, score=0.5), face_pattern(3))
    with caplog.at_level(logging.WARNING, logger="storymaker_core.faces"):
        weak.select_face(img, "far.png")
    assert "far.png: the face is only 70 px across" in caplog.text
    assert "far.png: the face was found with low confidence (0.50)" in caplog.text


def test_a_clear_large_face_gives_no_warning(analyzer, caplog):
    img = _scene(face_pattern(1), face_pattern(2))
    with caplog.at_level(logging.WARNING, logger="storymaker_core.faces"):
        analyzer.select_face(img, "near.png", index=0)  # 180 px, score 0.9
    assert "near.png: the face" not in caplog.text


# ---- auto identity: face when found with confidence, else appearance only ----

def test_auto_identity_picks_face_or_appearance(analyzer, caplog):
    from storymaker_core.identity import decide_identity

    with_face, without = _scene(face_pattern(1), face_pattern(2)), blank_image(value=5)  # too dark: no face found
    chosen = decide_identity(analyzer.select_face, [with_face], ["photo"], "auto")
    assert chosen.identity == "face" and chosen.faces[0].det_score == pytest.approx(0.9, abs=1e-3)
    assert np.allclose(chosen.faces[0].embedding, analyzer.select_face(with_face, "x").embedding)
    assert chosen.lines == ["photo: face (auto: face found, confidence 0.90)"]
    with caplog.at_level(logging.INFO, logger="storymaker_core.identity"):
        drawn = decide_identity(analyzer.select_face, [without], ["rabbit"], "auto", name="Big Brown Rabbit")
    assert drawn.identity == "appearance" and drawn.faces == [None]
    assert drawn.lines == ["rabbit: appearance (auto: no face found)"]
    assert "Big Brown Rabbit: no confident face in rabbit: using appearance only" in caplog.text
    with pytest.raises(F.NoFaceFoundError, match="no face found in rabbit"):  # `face` keeps today's error
        decide_identity(analyzer.select_face, [without], ["rabbit"], "face")


def test_auto_identity_is_one_mode_per_character(analyzer, caplog):
    from storymaker_core.identity import decide_identity

    refs = [_scene(face_pattern(1), face_pattern(2)), blank_image(value=5)]
    with caplog.at_level(logging.WARNING, logger="storymaker_core.identity"):
        mixed = decide_identity(analyzer.select_face, refs, ["image #1", "image #2"], "auto", name="ava")
    assert mixed.identity == "appearance" and mixed.faces == [None, None]
    assert mixed.lines == ["image #1: appearance (auto: face found, confidence 0.90, but image #2 has none; a "
                           "character is one mode)", "image #2: appearance (auto: no face found)"]
    assert "ava: no confident face in image #2" in caplog.text  # a face was set aside: a warning
    chosen = decide_identity(lambda *a, **k: pytest.fail("appearance runs no detection"), refs, ["a", "b"],
                             "appearance")
    assert chosen.identity == "appearance" and chosen.lines == ["a: appearance (chosen: no face is used)",
                                                                "b: appearance (chosen: no face is used)"]
    with pytest.raises(ValueError, match="identity must be one of"):
        decide_identity(analyzer.select_face, refs, ["a", "b"], "anime")


def test_auto_identity_sets_an_unsure_face_aside(tmp_path):
    _need_models()
    from storymaker_core.identity import MIN_FACE_SCORE, decide_identity

    unsure = face_at(320, 320, 200, score=0.55)  # kept by the detector (det_thresh 0.5), below the 0.6 bar
    weak = F.FaceAnalyzer(root=write_tiny_insightface(tmp_path, faces=[unsure]), providers="CPU")
    img = blank_image()
    paint_face(img, unsure, face_pattern(4))
    assert weak.select_face(img).det_score < MIN_FACE_SCORE == F.WEAK_DET_SCORE
    chosen = decide_identity(weak.select_face, [img], ["sketch"], "auto")
    assert chosen.identity == "appearance" and chosen.lines == ["sketch: appearance (auto: face confidence 0.55 is "
                                                                "below 0.60)"]
    assert decide_identity(weak.select_face, [img], ["sketch"], "face").identity == "face"  # asked for: used
