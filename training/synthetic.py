"""SDXL-shaped models with random weights: tiny (tests, `configs/tiny-cpu.yaml`) or full size (benchmarks).

Why they live in the package: the tiny config must run end to end on a laptop with no download, the
tests must exercise what a user runs, and the GPU throughput benchmark needs SDXL's real shapes without
SDXL's weights. The structure is SDXL's in both sizes: text-time additional embedding, two CLIP text
encoders whose penultimate states are concatenated, `DownBlock2D` + two `CrossAttnDownBlock2D`, mirrored
up blocks, a cross-attention mid block, an 8x VAE, a CLIP vision tower for the references. Everything is
built from configs with a fixed seed, so every process builds the same models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

# Tiny widths. Context = text encoder widths summed (SDXL: 768 + 1280 = 2048).
TINY = dict(text_widths=(32, 32), text_layers=(2, 2), text_heads=(2, 2), pooled=32, time_embed=8,
            vision_width=24, vision_layers=3, vision_heads=2, vision_patch=32)
SDXL = dict(text_widths=(768, 1280), text_layers=(12, 32), text_heads=(12, 20), pooled=1280, time_embed=256,
            vision_width=1280, vision_layers=32, vision_heads=16, vision_patch=14)

# Resampler for the tiny UNet: the release's structure with small widths (ArcFace input stays 512).
TINY_RESAMPLER = dict(cross_attention_dim=sum(TINY["text_widths"]), id_dim=512, id_hidden_dim=32,
                      clip_dim=TINY["vision_width"], face_tokens=4, face_depth=1, face_heads=2, character_tokens=16,
                      character_dim=32, character_depth=1, character_heads=2, dim_head=16, ff_mult=2,
                      max_characters=3)


def unet_config(full_size: bool = False) -> dict:
    """`UNet2DConditionModel` kwargs: SDXL's exact config, or its structure at tiny widths."""
    common = dict(in_channels=4, out_channels=4, layers_per_block=2, use_linear_projection=True,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                  addition_embed_type="text_time")
    s = SDXL if full_size else TINY
    if full_size:
        common.update(sample_size=128, block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
                      attention_head_dim=(5, 10, 20), norm_num_groups=32)
    else:
        common.update(sample_size=16, block_out_channels=(32, 64, 128), transformer_layers_per_block=(1, 1, 2),
                      attention_head_dim=(2, 4, 8), norm_num_groups=8)
    return dict(common, cross_attention_dim=sum(s["text_widths"]), addition_time_embed_dim=s["time_embed"],
                projection_class_embeddings_input_dim=s["pooled"] + 6 * s["time_embed"])


def vae_config(full_size: bool = False) -> dict:
    """`AutoencoderKL` kwargs: 4 levels = SDXL's 8x downsampling and 4 latent channels."""
    widths, layers, groups = ((128, 256, 512, 512), 2, 32) if full_size else ((8, 8, 16, 16), 1, 4)
    return dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=layers, norm_num_groups=groups,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=widths, sample_size=1024 if full_size else 128, scaling_factor=0.13025)


def byte_level_clip_tokenizer():
    """A CLIP tokenizer with a byte-level vocabulary and no merges (one token per character): offline."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    try:
        return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)  # transformers 5
    except TypeError:  # transformers 4: files only
        import json
        import tempfile
        from pathlib import Path

        folder = Path(tempfile.mkdtemp(prefix="clip-tokenizer-"))
        (folder / "vocab.json").write_text(json.dumps(vocab))
        (folder / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def _text_config(width: int, layers: int, heads: int, vocab: int, projection: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=vocab, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                          num_attention_heads=heads, max_position_embeddings=77, projection_dim=projection,
                          hidden_act="gelu", bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)


def image_encoder(full_size: bool = False, seed: int = 1):
    """A random CLIPVisionModel: ViT-H/14 (257 tokens x 1280) or tiny (patch 32: 50 tokens x 24)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    s = SDXL if full_size else TINY
    torch.manual_seed(seed)
    return CLIPVisionModel(CLIPVisionConfig(hidden_size=s["vision_width"], intermediate_size=4 * s["vision_width"],
                                            num_hidden_layers=s["vision_layers"], num_attention_heads=s["vision_heads"],
                                            image_size=224, patch_size=s["vision_patch"], hidden_act="gelu"))


def sdxl_noise_scheduler():
    """SDXL's DDPM training schedule (scaled-linear betas 0.00085..0.012, 1000 steps, epsilon)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type="epsilon", clip_sample=False)


@dataclass
class SyntheticModels:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module  # CLIPTextModel (SDXL: CLIP-L)
    text_encoder_2: torch.nn.Module  # CLIPTextModelWithProjection (SDXL: OpenCLIP bigG)
    tokenizer: object
    tokenizer_2: object
    image_encoder: torch.nn.Module  # CLIPVisionModel (StoryMaker: CLIP ViT-H/14)
    noise_scheduler: object


def build_synthetic_models(seed: int = 0, full_size: bool = False, device: Optional[str] = None) -> SyntheticModels:
    """Every frozen component, random from `seed`; built directly on `device` (fast for full size on a GPU)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    s = SDXL if full_size else TINY
    tokenizer = byte_level_clip_tokenizer()
    vocab = len(tokenizer)
    with torch.device(device or "cpu"):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**unet_config(full_size))
        vae = AutoencoderKL(**vae_config(full_size))
        text_encoder = CLIPTextModel(_text_config(s["text_widths"][0], s["text_layers"][0], s["text_heads"][0], vocab,
                                                  s["text_widths"][0]))
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(s["text_widths"][1], s["text_layers"][1],
                                                                  s["text_heads"][1], vocab, s["pooled"]))
        vision = image_encoder(full_size, seed + 1)
    return SyntheticModels(unet, vae, text_encoder, text_encoder_2, tokenizer, byte_level_clip_tokenizer(), vision,
                           sdxl_noise_scheduler())
