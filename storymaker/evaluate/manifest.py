"""Read an evaluation manifest: which method made which image from which prompt, for whom.

Why a manifest: scoring must not depend on a tool's file naming, so StoryMaker,
InstantID, PhotoMaker, IP-Adapter-FaceID and PuLID outputs are all scored the same way.
Format (full spec in docs/evaluation.md)::

    {"format": "storymaker-eval/1",              # optional
     "method": "StoryMaker",                      # optional: defaults to the folder name
     "references": {"alice": "refs/alice.png"},   # character -> reference image
     "images": [{"file": "out/0001.png", "prompt": "...", "characters": ["alice"],
                 "seed": 1, "prompt_id": "accessory/00"}]}

Relative paths are relative to the manifest's folder.  Story-runner style is accepted:
``scenes`` instead of ``images`` (a list, or a ``{scene_id: record}`` mapping whose records
without ``file`` are skipped with a warning), ``cast`` instead of ``references`` (a mapping,
or a list of ``{"name", "image"}``), and reference entries may be objects with an
``image`` / ``reference`` / ``path`` key.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

logger = logging.getLogger(__name__)

FORMAT = "storymaker-eval/1"
_REF_KEYS = ("image", "reference", "reference_image", "path", "file")


class ManifestError(ValueError):
    """A manifest is malformed; the message names the file and the entry."""


@dataclass(frozen=True)
class ImageEntry:
    """One generated image. ``characters``: cast names whose faces should appear (may be empty)."""

    file: Path
    prompt: str | None
    characters: tuple[str, ...]
    seed: int | None = None
    prompt_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    score_prompt: str | None = None  # the text CLIP-T compares with, when not the prompt (e.g. no trigger word)

    @property
    def clip_t_text(self) -> str | None:
        return self.score_prompt or self.prompt


@dataclass(frozen=True)
class Manifest:
    """A method's run: reference image per character and the generated images."""

    path: Path
    method: str
    references: Mapping[str, Path]
    images: tuple[ImageEntry, ...]
    skipped: tuple[str, ...] = ()  # scene ids without an output file (story-runner manifests)


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p)


def _reference_path(name: str, value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        for key in _REF_KEYS:
            if isinstance(value.get(key), str):
                return value[key]
    raise ManifestError(
        f"{where}: reference for character {name!r} must be a path or an object with one of "
        f"{list(_REF_KEYS)}, got {value!r}"
    )


def parse_manifest(data: Mapping[str, Any], path: str | Path, *, images_dir: str | Path | None = None,
                   references: Mapping[str, str | Path] | None = None, method: str | None = None) -> Manifest:
    """Validate a manifest dict.  ``images_dir`` overrides where image files are looked up,
    ``references`` adds/overrides reference images (CLI ``--reference NAME=PATH``)."""
    path = Path(path)
    where = str(path)
    if not isinstance(data, Mapping):
        raise ManifestError(f"{where}: top level must be a JSON object")
    base = path.parent
    img_base = Path(images_dir) if images_dir is not None else base

    raw_refs = data.get("references", data.get("cast", {})) or {}
    if isinstance(raw_refs, list):  # story-file style cast: [{"name": ..., "image": ...}]
        if not all(isinstance(m, Mapping) and isinstance(m.get("name"), str) for m in raw_refs):
            raise ManifestError(f"{where}: a 'cast' list must hold objects with 'name' and 'image'")
        raw_refs = {m["name"]: m for m in raw_refs}
    if not isinstance(raw_refs, Mapping):
        raise ManifestError(f"{where}: 'references' must map character name -> image path")
    refs: dict[str, Path] = {}
    for name, value in raw_refs.items():
        refs[str(name)] = _resolve(base, _reference_path(str(name), value, where))
    for name, value in (references or {}).items():
        refs[str(name)] = Path(value).expanduser()

    raw_images = data.get("images", data.get("scenes"))
    skipped: list[str] = []
    if isinstance(raw_images, Mapping):  # story-runner style: {scene_id: record}; unfinished ones lack 'file'
        removed = {str(k) for k, v in raw_images.items() if isinstance(v, Mapping) and v.get("status") == "removed"}
        skipped = [str(k) for k, v in raw_images.items()  # removed from the story: not part of it, not reported
                   if str(k) not in removed and not (isinstance(v, Mapping) and v.get("file"))]
        raw_images = [{**v, "prompt_id": str(k)} for k, v in raw_images.items() if str(k) not in set(skipped) | removed]
        if skipped:
            logger.warning("%s: %d scene(s) have no output 'file' yet and are not scored: %s",
                           where, len(skipped), ", ".join(skipped[:10]) + (" ..." if len(skipped) > 10 else ""))
    if not isinstance(raw_images, list) or not raw_images:
        raise ManifestError(f"{where}: needs a non-empty 'images' (or 'scenes') list")
    images: list[ImageEntry] = []
    for i, item in enumerate(raw_images):
        loc = f"{where}: images[{i}]"
        if not isinstance(item, Mapping) or not isinstance(item.get("file"), str):
            raise ManifestError(f"{loc} needs a 'file' string, got {item!r}")
        chars = item.get("characters", item.get("character"))
        if chars is None:
            if len(refs) != 1:
                raise ManifestError(
                    f"{loc} ({item['file']}) has no 'characters' list and the manifest has "
                    f"{len(refs)} references, so the character is ambiguous"
                )
            chars = list(refs)
        if isinstance(chars, str):
            chars = [chars]
        if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
            raise ManifestError(f"{loc} 'characters' must be a list of names, got {chars!r}")
        if len(set(chars)) != len(chars):
            raise ManifestError(f"{loc} lists a character twice: {chars}")
        unknown = [c for c in chars if c not in refs]
        if unknown:
            raise ManifestError(
                f"{loc} ({item['file']}) names character(s) {unknown} without a reference image; "
                f"known: {sorted(refs)}. Add them to 'references' or pass --reference NAME=PATH."
            )
        prompt = item.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise ManifestError(f"{loc} 'prompt' must be a string")
        seed = item.get("seed")
        score_prompt = item.get("score_prompt")
        if score_prompt is not None and not isinstance(score_prompt, str):
            raise ManifestError(f"{loc} 'score_prompt' must be a string")
        known = {"file", "prompt", "characters", "character", "seed", "prompt_id", "score_prompt"}
        images.append(
            ImageEntry(
                file=_resolve(img_base, item["file"]),
                prompt=prompt,
                characters=tuple(chars),
                seed=int(seed) if isinstance(seed, (int, float)) else None,
                prompt_id=item.get("prompt_id"),
                extra={k: v for k, v in item.items() if k not in known},
                score_prompt=score_prompt,
            )
        )
    name = method or data.get("method") or base.name or "method"
    return Manifest(path=path, method=str(name), references=refs, images=tuple(images), skipped=tuple(skipped))


def load_manifest(path: str | Path, **kwargs: Any) -> Manifest:
    """Load ``path`` (a JSON file, or a folder containing ``manifest.json``)."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "manifest.json"
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from exc
    return parse_manifest(data, path, **kwargs)


def check_files(manifest: Manifest) -> list[str]:
    """Problems with files on disk (missing references/images), one message each."""
    problems = []
    used = {c for img in manifest.images for c in img.characters}
    for name in sorted(used):
        ref = manifest.references[name]
        if not ref.is_file():
            problems.append(f"{manifest.path}: reference image for {name!r} not found: {ref}")
    for img in manifest.images:
        if not img.file.is_file():
            problems.append(f"{manifest.path}: image not found: {img.file}")
    return problems


def comparability_problems(manifests: Sequence[Manifest]) -> list[str]:
    """Why methods scored together might not be compared like for like: a character with different
    reference files, or runs that do not cover the same (character, prompt, seed) cells."""
    problems = []
    if len(manifests) < 2:
        return problems
    digest = {}
    for m in manifests:
        for name in {c for img in m.images for c in img.characters}:
            ref = m.references[name]
            key = hashlib.sha256(ref.read_bytes()).hexdigest() if ref.is_file() else str(ref)
            digest.setdefault(name, {}).setdefault(key, []).append(m.method)
    for name, refs in sorted(digest.items()):
        if len(refs) > 1:
            problems.append(f"character {name!r} has different reference images: "
                            + "; ".join(f"{', '.join(methods)}" for methods in refs.values()))
    cells = {m.method: {(c, img.prompt_id or img.clip_t_text, img.seed) for img in m.images for c in img.characters}
             for m in manifests}
    everyone = set.intersection(*cells.values())
    for method, own in cells.items():
        if own != everyone:
            problems.append(f"{method} has {len(own - everyone)} (character, prompt, seed) cell(s) the other "
                            f"method(s) lack; means over different cells are not like for like")
    return problems
