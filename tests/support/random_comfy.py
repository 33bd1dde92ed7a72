"""A ComfyUI base directory (`--base-directory`) with this pack and random-weight models of the real kinds.

For checks that run a real ComfyUI with no downloads: a narrow SDXL UNet (SDXL's 70 transformer blocks,
320 channels at every level; `UNETLoader` detects it as SDXL), a random CLIP-ViT-H (`CLIPVisionLoader`),
tiny InsightFace models with the real signatures, a random TAESD-XL (`VAELoader` "taesdxl"), a StoryMaker
file that fits the UNet, and a test-only node that stands in for the text encoders (random SDXL
conditioning seeded by the prompt text). Used by benchmarks/comfyui_graph.py and the end-to-end tests.
"""

from __future__ import annotations

from pathlib import Path

from support.comfyui import REPO

TEXT_NODE = '''
import hashlib

import torch


class StoryMakerTestTextConditioning:
    """SDXL conditioning ([1, 77, 2048] + pooled [1, 1280]) seeded by the text: stands in for CLIP-L + bigG."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True, "default": ""})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "StoryMaker/testing"

    def encode(self, text):
        g = torch.Generator().manual_seed(int(hashlib.sha256(text.encode()).hexdigest()[:8], 16))
        return ([[torch.randn(1, 77, 2048, generator=g), {"pooled_output": torch.randn(1, 1280, generator=g)}]],)


class RandomTextEncoder:
    """What CLIPTextEncode needs of a CLIP: tokenize + encode_from_tokens_scheduled, the same random
    conditioning as StoryMakerTestTextConditioning for the same text."""

    def tokenize(self, text):
        return text

    def encode_from_tokens_scheduled(self, text):
        return StoryMakerTestTextConditioning().encode(text)[0]


class StoryMakerTestCLIP:
    """A CLIP output for graphs that use the stock CLIPTextEncode (a StoryMaker Story expands into it)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "StoryMaker/testing"

    def load(self):
        return (RandomTextEncoder(),)


NODE_CLASS_MAPPINGS = {"StoryMakerTestTextConditioning": StoryMakerTestTextConditioning,
                       "StoryMakerTestCLIP": StoryMakerTestCLIP}
'''

UNET, STORYMAKER, CLIP_VISION = "narrow_sdxl.safetensors", "random_storymaker.safetensors", "random_vit_h.safetensors"


def make_base_directory(comfyui: Path, base: Path) -> Path:
    """Fill `base` (custom_nodes, models, input) and return it."""
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from fixtures.tiny_insightface import face_at, letterbox_scale, write_tiny_insightface
    from storymaker_core.layout import unet_attention_layers_from_state_dict
    from storymaker_core.weights import expected_image_proj_shapes, expected_ip_adapter_shapes
    from support import seeded_weights, tiny_resampler_config
    from support.comfyui import import_comfyui, small_sdxl

    import_comfyui(comfyui)
    import comfy.clip_vision
    from comfy.taesd.taesd import TAESD

    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / "ComfyUI-StoryMaker").symlink_to(REPO)
    (base / "custom_nodes" / "storymaker_test_nodes.py").write_text(TEXT_NODE)
    models = base / "models"
    for folder in ("diffusion_models", "storymaker", "clip_vision", "vae_approx"):
        (models / folder).mkdir(parents=True)

    unet = small_sdxl(model_channels=320).model.diffusion_model.state_dict()
    save_file({k: v.half().contiguous() for k, v in unet.items()}, models / "diffusion_models" / UNET)
    layers = unet_attention_layers_from_state_dict({k: tuple(v.shape) for k, v in unet.items()})
    config = tiny_resampler_config(cross_attention_dim=2048, clip_dim=1280, id_dim=512, id_hidden_dim=64, dim_head=64,
                                   face_heads=1, character_heads=1, character_dim=64, ff_mult=1, face_depth=1,
                                   character_depth=1)
    state = {"image_proj_model.": seeded_weights(expected_image_proj_shapes(config), 1, scale=0.05),
             "ip_adapter.": seeded_weights(expected_ip_adapter_shapes(layers, 128), 2, scale=0.02)}
    save_file({p + k: v.half() for p, part in state.items() for k, v in part.items()}, models / "storymaker" / STORYMAKER)

    g = torch.Generator().manual_seed(3)

    def random_like(state_dict, scale=0.02):
        return {k: (torch.randn(v.shape, generator=g) * scale if v.dim() > 1 else torch.ones(v.shape) if "norm" in k
                    else torch.zeros(v.shape)).half().contiguous() for k, v in state_dict.items()}

    vision = comfy.clip_vision.ClipVisionModel(str(comfyui / "comfy" / "clip_vision_config_h.json"))
    save_file(random_like(vision.get_sd()), models / "clip_vision" / CLIP_VISION)
    taesd = TAESD()
    save_file(random_like(taesd.taesd_encoder.state_dict(), 0.1), models / "vae_approx" / "taesdxl_encoder.safetensors")
    save_file(random_like(taesd.taesd_decoder.state_dict(), 0.1), models / "vae_approx" / "taesdxl_decoder.safetensors")

    from skimage import data

    photo = data.astronaut()
    scale = letterbox_scale(*photo.shape[:2])
    write_tiny_insightface(models / "insightface", faces=[face_at(210 * scale, 135 * scale, 90 * scale)])
    (base / "input").mkdir()
    Image.fromarray(photo).save(base / "input" / "reference.png")
    mask = np.zeros(photo.shape[:2], np.uint8)
    mask[40:, 100:330] = 255
    Image.fromarray(mask).save(base / "input" / "reference_mask.png")
    return base
