"""Where the trainable weights start: the release (fine-tune), the IP-Adapter files (from scratch), or random.

From scratch, the release initialises (docs/method.md §5.1):
* from IP-Adapter-FaceID-PlusV2 SDXL (`ip-adapter-faceid-plusv2_sdxl.bin`): its `image_proj` (the
  `ProjPlusModel`: `proj.*`, `norm.*`, `perceiver_resampler.*`) into the same names of our resampler,
  and its `ip_adapter` dict (LoRA rank 128 on all 140 processors + `to_k_ip`/`to_v_ip` on the 70
  cross-attention ones: the same index-keyed layout as StoryMaker's) into the processors;
* from IP-Adapter-Plus SDXL ViT-H (`ip-adapter-plus_sdxl_vit-h.bin`): its `image_proj` (a `Resampler`:
  `latents`, `proj_in.*`, `layers.*`, `proj_out.*`, `norm_out.*`) under `resample.*`; its own
  `to_k_ip`/`to_v_ip` are not used;
* `pos_embed`, `bg_embed` start at zero, the fusion `proj_out` at zero, `norm_out` at (1, 0).
Unlike the release (non-strict loads that would silently skip a renamed key) every source key must land
on a parameter of the same shape, and every parameter that is not meant to start fresh must be covered.
Assumption (no IP-Adapter file can be downloaded here): those files use exactly the key names above,
which are the ones the release's non-strict loads rely on; the tests build such files from our own
module's key names.
"""

from __future__ import annotations

import logging
from typing import Mapping

import torch
from torch import Tensor

from storymaker_core.weights import load_storymaker_weights, read_state_dict

logger = logging.getLogger(__name__)

FACEID_PREFIXES = ("proj.", "norm.", "perceiver_resampler.")
FRESH = ("pos_embed", "bg_embed", "proj_out.weight", "proj_out.bias", "norm_out.weight", "norm_out.bias")


class InitialisationError(ValueError):
    """A starting-point file that does not fit the model being trained."""


def _sections(path: str) -> tuple:
    """An IP-Adapter file (`.bin` nested or `.safetensors` with `image_proj.`/`ip_adapter.` prefixes)."""
    data = read_state_dict(path)
    if "image_proj" in data and isinstance(data["image_proj"], Mapping):
        return dict(data["image_proj"]), dict(data.get("ip_adapter", {}))
    image_proj = {k[len("image_proj."):]: v for k, v in data.items() if k.startswith("image_proj.")}
    ip_adapter = {k[len("ip_adapter."):]: v for k, v in data.items() if k.startswith("ip_adapter.")}
    if not image_proj:
        raise InitialisationError(f"{path}: no 'image_proj' section: not an IP-Adapter file")
    return image_proj, ip_adapter


def _copy(target: Mapping[str, Tensor], source: Mapping[str, Tensor], what: str) -> None:
    """Copy every source tensor into the same-named target tensor, checking names and shapes."""
    unknown = [k for k in source if k not in target]
    wrong = [f"{k}: {tuple(source[k].shape)} vs {tuple(target[k].shape)}"
             for k in source if k in target and source[k].shape != target[k].shape]
    if unknown or wrong:
        ranks = "/".join(sorted({str(t.shape[0]) for k, t in target.items() if k.endswith("down.weight")}))
        raise InitialisationError(f"{what} does not fit the model: {len(unknown)} unknown keys {unknown[:3]}, "
                                  f"{len(wrong)} wrong shapes {wrong[:3]}. Is it the SDXL file, and does "
                                  f"model.lora_rank ({ranks or 'n/a'}) match it?")
    with torch.no_grad():
        for k, v in source.items():
            target[k].copy_(v.to(target[k].dtype))


def init_from_release(model, path: str, dim_head: int) -> None:
    """Fine-tune: every trainable tensor from a StoryMaker file (mask.bin or .safetensors), strictly."""
    weights = load_storymaker_weights(path, dim_head=dim_head)
    if weights.info.lora_rank != model.rank:
        raise InitialisationError(f"{path}: its LoRA rank is {weights.info.lora_rank} but model.lora_rank is "
                                  f"{model.rank}; set model.lora_rank to {weights.info.lora_rank} to fine-tune it")
    weights.validate_for(model.layers, "the UNet being trained")
    if weights.info.resampler != model.resampler.config:
        raise InitialisationError(f"{path}: its resampler is {weights.info.resampler}, the model's is "
                                  f"{model.resampler.config}")
    model.resampler.load_state_dict(weights.image_proj, strict=True)
    model.adapter_modules.load_state_dict(weights.ip_adapter, strict=True)


def faceid_to_resampler(image_proj: Mapping[str, Tensor]) -> dict:
    """FaceID-PlusV2 `image_proj` -> our resampler keys (identical names; anything else is an error)."""
    stray = [k for k in image_proj if not k.startswith(FACEID_PREFIXES)]
    if stray:
        raise InitialisationError(f"FaceID-PlusV2 image_proj has keys outside {FACEID_PREFIXES}: {stray[:3]}")
    return dict(image_proj)


def plus_to_resampler(image_proj: Mapping[str, Tensor]) -> dict:
    """IP-Adapter-Plus `image_proj` (Resampler) -> `resample.*`."""
    return {f"resample.{k}": v for k, v in image_proj.items()}


def init_from_ip_adapters(model, faceid_plusv2: str, ip_adapter_plus: str) -> None:
    """From scratch, as the release: FaceID-PlusV2 for the face branch and all attention weights,
    IP-Adapter-Plus for the character resampler, zeros for the new parts."""
    resampler_state = model.resampler.state_dict()
    face_proj, face_ip = _sections(faceid_plusv2)
    plus_proj, _ = _sections(ip_adapter_plus)
    source = {**faceid_to_resampler(face_proj), **plus_to_resampler(plus_proj)}
    missing = [k for k in resampler_state if k not in source and k not in FRESH]
    if missing:
        raise InitialisationError(f"the IP-Adapter files leave resampler weights uninitialised: {missing[:5]}")
    _copy(resampler_state, source, f"{faceid_plusv2} + {ip_adapter_plus} (image_proj)")
    with torch.no_grad():
        model.resampler.pos_embed.zero_()
        model.resampler.bg_embed.zero_()
        model.resampler.proj_out.weight.zero_()
        model.resampler.proj_out.bias.zero_()
        model.resampler.norm_out.reset_parameters()
    processor_state = model.adapter_modules.state_dict()
    missing = [k for k in processor_state if k not in face_ip]
    if missing:
        raise InitialisationError(f"{faceid_plusv2}: its ip_adapter dict lacks {len(missing)} of the UNet's "
                                  f"attention weights (e.g. {missing[:3]}); is it the SDXL FaceID-PlusV2 file?")
    _copy(processor_state, face_ip, f"{faceid_plusv2} (ip_adapter)")
    logger.info("initialised from %s and %s (pos_embed, bg_embed, fusion start fresh)", faceid_plusv2, ip_adapter_plus)


def initialise(model, cfg) -> None:
    """Apply `model.init` of the config (random init needs nothing: the modules are already random)."""
    if cfg.init == "release":
        init_from_release(model, cfg.init_weights, model.resampler.config.dim_head)
    elif cfg.init == "ip-adapter":
        init_from_ip_adapters(model, cfg.faceid_plusv2, cfg.ip_adapter_plus)
