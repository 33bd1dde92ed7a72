"""Segment Anything wrapper: real SAM code on a random ViT-B (no download), type detection, errors."""

import builtins
import os

import numpy as np
import pytest
import torch

from storymaker_core.segment import (
    PersonSegmenter,
    SamCheckpointError,
    SegmentAnythingNotInstalledError,
    detect_model_type,
    model_type_from_name,
)

pytest.importorskip("segment_anything")


@pytest.fixture(scope="module")
def vit_b_checkpoint(tmp_path_factory):
    """Random ViT-B SAM weights (~360 MB) saved under a name that does not give the type away."""
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sams") / "person-model.pth"
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), path)
    return path


def test_type_from_file_name():
    assert model_type_from_name("models/sams/sam_vit_h_4b8939.pth") == "vit_h"
    assert model_type_from_name("SAM-ViT-L.pth") == "vit_l"
    assert model_type_from_name("sam_vit_b_01ec64.pth") == "vit_b"
    assert model_type_from_name("mobile_sam.pt") is None


@pytest.mark.slow  # SAM ViT-B at 1024 px on CPU: ~15 s
def test_segments_a_box_with_the_real_predictor(vit_b_checkpoint, tmp_path):
    assert detect_model_type(str(vit_b_checkpoint)) == "vit_b"  # read from the encoder width
    named = tmp_path / "sam_vit_b_01ec64.pth"
    os.link(vit_b_checkpoint, named)
    assert detect_model_type(str(named)) == "vit_b"  # from the name, without reading the file
    segmenter = PersonSegmenter(str(vit_b_checkpoint))
    assert segmenter.model_type == "vit_b"
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    mask = segmenter.segment(image, [8, 4, 40, 44])
    assert mask.shape == (48, 64) and mask.dtype == np.bool_
    with pytest.raises(ValueError, match="empty"):
        segmenter.segment(image, [30, 10, 20, 40])
    with pytest.raises(ValueError, match="RGB uint8"):
        segmenter.segment(image.astype(np.float32), [8, 4, 40, 44])


def test_errors_say_what_to_do(tmp_path, vit_b_checkpoint, monkeypatch):
    with pytest.raises(SamCheckpointError, match="ComfyUI/models/sams/"):
        PersonSegmenter(str(tmp_path / "sam_vit_b_01ec64.pth"))
    garbage = tmp_path / "model.pth"
    garbage.write_bytes(b"\0" * 1000)
    with pytest.raises(SamCheckpointError, match="download it again"):
        PersonSegmenter(str(garbage))
    mislabelled = tmp_path / "sam_vit_l_0b3195.pth"
    os.link(vit_b_checkpoint, mislabelled)
    with pytest.raises(SamCheckpointError, match="does not fit SAM vit_l"):
        PersonSegmenter(str(mislabelled))
    real_import = builtins.__import__

    def no_sam(name, *args, **kwargs):
        if name.startswith("segment_anything"):
            raise ImportError("No module named 'segment_anything'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sam)
    with pytest.raises(SegmentAnythingNotInstalledError, match="pip install segment-anything"):
        PersonSegmenter(str(vit_b_checkpoint))


@pytest.mark.slow  # converts and loads a 360 MB checkpoint: ~30 s
def test_safetensors_checkpoints_load_without_unpickling(vit_b_checkpoint, tmp_path):
    from safetensors.torch import save_file

    state = torch.load(vit_b_checkpoint, weights_only=True)
    converted = tmp_path / "person.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(converted))
    image = np.random.default_rng(2).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    from_safetensors = PersonSegmenter(str(converted))
    assert from_safetensors.model_type == "vit_b"  # from the weights: the name does not say
    assert np.array_equal(from_safetensors.segment(image, [6, 4, 40, 36]),
                          PersonSegmenter(str(vit_b_checkpoint)).segment(image, [6, 4, 40, 36]))
    not_sam = tmp_path / "sam_vit_b_other.safetensors"
    save_file({"weight": torch.zeros(2)}, str(not_sam))
    with pytest.raises(SamCheckpointError, match="not a Segment Anything"):
        PersonSegmenter(str(not_sam))
