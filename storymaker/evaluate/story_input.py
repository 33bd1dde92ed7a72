"""What a story consistency score needs, whatever made the story: the cast and the shots.

Why a neutral structure: the scoring must not know whether a story came from the story runner's
``manifest.json`` or from a ViStoryBench output folder, so both are read into :class:`Story` by small
adapters (this module holds the runner's; ``story_vistorybench.py`` the benchmark's) and everything
after that is the same code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

IDENTITY_MODES = ("auto", "face", "appearance")
RUNNER_FORMAT = "storymaker-story-manifest"  # storymaker.story.manifest.FORMAT (not imported: keeps this light)
_DONE, _REMOVED = "done", "removed"


class StoryInputError(ValueError):
    """A story folder or manifest that cannot be scored; the message names it and says what to do."""


@dataclass(frozen=True)
class CastMember:
    """One character. ``identity``: ``auto``/``face`` (ArcFace when the reference has a face) or
    ``appearance`` (CLIP-I of the character crop). ``masks``: one per reference (None = whole image)."""

    name: str
    references: tuple[Path, ...]
    identity: str = "auto"
    masks: tuple[Path | None, ...] = ()

    def mask_of(self, index: int) -> Path | None:
        return self.masks[index] if index < len(self.masks) else None


@dataclass(frozen=True)
class Region:
    """Where a character was placed in a shot: a mask image (white = the character's region), read as the
    ComfyUI loader that fed it to StoryMaker Apply reads it: ``channel`` red/green/blue (LoadImageMask), or
    ``alpha`` (1 - alpha: LoadImageMask's alpha channel, LoadImage's MASK output). ``source`` says where it
    came from, for the report."""

    path: Path
    channel: str = "red"
    source: str = ""


@dataclass(frozen=True)
class Shot:
    """One shot (scene) of a story. ``file`` None, or ``problem`` set: no image to score (reported).
    ``regions``: on-stage name -> its :class:`Region` (an appearance character is scored on it)."""

    id: str
    file: Path | None
    characters: tuple[str, ...]
    problem: str | None = None
    regions: Mapping[str, Region] = field(default_factory=dict)


@dataclass(frozen=True)
class Story:
    """A story to score: its cast and its shots in story order; ``method`` labels the generator."""

    name: str
    method: str
    source: Path
    cast: Mapping[str, CastMember]
    shots: tuple[Shot, ...]
    notes: tuple[str, ...] = field(default=())


def checked_identity(value: Any, where: str) -> str:
    """``auto`` when absent; otherwise one of :data:`IDENTITY_MODES` (an error names ``where``)."""
    if value is None:
        return "auto"
    if not isinstance(value, str) or value.strip().lower() not in IDENTITY_MODES:
        raise StoryInputError(f"{where}: identity must be one of {list(IDENTITY_MODES)}, got {value!r}")
    return value.strip().lower()


def validate_story(story: Story) -> Story:
    """Every on-stage name is in the cast and every cast member has a reference file on disk."""
    problems = []
    for shot in story.shots:
        unknown = [c for c in shot.characters if c not in story.cast]
        if unknown:
            problems.append(f"shot {shot.id!r} names {unknown}, not in the cast {sorted(story.cast)}")
    for member in story.cast.values():
        if not member.references:
            problems.append(f"character {member.name!r} has no reference image")
        for i, ref in enumerate(member.references):
            if not ref.is_file():
                problems.append(f"reference image of {member.name!r} not found: {ref}")
            mask = member.mask_of(i)
            if mask is not None and not mask.is_file():
                problems.append(f"mask of {member.name!r} not found: {mask}")
    if problems:
        raise StoryInputError(f"{story.source}: story {story.name!r} cannot be scored:\n  " + "\n  ".join(problems))
    return story


# --------------------------------------------------------------------------- story runner manifest
def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _cast_member(name: str, entry: Any, base: Path, where: str, identity: str | None) -> CastMember:
    if isinstance(entry, str):
        entry = {"image": entry}
    if not isinstance(entry, Mapping):
        raise StoryInputError(f"{where}: cast[{name!r}] must be an object with 'image', got {entry!r}")
    images = entry.get("images", entry.get("image"))
    images = [images] if isinstance(images, str) else images
    if not isinstance(images, list) or not images or not all(isinstance(i, str) for i in images):
        raise StoryInputError(f"{where}: cast[{name!r}] needs an 'image' path, got {entry.get('image')!r}")
    masks = entry.get("masks", entry.get("mask"))
    masks = [masks] if isinstance(masks, str) or masks is None else masks
    mode = identity or checked_identity(entry.get("identity"), f"{where}: cast[{name!r}]")
    return CastMember(name=name, references=tuple(_resolve(base, i) for i in images), identity=mode,
                      masks=tuple(_resolve(base, m) if isinstance(m, str) else None for m in masks))


def _runner_shot(scene_id: str, rec: Any, base: Path, where: str) -> Shot:
    if not isinstance(rec, Mapping):
        raise StoryInputError(f"{where}: scenes[{scene_id!r}] must be an object, got {rec!r}")
    chars = rec.get("characters") or []
    if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
        raise StoryInputError(f"{where}: scenes[{scene_id!r}].characters must be a list of names, got {chars!r}")
    status, file = rec.get("status"), rec.get("file")
    problem = None
    if status != _DONE or not isinstance(file, str):
        problem = f"status {status!r}" + (f": {rec['error']}" if rec.get("error") else "") + " (no image)"
    path = _resolve(base, file) if isinstance(file, str) else None
    if problem is None and not path.is_file():
        problem = f"image not found: {path}"
    return Shot(id=str(scene_id), file=path, characters=tuple(chars), problem=problem)


_APPLY, _ENCODE, _CHARACTER = "StoryMakerApply", "StoryMakerEncodeCharacters", "StoryMakerCharacterFromImage"
_CHANNELS = {"red": "red", "green": "green", "blue": "blue", "alpha": "alpha"}


def _link(value: Any) -> tuple[str, int] | None:
    if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
        return str(value[0]), value[1]
    return None


def prompt_regions(prompt: Mapping[str, Any], files: Mapping[str, Path], where: str,
                   notes: list[str]) -> dict[str, Region]:
    """Cast name -> region of one filled API prompt: for each StoryMaker Apply, ``mask_N`` traced to the
    loader that feeds it, and character N of its embeds traced to the Character from Image node whose
    ``name`` the runner set. ``files``: uploaded file name -> local file. What cannot be traced is noted."""
    out: dict[str, Region] = {}
    for node in prompt.values():
        if not isinstance(node, Mapping) or node.get("class_type") != _APPLY:
            continue
        inputs = node.get("inputs") or {}
        embeds = _link(inputs.get("embeds"))
        encode = prompt.get(embeds[0]) if embeds else None
        for n in (1, 2, 3):
            mask = _link(inputs.get(f"mask_{n}"))
            if mask is None:
                continue
            char = _link(((encode or {}).get("inputs") or {}).get(f"character_{n}")) \
                if (encode or {}).get("class_type") == _ENCODE else None
            char_node = prompt.get(char[0]) if char else None
            name = (char_node or {}).get("inputs", {}).get("name") if (char_node or {}).get("class_type") == _CHARACTER \
                else None
            if not isinstance(name, str):
                notes.append(f"{where}: mask_{n} of StoryMaker Apply: its character is not a {_CHARACTER} node "
                             "the runner named; scored on the whole shot")
                continue
            loader = prompt.get(mask[0]) or {}
            kind, image = loader.get("class_type"), (loader.get("inputs") or {}).get("image")
            if kind == "LoadImageMask":
                channel = _CHANNELS.get(str((loader.get("inputs") or {}).get("channel", "red")).lower())
            elif kind == "LoadImage" and mask[1] == 1:
                channel = "alpha"
            else:
                channel = None
            if channel is None or not isinstance(image, str):
                notes.append(f"{where}: the region of {name!r} (mask_{n}) comes from a {kind} node, not a mask "
                             "image; scored on the whole shot")
            elif image not in files:
                notes.append(f"{where}: the region of {name!r} is {image!r} in ComfyUI's input folder, not a file of "
                             "the story; scored on the whole shot")
            else:
                out[name] = Region(files[image], channel, f"mask_{n} <- {files[image].name}")
    return out


def story_file_regions(story_file: str | Path) -> tuple[dict[str, dict[str, Region]], dict[str, str], list[str]]:
    """(scene id -> {cast name -> region}, scene id -> prompt fingerprint, notes) of a story file, planned
    as the runner plans it: the masks StoryMaker Apply got for each scene (the converter's left/right
    bands, or any mask the story binds). A story file that cannot be planned gives no regions and a note."""
    from ..story.errors import StoryError
    from ..story.plan import plan_story
    from ..story.schema import load_story

    path = Path(story_file)
    if not path.is_file():
        return {}, {}, [f"story file {path} not found: its scenes' regions are unknown, so appearance characters "
                        "are scored on whole shots"]
    try:
        plans = plan_story(load_story(path))
    except (StoryError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0]
        return {}, {}, [f"story file {path} cannot be planned ({first}); appearance characters are scored on "
                        "whole shots"]
    regions, fingerprints, notes = {}, {}, []
    for plan in plans:
        files = {u.name: u.path for u in plan.uploads}
        regions[plan.id] = prompt_regions(plan.prompt, files, f"scene {plan.id!r}", notes)
        fingerprints[plan.id] = plan.fingerprint
    return regions, fingerprints, notes


def story_from_runner_manifest(path: str | Path, *, method: str = "StoryMaker",
                               identities: Mapping[str, str] | None = None) -> Story:
    """Read ``story/<name>/manifest.json`` (or its folder) as written by ``python -m storymaker story``.

    Scenes are taken in story order (``index``); ``removed`` scenes are not part of the story; scenes not
    ``done`` (pending, failed) or whose file is gone become shots with a ``problem``, reported by the
    scoring. ``identities``: ``{name: auto|face|appearance}`` overriding the cast's ``identity`` (names
    not in this cast are ignored; :func:`load_runner_stories` checks them against all stories).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "manifest.json"
    if not path.is_file():
        raise StoryInputError(f"story manifest not found: {path} (give story/<name>/ as written by "
                              f"`python -m storymaker story`, or its manifest.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoryInputError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, Mapping) or data.get("format") != RUNNER_FORMAT:
        raise StoryInputError(f"{path}: not a story runner manifest (format {RUNNER_FORMAT!r}); an evaluation "
                              f"manifest (storymaker-eval/1) is scored with `evaluate score`")
    where, base = str(path), path.parent
    cast_raw = data.get("cast")
    if not isinstance(cast_raw, Mapping) or not cast_raw:
        raise StoryInputError(f"{where}: has no 'cast' (name -> reference image); run the story runner "
                              f"again to record it")
    overrides = {k: checked_identity(v, f"--identity {k}") for k, v in (identities or {}).items()}
    cast = {str(n): _cast_member(str(n), e, base, where, overrides.get(str(n))) for n, e in cast_raw.items()}
    scenes = data.get("scenes")
    if not isinstance(scenes, Mapping) or not scenes:
        raise StoryInputError(f"{where}: has no scenes")
    live = [(k, v) for k, v in scenes.items() if not (isinstance(v, Mapping) and v.get("status") == _REMOVED)]
    live.sort(key=lambda kv: (kv[1].get("index", 0) if isinstance(kv[1], Mapping) else 0))
    shots = [_runner_shot(str(k), v, base, where) for k, v in live]
    notes: list[str] = []
    story_file = (data.get("story") or {}).get("file")
    if any(s.problem is None and s.characters for s in shots) and isinstance(story_file, str):
        shots = _with_regions(shots, scenes, _resolve(base, story_file), notes)
    name = str((data.get("story") or {}).get("name") or base.name)
    return validate_story(Story(name=name, method=method, source=path, cast=cast, shots=tuple(shots),
                                notes=tuple(notes)))


def _with_regions(shots: list[Shot], scenes: Mapping[str, Any], story_file: Path, notes: list[str]) -> list[Shot]:
    """Each shot with the regions its scene was rendered with, when the story file still plans to the prompt
    the manifest recorded (same fingerprint); otherwise whole shots, noted."""
    regions, fingerprints, found = story_file_regions(story_file)
    notes += found
    out = []
    for shot in shots:
        recorded = (scenes.get(shot.id) or {}).get("fingerprint")
        mine = regions.get(shot.id) or {}
        if mine and recorded and fingerprints.get(shot.id) != recorded:
            notes.append(f"scene {shot.id!r}: the story file changed since it was rendered (prompt fingerprint); "
                         "its regions are not used, appearance characters are scored on the whole shot")
            mine = {}
        kept = {n: r for n, r in mine.items() if n in shot.characters}
        out.append(replace(shot, regions=kept) if kept else shot)
    return out


def load_runner_stories(paths: Sequence[str | Path], **kwargs: Any) -> list[Story]:
    """Several runner manifests; story names must be unique (they are the clusters of the intervals)."""
    stories = [story_from_runner_manifest(p, **kwargs) for p in paths]
    unknown = sorted(set(kwargs.get("identities") or {}) - {n for s in stories for n in s.cast})
    if unknown:
        raise StoryInputError(f"--identity names {unknown}, in no story's cast: "
                              f"{sorted({n for s in stories for n in s.cast})}")
    names = [s.name for s in stories]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise StoryInputError(f"story name(s) {twice} given more than once: {[str(s.source) for s in stories]}")
    return stories
