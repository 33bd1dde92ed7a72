"""Apply StoryMaker to an SDXL MODEL: LoRA through ComfyUI's weight patches, the image branch on all 70 attn2."""

from __future__ import annotations

from .common import CATEGORY, checked_floats, progress_bar
from .patching import add_image_branch, add_lora, region_masks, unet_layers


class StoryMakerApply:
    DESCRIPTION = ("Patches an SDXL model with StoryMaker: LoRA on every attention projection and the characters' "
                   "image tokens on every cross-attention. Optional masks keep each character in its region.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "storymaker": ("STORYMAKER",),
                "embeds": ("STORYMAKER_EMBEDS",),
                "ip_scale": ("FLOAT", {"default": 0.8, "min": 0.0, "max": 2.0, "step": 0.05,
                                       "tooltip": "strength of the characters' image tokens (release: 0.8)"}),
                "lora_scale": ("FLOAT", {"default": 0.8, "min": 0.0, "max": 2.0, "step": 0.05,
                                         "tooltip": "strength of StoryMaker's LoRA (release: 0.8)"}),
                "start_at": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}),
                "end_at": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            },
            "optional": {f"mask_{i}": ("MASK", {"tooltip": f"region of character {i} (optional)"}) for i in (1, 2, 3)},
        }

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY

    @classmethod
    def VALIDATE_INPUTS(cls, ip_scale=None, lora_scale=None, start_at=None, end_at=None):
        return checked_floats(cls, ip_scale=ip_scale, lora_scale=lora_scale, start_at=start_at, end_at=end_at)

    def apply(self, model, storymaker, embeds, ip_scale, lora_scale, start_at, end_at, mask_1=None, mask_2=None,
              mask_3=None):
        if start_at >= end_at:
            raise ValueError(f"start_at ({start_at}) must be below end_at ({end_at}).")
        layers = unet_layers(model, storymaker)
        bar = progress_bar(2)
        patched = model.clone()
        add_lora(patched, storymaker, layers, lora_scale)
        bar.update(1)
        add_image_branch(patched, storymaker, layers, embeds, ip_scale, start_at, end_at,
                         region_masks(masks=[mask_1, mask_2, mask_3], num_characters=embeds.num_characters))
        bar.update(1)
        return (patched,)


NODE_CLASS_MAPPINGS = {"StoryMakerApply": StoryMakerApply}
NODE_DISPLAY_NAME_MAPPINGS = {"StoryMakerApply": "Apply StoryMaker"}
