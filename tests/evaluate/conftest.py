"""Fixtures for the evaluation tests: tiny insightface pack, tiny OpenCLIP config, a scored run.

The run folder ("story") has two characters whose tiny-model identities are random
8x8 colour patterns painted into the detector's face boxes (see
tests/fixtures/tiny_insightface.py), so every expected Face Sim is known.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.tiny_insightface import blank_image, face_at, face_pattern, paint_face, write_tiny_insightface

BIG = face_at(200, 320, 180)  # slot 0: the largest face of every non-black image
SMALL = face_at(470, 320, 140)  # slot 1
PAT = {"alice": face_pattern(1), "bob": face_pattern(2), "filler": face_pattern(3)}

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_CLIP_NAME = "TinyCLIP-storymaker-test"


def save_png(path: Path, rgb: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def scene(big: str | None, small: str | None, value: int = 128) -> np.ndarray:
    """640x640 image with the named patterns in the two face slots (None = leave background)."""
    img = blank_image(value=value)
    if big:
        paint_face(img, BIG, PAT[big])
    if small:
        paint_face(img, SMALL, PAT[small])
    return img


@pytest.fixture
def image_tools():
    """(scene, save_png) helpers for tests (importlib mode: test files cannot import conftest)."""
    return scene, save_png


@pytest.fixture(scope="session")
def insightface_root(tmp_path_factory):
    pytest.importorskip("insightface")
    pytest.importorskip("onnx")
    return write_tiny_insightface(tmp_path_factory.mktemp("insightface"), faces=[BIG, SMALL])


@pytest.fixture(scope="session")
def tiny_clip_config(tmp_path_factory):
    """Path of a registered tiny open_clip model config (name = TINY_CLIP_NAME)."""
    open_clip = pytest.importorskip("open_clip")
    path = tmp_path_factory.mktemp("clipcfg") / f"{TINY_CLIP_NAME}.json"
    path.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(path)
    return path


@pytest.fixture
def run_dirs(tmp_path):
    """Two methods' outputs for the same references; returns (good_manifest, bad_manifest)."""
    refs = {
        "alice": save_png(tmp_path / "refs" / "alice.png", scene("alice", "filler")),
        "bob": save_png(tmp_path / "refs" / "bob.png", scene("bob", "filler")),
    }
    good = [
        ("a0.png", "a woman wearing a red hat", ["alice"], scene("alice", "filler")),
        ("a1.png", "a woman in the snow", ["alice"], scene("alice", None, value=90)),
        ("b0.png", "a man riding a horse", ["bob"], scene("bob", "filler")),
        ("ab.png", "a woman and a man cooking", ["alice", "bob"], scene("alice", "bob")),
        ("ba.png", "a man and a woman on the beach", ["alice", "bob"], scene("bob", "alice")),  # positions swapped
    ]
    bad = [
        ("a0.png", "a woman wearing a red hat", ["alice"], scene("bob", "filler")),  # wrong identity
        ("a1.png", "a woman in the snow", ["alice"], np.zeros((640, 640, 3), np.uint8)),  # no face
        ("b0.png", "a man riding a horse", ["bob"], scene("bob", "filler")),
        ("ab.png", "a woman and a man cooking", ["alice", "bob"], scene("alice", "alice")),  # identity leak
        ("ba.png", "a man and a woman on the beach", ["alice", "bob"], scene("alice", "bob")),
    ]
    out = []
    for method, items in (("Good", good), ("Bad", bad)):
        folder = tmp_path / method.lower()
        images = []
        for name, prompt, chars, rgb in items:
            save_png(folder / "images" / name, rgb)
            images.append({"file": f"images/{name}", "prompt": prompt, "characters": chars, "seed": 0})
        manifest = {"format": "storymaker-eval/1", "method": method,
                    "references": {k: str(v) for k, v in refs.items()}, "images": images}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        out.append(folder / "manifest.json")
    return tuple(out)
