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


# --------------------------------------------------------------------------- story consistency fakes
class FakeFaceEmbedder:
    """FaceEmbedder stand-in: ``faces(path)`` from a ``{file name: [(embedding, det_score, side), ...]}``
    table (largest side first, as insightface's order); the embeddings are L2-normalised like ArcFace's."""

    def __init__(self, table):
        self.table = table

    def faces(self, path, image=None):
        from storymaker_core.faces import DetectedFace

        out = []
        for emb, score, side in self.table.get(Path(str(path)).name, []):
            e = np.asarray(emb, np.float64)
            out.append(DetectedFace(bbox=np.array([0, 0, side, side], np.float32), kps=np.zeros((5, 2), np.float32),
                                    embedding=(e / np.linalg.norm(e)).astype(np.float32), det_score=float(score)))
        return sorted(out, key=lambda f: f.area, reverse=True)


class FakeClip:
    """ClipEmbedder stand-in: an image's vector is its mean RGB minus 127.5, so a uniform image of colour
    ``c`` has the known vector ``c - 127.5`` (not normalised: the scoring must normalise)."""

    def encode_images(self, images):
        return np.stack([np.asarray(im.convert("RGB"), np.float64).reshape(-1, 3).mean(axis=0) - 127.5
                         for im in images])


@pytest.fixture
def story_fakes():
    """(FakeFaceEmbedder, FakeClip) classes (test files cannot import conftest in importlib mode)."""
    return FakeFaceEmbedder, FakeClip


# --------------------------------------------------------------------------- story folders
def runner_manifest(folder: Path, name: str, cast: dict, scenes: list) -> Path:
    """A story folder as ``python -m storymaker story`` leaves it, written through the runner's own
    Manifest class. scenes: ``(id, index, characters, status, rgb)``; a done scene's rgb is saved as its
    file (rgb None: the manifest names a file that is not there)."""
    from storymaker.story.manifest import DONE, FAILED, Manifest

    m = Manifest.open(folder / "manifest.json", {"name": name, "file": str(folder.parent / f"{name}.yaml"),
                                                 "sha256": "0" * 64})
    m.set("cast", cast)
    for scene_id, index, chars, status, rgb in scenes:
        stem = f"{index:02d}-{scene_id}"
        fields = dict(index=index, stem=stem, prompt=f"a {scene_id}", characters=chars, seed=index,
                      workflow="w.api.json", status=status)
        if status == DONE:
            if rgb is not None:
                save_png(folder / f"{stem}.png", rgb)
            fields.update(file=f"{stem}.png", sha256="0" * 64)
        if status == FAILED:
            fields["error"] = "node 7 (KSampler): out of memory"
        m.update(scene_id, **fields)
    return folder


def write_runner_story(root: Path, name: str = "tale", cast_identity: str | None = None) -> Path:
    """Scenes out of order, one failed, one pending, one removed, one whose file was deleted."""
    grey = np.full((8, 8, 3), 128, np.uint8)
    refs = {n: save_png(root / "refs" / f"{n}.png", grey) for n in ("ava", "rex")}
    mask = save_png(root / "refs" / "rex-mask.png", np.full((8, 8, 3), 255, np.uint8))
    cast = {"ava": {"image": str(refs["ava"]), **({"identity": cast_identity} if cast_identity else {})},
            "rex": {"image": str(refs["rex"]), "mask": str(mask)}}
    scenes = [("walk", 2, ["ava", "rex"], "done", grey), ("coffee", 1, ["ava"], "done", grey),
              ("storm", 3, ["rex"], "failed", None), ("night", 4, ["ava"], "pending", None),
              ("old", 5, ["ava"], "removed", None), ("lost", 6, ["ava"], "done", None)]
    return runner_manifest(root / name, name, cast, scenes)


def _vistory_shot(index: int, chars: list) -> dict:
    text = {"en": f"shot {index}", "ch": f"镜头 {index}"}
    return {"index": index, "Setting Description": text, "Plot Correspondence": text,
            "Characters Appearing": {"en": chars, "ch": chars}, "Static Shot Description": text,
            "Shot Perspective Design": text}


def write_vistorybench(root: Path, stories: dict, shots_present: dict, images: dict | None = None) -> tuple:
    """ViStoryBench's dataset (``ViStory/NN/story.json`` + ``image/<key>/``) and a run folder
    ``outputs/StoryMaker/base/en/<timestamp>/NN/shots/<index>.png``; returns (dataset, run folder).

    stories: ``{id: ({key: tag}, [(shot index, [keys])])}``; images: ``{(id, key or shot index): rgb}``
    (default grey)."""
    images = images or {}
    grey = np.full((8, 8, 3), 128, np.uint8)
    dataset = root / "data" / "dataset" / "ViStory"
    for sid, (chars, shots) in stories.items():
        doc = {"Story_type": {"en": "test", "ch": "test"}, "Shots": [_vistory_shot(i, c) for i, c in shots],
               "Characters": {k: {"name_en": k, "name_ch": k, "prompt_en": "", "prompt_ch": "", "tag": tag,
                                  "num_of_appearances": 1} for k, tag in chars.items()}}
        (dataset / sid).mkdir(parents=True)
        (dataset / sid / "story.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
        for k in chars:
            save_png(dataset / sid / "image" / k / "00.png", images.get((sid, k), grey))
    run = root / "outputs" / "StoryMaker" / "base" / "en" / "20250101_120000"
    for sid, indexes in shots_present.items():
        for i in indexes:
            save_png(run / sid / "shots" / f"{i}.png", images.get((sid, i), grey))
    return dataset, run


@pytest.fixture
def story_builders():
    """(write_runner_story, write_vistorybench, runner_manifest) for the story consistency tests."""
    return write_runner_story, write_vistorybench, runner_manifest
