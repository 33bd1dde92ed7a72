"""Apply StoryMaker (V3 schema) to an SDXL MODEL: LoRA through ComfyUI's weight patches, the image branch on all
70 attn2; the work is in nodes/apply_ops.py (nodes/patching.py holds the patches)."""

from __future__ import annotations

from comfy_api.latest import io

from . import apply_ops
from .common import checked_floats, progress_bar
from .v3_types import CATEGORY, Embeds, StoryMaker

MASK_SLOTS = (1, 2, 3)


class StoryMakerApply(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        # mask_1..mask_3 stay fixed optional inputs: an Autogrow would name them `masks.mask_1` in prompts and
        # break saved workflows.
        return io.Schema(
            node_id="StoryMakerApply", display_name="Apply StoryMaker", category=CATEGORY,
            description="Patches an SDXL model with StoryMaker: LoRA on every attention projection and the "
                        "characters' image tokens on every cross-attention. Optional masks keep each character in "
                        "its region.",
            inputs=[
                io.Model.Input("model", tooltip="an SDXL model"),
                StoryMaker.Input("storymaker", tooltip="Load StoryMaker: the LoRA and image-branch weights"),
                Embeds.Input("embeds", tooltip="Encode StoryMaker Characters: the characters' image tokens"),
                io.Float.Input("ip_scale", default=0.8, min=0.0, max=2.0, step=0.05,
                               tooltip="strength of the characters' image tokens (release: 0.8)"),
                io.Float.Input("lora_scale", default=0.8, min=0.0, max=2.0, step=0.05,
                               tooltip="strength of StoryMaker's LoRA (release: 0.8)"),
                io.Float.Input("start_at", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="fraction of the sampling steps at which the image tokens start to act"),
                io.Float.Input("end_at", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="fraction of the sampling steps after which the image tokens stop"),
                *[io.Mask.Input(f"mask_{i}", optional=True, tooltip=f"region of character {i} (optional)")
                  for i in MASK_SLOTS],
            ],
            outputs=[io.Model.Output(tooltip="the model with StoryMaker applied")],
        )

    @classmethod
    def validate_inputs(cls, ip_scale=None, lora_scale=None, start_at=None, end_at=None):
        return checked_floats(cls, ip_scale=ip_scale, lora_scale=lora_scale, start_at=start_at, end_at=end_at)

    @classmethod
    def execute(cls, model, storymaker, embeds, ip_scale, lora_scale, start_at, end_at, mask_1=None, mask_2=None,
                mask_3=None) -> io.NodeOutput:
        return io.NodeOutput(apply_ops.apply_storymaker(model, storymaker, embeds, ip_scale, lora_scale, start_at,
                                                        end_at, (mask_1, mask_2, mask_3), progress=progress_bar))
