"""The story file: load YAML/JSON, check every field, return plain dataclasses.

All problems are collected and reported together, each as ``field.path: what is wrong (what to do)``, so
a user fixes a story file in one pass instead of one error per run. The schema is documented in
``docs/story-runner.md``; cross-checks against the workflow templates happen in ``plan.py``.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bindings import KNOWN_BINDINGS, Bindings, parse_bindings
from .checker import MAX_SEED, Checker, cast_name, read_document, slug_or_hash, slugify
from .errors import StoryFileError

__all__ = ["CastMember", "IDENTITY_MODES", "ImageValue", "Scene", "Story", "WorkflowSpec", "default_seed", "load_story",
           "slugify"]
#: ``cast[].identity``: how StoryMaker Character from Image reads the reference (its ``identity`` input)
IDENTITY_MODES = ("auto", "face", "appearance")
SAMPLING_KEYS = ("steps", "cfg", "sampler_name", "scheduler", "denoise")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class WorkflowSpec:
    path: Path
    bindings: Bindings = field(compare=False)
    where: str = field(compare=False, default="workflow")  # the story file field, for messages


@dataclass(frozen=True)
class ImageValue:
    """A ``values:`` entry ``{image: path}``: uploaded like a reference; the node input gets its name."""

    path: Path


@dataclass(frozen=True)
class CastMember:
    name: str
    image: Path
    mask: Path | None = None
    identity: str | None = None  # one of IDENTITY_MODES; None: leave the template's value


@dataclass
class Scene:
    index: int  # 1-based position in the story
    id: str
    prompt: str
    negative: str | None
    characters: tuple[str, ...] | None  # None: let the workflow decide (see plan.py)
    pose: Path | None
    seed: int
    workflow: WorkflowSpec
    size: dict[str, int]
    sampling: dict[str, Any]
    values: dict[str, Any]
    field: str


@dataclass
class Story:
    path: Path
    name: str
    cast: dict[str, CastMember]
    scenes: list[Scene]
    base_seed: int = 0


def default_seed(base_seed: int, scene_id: str) -> int:
    """The seed of a scene without ``seed:``. Derived from its id, not its position, so inserting,
    removing or reordering scenes leaves every other scene's seed (and image) as it was."""
    return (base_seed + zlib.crc32(scene_id.encode("utf-8"))) % (MAX_SEED + 1)


def _workflow(c: Checker, raw: Any, where: str, cast, story_bindings: Bindings) -> WorkflowSpec | None:
    if isinstance(raw, dict):
        if c.mapping(raw, where, ("file", "bindings"), ("file",)) is None or raw.get("file") is None:
            return None
        path = c.file(raw["file"], f"{where}.file", image=False)
        extra = parse_bindings(c, raw.get("bindings"), f"{where}.bindings", cast)
    else:
        path, extra = c.file(raw, where, image=False), Bindings()
    return WorkflowSpec(path, story_bindings.merged(extra), where) if path else None


def _size(c: Checker, raw: Any, where: str, partial: bool = False) -> dict[str, int]:
    """``[w, h]`` or ``{width, height}``; ``partial`` (a scene's) may give one key, overriding the story's."""
    if raw is None:
        return {}
    if isinstance(raw, list) and len(raw) == 2:
        raw = {"width": raw[0], "height": raw[1]}
    if c.mapping(raw, where, ("width", "height"), () if partial else ("width", "height")) is None:
        return {}
    if partial and not raw:
        c.bad(where, "give width, height or both")
    size = {}
    for key in ("width", "height"):
        value = c.integer(raw.get(key), f"{where}.{key}", 16, 16384) if key in raw else None
        if value is not None and value % 8:
            c.bad(f"{where}.{key}", f"{value} is not a multiple of 8 (SDXL latents are 1/8 of the image)")
        elif value is not None:
            size[key] = value
    return size


def _sampling(c: Checker, raw: Any, where: str) -> dict[str, Any]:
    if raw is None or c.mapping(raw, where, SAMPLING_KEYS) is None:
        return {}
    checks = {
        "steps": lambda v, w: c.integer(v, w, 1, 10000),
        "cfg": lambda v, w: c.number(v, w, 0.0, 100.0),
        "sampler_name": c.string,
        "scheduler": c.string,
        "denoise": lambda v, w: c.number(v, w, 0.0, 1.0),
    }
    out = {k: checks[k](v, f"{where}.{k}") for k, v in raw.items() if k in checks}
    return {k: v for k, v in out.items() if v is not None}


def _custom_names(spec: WorkflowSpec | None) -> set[str]:
    return {n for n in spec.bindings.targets if n not in KNOWN_BINDINGS} if spec else set()


def _values(c: Checker, raw: Any, where: str, declared: set[str] | None) -> dict[str, Any]:
    """``values:``: text, numbers, booleans, or ``{image: path}`` (uploaded; the node gets its name).
    With ``declared``, every name must be a custom binding declared for the workflow."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        c.bad(where, "expected a mapping of custom binding name -> value")
        return {}
    out: dict[str, Any] = {}
    for name, value in raw.items():
        spot = f"{where}.{name}"
        if declared is not None and name not in declared:
            c.bad(spot, "no custom binding by this name for this scene's workflow; declare it under `bindings:` "
                        "(prompt, seed, size and sampling have their own fields)")
        elif isinstance(value, dict):
            if c.mapping(value, spot, ("image",), ("image",)) is not None and value.get("image") is not None:
                path = c.file(value["image"], f"{spot}.image")
                if path is not None:
                    out[name] = ImageValue(path)
        elif not isinstance(value, (str, int, float, bool)):
            c.bad(spot, f"expected text, a number, true/false or {{image: path}}; got {type(value).__name__}")
        else:
            out[name] = value
    return out


_STORY_KEYS = ("version", "name", "workflow", "bindings", "cast", "scenes", "negative", "size",
               "sampling", "base_seed", "values")
_SCENE_KEYS = ("id", "prompt", "negative", "characters", "pose", "seed", "workflow", "size", "sampling", "values")


def load_story(path: str | Path) -> Story:
    """Read and validate a story file; raise ``StoryFileError`` listing every problem found."""
    path = Path(path).resolve()
    doc = read_document(path)
    c = Checker(path.parent)
    if c.mapping(doc, "story", _STORY_KEYS, ("workflow", "scenes")) is None:
        raise StoryFileError(path, c.problems)
    if doc.get("version", 1) != 1:
        c.bad("version", f"this runner reads version 1 story files; got {doc.get('version')!r}")
    name = doc.get("name", slug_or_hash(path.stem, "story"))
    if not isinstance(name, str) or not _NAME.match(name):
        c.bad("name", f"{name!r} must be letters, digits, '.', '_' or '-' (it names the folder story/<name>/)")
    cast = _cast(c, doc.get("cast") or [])
    story_bindings = parse_bindings(c, doc.get("bindings"), "bindings", cast)
    default_wf = _workflow(c, doc.get("workflow"), "workflow", cast, story_bindings)
    base_seed = c.integer(doc.get("base_seed", 0), "base_seed") or 0
    story_negative = doc.get("negative")
    if story_negative is not None and not isinstance(story_negative, str):
        c.bad("negative", "expected text")
    size, sampling = _size(c, doc.get("size"), "size"), _sampling(c, doc.get("sampling"), "sampling")
    values = _values(c, doc.get("values"), "values", None)
    raw_scenes = doc.get("scenes")
    if not isinstance(raw_scenes, list) or not raw_scenes:
        c.bad("scenes", "expected a non-empty list of scenes")
        raw_scenes = []
    scenes: list[Scene] = []
    seen: dict[str, str] = {}
    used_names: set[str] = _custom_names(default_wf)
    for i, raw in enumerate(raw_scenes):
        where = f"scenes[{i}]"
        if c.mapping(raw, where, _SCENE_KEYS, ("prompt",)) is None:
            continue
        prompt = c.string(raw.get("prompt"), f"{where}.prompt") if raw.get("prompt") is not None else None
        scene_id = raw.get("id", slug_or_hash(" ".join(str(prompt or "").split()[:6]), "scene"))
        if not isinstance(scene_id, (str, int)) or not str(scene_id).strip():
            c.bad(f"{where}.id", f"expected non-empty text; got {scene_id!r}")
            continue
        scene_id = str(scene_id)
        if scene_id in seen:
            c.bad(f"{where}.id", f"'{scene_id}' is also the id of {seen[scene_id]}; give each scene its own `id:`")
        seen.setdefault(scene_id, where)
        wf = default_wf
        if "workflow" in raw:
            wf = _workflow(c, raw["workflow"], f"{where}.workflow", cast, story_bindings)
        negative = raw.get("negative", story_negative)
        if negative is not None and not isinstance(negative, str):
            c.bad(f"{where}.negative", "expected text")
        seed = c.integer(raw["seed"], f"{where}.seed") if "seed" in raw else default_seed(base_seed, scene_id)
        characters = _scene_characters(c, raw.get("characters"), f"{where}.characters", cast)
        pose = c.file(raw["pose"], f"{where}.pose") if raw.get("pose") is not None else None
        declared = _custom_names(wf)
        used_names |= declared
        # story-wide values go to the scenes whose workflow binds them (per-workflow bindings)
        scene_values = {**{k: v for k, v in values.items() if k in declared},
                        **_values(c, raw.get("values"), f"{where}.values", declared if wf else None)}
        scene_size = {**size, **_size(c, raw.get("size"), f"{where}.size", partial=True)}
        scene_sampling = {**sampling, **_sampling(c, raw.get("sampling"), f"{where}.sampling")}
        if prompt is None or wf is None or seed is None:
            continue
        scenes.append(Scene(
            index=i + 1, id=scene_id, prompt=prompt, negative=negative, characters=characters, pose=pose,
            seed=seed, workflow=wf, size=scene_size, sampling=scene_sampling, values=scene_values, field=where,
        ))
    for value_name in values:
        if value_name not in used_names:
            c.bad(f"values.{value_name}", "no custom binding by this name in any workflow of the story; declare it "
                                    "under `bindings:` (prompt, seed, size and sampling have their own fields)")
    if c.problems:
        raise StoryFileError(path, list(dict.fromkeys(c.problems)))
    return Story(path=path, name=name, cast=cast, scenes=scenes, base_seed=base_seed)


def _cast(c: Checker, raw: Any) -> dict[str, CastMember]:
    if isinstance(raw, dict):  # also accept {name: {image, mask}}
        raw = [{"name": k, **v} if isinstance(v, dict) else {"name": k, "image": v} for k, v in raw.items()]
    if not isinstance(raw, list):
        c.bad("cast", "expected a list of {name, image, mask, identity}")
        return {}
    cast: dict[str, CastMember] = {}
    seen: set[str] = set()
    for i, member in enumerate(raw):
        where = f"cast[{i}]"
        if c.mapping(member, where, ("name", "image", "mask", "identity"), ("name", "image")) is None:
            continue
        name = c.string(member.get("name"), f"{where}.name") if member.get("name") is not None else None
        if name is not None and name.strip().isdigit():
            c.bad(f"{where}.name", f"'{name}' is a number; numbers are reserved for character slots (character:1)")
            name = None
        elif name is not None and name.strip().casefold() in seen:
            c.bad(f"{where}.name", f"'{name}' appears twice in the cast (names are compared ignoring case)")
            name = None
        if name is not None:
            seen.add(name.strip().casefold())
        image = c.file(member.get("image"), f"{where}.image") if member.get("image") is not None else None
        mask = c.file(member["mask"], f"{where}.mask") if member.get("mask") is not None else None
        identity = member.get("identity")
        if identity is not None and identity not in IDENTITY_MODES:
            c.bad(f"{where}.identity", f"expected one of {', '.join(IDENTITY_MODES)}; got {identity!r} (face: ArcFace "
                                      "identity, appearance: no face, e.g. anime or animals; auto: decided per reference)")
            identity = None
        if name and image:
            cast[name.strip()] = CastMember(name.strip(), image, mask, identity)
        elif name:
            c.unusable_members.add(name.strip().casefold())  # its own problem is reported: scenes stay quiet
    return cast


def _scene_characters(c: Checker, raw: Any, where: str, cast) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        c.bad(where, "expected a list of cast names")
        return None
    names: list[str] = []
    for j, item in enumerate(raw):
        name = cast_name(cast, str(item))
        if name is None and str(item).strip().casefold() in c.unusable_members:
            continue
        if name is None:
            listed = ", ".join(cast) or ("the cast is empty" if not c.unusable_members else
                                         f"{', '.join(sorted(c.unusable_members))}'s entry has a problem above")
            c.bad(f"{where}[{j}]", f"'{item}' is not in the cast ({listed})")
        elif name in names:
            c.bad(f"{where}[{j}]", f"'{item}' is listed twice")
        else:
            names.append(name)
    return tuple(names)
