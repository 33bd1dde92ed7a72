"""StoryMaker Story: a whole story from one script; each scene becomes its own cached subgraph."""

from __future__ import annotations

import logging
import re

import torch
from comfy_api.latest import io

from ..storymaker_core.cast import Cast
from ..storymaker_core.regions import region_mask
from ..storymaker_core.script import parse_script
from ..storymaker_core.story_graph import StoryLinks, StorySettings, build_story_graph
from ..storymaker_core.story_render import StoryRender
from .common import checked_floats, finite
from .v3_types import STORY_CATEGORY, Cast as CastType, Story, StoryMaker

logger = logging.getLogger(__name__)
MASK_SLOTS = [f"mask{i}" for i in range(1, 9)]
_STORY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")
EXAMPLE = ("[ava] drinking coffee in a sunny kitchen, morning light\n"
           "[ava, ben] walking side by side in a park, autumn | seed=42\n"
           "[NC] an empty street at dawn, rain")


def checked_story_name(name: str) -> str:
    """A folder name under output/storymaker/: letters, digits, ' ', '_', '.', '-' (no path)."""
    stripped = name.strip()
    if not _STORY_NAME.match(stripped) or stripped in (".", "..") or stripped.endswith("."):
        raise ValueError(f"story_name {name!r}: use 1-64 letters, digits, spaces, '_', '.' or '-' (it names the "
                         f"folder output/storymaker/<story_name>/), e.g. 'ava-and-ben'.")
    return stripped


def member_links(cast: Cast, cast_link: list, dynprompt) -> dict:
    """Inputs of each member's encode node: a link to the member's own character node (so its scenes depend
    on it alone); the whole cast plus a name when the cast node's inputs cannot be traced."""
    cast_node = dynprompt.get_node(cast_link[0]) if dynprompt is not None else None
    inputs = cast_node["inputs"] if cast_node and cast_node.get("class_type") == "StoryMakerCast" else None
    links = {}
    for name, slot in zip(cast.names, cast.slots):
        character = inputs.get(f"characters.{slot}") if inputs else None
        if isinstance(character, list):
            links[name] = {"character": character}
            if isinstance(inputs.get("clip_vision"), list):
                links[name]["clip_vision"] = inputs["clip_vision"]
        else:
            links[name] = {"cast": cast_link, "name": name}
    return links


def panel_regions(layout, masks: dict, width: int, height: int) -> tuple:
    """float32 [H, W] per on-stage character at the render size (None = anywhere), for the panels' records."""
    regions = []
    for spec in layout:
        if spec == "full":
            regions.append(None)
        elif spec.startswith("mask"):
            mask = masks[spec].reshape(-1, *masks[spec].shape[-2:])[0].float()[None, None]
            regions.append(torch.nn.functional.interpolate(mask, size=(height, width), mode="bilinear")[0, 0].numpy())
        else:
            regions.append(region_mask(spec, width, height))
    return tuple(regions)


class StoryMakerStory(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        import comfy.samplers

        masks = io.Autogrow.TemplateNames(
            io.Mask.Input("mask", tooltip="a hand-drawn region: layout=maskN in a scene line uses it"),
            names=MASK_SLOTS, min=0)
        return io.Schema(
            node_id="StoryMakerStory", display_name="StoryMaker Story", category=STORY_CATEGORY,
            description="A whole story from a script, one scene per line: '[ava, ben] walking in a park | seed=42'. "
                        "Every scene is sampled with ComfyUI's own sampler; on the next queue only edited or new "
                        "scenes are sampled again. Images are saved to output/storymaker/<story_name>/.",
            inputs=[
                io.Model.Input("model", tooltip="an SDXL model (without Apply StoryMaker: the story applies it)"),
                io.Clip.Input("clip", tooltip="the SDXL model's CLIP: encodes every scene's prompt"),
                io.Vae.Input("vae", tooltip="the SDXL model's VAE: decodes every panel"),
                StoryMaker.Input("storymaker", tooltip="Load StoryMaker"),
                CastType.Input("cast", tooltip="StoryMaker Cast: the characters the script calls by name"),
                io.String.Input("script", multiline=True, default=EXAMPLE,
                                tooltip="one scene per line: [name] tags (up to 3, [NC] = nobody), then options "
                                        "after '|': seed=, candidates=, layout=, ip_scale= (docs/story-script.md)"),
                io.String.Input("story_name", default="story", tooltip="folder under output/storymaker/"),
                io.String.Input("style_prefix", default="", tooltip="put before every scene's prompt"),
                io.String.Input("style_suffix", default="", tooltip="put after every scene's prompt"),
                io.String.Input("negative", multiline=True, default="blurry, lowres, deformed, bad anatomy",
                                tooltip="the negative prompt of every scene"),
                io.Int.Input("width", default=1024, min=64, max=4096, step=8, tooltip="panel width in pixels"),
                io.Int.Input("height", default=1024, min=64, max=4096, step=8, tooltip="panel height in pixels"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="a scene's seed = this + a number from its own text (so moving lines keeps "
                                     "images); seed= in a line sets it"),
                io.Int.Input("steps", default=30, min=1, max=10000, tooltip="sampling steps per panel"),
                io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="classifier-free guidance scale, as KSampler's"),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler",
                               tooltip="ComfyUI's sampler, as KSampler's"),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal",
                               tooltip="ComfyUI's scheduler, as KSampler's"),
                io.Float.Input("ip_scale", default=0.8, min=0.0, max=2.0, step=0.05,
                               tooltip="strength of the characters' image tokens (release: 0.8); ip_scale= in a "
                                       "line overrides it"),
                io.Float.Input("lora_scale", default=0.8, min=0.0, max=2.0, step=0.05,
                               tooltip="strength of StoryMaker's LoRA (release: 0.8)"),
                io.Float.Input("start_at", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="fraction of the sampling steps at which the image tokens start to act"),
                io.Float.Input("end_at", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="fraction of the sampling steps after which the image tokens stop"),
                io.Autogrow.Input("masks", template=masks, optional=True,
                                  tooltip="regions drawn by hand: layout=mask1,mask2 in a line uses them"),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="every panel, in script order"),
                     Story.Output(display_name="story", tooltip="each image's scene, seed, cast and file")],
            hidden=[io.Hidden.unique_id, io.Hidden.dynprompt],
            enable_expand=True,
        )

    @classmethod
    def validate_inputs(cls, cfg=None, ip_scale=None, lora_scale=None, start_at=None, end_at=None, masks=None):
        # `masks` is named because ComfyUI passes a V3 dynamic input to the validator in any case
        return checked_floats(cls, cfg=cfg, ip_scale=ip_scale, lora_scale=lora_scale, start_at=start_at, end_at=end_at)

    @classmethod
    def execute(cls, model, clip, vae, storymaker, cast: Cast, script, story_name: str, style_prefix, style_suffix,
                negative, width, height, seed, steps, cfg, sampler_name, scheduler, ip_scale, lora_scale, start_at,
                end_at, masks=None) -> io.NodeOutput:
        from comfy_execution.graph_utils import GraphBuilder

        masks = {k: v for k, v in (masks or {}).items() if v is not None}
        connected = 0
        while f"mask{connected + 1}" in masks:
            connected += 1
        scenes = parse_script(script, cast.names, cast.descriptions, user_masks=connected)
        for name, value in (("cfg", cfg), ("ip_scale", ip_scale), ("lora_scale", lora_scale),
                            ("start_at", start_at), ("end_at", end_at)):
            finite(value, name)
        if start_at >= end_at:
            raise ValueError(f"start_at ({start_at}) must be below end_at ({end_at}).")
        settings = StorySettings(name=checked_story_name(story_name), width=width, height=height, seed=seed,
                                 steps=steps, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler,
                                 style_prefix=style_prefix.strip(), style_suffix=style_suffix.strip(),
                                 negative=negative, ip_scale=ip_scale, lora_scale=lora_scale, start_at=start_at,
                                 end_at=end_at, face_only=cast.face_only)
        own = cls.hidden.dynprompt.get_node(cls.hidden.unique_id)["inputs"]
        on_stage = {name for scene in scenes for name in scene.cast}
        links = StoryLinks(model=own["model"], clip=own["clip"], vae=own["vae"], storymaker=own["storymaker"],
                           members={n: v for n, v in member_links(cast, own["cast"], cls.hidden.dynprompt).items()
                                    if n in on_stage},
                           masks={int(k[4:]): own[f"masks.{k}"] for k in masks if isinstance(own.get(f"masks.{k}"), list)})
        graph = build_story_graph(scenes, settings, links, prefix=GraphBuilder.alloc_prefix())
        panels = tuple(p.__class__(**{**p.__dict__, "regions": panel_regions(p.layout, masks, width, height)})
                       for p in graph.panels)
        logger.info("StoryMaker Story '%s': %d scenes, %d images", settings.name, len(scenes), len(panels))
        story = StoryRender(name=settings.name, width=width, height=height, panels=panels)
        return io.NodeOutput(graph.images, story, expand=graph.nodes)
