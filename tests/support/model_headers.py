"""Model files with real formats and real key names and shapes that cost almost nothing to write: a
`.safetensors` file's data is a sparse hole of the right size (only the header is ever read by the
checks), a torch `.bin` holds zero-stride tensors (the shapes, one stored value each), an `.onnx` file is a
protobuf ModelProto written field by field (onnx.proto's field numbers)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

BYTES = {"F16": 2, "F32": 4}


def write_safetensors(path: Path, tensors: dict, dtype: str = "F16", metadata: dict | None = None) -> Path:
    """A valid `.safetensors` file per the format spec (u64 header length, JSON header, data); data is zeros."""
    header, offset = ({"__metadata__": metadata} if metadata else {}), 0
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


def _varint(n: int) -> bytes:
    out = b""
    while True:
        out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return out


def field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def onnx_model(graph_bytes: int = 300) -> bytes:
    """A ModelProto (onnx.proto field numbers): ir_version=8, producer_name, graph{name, doc}, opset_import."""
    graph = field(2, b"g") + field(10, b"x" * graph_bytes)
    opset = field(1, b"") + b"\x10\x0d"
    return b"\x08\x08" + field(2, b"test") + field(7, graph) + field(8, opset)
