"""The nodes a StoryMaker Story expands into, besides the stock ones: LoRA once, one patch per scene, save.

Usable on their own too: Apply StoryMaker LoRA + one Apply StoryMaker Scene per scene is the way to build
a hand-made multi-scene graph in which the LoRA is merged once (ComfyUI re-merges weights only when a
clone carries new weight patches; a clone that differs only in its attention patch reuses the merge).
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import torch
from comfy_api.latest import io

from ..storymaker_core.encode import embeds_for_slots
from ..storymaker_core.regions import region_mask
from ..storymaker_core.story_graph import OUTPUT_FOLDER
from .patching import add_image_branch, add_lora, one_region, unet_layers
from .common import checked_floats, finite
from .v3_types import STORY_CATEGORY, Member, StoryMaker

logger = logging.getLogger(__name__)
SLOTS = (1, 2, 3)


class StoryMakerApplyLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StoryMakerApplyLoRA", display_name="Apply StoryMaker LoRA", category=STORY_CATEGORY,
            description="StoryMaker's LoRA alone, for graphs that apply it once and vary only the characters per "
                        "scene (Apply StoryMaker Scene).",
            inputs=[io.Model.Input("model", tooltip="an SDXL model"),
                    StoryMaker.Input("storymaker", tooltip="Load StoryMaker: its LoRA"),
                    io.Float.Input("lora_scale", default=0.8, min=0.0, max=2.0, step=0.05,
                                   tooltip="strength of StoryMaker's LoRA (release: 0.8)")],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def validate_inputs(cls, lora_scale=None):
        return checked_floats(cls, lora_scale=lora_scale)

    @classmethod
    def execute(cls, model, storymaker, lora_scale) -> io.NodeOutput:
        patched = model.clone()
        add_lora(patched, storymaker, unet_layers(model, storymaker), finite(lora_scale, "lora_scale"))
        return io.NodeOutput(patched)


def scene_regions(layout: list, masks: list, width: int, height: int):
    """Per on-stage character `[H, W]` region tensors (None = anywhere), or None when nobody has a region."""
    regions = []
    for slot, (spec, mask) in enumerate(zip(layout, masks), start=1):
        if spec == "full":
            regions.append(None)
        elif spec.startswith("mask"):
            if mask is None:
                raise ValueError(f"layout slot {slot} is {spec} but mask_{slot} is not connected.")
            regions.append(one_region(mask, f"{spec} (mask_{slot})"))
        else:
            regions.append(torch.from_numpy(region_mask(spec, width, height)))
    return None if all(r is None for r in regions) else regions


class StoryMakerApplyScene(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StoryMakerApplyScene", display_name="Apply StoryMaker Scene", category=STORY_CATEGORY,
            description="The characters of one scene on a model that already has StoryMaker's LoRA: only the "
                        "attention patch changes, so no weights are merged again. Members in slot order "
                        "(member_1 = leftmost); none = the background tokens alone.",
            inputs=[
                io.Model.Input("model", tooltip="a model that went through Apply StoryMaker LoRA"),
                StoryMaker.Input("storymaker", tooltip="Load StoryMaker: its resampler and image-branch weights"),
                io.String.Input("layout", default="",
                                tooltip="one region per member, comma-separated: full, left, right, left-third, "
                                        "middle-third, right-third, top, bottom, A-B (span of the width) or maskN"),
                io.Float.Input("ip_scale", default=0.8, min=0.0, max=2.0, step=0.05,
                               tooltip="strength of the characters' image tokens (release: 0.8)"),
                io.Float.Input("start_at", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="fraction of the sampling steps at which the image tokens start to act"),
                io.Float.Input("end_at", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="fraction of the sampling steps after which the image tokens stop"),
                io.Int.Input("width", default=1024, min=64, max=8192, step=8, tooltip="the image size the regions "
                                                                                     "are drawn for"),
                io.Int.Input("height", default=1024, min=64, max=8192, step=8,
                             tooltip="the image size the regions are drawn for"),
                *[Member.Input(f"member_{i}", optional=True, tooltip=f"the scene's character {i} (Encode Cast "
                                                                     f"Member)") for i in SLOTS],
                *[io.Mask.Input(f"mask_{i}", optional=True, tooltip=f"region of member {i} when its layout is "
                                                                    f"mask{i}") for i in SLOTS],
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def validate_inputs(cls, ip_scale=None, start_at=None, end_at=None):
        return checked_floats(cls, ip_scale=ip_scale, start_at=start_at, end_at=end_at)

    @classmethod
    def execute(cls, model, storymaker, layout, ip_scale, start_at, end_at, width, height, member_1=None,
                member_2=None, member_3=None, mask_1=None, mask_2=None, mask_3=None) -> io.NodeOutput:
        members = [m for m in (member_1, member_2, member_3) if m is not None]
        if [m is not None for m in (member_1, member_2, member_3)] != [True] * len(members) + [False] * (3 - len(members)):
            raise ValueError("connect members in order: member_1, then member_2, then member_3.")
        specs = [s.strip() for s in layout.split(",")] if layout.strip() else ["full"] * len(members)
        if len(specs) != len(members):
            raise ValueError(f"layout {layout!r} gives {len(specs)} regions for {len(members)} members: give one each.")
        tokens = torch.stack([m.tokens for m in members]) if members else torch.zeros(0)
        embeds = embeds_for_slots(storymaker.resampler, tokens, [m.name for m in members],
                                  num_clip_tokens=members[0].num_clip_tokens if members else 257)
        patched = model.clone()
        add_image_branch(patched, storymaker, unet_layers(model, storymaker), embeds, finite(ip_scale, "ip_scale"),
                         finite(start_at, "start_at"), finite(end_at, "end_at"),
                         scene_regions(specs, [mask_1, mask_2, mask_3], width, height), free_after_sampling=True)
        return io.NodeOutput(patched)


def output_path(file: str) -> str:
    """The absolute path of `file` (relative to ComfyUI's output folder, under storymaker/); a ValueError for
    anything that would land elsewhere."""
    import folder_paths

    root = os.path.realpath(os.path.join(folder_paths.get_output_directory(), OUTPUT_FOLDER))
    path = os.path.realpath(os.path.join(folder_paths.get_output_directory(), file))
    if not file.endswith(".png") or os.path.commonpath([root, path]) != root or path == root:
        raise ValueError(f"file {file!r} must be a .png inside the output folder's {OUTPUT_FOLDER}/ folder.")
    return path


class StoryMakerSaveScene(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StoryMakerSaveScene", display_name="Save StoryMaker Scene", category=STORY_CATEGORY,
            description="Saves a story panel under a fixed name (a re-render replaces it), with the scene's line, "
                        "seed, cast and settings in the PNG beside ComfyUI's workflow.",
            inputs=[io.Image.Input("images", tooltip="the panel (a batch: -b2, -b3, ... are added)"),
                    io.String.Input("file", default=f"{OUTPUT_FOLDER}/story/01-scene.png",
                                    tooltip=f"a .png inside the output folder's {OUTPUT_FOLDER}/ folder"),
                    io.String.Input("metadata", default="{}", multiline=True,
                                    tooltip="the scene's record (JSON), saved in the PNG")],
            outputs=[io.Image.Output()],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def execute(cls, images, file, metadata) -> io.NodeOutput:
        from comfy.cli_args import args
        from PIL import Image
        from PIL.PngImagePlugin import PngInfo

        path = output_path(file)
        info = PngInfo()
        json.loads(metadata)  # a malformed text would be saved silently otherwise
        info.add_text("storymaker", metadata)
        if not args.disable_metadata:
            if cls.hidden.prompt is not None:
                info.add_text("prompt", json.dumps(cls.hidden.prompt))
            for key, value in (cls.hidden.extra_pnginfo or {}).items():
                info.add_text(key, json.dumps(value))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        for i, image in enumerate(images):
            target = path if i == 0 else f"{path[:-4]}-b{i + 1}.png"
            array = np.clip(image.cpu().numpy() * 255.0, 0, 255).round().astype(np.uint8)
            Image.fromarray(array).save(target, pnginfo=info, compress_level=4)
        logger.info("StoryMaker: saved %s", file)
        return io.NodeOutput(images)


class StoryMakerJoinImages(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StoryMakerJoinImages", display_name="Join StoryMaker Panels", category=STORY_CATEGORY,
            description="Used inside a StoryMaker Story: appends one panel's images to the story's batch.",
            inputs=[io.Image.Input("first", tooltip="the story's images so far"),
                    io.Image.Input("second", tooltip="the next panel's images (same size)")],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, first, second) -> io.NodeOutput:
        if first.shape[1:] != second.shape[1:]:
            raise ValueError(f"panels of different sizes cannot share a batch: {tuple(first.shape[1:3])} and "
                             f"{tuple(second.shape[1:3])}")
        return io.NodeOutput(torch.cat([first, second.to(first.device)], dim=0))
