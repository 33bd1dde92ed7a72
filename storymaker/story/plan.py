"""Story → one ``ScenePlan`` per scene: the filled API prompt, the files to upload, a fingerprint.

Planning is local and deterministic (upload names derive from file contents), so a rerun can tell from
the fingerprint alone whether a finished scene still matches the story, without asking any server.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import StoryFileError
from .files import file_sha256
from .schema import ImageValue, Scene, Story, slugify
from .workflow import Resolved, Slot, Template, resolve


@dataclass(frozen=True)
class Upload:
    """A local reference image and the name it gets in the server's ``input/`` folder."""

    path: Path
    sha256: str
    name: str


@dataclass
class ScenePlan:
    scene: Scene
    stem: str  # "01-cafe": the output file name without extension
    prompt: dict[str, dict]
    fingerprint: str
    uploads: tuple[Upload, ...]
    output_nodes: tuple[str, ...]  # empty: any node that saved an image
    characters: tuple[str, ...]

    @property
    def id(self) -> str:
        return self.scene.id


CHARACTER_NODE = "StoryMakerCharacterFromImage"


def prompt_fingerprint(prompt: dict) -> str:
    return hashlib.sha256(json.dumps(prompt, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class _Planner:
    def __init__(self, story: Story):
        self.story = story
        self.templates: dict[Path, Template] = {}
        self.resolved: dict[int, Resolved] = {}
        self.uploads: dict[Path, Upload] = {}
        self.problems: list[str] = []

    def upload(self, path: Path) -> Upload:
        if path not in self.uploads:
            sha = file_sha256(path)
            # Top level of input/: LoadImage lists only those files, so /object_info can confirm the upload.
            name = f"storymaker-{slugify(path.stem, 24)}-{sha[:12]}{path.suffix.lower()}"
            self.uploads[path] = Upload(path, sha, name)
        return self.uploads[path]

    def resolved_for(self, scene: Scene) -> Resolved:
        spec = scene.workflow
        if spec.path not in self.templates:
            self.templates[spec.path] = Template.load(spec.path)
        key = id(spec.bindings)
        if key not in self.resolved:
            self.resolved[key] = resolve(self.templates[spec.path], spec.bindings, self.story.cast)
            self.problems.extend(self.resolved[key].problems)
        return self.resolved[key]

    def plan(self, scene: Scene, digits: int) -> ScenePlan | None:
        res = self.resolved_for(scene)
        tpl, where = res.template, scene.field
        problems: list[str] = []
        values: dict[Slot, Any] = {}

        def put(name: str, value: Any, field: str) -> None:
            slots = res.get(name)
            if not slots:
                why = res.missing.get(name, f"nothing in {tpl.path.name} is bound to '{name}'")
                problems.append(f"{field}: {why}; bind it under `bindings.{name}` in the story file")
            for slot in slots:
                values[slot] = value

        put("prompt", scene.prompt, f"{where}.prompt")
        put("seed", scene.seed, f"{where}.seed")
        if scene.negative is not None:
            put("negative", scene.negative, f"{where}.negative")
        uploads: list[Upload] = []
        for key, value in {**scene.size, **scene.sampling, **scene.values}.items():
            if isinstance(value, ImageValue):
                uploads.append(self.upload(value.path))
                value = uploads[-1].name
            put(key, value, f"{where} ({key})")
        for slot in res.get("filename_prefix"):  # ComfyUI's own copy, apart from the runner's NN-scene.png
            values[slot] = f"storymaker/{self.story.name}/comfyui/{slugify(scene.id)}"
        if scene.pose is not None:
            uploads.append(self.upload(scene.pose))
            put("pose", uploads[-1].name, f"{where}.pose")
        elif res.get("pose"):
            problems.append(f"{where}: its workflow {tpl.path.name} has a pose node "
                            f"({tpl.describe(res.get('pose')[0].node)}); give the scene a `pose:` image "
                            f"or choose a workflow without one (`workflow:`)")
        characters = self.characters(scene, res, values, uploads, problems)
        self.problems.extend(problems)
        if problems:
            return None
        prompt = tpl.fill(values)
        return ScenePlan(
            scene=scene, stem=f"{scene.index:0{digits}d}-{slugify(scene.id)}", prompt=prompt,
            fingerprint=prompt_fingerprint(prompt), uploads=tuple(dict.fromkeys(uploads)),
            output_nodes=tuple(s.node for s in res.get("output")), characters=characters,
        )

    def characters(self, scene, res: Resolved, values, uploads, problems) -> tuple[str, ...]:
        tpl, where, cast = res.template, f"{scene.field}.characters", self.story.cast
        keys = res.characters
        numbered = sorted((k for k in keys if k.isdigit()), key=int)
        named = [k for k in keys if not k.isdigit()]
        wf = tpl.path.name
        if numbered and named:
            problems.append(f"{wf}: mixes character:<name> and character:<number> node titles; use one style")
            return ()
        if numbered:
            chosen = scene.characters if scene.characters is not None else tuple(cast)
            count = int(numbered[-1])
            if numbered != [str(i) for i in range(1, count + 1)]:
                problems.append(f"{wf}: character slots must be numbered 1..{count}; found {', '.join(numbered)}")
            elif len(chosen) != count:
                problems.append(f"{where}: the scene has {len(chosen)} character(s) ({', '.join(chosen) or 'none'}) "
                                f"but {wf} has {count} character slot(s); list {count} or pick another `workflow:`")
            assignment = dict(zip(numbered, chosen))
        else:
            chosen = scene.characters if scene.characters is not None else tuple(n for n in cast if n in keys)
            for name in chosen:
                if name not in keys:
                    problems.append(f"{where}: '{name}' has no node in {wf}; title a LoadImage 'character:{name}', "
                                    f"bind it under `bindings.characters`, or pick another `workflow:`")
            for name in named:
                if name not in chosen:
                    problems.append(f"{where}: {wf} has nodes for '{name}', who is not in this scene; add "
                                    f"'{name}' to the scene's characters or pick another `workflow:`")
            assignment = {name: name for name in named if name in chosen}
        for key, name in assignment.items():
            parts, member = keys[key], cast[name]
            if not parts.get("image"):
                problems.append(f"{wf}: has a {' and '.join(sorted(parts))} binding for character {key} but no "
                                f"'character:{key}' image node")
                continue
            up = self.upload(member.image)
            uploads.append(up)
            values.update({slot: up.name for slot in parts["image"]})
            character_nodes = [node_id for slot in parts["image"] for node_id, input_name in tpl.consumers(slot.node)
                               if input_name == "image" and tpl.nodes[node_id]["class_type"] == CHARACTER_NODE]
            for node_id in character_nodes:  # the pack's character node takes the cast name: its errors name them
                values[Slot(node_id, "name")] = name
            if member.identity is not None:
                _plan_identity(member, key, parts, character_nodes, tpl, values, problems)
            if parts.get("mask"):
                if member.mask is None:
                    problems.append(f"cast '{name}': {wf} has a mask node for this character "
                                    f"({tpl.describe(parts['mask'][0].node)}); add `mask:` to the cast member")
                    continue
                up = self.upload(member.mask)
                uploads.append(up)
                values.update({slot: up.name for slot in parts["mask"]})
        return tuple(chosen)


def _identity_problem(tpl: Template, name: str, key: str, why: str) -> str:
    return (f"cast '{name}' sets `identity:` but {why}; regenerate or re-export the template with the current pack "
            f"(its StoryMaker Character from Image node has an `identity` input), bind it under "
            f"`bindings.characters.{key}.identity`, or remove `identity:` to keep {tpl.path.name}'s own setting")


def _plan_identity(member, key: str, parts: dict, character_nodes: list[str], tpl: Template, values: dict,
                   problems: list[str]) -> None:
    """Write the cast member's ``identity`` mode: to explicit ``bindings.characters.<name>.identity`` targets,
    else to the StoryMaker Character from Image node fed by its ``character:<key>`` image. A template that
    cannot take it is an error, never silently ignored (the character would be read in another mode)."""
    wf = tpl.path.name
    slots = list(parts.get("identity") or [])
    if not slots:
        if not character_nodes:
            problems.append(_identity_problem(tpl, member.name, key, f"no {CHARACTER_NODE} node in {wf} is fed by "
                                                                     f"its 'character:{key}' image"))
            return
        for node_id in character_nodes:
            if "identity" not in tpl.nodes[node_id]["inputs"]:
                problems.append(_identity_problem(tpl, member.name, key, f"{tpl.describe(node_id)} in {wf} has no "
                                                                         "'identity' input (made before it existed)"))
                return
        slots = [Slot(node_id, "identity") for node_id in character_nodes]
    values.update({slot: member.identity for slot in slots})


STORYMAKER_PATCHES = ("StoryMakerApply", "StoryMakerApplyScene", "StoryMakerStory")  # nodes that patch attn2


def _compiles(prompt: dict) -> bool:
    """Does the prompt compile its model (ComfyUI's TorchCompileModel, or another pack's TorchCompile* node)?"""
    return any("torchcompile" in str(node.get("class_type", "")).lower() for node in prompt.values())


def _compiled_plain_problem(plans: list) -> str | None:
    """Scenes without StoryMaker on a compiled UNet that StoryMaker's scenes also run: TorchCompileModel drops
    the guards on transformer_options, so once the compiled UNet ran with attention patches, a plain call
    reads the missing patches and fails mid-story (KeyError 'patches_replace')."""
    compiled = [p for p in plans if p is not None and _compiles(p.prompt)]
    plain = [p for p in compiled if not any(n.get("class_type") in STORYMAKER_PATCHES for n in p.prompt.values())]
    if not plain or len(plain) == len(compiled):
        return None
    ids = ", ".join(p.id for p in plain[:8]) + (", ..." if len(plain) > 8 else "")
    templates = sorted({Path(p.scene.workflow.path).name for p in plain})
    return (f"scenes {ids} run the model through TorchCompileModel without StoryMaker ({', '.join(templates)}) "
            f"while other scenes run the compiled model with it: a compiled UNet that ran with StoryMaker's attention "
            f"patches cannot run plain afterwards (it fails mid-story with KeyError 'patches_replace'). Remove "
            f"TorchCompileModel from {templates[0]}, or from every template.")


def plan_story(story: Story) -> list[ScenePlan]:
    """Plan every scene, or raise ``StoryFileError`` listing every binding/character problem."""
    planner = _Planner(story)
    digits = max(2, len(str(len(story.scenes))))
    plans = [planner.plan(scene, digits) for scene in story.scenes]
    compiled_plain = _compiled_plain_problem(plans)
    if compiled_plain:
        planner.problems.append(compiled_plain)
    if planner.problems:
        raise StoryFileError(story.path, list(dict.fromkeys(planner.problems)))
    return [p for p in plans if p is not None]
