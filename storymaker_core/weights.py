"""Load, describe and validate StoryMaker weights (the released `mask.bin` or its `.safetensors` twin).

A file holds two state dicts: `image_proj_model` (the resampler, 113 tensors in the release) and
`ip_adapter` (per attention processor `{i}.to_{q,k,v,out}_lora.{down,up}.weight`, plus
`{i}.to_{k,v}_ip.weight` on cross-attention). `.bin` is a torch pickle, read with `weights_only=True`;
`.safetensors` stores the same tensors flat under the prefixes `image_proj_model.` and `ip_adapter.`.
Every problem is reported as `StoryMakerWeightsError` naming the file and saying what to do.

The shapes say almost everything about the model except the resampler's head width. A `.safetensors`
file written by this pack (converted or trained) records it in its header metadata (`dim_head`), with the
number of character slots (`max_characters`) as a check; files without metadata (the release's pickle)
get the release's values. Why the head width matters: docs/method.md §2 and §4.
"""

from __future__ import annotations

import os
import pickle
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor

from .download_check import failed_download
from .layout import AttentionLayer
from .messages import detail
from .resampler import ResamplerConfig, StoryMakerResampler

IMAGE_PROJ, IP_ADAPTER = "image_proj_model", "ip_adapter"
LORA_NAMES = ("to_q", "to_k", "to_v", "to_out")
SDXL_CONTEXT_DIM = 2048
SDXL_PROCESSORS = 140  # attention processors of an SDXL UNet (70 transformer blocks x 2)
RELEASE_DIM_HEAD = 64  # the released resampler's head width; no file records it
META_DIM_HEAD, META_CHARACTERS = "dim_head", "max_characters"  # safetensors header keys
_PROCESSOR_KEY = re.compile(r"^(\d+)\.(.+)$")


class StoryMakerWeightsError(ValueError):
    """A StoryMaker weights file that cannot be used, with the reason and the fix."""


@dataclass(frozen=True)
class WeightsInfo:
    """What a file contains, read from its tensors' shapes."""

    num_processors: int  # attention processors (140 for SDXL)
    num_cross_layers: int  # processors with the image branch (70 for SDXL)
    hidden_sizes: tuple  # hidden size per processor index
    lora_rank: int
    context_dim: int  # width of text/image tokens the image branch reads (2048 for SDXL)
    resampler: ResamplerConfig
    dtype: torch.dtype

    @property
    def max_characters(self) -> int:
        return self.resampler.max_characters

    def summary(self) -> str:
        sizes = "/".join(str(s) for s in sorted(set(self.hidden_sizes)))
        return (f"{self.num_processors} attention layers ({self.num_cross_layers} with image branch, hidden "
                f"{sizes}), LoRA rank {self.lora_rank}, context {self.context_dim}, up to "
                f"{self.max_characters} characters, {str(self.dtype).replace('torch.', '')}")


@dataclass
class StoryMakerWeights:
    image_proj: dict  # resampler state dict (release key names)
    ip_adapter: dict  # "{i}.{name}" -> tensor
    info: WeightsInfo
    source: str = "<memory>"
    _processor_tensors: dict = field(default=None, repr=False)

    def processor(self, index: int) -> dict:
        """The tensors of processor `index`, without the `"{i}."` prefix."""
        if self._processor_tensors is None:
            grouped: dict = {}
            for key, value in self.ip_adapter.items():
                i, name = _PROCESSOR_KEY.match(key).groups()
                grouped.setdefault(int(i), {})[name] = value
            self._processor_tensors = grouped
        return self._processor_tensors.get(index, {})

    def build_resampler(self, device=None, dtype=None) -> StoryMakerResampler:
        """The resampler with this file's weights (built on `meta`, so no time is spent on random init)."""
        with torch.device("meta"):
            model = StoryMakerResampler(self.info.resampler)
        model.load_state_dict(self.image_proj, strict=True, assign=True)
        return model.to(device=device, dtype=dtype).eval()

    def validate_for(self, layers: Sequence[AttentionLayer], model_name: str = "the model") -> None:
        """Check the file against the attention layers of the UNet it will patch (keys and shapes)."""
        if self.info.context_dim != SDXL_CONTEXT_DIM and any(l.cross_attention_dim == SDXL_CONTEXT_DIM for l in layers):
            raise self._error(f"its image branch reads {self.info.context_dim}-wide tokens but {model_name} is "
                              f"SDXL (context {SDXL_CONTEXT_DIM}). Use the SDXL StoryMaker weights.")
        cross = [l for l in layers if l.is_cross_attention]
        if not cross:
            raise self._error(f"{model_name} has no cross-attention layers; StoryMaker patches SDXL UNets only.")
        if any(l.cross_attention_dim != self.info.context_dim for l in cross):
            dims = sorted({l.cross_attention_dim for l in cross})
            hint = " (that is SD1.5)" if dims == [768] else ""
            raise self._error(f"{model_name} has cross-attention context {dims}{hint}, the file needs "
                              f"{self.info.context_dim}. StoryMaker works with SDXL models only.")
        expected = expected_ip_adapter_shapes(layers, self.info.lora_rank)
        _raise_on_mismatch(self.ip_adapter, expected, f"{self.source}: '{IP_ADAPTER}' does not fit {model_name}",
                           "The file and the model are for different UNet architectures (StoryMaker is SDXL-only).")

    def _error(self, message: str) -> StoryMakerWeightsError:
        return StoryMakerWeightsError(f"{self.source}: {message}")


def expected_ip_adapter_shapes(layers: Sequence[AttentionLayer], rank: int) -> dict:
    """Key -> shape of the `ip_adapter` dict that fits these layers (the release's layout for SDXL)."""
    shapes = {}
    for layer in layers:
        h, ctx = layer.hidden_size, layer.cross_attention_dim
        for name in LORA_NAMES:
            in_dim = ctx if (ctx is not None and name in ("to_k", "to_v")) else h
            shapes[f"{layer.index}.{name}_lora.down.weight"] = (rank, in_dim)
            shapes[f"{layer.index}.{name}_lora.up.weight"] = (h, rank)
        if ctx is not None:
            shapes[f"{layer.index}.to_k_ip.weight"] = (h, ctx)
            shapes[f"{layer.index}.to_v_ip.weight"] = (h, ctx)
    return shapes


def expected_image_proj_shapes(config: ResamplerConfig) -> dict:
    with torch.device("meta"):
        model = StoryMakerResampler(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _raise_on_mismatch(tensors: Mapping[str, Tensor], expected: Mapping[str, tuple], what: str, hint: str) -> None:
    missing = [k for k in expected if k not in tensors]
    extra = [k for k in tensors if k not in expected]
    wrong = [f"{k}: file {tuple(tensors[k].shape)}, needed {tuple(expected[k])}"
             for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k])]
    if not (missing or extra or wrong):
        return

    def listing(title: str, items: list) -> str:
        shown = ", ".join(items[:5]) + (f", ... ({len(items) - 5} more)" if len(items) > 5 else "")
        return f"\n  {len(items)} {title}: {shown}"

    details = "".join(listing(t, items) for t, items in
                      (("missing keys", missing), ("unexpected keys", extra), ("wrong shapes", wrong)) if items)
    raise StoryMakerWeightsError(f"{what}:{details}\n{hint}")


def _failed_download(path: str) -> None:
    """Name the usual failed downloads (an LFS pointer, a web page, other bytes) before any parser sees them."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(1024)
    bad = failed_download(head, size)
    if bad is not None:
        raise StoryMakerWeightsError(f"{path} {bad.problem}, not StoryMaker's weights; download the file again: "
                                     f"{bad.fix} (the release's mask.bin is 3.32 GB).")
    if not path.endswith(".safetensors") and not head.startswith((b"PK\x03\x04", b"\x80")):
        raise StoryMakerWeightsError(f"{path}: not a torch checkpoint ({size} bytes; neither a zip archive nor a "
                                     f"pickle): download the file again (the release's mask.bin is 3.32 GB).")


def read_state_dict(path: str) -> dict:
    """Read a `.bin`/`.pt`/`.ckpt` pickle (tensors only) or a `.safetensors` file into a dict."""
    if not os.path.isfile(path):
        raise StoryMakerWeightsError(f"{path}: no such file. Put StoryMaker weights (mask.bin or a converted "
                                     f".safetensors) in ComfyUI/models/storymaker/.")
    _failed_download(path)
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise StoryMakerWeightsError(f"{path}: not a readable safetensors file ({detail(e, path)}). The file is "
                                         f"truncated or corrupt: download or convert it again.") from e
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            data = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) pickle
    except pickle.UnpicklingError as e:
        raise StoryMakerWeightsError(
            f"{path}: contains Python objects other than tensors, so it was not unpickled (that could run "
            f"code). StoryMaker files hold plain tensors only; get the file from its official source. "
            f"Detail: {detail(e, path)}") from e
    except (RuntimeError, EOFError, OSError) as e:
        raise StoryMakerWeightsError(f"{path}: cannot be read as a torch file ({detail(e, path)}). It is "
                                     f"truncated or corrupt (the release's mask.bin is 3.32 GB): download it "
                                     f"again.") from e
    if not isinstance(data, dict):
        raise StoryMakerWeightsError(f"{path}: holds a {type(data).__name__}, not a dict of tensors.")
    return data


def read_metadata(path: str) -> dict:
    """The header metadata of a `.safetensors` file (`{}` for pickles and files without any)."""
    if not path.endswith(".safetensors"):
        return {}
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(path, "pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise StoryMakerWeightsError(f"{path}: not a readable safetensors file ({detail(e, path)}). The file is "
                                     f"truncated or corrupt: download or convert it again.") from e


def weights_metadata(info: "WeightsInfo") -> dict:
    """What a file must record so the loader can rebuild its resampler with no extra parameter."""
    return {META_DIM_HEAD: str(info.resampler.dim_head), META_CHARACTERS: str(info.max_characters)}


def _metadata_int(metadata: Mapping[str, str], key: str, source: str) -> Optional[int]:
    value = metadata.get(key)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise StoryMakerWeightsError(f"{source}: its metadata '{key}' is {value!r}, not a positive whole number. "
                                     f"The file was edited or written by another tool: export or convert it again.")
    return number


def resolve_dim_head(metadata: Mapping[str, str], dim_head: Optional[int], source: str) -> tuple:
    """(head width, where it came from): the file's metadata, else `dim_head`, else the release's.

    A width passed by the caller must agree with the one the file records.
    """
    recorded = _metadata_int(metadata, META_DIM_HEAD, source)
    if recorded is not None and dim_head is not None and recorded != dim_head:
        raise StoryMakerWeightsError(f"{source}: its metadata records head width {recorded}, but {dim_head} was "
                                     f"asked for. Leave the head width out: the file says which it needs.")
    if recorded is not None:
        return recorded, f"the file's metadata '{META_DIM_HEAD}'"
    if dim_head is not None:
        return dim_head, "as given"
    return RELEASE_DIM_HEAD, "the release's value; the file does not record one"


def split_state_dict(data: Mapping, source: str = "<memory>") -> tuple:
    """Nested (`mask.bin`) or prefix-flat (`.safetensors`) dict -> (image_proj, ip_adapter) dicts."""
    if IMAGE_PROJ in data or IP_ADAPTER in data:
        unknown = sorted(set(data) - {IMAGE_PROJ, IP_ADAPTER})
        if unknown or not (isinstance(data.get(IMAGE_PROJ), Mapping) and isinstance(data.get(IP_ADAPTER), Mapping)):
            raise StoryMakerWeightsError(f"{source}: expected exactly the sections '{IMAGE_PROJ}' and "
                                         f"'{IP_ADAPTER}' (both dicts of tensors); found {sorted(data)}.")
        image_proj, ip_adapter = dict(data[IMAGE_PROJ]), dict(data[IP_ADAPTER])
    else:
        image_proj = {k[len(IMAGE_PROJ) + 1:]: v for k, v in data.items() if k.startswith(IMAGE_PROJ + ".")}
        ip_adapter = {k[len(IP_ADAPTER) + 1:]: v for k, v in data.items() if k.startswith(IP_ADAPTER + ".")}
        stray = [k for k in data if not k.startswith((IMAGE_PROJ + ".", IP_ADAPTER + "."))]
        if stray or not image_proj or not ip_adapter:
            raise StoryMakerWeightsError(
                f"{source}: not a StoryMaker file: keys must start with '{IMAGE_PROJ}.' and '{IP_ADAPTER}.'"
                + (f"; found {stray[:3]}" if stray else "") + ". Is this an IP-Adapter or LoRA file instead?")
    for section, tensors in ((IMAGE_PROJ, image_proj), (IP_ADAPTER, ip_adapter)):
        bad = [k for k, v in tensors.items() if not isinstance(v, Tensor)]
        if bad:
            raise StoryMakerWeightsError(f"{source}: '{section}' entries must be tensors; {bad[:3]} are not.")
    return image_proj, ip_adapter


def describe(image_proj: Mapping[str, Tensor], ip_adapter: Mapping[str, Tensor], source: str = "<memory>",
             dim_head: int = RELEASE_DIM_HEAD, dim_head_from: str = "the release's value") -> WeightsInfo:
    """Read what the file is for from its shapes, and check it is complete and self-consistent.

    `dim_head_from` says where the head width came from, for the error when it does not fit.
    """
    for key in ("bg_embed", "pos_embed", "proj.0.weight", "proj.2.weight", "resample.latents",
                "resample.proj_in.weight", "resample.layers.0.0.to_q.weight", "resample.layers.0.1.1.weight",
                "perceiver_resampler.layers.0.0.to_q.weight"):
        if key not in image_proj:
            raise StoryMakerWeightsError(f"{source}: '{IMAGE_PROJ}' lacks '{key}': this is not a StoryMaker "
                                         f"resampler (an IP-Adapter file has 'image_proj' instead).")
    indices = {}
    for key, value in ip_adapter.items():
        m = _PROCESSOR_KEY.match(key)
        if not m:
            raise StoryMakerWeightsError(f"{source}: '{IP_ADAPTER}' key '{key}' is not '<processor index>.<name>'.")
        indices.setdefault(int(m.group(1)), {})[m.group(2)] = value
    if not indices:
        raise StoryMakerWeightsError(f"{source}: '{IP_ADAPTER}' is empty; the file is incomplete.")
    num = max(indices) + 1
    missing_q = [i for i in range(num) if "to_q_lora.up.weight" not in indices.get(i, {})]
    if missing_q:
        raise StoryMakerWeightsError(f"{source}: processors {missing_q[:5]} have no 'to_q_lora.up.weight'; the "
                                     f"file is incomplete.")
    hidden = tuple(int(indices[i]["to_q_lora.up.weight"].shape[0]) for i in range(num))
    rank = int(indices[0]["to_q_lora.up.weight"].shape[1])
    context_dims = Counter(int(p["to_k_ip.weight"].shape[1]) for p in indices.values() if "to_k_ip.weight" in p)
    if not context_dims:
        raise StoryMakerWeightsError(f"{source}: no 'to_k_ip' weights: this file has no image branch (a plain "
                                     f"LoRA?), so it is not StoryMaker.")
    context_dim = context_dims.most_common(1)[0][0]  # odd ones out are reported key by key by validate_for
    if context_dim == SDXL_CONTEXT_DIM and num < SDXL_PROCESSORS:
        raise StoryMakerWeightsError(f"{source}: the file is incomplete: it holds {num} of the {SDXL_PROCESSORS} "
                                     f"attention processors of an SDXL StoryMaker file (a download cut short?). "
                                     f"Download it again.")
    if 768 in (context_dim, image_proj["bg_embed"].shape[-1]):
        raise StoryMakerWeightsError(f"{source}: this file is for SD1.5 (context width 768). StoryMaker needs "
                                     f"its SDXL weights (context 2048), used with an SDXL checkpoint.")
    try:
        config = ResamplerConfig.from_state_dict(image_proj, dim_head=dim_head)
    except ValueError as e:
        raise StoryMakerWeightsError(
            f"{source}: {e} (head width {dim_head}: {dim_head_from}). Export the file again with "
            f"`python -m storymaker export` (it records the head width), or convert it with `python -m storymaker "
            f"convert --dim-head N`, N the width it was trained with.") from e
    if context_dim != config.cross_attention_dim:
        raise StoryMakerWeightsError(f"{source}: the resampler makes {config.cross_attention_dim}-wide tokens but "
                                     f"the attention layers read {context_dim}-wide ones; the two halves do not "
                                     f"belong together.")
    _raise_on_mismatch(image_proj, expected_image_proj_shapes(config), f"{source}: '{IMAGE_PROJ}' is inconsistent",
                       "The resampler weights are incomplete or from another model; download the file again.")
    num_cross = sum("to_k_ip.weight" in p for p in indices.values())
    return WeightsInfo(num, num_cross, hidden, rank, context_dim, config,
                       next(iter(image_proj.values())).dtype)


def storymaker_weights_from_state_dict(data: Mapping, source: str = "<memory>", dim_head: Optional[int] = None,
                                       max_characters: Optional[int] = None,
                                       metadata: Optional[Mapping[str, str]] = None) -> StoryMakerWeights:
    """Split, describe and check an already-loaded state dict (e.g. from ComfyUI's `load_torch_file`).

    Args:
        data: nested (`mask.bin`) or prefix-flat (`.safetensors`) tensors.
        dim_head: resampler head width; by default the one in `metadata`, else the release's (64).
        max_characters: the most character slots the caller supports.
        metadata: the `.safetensors` header (`read_metadata`), checked against the tensors.
    """
    metadata = metadata or {}
    image_proj, ip_adapter = split_state_dict(data, source)
    info = describe(image_proj, ip_adapter, source, *resolve_dim_head(metadata, dim_head, source))
    slots = _metadata_int(metadata, META_CHARACTERS, source)
    if slots is not None and slots != info.max_characters:
        raise StoryMakerWeightsError(f"{source}: its metadata records {slots} character slots but the resampler's "
                                     f"'pos_embed' holds {info.max_characters}. The file was edited or is "
                                     f"incomplete: export or convert it again.")
    if max_characters is not None and info.max_characters > max_characters:
        raise StoryMakerWeightsError(f"{source}: made for {info.max_characters} characters, but this resampler "
                                     f"supports at most {max_characters}.")
    return StoryMakerWeights(image_proj, ip_adapter, info, source)


def load_storymaker_weights(path: str, dim_head: Optional[int] = None,
                            max_characters: Optional[int] = None) -> StoryMakerWeights:
    """Load `mask.bin` (pickle of plain tensors) or `.safetensors`, check it, and say what it is for.

    Args:
        path: the file.
        dim_head: resampler head width; by default read from the file's metadata, else the release's (64).
        max_characters: the most character slots the caller supports.
    """
    data = read_state_dict(path)
    return storymaker_weights_from_state_dict(data, os.path.basename(path), dim_head, max_characters,
                                              read_metadata(path))


def flatten_for_safetensors(weights: StoryMakerWeights) -> dict:
    """`{"image_proj_model.<key>": t, "ip_adapter.<key>": t}`: the `.safetensors` layout."""
    flat = {f"{IMAGE_PROJ}.{k}": v for k, v in weights.image_proj.items()}
    flat.update({f"{IP_ADAPTER}.{k}": v for k, v in weights.ip_adapter.items()})
    return flat
