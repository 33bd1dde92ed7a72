"""A parsed story -> the graph of stock and StoryMaker nodes that renders it (ComfyUI's node expansion).

Why a graph and not a loop: ComfyUI caches each expanded node by its inputs, so a scene whose line, cast
members and shared settings did not change is not sampled again, an appended line samples only itself,
and after an interrupt the finished scenes are kept. The rules that make this hold:

* a scene's nodes get only its own values: its prompt, seeds, layout and links to *its* members' encodings
  (never its position, never the whole cast), so editing one line changes one scene's inputs;
* StoryMaker's LoRA is one node that every scene links to: ComfyUI merges it into the UNet once per story,
  and each scene's Apply only clones that model with its own attention patch (no re-merge);
* the images reach the story node's output through a chain of join nodes, so the story node waits for every
  scene (a result that did not link to its scenes would be cached before they ran).

Links are `[node_id, output_index]`, as in ComfyUI's API prompt; the graph is a dict of API-prompt nodes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Mapping, Optional, Sequence

from .script import Scene, scene_prompt, scene_seeds, scene_stem
from .story_render import RenderedPanel

OUTPUT_FOLDER = "storymaker"  # inside ComfyUI's output folder: storymaker/<story name>/<NN>-<slug>[-<k>].png


@dataclass(frozen=True)
class StorySettings:
    """What every scene shares (a change re-renders every scene)."""

    name: str
    width: int = 1024
    height: int = 1024
    seed: int = 0
    steps: int = 30
    cfg: float = 5.0
    sampler_name: str = "euler"
    scheduler: str = "normal"
    style_prefix: str = ""
    style_suffix: str = ""
    negative: str = ""
    ip_scale: float = 0.8
    lora_scale: float = 0.8
    start_at: float = 0.0
    end_at: float = 1.0
    face_only: bool = False


@dataclass(frozen=True)
class StoryLinks:
    """Links to what the story node was given, for the expanded nodes to use."""

    model: list
    clip: list
    vae: list
    storymaker: list
    # cast name -> inputs of its StoryMakerEncodeMember node besides storymaker and face_only
    # ({"character": link, "clip_vision": link} or, when the cast's members cannot be traced, {"cast": link, "name": n})
    members: Mapping[str, dict] = field(default_factory=dict)
    masks: Mapping[int, list] = field(default_factory=dict)  # user mask number (1-based) -> link


@dataclass
class StoryGraph:
    nodes: dict  # node id -> {"class_type": ..., "inputs": {...}}
    images: list  # link to the IMAGE batch of every panel, in panel order
    panels: list  # RenderedPanel (without regions), one per image


def panel_file(settings: StorySettings, scene: Scene, candidate: Optional[int]) -> str:
    """Where a panel is saved, relative to ComfyUI's output folder."""
    return f"{OUTPUT_FOLDER}/{settings.name}/{scene_stem(scene, candidate)}.png"


def _scene_metadata(settings: StorySettings, scene: Scene, seed: int, candidate: int, prompt: str) -> str:
    shared = {k: v for k, v in asdict(settings).items() if k != "name"}
    return json.dumps({"story": settings.name, "scene": scene.number, "line": scene.source, "prompt": prompt,
                       "seed": seed, "candidate": candidate, "candidates": scene.candidates,
                       "cast": list(scene.cast), "layout": list(scene.layout),
                       "ip_scale": settings.ip_scale if scene.ip_scale is None else scene.ip_scale,
                       "settings": shared}, ensure_ascii=False)


def build_story_graph(scenes: Sequence[Scene], settings: StorySettings, links: StoryLinks,
                      prefix: str = "") -> StoryGraph:
    """The expanded graph of a whole story; node ids start with `prefix` (unique per story node)."""
    nodes: dict = {}

    def add(node_id: str, class_type: str, **inputs) -> list:
        nodes[prefix + node_id] = {"class_type": class_type, "inputs": inputs}
        return [prefix + node_id, 0]

    model = add("lora", "StoryMakerApplyLoRA", model=links.model, storymaker=links.storymaker,
                lora_scale=settings.lora_scale)
    negative = add("negative", "CLIPTextEncode", clip=links.clip, text=settings.negative)
    latent = add("latent", "EmptyLatentImage", width=settings.width, height=settings.height, batch_size=1)
    members = {}
    for index, (name, inputs) in enumerate(links.members.items(), start=1):
        members[name] = add(f"member{index}", "StoryMakerEncodeMember", storymaker=links.storymaker,
                            face_only=settings.face_only, **inputs)

    images, panels = None, []
    for scene in scenes:
        tag = f"scene{scene.number}"
        prompt = scene_prompt(scene, settings.style_prefix, settings.style_suffix)
        positive = add(f"{tag}.positive", "CLIPTextEncode", clip=links.clip, text=prompt)
        apply_inputs = {"model": model, "storymaker": links.storymaker, "layout": ",".join(scene.layout),
                        "ip_scale": settings.ip_scale if scene.ip_scale is None else scene.ip_scale,
                        "start_at": settings.start_at, "end_at": settings.end_at, "width": settings.width,
                        "height": settings.height}
        for slot, (name, region) in enumerate(zip(scene.cast, scene.layout), start=1):
            apply_inputs[f"member_{slot}"] = members[name]
            if region.startswith("mask"):
                apply_inputs[f"mask_{slot}"] = links.masks[int(region[4:])]
        scene_model = add(f"{tag}.apply", "StoryMakerApplyScene", **apply_inputs)
        seeds = scene_seeds(scene, settings.seed)
        for k, seed in enumerate(seeds, start=1):
            candidate = k if len(seeds) > 1 else None
            sampled = add(f"{tag}.{k}.sample", "KSampler", model=scene_model, seed=seed, steps=settings.steps,
                          cfg=settings.cfg, sampler_name=settings.sampler_name, scheduler=settings.scheduler,
                          positive=positive, negative=negative, latent_image=latent, denoise=1.0)
            decoded = add(f"{tag}.{k}.decode", "VAEDecode", samples=sampled, vae=links.vae)
            file = panel_file(settings, scene, candidate)
            saved = add(f"{tag}.{k}.save", "StoryMakerSaveScene", images=decoded, file=file,
                        metadata=_scene_metadata(settings, scene, seed, k, prompt))
            # `second` before `first`: ComfyUI queues a node's inputs last-first, so this order renders the
            # scenes in script order (and an interrupt keeps the first scenes)
            images = saved if images is None else add(f"{tag}.{k}.join", "StoryMakerJoinImages",
                                                      second=saved, first=images)
            panels.append(RenderedPanel(scene=scene.number, candidate=k, candidates=len(seeds), seed=seed,
                                        text=scene.text, source=scene.source, cast=tuple(scene.cast),
                                        layout=tuple(scene.layout), file=file))
    return StoryGraph(nodes=nodes, images=images, panels=panels)
