"""The frozen parts of training: SDXL's UNet, VAE, two text encoders, the CLIP image encoder, a pose
ControlNet, loaded with diffusers/transformers (or built tiny for tests), and the encoders' calls.

Why the encoders are small classes: the trainer only needs "captions -> (context, pooled)" and
"CLIP-normalised 224^2 pixels -> penultimate hidden states", so a studio can plug in another image
encoder (any callable with that contract) without touching the loop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from .config import ModelConfig

SYNTHETIC = ("tiny", "random-sdxl")  # random SDXL-shaped models (training/synthetic.py), no download
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class TextEncoder:
    """SDXL prompt encoding: both encoders' penultimate states concatenated `[B, 77, D]`, pooled from
    encoder 2 `[B, P]` (as diffusers' `StableDiffusionXLPipeline.encode_prompt`)."""

    def __init__(self, tokenizers: list, encoders: list):
        self.tokenizers, self.encoders = tokenizers, encoders

    @torch.no_grad()
    def __call__(self, captions: list, device) -> tuple:
        states, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.encoders):
            ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                            return_tensors="pt").input_ids.to(device)
            out = encoder(ids, output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled = out[0]  # the last encoder's projected pooled embedding (CLIPTextModelWithProjection)
        return torch.cat(states, dim=-1), pooled


class ClipImageEncoder:
    """transformers CLIP vision model -> penultimate hidden states `[B, 257, 1280]` for ViT-H/14 at 224^2."""

    def __init__(self, model):
        self.model = model

    @torch.no_grad()
    def __call__(self, pixels: Tensor) -> Tensor:
        p = next(self.model.parameters())
        return self.model(pixels.to(p.device, p.dtype), output_hidden_states=True).hidden_states[-2]


@dataclass
class Components:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: TextEncoder
    image_encoder: Callable  # pixels [B, 3, 224, 224] -> hidden states [B, L, C]
    noise_scheduler: object
    controlnet: Optional[torch.nn.Module] = None
    frozen_modules: tuple = ()  # every nn.Module above, for device/dtype moves


def _single_file_pipeline(path: str, config_folder: Optional[str]):
    from diffusers import StableDiffusionXLPipeline

    kwargs = {"config": config_folder} if config_folder else {}
    try:
        return StableDiffusionXLPipeline.from_single_file(path, **kwargs)
    except Exception as e:  # diffusers fetches configs from the Hub when no local folder is given
        hint = "" if config_folder else (" Offline, set model.single_file_config to a diffusers SDXL folder (for "
                                         "its configs and tokenizers).")
        raise RuntimeError(f"could not load the single-file SDXL checkpoint {path}: {e}.{hint}") from e


def load_components(cfg: ModelConfig, device=None) -> Components:
    """Load every frozen component on the CPU in fp32 with gradients off (random SDXL-shaped models are
    built directly on `device`: initialising 3.5 B random weights is much faster on a GPU)."""
    from diffusers import DDPMScheduler

    if cfg.pretrained in SYNTHETIC:
        from .synthetic import build_synthetic_models

        t = build_synthetic_models(cfg.seed, full_size=cfg.pretrained == "random-sdxl", device=device)
        unet, vae = t.unet, t.vae
        encoders, tokenizers = [t.text_encoder, t.text_encoder_2], [t.tokenizer, t.tokenizer_2]
        scheduler = t.noise_scheduler
        synthetic_vision = t.image_encoder if cfg.image_encoder == cfg.pretrained else None
    else:
        synthetic_vision = None
        path = cfg.pretrained
        if os.path.isdir(path):
            from diffusers import AutoencoderKL, UNet2DConditionModel
            from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

            unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet")
            vae = AutoencoderKL.from_pretrained(path, subfolder="vae")
            encoders = [CLIPTextModel.from_pretrained(path, subfolder="text_encoder"),
                        CLIPTextModelWithProjection.from_pretrained(path, subfolder="text_encoder_2")]
            tokenizers = [CLIPTokenizer.from_pretrained(path, subfolder="tokenizer"),
                          CLIPTokenizer.from_pretrained(path, subfolder="tokenizer_2")]
            scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
        elif os.path.isfile(path):
            pipe = _single_file_pipeline(path, cfg.single_file_config)
            unet, vae = pipe.unet, pipe.vae
            encoders, tokenizers = [pipe.text_encoder, pipe.text_encoder_2], [pipe.tokenizer, pipe.tokenizer_2]
            scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        else:
            raise FileNotFoundError(f"model.pretrained = {path}: neither a diffusers SDXL folder nor a checkpoint "
                                    f"file (or 'tiny' / 'random-sdxl' for random SDXL-shaped models)")
    image_model = synthetic_vision if synthetic_vision is not None else _load_image_encoder(cfg)
    controlnet = _load_controlnet(cfg, unet)
    frozen = tuple(m for m in (unet, vae, *encoders, image_model, controlnet) if m is not None)
    for module in frozen:
        module.requires_grad_(False)
        module.eval()
    return Components(unet, vae, TextEncoder(tokenizers, encoders), ClipImageEncoder(image_model), scheduler,
                      controlnet, frozen)


def _load_image_encoder(cfg: ModelConfig):
    if cfg.image_encoder in SYNTHETIC:
        from .synthetic import image_encoder

        return image_encoder(full_size=cfg.image_encoder == "random-sdxl", seed=cfg.seed + 1)
    from transformers import CLIPVisionModel

    if not os.path.isdir(cfg.image_encoder):
        raise FileNotFoundError(f"model.image_encoder = {cfg.image_encoder}: not a folder. Use the transformers "
                                f"CLIP-ViT-H-14-laion2B-s32B-b79K folder (config.json + weights).")
    return CLIPVisionModel.from_pretrained(cfg.image_encoder)


def _load_controlnet(cfg: ModelConfig, unet):
    if not cfg.controlnet:
        return None
    from diffusers import ControlNetModel

    if cfg.controlnet == "tiny":
        torch.manual_seed(cfg.seed + 2)
        return ControlNetModel.from_unet(unet)
    return ControlNetModel.from_pretrained(cfg.controlnet)


def place_components(components: Components, device, frozen_dtype: torch.dtype, vae_dtype: torch.dtype) -> None:
    """Move frozen modules to the device; the VAE in its own dtype (SDXL's VAE overflows in fp16)."""
    for module in components.frozen_modules:
        dtype = vae_dtype if module is components.vae else frozen_dtype
        if next(module.parameters()).dtype == dtype:
            module.to(device=device)
        else:
            module.to(device=device, dtype=dtype)


@torch.no_grad()
def encode_latents(vae, pixel_values: Tensor) -> Tensor:
    """`[B, 3, H, W]` in -1..1 -> scaled latents `[B, 4, H/8, W/8]` (a posterior sample, as the release)."""
    p = next(vae.parameters())
    latents = vae.encode(pixel_values.to(p.device, p.dtype)).latent_dist.sample()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((latents - shift) * vae.config.scaling_factor).float()
