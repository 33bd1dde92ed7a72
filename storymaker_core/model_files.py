"""Say whether a model file can be used, from its header alone: before a story is queued, in milliseconds.

A failed or partial download looks like a model file to a folder listing (and to ComfyUI's ``/object_info``):
a zero-byte placeholder, a Git LFS pointer, a saved login page, a truncated ``.safetensors``, an SD1.5
checkpoint where SDXL is needed. ComfyUI only finds out when a scene runs, after minutes of loading. Here
each file is judged from what is cheap to read: the first bytes, a ``.safetensors`` JSON header (names,
shapes and offsets, checked against the file size), a torch zip's ``data.pkl`` (read with
``torch.load(mmap=True, weights_only=True)``: tensor names and shapes, no tensor data and no code), and an
ONNX file's top-level protobuf fields. StoryMaker files are checked key by key and shape by shape by
``weights.py`` on shape-only tensors; the first-bytes test (``failed_download``) lives in ``download_check.py``,
which ``weights.py`` uses too.

``inspect_file(path, kind)`` / ``inspect_insightface_pack(root, name)`` return a ``Verdict``; nothing raises.
A verdict never quotes a file's raw bytes (nor an error text that could): only what a readable header says
(tensor names, shapes, metadata) and sizes. ``inspect_file``'s messages name no path; the pack verdicts name
the pack's folder, which ``/storymaker/inspect`` rewrites before it answers (``nodes/routes.py``).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

from .download_check import TABLE, FileProblem as _Bad, failed_download, human_size as _size

#: What a loader input expects. ``*_checkpoint``/``clip_vision_vit_h`` also check the architecture.
KINDS = ("checkpoint", "sdxl_checkpoint", "clip_vision", "clip_vision_vit_h", "storymaker", "sam", "controlnet",
         "lora", "vae", "model", "storymaker_character", "insightface_pack")
CHARACTER_FORMAT = "storymaker-character/1"  # what Save StoryMaker Character writes (storymaker_core.characters)
CLIP_VIT_H_WIDTH = 1280  # the CLIP hidden size StoryMaker's resampler reads
#: The .onnx files of a pack that insightface needs for what StoryMaker uses (detection + ArcFace).
#: Every other .onnx in the folder is loaded too, so each must be intact.
PACK_REQUIRED = {"buffalo_l": ("det_10g.onnx", "w600k_r50.onnx"),
                 "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx")}
SAFETENSORS = (".safetensors", ".sft")  # what ComfyUI's load_torch_file reads as safetensors
_MAX_HEADER = 100 * 1024 * 1024  # safetensors refuses larger headers too
_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
           "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
           "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


@dataclass(frozen=True)
class Verdict:
    """``ok`` with what was ``found``, or a ``problem`` and its ``fix`` (plain words for the user)."""

    ok: bool
    found: str = ""
    problem: str = ""
    fix: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def read_safetensors_header(path: str | Path, size: int) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict]:
    """(``name -> (dtype, shape)``, ``__metadata__``) from a ``.safetensors`` header, after checking that the
    data it describes fits the file exactly."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise _Bad(f"is {size} bytes: too short for a .safetensors file (truncated)")
        (length,) = struct.unpack("<Q", raw)
        if length > min(size - 8, _MAX_HEADER):  # the number is the file's first 8 bytes: never shown
            raise _Bad(f"is not a readable .safetensors file: its header claims more than the file's {_size(size)} "
                       f"(truncated, or not a .safetensors file)")
        try:
            header = json.loads(f.read(length))
            metadata = {str(k): str(v) for k, v in (header.get("__metadata__") or {}).items()}
            entries = {k: v for k, v in header.items() if k != "__metadata__"}
            ends = [int(v["data_offsets"][1]) for v in entries.values()]
            shapes = {k: (str(v["dtype"]), tuple(int(d) for d in v["shape"])) for k, v in entries.items()}
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):  # their text quotes the file: not shown
            raise _Bad("is not a readable .safetensors file (its header is damaged: not JSON, or a tensor without "
                       "a whole-number shape, dtype and data_offsets)") from None
    expected = 8 + length + max(ends, default=0)
    if expected > size:
        raise _Bad(f"is truncated: {_size(size)} on disk, its header describes {_size(expected)}")
    if expected < size:
        raise _Bad(f"has {size - expected} bytes after its last tensor, which ComfyUI refuses (a damaged or "
                   f"concatenated download)")
    return shapes, metadata


def read_torch_keys(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]] | None:
    """``name -> (dtype, shape)`` of a torch zip checkpoint (nested dicts joined with dots), reading only its
    ``data.pkl`` with the tensors-only unpickler; None for an old-format (non-zip) pickle, which cannot be
    read without loading all of it."""
    import pickle

    import torch

    # The errors' own text can quote the file's bytes or name its path: only what kind of error it was is told.
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower() and "unsupported global" not in str(exc).lower():
            raise _Bad("cannot be read as a torch file (its data.pkl is damaged): truncated or damaged") from None
        raise _Bad("holds Python objects besides tensors, which ComfyUI does not unpickle (it could run code)",
                   "use a .safetensors version of the model") from None
    except RuntimeError as exc:
        if "mmap" in str(exc) and "zip" in str(exc).lower():
            return None
        raise _Bad("cannot be read as a torch file (not a complete torch zip archive): truncated or damaged") \
            from None
    except (EOFError, OSError, ValueError):
        raise _Bad("cannot be read as a torch file: truncated or damaged") from None
    flat: dict[str, tuple[str, tuple[int, ...]]] = {}

    def walk(value, prefix: str) -> None:
        if isinstance(value, torch.Tensor):
            flat[prefix] = (str(value.dtype).replace("torch.", ""), tuple(value.shape))
        elif isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, f"{prefix}.{key}" if prefix else str(key))

    walk(data, "")
    return flat


def read_keys(path: Path, size: int) -> tuple[dict[str, tuple[str, tuple[int, ...]]] | None, dict]:
    """(tensor names -> (dtype, shape), safetensors metadata) of any model file ComfyUI loads; the names are
    None when only loading the file would tell (an old-format pickle)."""
    with open(path, "rb") as f:
        head = f.read(1024)
    bad = failed_download(head, size)
    if bad:
        raise bad
    if path.name.lower().endswith(SAFETENSORS):
        return read_safetensors_header(path, size)
    if head.startswith(b"PK\x03\x04"):
        return read_torch_keys(path), {}
    if head.startswith(b"\x80"):
        return None, {}  # an old-format pickle: ComfyUI reads it; judging it means loading it
    raise _Bad(f"is neither a .safetensors file nor a torch checkpoint ({_size(size)})")


# -- what the keys say ------------------------------------------------------------------------------

_CONTEXT = {768: "an SD1.5", 1024: "an SD2.x", 1280: "an SDXL refiner", 2048: "an SDXL"}


def _checkpoint(keys: Mapping[str, tuple], sdxl: bool) -> str:
    keys = {k[len("state_dict."):] if k.startswith("state_dict.") else k: v for k, v in keys.items()}
    unet = {k: v for k, v in keys.items() if k.startswith("model.diffusion_model.")}
    if not unet:
        raise _Bad("is not a full Stable Diffusion checkpoint (no 'model.diffusion_model.' UNet weights; a LoRA, "
                   "a UNet-only or a diffusers file?)", f"put a full SDXL checkpoint in models/checkpoints ({TABLE})")
    dims = sorted({shape[1] for k, (_, shape) in unet.items() if k.endswith("attn2.to_k.weight") and len(shape) == 2})
    if len(dims) == 1:
        name = _CONTEXT.get(dims[0], f"a cross-attention-{dims[0]}")
    else:
        name = "a non-SDXL"  # no UNet cross-attention (SD3, Flux...) or a mix of widths
    if not sdxl:
        return f"{name} checkpoint"
    if dims == [2048] and any(k.startswith("model.diffusion_model.label_emb.") for k in unet):
        return "an SDXL checkpoint"
    raise _Bad(f"is {name} checkpoint, but StoryMaker needs SDXL (UNet cross-attention width 2048 and a "
               f"label_emb; this one has width {dims or 'none'})",
               f"use an SDXL checkpoint such as sd_xl_base_1.0.safetensors ({TABLE})")


_VIT = {1024: "ViT-L/14", 1280: "ViT-H/14", 1664: "ViT-bigG/14", 768: "ViT-B"}


def _clip_vision(keys: Mapping[str, tuple], vit_h: bool) -> str:
    width = next((shape[0] for k, (_, shape) in keys.items()
                  if k.endswith(("embeddings.patch_embedding.weight", "visual.conv1.weight"))), None)
    if width is None:
        raise _Bad("is not a CLIP vision model (no patch-embedding weight)",
                   f"use CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors in models/clip_vision ({TABLE})")
    layers = {m.group(1) for k in keys for m in [re.search(r"(?:encoder\.layers|resblocks)\.(\d+)\.", k)] if m}
    name = f"CLIP vision {_VIT.get(width, f'width {width}')} ({len(layers)} layers)"
    if vit_h and width != 1280:
        raise _Bad(f"is a {name}, but StoryMaker reads CLIP ViT-H/14 features (width 1280, 32 layers)",
                   f"use CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors ({TABLE}: h94/IP-Adapter "
                   f"models/image_encoder/model.safetensors, renamed)")
    return f"a {name}"


def _storymaker(keys: Mapping[str, tuple], source: str, metadata: Mapping[str, str]) -> str:
    import torch

    from .weights import StoryMakerWeightsError, storymaker_weights_from_state_dict

    def meta(dtype: str, shape: tuple) -> torch.Tensor:
        return torch.empty(shape, dtype=getattr(torch, _DTYPES.get(dtype, dtype), torch.float32), device="meta")

    nested: dict = {}
    for key, (dtype, shape) in keys.items():  # mask.bin nests two dicts, .safetensors prefixes: both work
        section, _, rest = key.partition(".")
        if section in ("image_proj_model", "ip_adapter") and rest:
            nested.setdefault(section, {})[rest] = meta(dtype, shape)
        else:
            nested[key] = meta(dtype, shape)
    try:
        weights = storymaker_weights_from_state_dict(nested, source, metadata=metadata)  # as Load StoryMaker reads it
    except StoryMakerWeightsError as exc:
        raise _Bad(str(exc).removeprefix(f"{source}: "),
                   f"use the StoryMaker weights: mask.bin from RED-AIGC/StoryMaker or its converted .safetensors "
                   f"({TABLE})") from None
    return f"StoryMaker weights: {weights.info.summary()}"


def _character(keys: Mapping[str, tuple], metadata: Mapping[str, str]) -> str:
    """A file written by Save StoryMaker Character, with ViT-H features (any intact safetensors is not one)."""
    fix = "save the character again with workflows/07-save-character.json (CLIP-ViT-H-14 connected)"
    if metadata.get("format") != CHARACTER_FORMAT or "character_clip" not in keys or "id_embedding" not in keys:
        raise _Bad("is not a StoryMaker character (no 'storymaker-character/1' format mark, or no identity and "
                   "CLIP features): a LoRA or another model in models/storymaker_characters?", fix)
    width = keys["character_clip"][1][-1] if keys["character_clip"][1] else None
    if width != CLIP_VIT_H_WIDTH:
        raise _Bad(f"holds CLIP features {width} wide; StoryMaker needs ViT-H's {CLIP_VIT_H_WIDTH} (saved with "
                   f"another CLIP vision model)", fix)
    return f"the character '{metadata.get('name', '?')}' ({metadata.get('identity', 'face')} identity)"


def _sam(keys: Mapping[str, tuple]) -> str:
    from .segment import ENCODER_KEY, ENCODER_WIDTHS

    keys = {k.removeprefix("model."): v for k, v in keys.items()}
    if ENCODER_KEY not in keys or not any(k.startswith("mask_decoder.") for k in keys):
        raise _Bad(f"is not a Segment Anything checkpoint (no '{ENCODER_KEY}' / 'mask_decoder.' weights)",
                   f"use sam_vit_b_01ec64.pth (or vit_l / vit_h) from Meta's Segment Anything release ({TABLE})")
    width = keys[ENCODER_KEY][1][0]
    return f"Segment Anything {ENCODER_WIDTHS.get(width, f'(encoder width {width})')}"


def inspect_file(path: str | Path, kind: str) -> Verdict:
    """Judge one model file from its header.

    Args:
        path: the file (already resolved inside a model folder by the caller).
        kind: one of ``KINDS`` (not ``insightface_pack``): what the loader that names it expects.
    """
    path = Path(path)
    if kind not in KINDS or kind == "insightface_pack":
        return Verdict(False, problem=f"unknown kind of model file {kind!r}", fix=f"one of {', '.join(KINDS[:-1])}")
    if not path.is_file():
        return Verdict(False, problem="does not exist", fix=f"put the file there ({TABLE} says where from)")
    size = path.stat().st_size
    try:
        keys, metadata = read_keys(path, size)
        if keys is None:
            return Verdict(True, found=f"an old-format torch pickle ({_size(size)}); its contents are checked when "
                                       f"it loads")
        if not keys:
            raise _Bad("holds no tensors")
        if kind in ("checkpoint", "sdxl_checkpoint"):
            found = _checkpoint(keys, kind == "sdxl_checkpoint")
        elif kind in ("clip_vision", "clip_vision_vit_h"):
            found = _clip_vision(keys, kind == "clip_vision_vit_h")
        elif kind == "storymaker":
            found = _storymaker(keys, path.name, metadata)
        elif kind == "sam":
            found = _sam(keys)
        elif kind == "storymaker_character":
            found = _character(keys, metadata)
        else:
            found = f"{len(keys)} tensors"
    except _Bad as bad:
        return Verdict(False, problem=bad.problem, fix=bad.fix)
    except OSError as exc:
        return Verdict(False, problem=f"cannot be read ({exc.strerror or type(exc).__name__})",
                       fix="check its permissions")
    return Verdict(True, found=f"{found}, {_size(size)}")


# -- InsightFace ------------------------------------------------------------------------------------

def onnx_problem(path: Path) -> str | None:
    """Whether an ``.onnx`` file is a complete ONNX model: its top-level protobuf fields must end exactly at
    the end of the file and include the graph (a truncated file ends inside a field)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(1024)
        bad = failed_download(head, size)
        if bad:
            return bad.problem
        f.seek(0)

        def varint() -> int:
            value, shift = 0, 0
            while True:
                byte = f.read(1)
                if not byte or shift > 63:
                    raise EOFError
                value |= (byte[0] & 0x7F) << shift
                shift += 7
                if not byte[0] & 0x80:
                    return value

        fields = set()
        try:
            while f.tell() < size:
                tag = varint()
                number, wire = tag >> 3, tag & 7
                if wire == 0:
                    varint()
                elif wire in (1, 2, 5):
                    skip = varint() if wire == 2 else {1: 8, 5: 4}[wire]
                    f.seek(f.tell() + skip)
                else:
                    raise EOFError
                if f.tell() > size:
                    raise EOFError
                fields.add(number)
        except EOFError:
            return f"is not a complete ONNX model ({_size(size)}; truncated or damaged)"
    return None if 7 in fields else f"is not an ONNX model (no graph; {_size(size)})"


def inspect_insightface_pack(root: str | Path, name: str) -> Verdict:
    """Judge ``<root>/models/<name>/`` (root: ``ComfyUI/models/insightface``) the way the loader finds it."""
    from .faces import DOWNLOAD_HINTS, FaceModelsNotFoundError, resolve_model_dir

    target = Path(root) / "models" / name
    get = f"download {DOWNLOAD_HINTS.get(name, name)} and unzip it so the .onnx files sit directly in {target}"
    try:
        folder = resolve_model_dir(root, name)
    except FaceModelsNotFoundError as exc:
        return Verdict(False, problem=f"is not usable: {str(exc).splitlines()[0].split(': ', 1)[-1]}", fix=get)
    except ValueError as exc:
        return Verdict(False, problem=str(exc), fix="choose buffalo_l")
    files = sorted(folder.glob("*.onnx"))
    missing = [f for f in PACK_REQUIRED.get(name, ()) if not (folder / f).is_file()]
    problems = [f"{f} is missing" for f in missing]
    problems += [f"{p.name} {why}" for p in files for why in [onnx_problem(p)] if why]
    if problems:
        return Verdict(False, problem=f"is incomplete ({folder}): " + "; ".join(problems), fix=get)
    return Verdict(True, found=f"{len(files)} .onnx files in {folder}")


def inspect(path: str | Path, kind: str) -> Verdict:
    """``inspect_file``, or for ``insightface_pack`` the pack folder ``path`` = ``<root>/models/<name>``."""
    if kind == "insightface_pack":
        path = Path(path)
        return inspect_insightface_pack(path.parent.parent, path.name)
    return inspect_file(path, kind)


__all__ = ["KINDS", "PACK_REQUIRED", "Verdict", "failed_download", "inspect", "inspect_file",
           "inspect_insightface_pack", "onnx_problem", "read_keys", "read_safetensors_header"]
