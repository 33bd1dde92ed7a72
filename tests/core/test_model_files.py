"""Model files judged from their headers: every usual failed download, and files of the wrong kind.

Files are written by the tests with the real formats and the real key names and shapes, but cost almost
nothing: a `.safetensors` file's data is a sparse hole of the right size (the header is what is read), and a
torch `.bin` holds zero-stride tensors (the release's shapes, one stored value each).
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

BYTES = {"F16": 2, "F32": 4}


def write_safetensors(path: Path, tensors: dict, dtype: str = "F16") -> Path:
    """A valid `.safetensors` file per the format spec (u64 header length, JSON header, data); data is zeros."""
    header, offset = {}, 0
    for name, shape in tensors.items():
        n = BYTES[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)  # sparse: no disk used for the zeros
    return path


def torch_bin(path: Path, nested: dict) -> Path:
    """`torch.save` of ``{section: {key: shape}}`` as zero-stride fp16 tensors (the shapes, one value each)."""
    def tensor(shape):
        return torch.zeros(1, dtype=torch.float16).expand(*shape) if shape else torch.zeros((), dtype=torch.float16)
    torch.save({s: {k: tensor(tuple(v)) for k, v in keys.items()} for s, keys in nested.items()}, path)
    return path


UNET = "model.diffusion_model."
SDXL_KEYS = {f"{UNET}label_emb.0.0.weight": (1280, 2816),
             f"{UNET}input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (640, 2048),
             f"{UNET}middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, 2048),
             "conditioner.embedders.1.model.ln_final.weight": (1280,)}
SD15_KEYS = {f"{UNET}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
             f"{UNET}middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, 768),
             "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,)}


def clip_vision_keys(width: int, layers: int) -> dict:
    keys = {"vision_model.embeddings.patch_embedding.weight": (width, 3, 14, 14),
            "vision_model.embeddings.class_embedding": (width,)}
    keys.update({f"vision_model.encoder.layers.{i}.layer_norm1.weight": (width,) for i in range(layers)})
    return keys


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

def _varint(n: int) -> bytes:
    out = b""
    while True:
        out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return out


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def onnx_model(graph_bytes: int = 300) -> bytes:
    """A ModelProto (onnx.proto field numbers): ir_version=8, producer_name, graph{name, doc}, opset_import."""
    graph = _field(2, b"g") + _field(10, b"x" * graph_bytes)
    opset = _field(1, b"") + b"\x10\x0d"
    return b"\x08\x08" + _field(2, b"test") + _field(7, graph) + _field(8, opset)


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
                                          (lambda b: b"\x08\x08" + _field(2, b"x"), "no graph")])
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
