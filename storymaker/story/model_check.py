"""The model files a story's prompts name, judged by the server that would load them.

``/object_info`` only says a file *name* is offered; a zero-byte placeholder, a Git LFS pointer or an SD1.5
checkpoint is offered too, and fails only when a scene runs. The pack's ``/storymaker/inspect`` route
reads each file's header where ComfyUI keeps it (``storymaker_core.model_files``); this module asks it
about every file the prompts load and turns its verdicts into problems named by scene, node and input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .client import ComfyClient
from .errors import CannotInspectModels, ModelFilesUnusable, describe_node
from .validate import scene_labels
from .workflow import is_link

#: (node type, input) -> (ComfyUI model folder, what the file must be)
MODEL_INPUTS = {
    ("CheckpointLoaderSimple", "ckpt_name"): ("checkpoints", "checkpoint"),
    ("CLIPVisionLoader", "clip_name"): ("clip_vision", "clip_vision"),
    ("ControlNetLoader", "control_net_name"): ("controlnet", "controlnet"),
    ("LoraLoader", "lora_name"): ("loras", "lora"),
    ("LoraLoaderModelOnly", "lora_name"): ("loras", "lora"),
    ("VAELoader", "vae_name"): ("vae", "vae"),
    ("UNETLoader", "unet_name"): ("diffusion_models", "model"),
    ("StoryMakerLoader", "storymaker_file"): ("storymaker", "storymaker"),
    ("StoryMakerSAMLoader", "sam_file"): ("sams", "sam"),
    ("StoryMakerInsightFaceLoader", "model_name"): ("insightface", "insightface_pack"),
    ("StoryMakerLoadCharacter", "character_file"): ("storymaker_characters", "storymaker_character"),
}
#: A prompt with these nodes needs these architectures: StoryMaker patches SDXL and reads CLIP ViT-H/14.
STRICTER = {"checkpoint": ("StoryMakerApply", "sdxl_checkpoint"),
            "clip_vision": ("StoryMakerEncodeCharacters", "clip_vision_vit_h")}


@dataclass(frozen=True)
class ModelFile:
    folder: str
    name: str
    kind: str


def model_files(labelled: Iterable[tuple[str, dict]]) -> dict[ModelFile, list[tuple[str, str]]]:
    """Every model file the prompts load -> [(scene label, "node ... input '...'")], in prompt order."""
    found: dict[ModelFile, list[tuple[str, str]]] = {}
    for label, prompt in labelled:
        types = {node.get("class_type") for node in prompt.values()}
        for node_id, node in prompt.items():
            for name, value in (node.get("inputs") or {}).items():
                target = MODEL_INPUTS.get((node.get("class_type"), name))
                if target is None or is_link(value) or not isinstance(value, str):
                    continue
                folder, kind = target
                if kind != "insightface_pack" and "." not in value:
                    continue  # not a file: VAELoader's built-in "taesdxl", "pixel_space"...
                needs, stricter = STRICTER.get(kind, (None, kind))
                if needs in types:
                    kind = stricter
                where = f"{describe_node(node_id, prompt)} input '{name}'"
                found.setdefault(ModelFile(folder, value, kind), []).append((label, where))
    return found


async def check_model_files(client: ComfyClient, labelled: Iterable[tuple[str, dict]]) -> int:
    """Ask the server about every model file; raise ``ModelFilesUnusable`` listing each bad one with its fix,
    or ``CannotInspectModels`` when the server has no inspect route. Returns how many files were checked."""
    files = model_files(labelled)
    if not files:
        return 0
    results = await client.inspect_model_files(
        [{"folder": f.folder, "name": f.name, "kind": f.kind} for f in files])
    if results is None:
        raise CannotInspectModels(client.url)
    problems = []
    for file, result in zip(files, results):
        if result.get("ok") is True:
            continue
        uses = files[file]
        labels = scene_labels(list(dict.fromkeys(label for label, _ in uses)))
        where = uses[0][1]
        shown = result.get("path") or f"models/{file.folder}/{file.name}"
        fix = f" -> {result['fix']}" if result.get("fix") else ""
        problems.append(f"{labels}: {where}: {file.name!r} ({shown}) {result.get('problem') or 'cannot be used'}{fix}")
    if len(results) != len(files):
        problems.append(f"the server answered for {len(results)} of {len(files)} model files")
    if problems:
        raise ModelFilesUnusable(client.url, problems)
    return len(files)
