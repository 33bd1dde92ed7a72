"""Model files judged from their headers: every usual failed download, and files of the wrong kind.

Files are written with the real formats and the real key names and shapes, at almost no cost
(tests/support/model_headers.py).
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

import pytest
import torch

from storymaker_core.model_files import inspect, inspect_file, inspect_insightface_pack
from support import release_layout
from support.model_headers import (SD15_KEYS, SDXL_KEYS, clip_vision_keys, field, onnx_model, torch_bin,
                                   write_safetensors)

def release_flat() -> dict:
    layout = release_layout()
    return {f"{s}.{k}": tuple(v) for s in ("image_proj_model", "ip_adapter") for k, v in layout[s].items()}


# -- failed downloads ---------------------------------------------------------------------------------

LFS = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 3318416227\n"
HTML = b"<!DOCTYPE html>\n<html><head><title>Sign in - Hugging Face</title></head><body>...</body></html>"


@pytest.mark.parametrize("name", ["sd_xl_base_1.0.safetensors", "mask.bin", "sam_vit_b_01ec64.pth"])
@pytest.mark.parametrize("content, says", [(b"", "is empty (0 bytes)"), (LFS, "Git LFS pointer"),
                                           (HTML, "web page")])
def test_failed_downloads_are_named_with_a_fix(tmp_path, name, content, says):
    path = tmp_path / name
    path.write_bytes(content)
    kind = {"sd_xl_base_1.0.safetensors": "sdxl_checkpoint", "mask.bin": "storymaker", "sam_vit_b_01ec64.pth": "sam"}
    verdict = inspect_file(path, kind[name])
    assert not verdict.ok and says in verdict.problem and verdict.fix


def test_missing_file_is_a_problem(tmp_path):
    verdict = inspect_file(tmp_path / "nope.safetensors", "checkpoint")
    assert not verdict.ok and verdict.problem == "does not exist"


def test_helper_writes_files_the_safetensors_library_reads(tmp_path):
    from safetensors import safe_open

    path = write_safetensors(tmp_path / "x.safetensors", SDXL_KEYS)
    with safe_open(str(path), "pt") as f:
        assert {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()} == SDXL_KEYS


@pytest.mark.parametrize("cut, says", [(lambda size: size - 1000, "is truncated"), (lambda size: 6, "too short"),
                                       (lambda size: 40, "header claims")])
def test_truncated_safetensors_is_told_from_header_and_size(tmp_path, cut, says):
    path = write_safetensors(tmp_path / "sd_xl_base_1.0.safetensors", SDXL_KEYS)
    with open(path, "r+b") as f:
        f.truncate(cut(path.stat().st_size))
    verdict = inspect_file(path, "sdxl_checkpoint")
    assert not verdict.ok and says in verdict.problem, verdict


def test_safetensors_with_extra_bytes_is_refused(tmp_path):
    path = write_safetensors(tmp_path / "c.safetensors", SDXL_KEYS)
    with open(path, "ab") as f:
        f.write(b"\0" * 10)
    verdict = inspect_file(path, "checkpoint")
    assert not verdict.ok and "10 bytes after its last tensor" in verdict.problem


def test_truncated_torch_zip_is_damaged(tmp_path):
    path = torch_bin(tmp_path / "mask.bin", {"image_proj_model": {"a": (4, 4)}, "ip_adapter": {"0.b": (4,)}})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    verdict = inspect_file(path, "storymaker")
    assert not verdict.ok and "truncated or damaged" in verdict.problem


def test_pickle_with_other_objects_is_refused_without_running_it(tmp_path):
    path = tmp_path / "model.bin"
    torch.save({"args": argparse.Namespace(x=1), "w": torch.zeros(2)}, path)
    verdict = inspect_file(path, "storymaker")
    assert not verdict.ok and "Python objects besides tensors" in verdict.problem


def test_random_bytes_are_not_a_model(tmp_path):
    path = tmp_path / "x.pth"
    path.write_bytes(b"\x01\x02not a model" * 100)
    verdict = inspect_file(path, "sam")
    assert not verdict.ok and "neither a .safetensors file nor a torch checkpoint" in verdict.problem


# -- the right kind -----------------------------------------------------------------------------------

def test_sdxl_checkpoint_passes_and_sd15_is_named(tmp_path):
    good = inspect_file(write_safetensors(tmp_path / "xl.safetensors", SDXL_KEYS), "sdxl_checkpoint")
    assert good.ok and "SDXL checkpoint" in good.found
    bad = inspect_file(write_safetensors(tmp_path / "v1-5.safetensors", SD15_KEYS), "sdxl_checkpoint")
    assert not bad.ok and "SD1.5 checkpoint" in bad.problem and "SDXL" in bad.fix
    assert inspect_file(tmp_path / "v1-5.safetensors", "checkpoint").ok  # no StoryMaker: any checkpoint will do


def test_a_lora_is_not_a_checkpoint(tmp_path):
    lora = {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": (8, 2048)}
    verdict = inspect_file(write_safetensors(tmp_path / "style.safetensors", lora), "sdxl_checkpoint")
    assert not verdict.ok and "not a full Stable Diffusion checkpoint" in verdict.problem


def test_clip_vision_vit_h_passes_and_vit_l_is_named(tmp_path):
    good = inspect_file(write_safetensors(tmp_path / "h.safetensors", clip_vision_keys(1280, 32)), "clip_vision_vit_h")
    assert good.ok and "ViT-H/14 (32 layers)" in good.found
    bad = inspect_file(write_safetensors(tmp_path / "l.safetensors", clip_vision_keys(1024, 24)), "clip_vision_vit_h")
    assert not bad.ok and "ViT-L/14 (24 layers)" in bad.problem and "CLIP-ViT-H-14" in bad.fix
    assert inspect_file(tmp_path / "l.safetensors", "clip_vision").ok


def test_release_layout_storymaker_bin_and_safetensors_pass(tmp_path):
    layout = release_layout()
    bin_verdict = inspect_file(torch_bin(tmp_path / "mask.bin", {s: layout[s] for s in ("image_proj_model",
                                                                                         "ip_adapter")}), "storymaker")
    assert bin_verdict.ok, bin_verdict
    assert "140 attention layers (70 with image branch" in bin_verdict.found
    flat = inspect_file(write_safetensors(tmp_path / "storymaker.safetensors", release_flat()), "storymaker")
    assert flat.ok and "140 attention layers" in flat.found, flat


def test_storymaker_safetensors_metadata_is_checked_as_the_loader_does(tmp_path):
    path = tmp_path / "mine.safetensors"
    assert inspect_file(write_safetensors(path, release_flat(), metadata={"dim_head": "64",
                                                                          "max_characters": "3"}), "storymaker").ok
    verdict = inspect_file(write_safetensors(path, release_flat(), metadata={"max_characters": "5"}), "storymaker")
    assert not verdict.ok and "5 character slots" in verdict.problem, verdict


def test_non_storymaker_bin_is_named(tmp_path):
    ip_adapter_plus = {"image_proj": {"latents": (1, 16, 1280), "proj_in.weight": (1280, 1280)},
                       "ip_adapter": {"1.to_k_ip.weight": (640, 2048), "1.to_v_ip.weight": (640, 2048)}}
    verdict = inspect_file(torch_bin(tmp_path / "ip-adapter-plus_sdxl.bin", ip_adapter_plus), "storymaker")
    assert not verdict.ok and "expected exactly the sections 'image_proj_model' and 'ip_adapter'" in verdict.problem
    assert "RED-AIGC/StoryMaker" in verdict.fix


def test_storymaker_file_with_a_missing_half_is_named(tmp_path):
    flat = {k: v for k, v in release_flat().items() if not k.startswith("ip_adapter.1")}
    verdict = inspect_file(write_safetensors(tmp_path / "storymaker.safetensors", flat), "storymaker")
    assert not verdict.ok and "have no 'to_q_lora.up.weight'; the file is incomplete" in verdict.problem


def test_sam_checkpoint_and_its_variant(tmp_path):
    keys = {"image_encoder": {"patch_embed.proj.weight": (768, 3, 16, 16)},
            "mask_decoder": {"iou_token.weight": (1, 256)}}
    flat = {f"{s}.{k}": v for s, d in keys.items() for k, v in d.items()}
    good = inspect_file(write_safetensors(tmp_path / "sam_vit_b.safetensors", flat), "sam")
    assert good.ok and "vit_b" in good.found
    wrong = inspect_file(write_safetensors(tmp_path / "sam.safetensors", SDXL_KEYS), "sam")
    assert not wrong.ok and "not a Segment Anything checkpoint" in wrong.problem


# -- InsightFace --------------------------------------------------------------------------------------

BUFFALO = ("1k3d68.onnx", "2d106det.onnx", "det_10g.onnx", "genderage.onnx", "w600k_r50.onnx")


def write_pack(root: Path, name: str = "buffalo_l", files=BUFFALO) -> Path:
    folder = root / "models" / name
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f).write_bytes(onnx_model())
    return folder


def test_complete_pack_passes(tmp_path):
    write_pack(tmp_path)
    verdict = inspect_insightface_pack(tmp_path, "buffalo_l")
    assert verdict.ok and "5 .onnx files" in verdict.found
    assert inspect(tmp_path / "models" / "buffalo_l", "insightface_pack").ok


def test_missing_pack_says_where_it_goes(tmp_path):
    verdict = inspect_insightface_pack(tmp_path, "buffalo_l")
    assert not verdict.ok and "does not exist" in verdict.problem
    assert str(tmp_path / "models" / "buffalo_l") in verdict.fix and "buffalo_l.zip" in verdict.fix


def test_pack_without_arcface_is_incomplete(tmp_path):
    write_pack(tmp_path, files=[f for f in BUFFALO if f != "w600k_r50.onnx"])
    verdict = inspect_insightface_pack(tmp_path, "buffalo_l")
    assert not verdict.ok and "w600k_r50.onnx is missing" in verdict.problem


@pytest.mark.parametrize("damage, says", [(lambda b: b[:-50], "truncated"), (lambda b: b"", "empty"),
                                          (lambda b: LFS, "Git LFS pointer"),
                                          (lambda b: b"\x08\x08" + field(2, b"x"), "no graph")])
def test_damaged_onnx_in_the_pack_is_named(tmp_path, damage, says):
    folder = write_pack(tmp_path)
    (folder / "genderage.onnx").write_bytes(damage(onnx_model()))
    verdict = inspect_insightface_pack(tmp_path, "buffalo_l")
    assert not verdict.ok and "genderage.onnx" in verdict.problem and says in verdict.problem, verdict


def test_nested_unzip_mistake_is_accepted_like_the_loader_does(tmp_path):
    write_pack(tmp_path / "models" / "buffalo_l", "buffalo_l")  # models/buffalo_l/models/buffalo_l/...
    nested = tmp_path / "models" / "buffalo_l" / "buffalo_l"
    nested.mkdir(parents=True)
    for f in BUFFALO:
        (nested / f).write_bytes(onnx_model())
    assert inspect_insightface_pack(tmp_path, "buffalo_l").ok


def test_real_onnx_models_pass_and_a_truncated_one_does_not(tmp_path):
    pytest.importorskip("onnx")
    from fixtures.tiny_insightface import write_tiny_insightface

    root = write_tiny_insightface(tmp_path / "insightface")
    assert inspect_insightface_pack(root, "buffalo_l").ok
    detector = root / "models" / "buffalo_l" / "det_10g.onnx"
    detector.write_bytes(detector.read_bytes()[:-100])
    verdict = inspect_insightface_pack(root, "buffalo_l")
    assert not verdict.ok and "det_10g.onnx is not a complete ONNX model" in verdict.problem


def test_ckpt_zip_with_a_state_dict_is_read_like_safetensors(tmp_path):
    good = inspect_file(torch_bin(tmp_path / "xl.ckpt", {"state_dict": SDXL_KEYS}), "sdxl_checkpoint")
    assert good.ok and "SDXL checkpoint" in good.found
    bad = inspect_file(torch_bin(tmp_path / "v1-5.ckpt", {"state_dict": SD15_KEYS}), "sdxl_checkpoint")
    assert not bad.ok and "SD1.5" in bad.problem


def test_old_format_pickle_is_left_to_the_loader_not_loaded(tmp_path):
    path = tmp_path / "old.pth"
    torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
    verdict = inspect_file(path, "sam")
    assert verdict.ok and "old-format torch pickle" in verdict.found


# -- what a verdict may tell ------------------------------------------------------------------------

SECRET = b"TOPSECRT: text, not a model"


def _damaged_header(path: Path) -> Path:
    header = json.dumps({"w": {"dtype": "F16", "shape": [SECRET.decode()], "data_offsets": [0, 2]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0")
    return path


def _bad_utf8_header(path: Path) -> Path:
    path.write_bytes(struct.pack("<Q", 4) + b"{\xff\xfe}")
    return path


@pytest.mark.parametrize("write, name", [(lambda p: p.write_bytes(SECRET) and p, "x.safetensors"),
                                         (_damaged_header, "x.safetensors"), (_bad_utf8_header, "x.safetensors"),
                                         (lambda p: p.write_bytes(b"PK\x03\x04" + SECRET) and p, "x.ckpt"),
                                         (lambda p: p.write_bytes(SECRET) and p, "x.pth")])
def test_a_verdict_never_quotes_the_files_bytes_nor_its_path(tmp_path, write, name):
    """/storymaker/inspect sends these verdicts to any client: the first 8 bytes read as a header size, a JSON
    or int() error quoting the header, a torch error naming the path are never part of them."""
    path = tmp_path / name
    write(path)
    verdict = inspect_file(path, "checkpoint")
    text = json.dumps(verdict.to_json())
    assert not verdict.ok and verdict.problem, verdict
    for secret in (SECRET[:8].decode(), str(struct.unpack("<Q", SECRET[:8])[0]), "\\u00ff", "0xff", str(tmp_path)):
        assert secret not in text, (secret, text)


def test_a_saved_character_is_told_from_any_other_safetensors(tmp_path):
    import numpy as np

    from safetensors.torch import save_file

    from storymaker_core.characters import Character, save_character

    def character(width):
        return Character(name="ava", id_embedding=torch.ones(512), character_image=np.zeros((1, 8, 8, 3), np.uint8),
                         face_image=np.zeros((1, 8, 8, 3), np.uint8), character_clip=torch.zeros(257, width),
                         face_clip=torch.zeros(257, width))

    save_character(str(tmp_path / "ava.safetensors"), character(1280))
    verdict = inspect_file(tmp_path / "ava.safetensors", "storymaker_character")
    assert verdict.ok and "the character 'ava' (face identity)" in verdict.found
    save_character(str(tmp_path / "vit-l.safetensors"), character(1024))
    verdict = inspect_file(tmp_path / "vit-l.safetensors", "storymaker_character")
    assert not verdict.ok and "1024 wide; StoryMaker needs ViT-H's 1280" in verdict.problem
    save_file({"lora_unet_down.lora_up.weight": torch.zeros(4, 4)}, str(tmp_path / "style_lora.safetensors"))
    verdict = inspect_file(tmp_path / "style_lora.safetensors", "storymaker_character")
    assert not verdict.ok and "is not a StoryMaker character" in verdict.problem and "07-save-character" in verdict.fix
