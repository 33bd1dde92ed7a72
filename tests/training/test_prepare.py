"""The dataset builder: masks from the user or a segmenter, reasons for everything it cannot use, resume."""

import json

import numpy as np
from PIL import Image

from training.dataset import read_manifest
from training.prepare import PrepareOptions, build_dataset, main as prepare_main
from training.toy import MASK_COLOURS, ToyFaceAnalyzer, toy_scene


def _scene(rng, n=2, size=128):
    return toy_scene(size, n, rng)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_builder_writes_records_and_lists_every_rejection(tmp_path):
    images, masks, out = tmp_path / "images", tmp_path / "masks", tmp_path / "out"
    (images / "sub").mkdir(parents=True)
    masks.mkdir()
    (masks / "sub").mkdir()
    rng = np.random.default_rng(0)
    one, one_mask, caption = _scene(rng, 1)
    Image.fromarray(one).save(images / "sub" / "one.png")
    Image.fromarray(one_mask).save(masks / "sub" / "one.png")
    (images / "sub" / "one.txt").write_text(caption)
    two, two_mask, _ = _scene(rng, 2)  # no caption file: accepted with an empty caption
    Image.fromarray(two).save(images / "two.png")
    for k, colour in enumerate(MASK_COLOURS[:2]):  # one file per character, numbered right to left
        Image.fromarray(((two_mask == colour).all(-1) * 255).astype(np.uint8)).save(masks / f"two_{1 - k}.png")
    extra, extra_mask, _ = _scene(rng, 2)  # only the left character is masked: the right face is listed
    extra_mask[(extra_mask == MASK_COLOURS[1]).all(-1)] = 0
    Image.fromarray(extra).save(images / "extra.png")
    Image.fromarray(extra_mask).save(masks / "extra.png")
    faceless, faceless_mask, _ = _scene(rng, 1)
    faceless[faceless == 255] = 10  # no white face left
    Image.fromarray(faceless).save(images / "faceless.png")
    Image.fromarray(faceless_mask).save(masks / "faceless.png")
    Image.fromarray(one).save(images / "unmasked.png")
    Image.fromarray(one[:40, :40]).save(images / "small.png")
    (images / "broken.jpg").write_bytes(b"not an image")
    options = PrepareOptions(images=str(images), output=str(out), masks=str(masks), min_side=64, min_face=4)
    summary = build_dataset(options, ToyFaceAnalyzer(), progress=False)
    assert (summary.accepted, summary.rejected_images, summary.rejected_faces) == (3, 4, 1)
    assert summary.missing_captions == 2
    rejected = {(r["id"], r["face"]): r["reason"] for r in _lines(out / "rejected.jsonl")}
    assert "unreadable image" in rejected[("broken", None)]
    assert "too small" in rejected[("small", None)]
    assert "contains no usable face" in rejected[("faceless", None)]
    assert "no mask file and no Segment Anything" in rejected[("unmasked", None)]
    assert "outside every character mask" in next(v for (i, f), v in rejected.items() if i == "extra" and f is not None)
    records = {r["id"]: r for r in _lines(out / "manifest.jsonl")}
    assert set(records) == {"sub__one", "two", "extra"}
    assert records["sub__one"]["caption"] == caption and records["two"]["caption_missing"]
    two_rec = records["two"]
    centres = [np.nonzero(np.asarray(Image.open(out / c["mask"])))[1].mean() for c in two_rec["characters"]]
    assert centres[0] < centres[1]  # left to right, whatever the mask files' numbering
    assert np.load(out / two_rec["embeddings"]).shape == (2, 512)
    loaded = read_manifest(str(out / "manifest.jsonl"))
    assert loaded[0]["characters"][0]["kps"].shape == (5, 2)
    # resumable: a second run does nothing and writes nothing twice
    again = build_dataset(options, ToyFaceAnalyzer(), progress=False)
    assert again.accepted == 0 and again.skipped_existing == 7
    assert len(_lines(out / "manifest.jsonl")) == 3 and len(_lines(out / "rejected.jsonl")) == 5


class BoxSegmenter:
    """Stands in for Segment Anything: the box itself (boxes of neighbours overlap)."""

    def __init__(self):
        self.calls = 0

    def segment(self, image, box):
        self.calls += 1
        mask = np.zeros(image.shape[:2], bool)
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        mask[y0:y1 + 1, x0:x1 + 1] = True
        return mask


def test_segmenter_masks_are_made_disjoint_and_own_their_faces(tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    image, _, _ = _scene(np.random.default_rng(1), 2)
    Image.fromarray(image).save(images / "pair.png")
    segmenter = BoxSegmenter()
    options = PrepareOptions(images=str(images), output=str(out), min_side=64, min_face=4)
    assert build_dataset(options, ToyFaceAnalyzer(), segmenter=segmenter, progress=False).accepted == 1
    assert segmenter.calls == 2
    record = _lines(out / "manifest.jsonl")[0]
    masks = [np.asarray(Image.open(out / c["mask"])) > 0 for c in record["characters"]]
    assert not (masks[0] & masks[1]).any()
    for mask, c in zip(masks, record["characters"]):
        x, y = np.mean(c["kps"][:3], axis=0).round().astype(int)
        assert mask[y, x]


def test_cli_reports_missing_face_models(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    code = prepare_main([str(tmp_path / "images"), str(tmp_path / "out"), "--insightface-root",
                         str(tmp_path / "nothing")])
    assert code == 1
    assert "insightface" in capsys.readouterr().err.lower()


def test_user_masks_are_matched_by_name_and_checked_for_aspect(tmp_path):
    from pathlib import Path

    import pytest

    from training.prepare import Rejected, read_user_masks

    white = np.full((40, 60, 3), 255, np.uint8)
    for name in ("shot_2.png", "shot_10.png", "shot_1.png", "take_2_final.png", "shot_final.png"):
        Image.fromarray(white).save(tmp_path / name)
    masks, _ = read_user_masks(str(tmp_path), Path("shot.jpg"), (40, 60), 0.0)
    assert len(masks) == 3  # shot_1, shot_2, shot_10 in that order; the other files are not this image's
    assert read_user_masks(str(tmp_path), Path("take.jpg"), (40, 60), 0.0)[0] == []  # no crash on take_2_final
    Image.fromarray(np.full((60, 40, 3), 255, np.uint8)).save(tmp_path / "phone_1.png")  # drawn unrotated
    with pytest.raises(Rejected, match="another aspect ratio"):
        read_user_masks(str(tmp_path), Path("phone.jpg"), (40, 60), 0.0)
