"""ViStoryBench dataset -> one story file per story (``OUT/<NN>/story.yaml``) the story runner renders.

Per story: the cast is ``Characters`` (every reference image, in ``OUT/<NN>/refs/``: one copied as it is,
several as one multi-page image that LoadImage reads as a batch; identity mode from ``tag``), and every shot becomes a scene whose id is the shot index. A shot with 1-3 on-stage
characters uses the 1/2/3-character template with the characters in listed order (slot 1 = left region);
no character -> the plain SDXL template; more than 3 -> the first three (warned, counted). Region masks
(left/right halves, left/middle/right thirds) are written to ``OUT/masks/`` and bound to the image nodes
feeding StoryMaker Apply's ``mask_N``. Templates are copied to ``OUT/templates/`` so ``OUT`` renders from
any machine. The choices are explained in docs/vistorybench.md.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..checker import slug_or_hash
from .dataset import VistoryStory, load_dataset
from .prompts import NEGATIVE, shot_prompt
from .regions import REGION_NAMES, write_region_masks
from .templates import DEFAULT_TEMPLATES, TemplateInfo, copy_template, default_template_dir, inspect_template

logger = logging.getLogger(__name__)

__all__ = ["ConvertOptions", "ConvertSummary", "MAX_CHARACTERS", "SIDECAR", "convert_dataset", "identity_for_tag",
           "reference_batch", "story_name"]

MAX_CHARACTERS = 3  # StoryMaker's character slots
SIDECAR = "vistorybench.json"  # beside each story.yaml: story id, language, shot indices (read by export)


def identity_for_tag(tag: str) -> str:
    """ViStoryBench ``tag`` -> the character node's ``identity``: real people may have a usable face
    (``auto`` decides per reference); drawn people and animals have no ArcFace face (``appearance``)."""
    return "auto" if tag == "realistic_human" else "appearance"


def story_name(story_id: str, language: str) -> str:
    """The story's ``name`` (its output folder): language first, so en and ch renders never share a folder."""
    return f"vistorybench-{language}-{story_id}"


@dataclass
class ConvertOptions:
    language: str = "en"
    split: str = "full"
    stories: list[str] | None = None
    templates: dict[int, Path] = field(default_factory=dict)  # count -> file; default: DEFAULT_TEMPLATES
    width: int = 1024
    height: int = 1024
    steps: int | None = None
    cfg: float | None = None
    base_seed: int = 0
    lenient_names: bool = False  # match shot names to Characters keys ignoring spaces/case/name (not as ViStoryBench)
    language_fallback: bool = False  # other language's text instead of ViStoryBench's "(<lang> data missing)" placeholder


@dataclass
class ConvertSummary:
    stories: int = 0
    shots: int = 0
    characters: Counter = field(default_factory=Counter)  # (tag, identity mode) -> count
    truncated: list[str] = field(default_factory=list)  # "01/7: 4 characters, rendered A, B, C"
    no_character: int = 0
    templates: Counter = field(default_factory=Counter)  # template file -> shots
    references: Counter = field(default_factory=Counter)  # reference images per character -> characters
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"stories": self.stories, "shots": self.shots,
                "characters": [{"tag": t, "identity": m, "count": n} for (t, m), n in sorted(self.characters.items())],
                "shots_truncated_to_3": self.truncated, "shots_with_no_character": self.no_character,
                "templates": dict(self.templates),
                "references_per_character": {str(k): v for k, v in sorted(self.references.items())},
                "problems": self.problems}

    def format(self) -> str:
        lines = [f"stories: {self.stories}", f"shots: {self.shots}", "characters by tag and identity mode:"]
        lines += [f"  {tag or '(no tag)'} -> {mode}: {n}" for (tag, mode), n in sorted(self.characters.items())]
        lines += ["reference images per character (all used, one image batch each): "
                  + ", ".join(f"{k}: {v}" for k, v in sorted(self.references.items()))]
        lines += [f"shots with more than {MAX_CHARACTERS} characters (first {MAX_CHARACTERS} rendered): {len(self.truncated)}"]
        lines += [f"  {t}" for t in self.truncated]
        lines += [f"shots with no character (plain SDXL): {self.no_character}",
                  f"problems: {len(self.problems)}"] + [f"  {p}" for p in self.problems]
        return "\n".join(lines)


def _templates(options: ConvertOptions) -> dict[int, TemplateInfo]:
    return {count: inspect_template(Path(options.templates.get(count) or default_template_dir() / DEFAULT_TEMPLATES[count]),
                                    count) for count in range(MAX_CHARACTERS + 1)}


def convert_dataset(dataset: str | Path, out: str | Path, options: ConvertOptions | None = None) -> ConvertSummary:
    """Write ``out/<NN>/story.yaml`` for every selected story, plus ``out/templates``, ``out/masks`` and
    ``out/summary.json``. Raises ``DatasetError`` / ``TemplateError`` before writing anything."""
    options = options or ConvertOptions()
    out = Path(out)
    stories = load_dataset(dataset, options.split, options.stories, options.language,
                           lenient_names=options.lenient_names, language_fallback=options.language_fallback)
    templates = _templates(options)
    copied = {count: copy_template(info, out / "templates") for count, info in templates.items()}
    masks = write_region_masks(out / "masks", options.width, options.height)
    summary = ConvertSummary()
    for story in stories:
        _convert_story(story, out / story.story_id, templates, copied, masks, options, summary)
    (out / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    return summary


def _cast(story: VistoryStory, story_dir: Path, needs_mask: bool, summary: ConvertSummary):
    """Cast list for story.yaml and key -> cast name, for characters with a reference image.

    Every reference image is used: one reference is copied as it is; several become one multi-page TIFF
    (:func:`reference_batch`) that ComfyUI's LoadImage reads as an image batch, which the Character from Image
    node takes as several references of one character."""
    refs = story_dir / "refs"
    cast, names, taken, stems = [], {}, set(), set()
    for key, char in story.characters.items():
        mode = identity_for_tag(char.tag)
        summary.characters[(char.tag, mode)] += 1
        if not char.images:  # reported by the dataset reader; still described in the prompts
            continue
        summary.references[len(char.images)] += 1
        name = key.strip() if not key.strip().isdigit() else f"character {key.strip()}"
        while name.casefold() in taken:
            name += " #2"
        taken.add(name.casefold())
        stem = base = slug_or_hash(key, "character")
        while stem in stems:  # "Ben" and "BEN" share a slug: keep both files
            stem = f"{base}-{len(stems)}"
        stems.add(stem)
        refs.mkdir(parents=True, exist_ok=True)
        if len(char.images) == 1:
            image = refs / f"{stem}{char.images[0].suffix.lower()}"
            shutil.copyfile(char.images[0], image)
        else:
            image = reference_batch(char.images, refs / f"{stem}.tif")
        member = {"name": name, "image": f"refs/{image.name}", "identity": mode}
        if needs_mask:  # a template with mask nodes, and no masks in ViStoryBench: the whole reference
            member["mask"] = f"refs/{_whole_mask(image, refs / f'{stem}-mask.png').name}"
        cast.append(member)
        names[key] = name
    return cast, names


def reference_batch(sources: list[Path] | tuple[Path, ...], target: Path, fill=(255, 255, 255)) -> Path:
    """Write every reference of one character as the pages of one TIFF (lossless), each page upright (EXIF
    applied, as LoadImage does) and letterboxed onto one canvas (the largest width x the largest height;
    scaled by one factor to fit, centred, white around): LoadImage turns a multi-page image into an IMAGE
    batch but drops pages of another size than the first, and a batch needs one size. Scaling by one
    factor keeps faces undistorted; the white border is what the character crop lies on anyway."""
    from PIL import Image, ImageOps

    frames = []
    for source in sources:
        with Image.open(source) as im:
            frames.append(ImageOps.exif_transpose(im).convert("RGB"))
    width, height = max(f.width for f in frames), max(f.height for f in frames)
    pages = []
    for frame in frames:
        scale = min(width / frame.width, height / frame.height)
        size = (max(1, round(frame.width * scale)), max(1, round(frame.height * scale)))
        if size != frame.size:
            frame = frame.resize(size, Image.LANCZOS)
        page = Image.new("RGB", (width, height), fill)
        page.paste(frame, ((width - size[0]) // 2, (height - size[1]) // 2))
        pages.append(page)
    pages[0].save(target, save_all=True, append_images=pages[1:], compression="tiff_deflate")
    return target


def _whole_mask(image: Path, target: Path) -> Path:
    from PIL import Image, ImageOps

    with Image.open(image) as im:  # upright, as LoadImage reads it; a batch: its first page, every page's size
        Image.new("RGB", ImageOps.exif_transpose(im).size, (255, 255, 255)).save(target)
    return target


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def _convert_story(story: VistoryStory, story_dir: Path, templates: dict[int, TemplateInfo], copied: dict[int, Path],
                   masks: dict[str, Path], options: ConvertOptions, summary: ConvertSummary) -> None:
    story_dir.mkdir(parents=True, exist_ok=True)
    summary.stories += 1
    summary.problems += story.warnings
    cast, names = _cast(story, story_dir, any(t.needs_mask for t in templates.values()), summary)
    scenes, used_values = [], {}
    for shot in story.shots:
        where = f"{story.story_id}/{shot.index}"
        on_stage = [k for k in shot.character_keys if k in names]
        for key in shot.character_keys:
            if key not in names:
                summary.problems.append(f"shot {where}: '{key}' has no reference image; not given an identity slot")
        if len(on_stage) > MAX_CHARACTERS:
            kept = on_stage[:MAX_CHARACTERS]
            message = (f"{where}: {len(on_stage)} characters, rendered {', '.join(kept)}; "
                       f"left out of the slots: {', '.join(on_stage[MAX_CHARACTERS:])}")
            logger.warning("shot %s", message)
            summary.truncated.append(message)
            on_stage = kept
        count = len(on_stage)
        summary.no_character += int(count == 0)
        info = templates[count]
        for slot, key in enumerate(on_stage, 1):
            if info.masking[slot] == "none" and identity_for_tag(story.characters[key].tag) != "appearance":
                summary.problems.append(
                    f"shot {where}: '{key}' ({story.characters[key].tag}) is in slot {slot} of {info.path.name}, "
                    "which has neither Segment Anything nor a mask node: the character node refuses a reference "
                    "with a face there; use a -sam template")
        summary.templates[info.path.name] += 1
        workflow: Any = _rel(copied[count], story_dir)
        region_names = REGION_NAMES.get(count, ())
        if count >= 2 and len(info.regions) >= count:
            workflow = {"file": workflow, "bindings": {region_names[slot - 1]: {"node": info.regions[slot], "input": "image"}
                                                       for slot in range(1, count + 1)}}
            used_values.update({n: {"image": _rel(masks[n], story_dir)} for n in region_names})
        scenes.append({"id": str(shot.index), "prompt": shot_prompt(shot, story.characters, options.language),
                       "characters": [names[k] for k in on_stage], "workflow": workflow})
        summary.shots += 1
    if not scenes:
        summary.problems.append(f"story {story.story_id}: no usable shot; no story file written")
        return
    doc: dict[str, Any] = {
        "version": 1, "name": story_name(story.story_id, options.language),
        "workflow": _rel(copied[1], story_dir), "cast": cast,
        "size": [options.width, options.height], "base_seed": options.base_seed, "negative": NEGATIVE,
    }
    sampling = {k: v for k, v in (("steps", options.steps), ("cfg", options.cfg)) if v is not None}
    if sampling:
        doc["sampling"] = sampling
    if used_values:
        doc["values"] = used_values
    doc["scenes"] = scenes
    header = (f"# ViStoryBench story {story.story_id} ({options.language}), converted by "
              f"python -m storymaker vistorybench convert\n# render: python -m storymaker story "
              f"{story_dir.name}/story.yaml --server URL   (docs/vistorybench.md)\n")
    (story_dir / "story.yaml").write_text(header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=120),
                                          encoding="utf-8")
    sidecar = {"story_id": story.story_id, "language": options.language, "name": doc["name"],
               "dataset": str(story.path), "shots": [s["id"] for s in scenes],
               "cast": {name: key for key, name in names.items()},
               "references": {name: [str(p) for p in story.characters[key].images] for key, name in names.items()},
               "lenient_names": options.lenient_names, "language_fallback": options.language_fallback}
    (story_dir / SIDECAR).write_text(json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
