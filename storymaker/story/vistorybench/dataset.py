"""Read the ViStoryBench dataset (``<root>/<NN>/story.json`` + ``<root>/<NN>/image/<character key>/*``).

Pure Python, no image decoding: this module only says what the dataset contains. It follows the reading
rules of ViStoryBench's own loader (``vistorybench/dataset_loader/dataset_load.py``) so a converted story
and ViStoryBench's scorer agree on which shots exist and which characters are on stage:

- ``story.json`` is UTF-8 and may start with a BOM (read as ``utf-8-sig``).
- A shot lacking one of the five shot fields is skipped (their loader skips it, so it is never scored).
- A shot's on-stage characters are the ``"Characters Appearing"["en"]`` names that are keys of
  ``Characters`` *exactly* (their prompt merger checks ``key in characters``; their CIDS indexes
  ``Characters[key]``); other names are left out with a warning that says what a lenient match would have
  found. ``lenient_names=True`` (``convert --lenient-names``) also matches ignoring surrounding spaces and
  case, by ``name_en``/``name_ch``, and a shot that lists names in the other language only.
- A field without text in the chosen language (no such key) gets their loader's placeholder,
  ``(<language> data missing) <the field as Python prints it>``, which is the text every other method was
  given; a shot where *no* field has the language gets no characters (their loader gives it no
  ``character_key``: their prompt merger and CIDS stop on it). ``language_fallback=True`` takes the other
  language's text instead (and for empty texts), each reported as a difference from ViStoryBench.
- Reference images: every ``.png/.jpg/.jpeg`` under ``image/<key>/`` in ``os.walk`` order (a folder's files,
  sorted, before its sub-folders), as ``load_characters`` lists them.
- The *lite* split is the fixed list of 20 story ids in their loader (``LITE_STORY_IDS``).

Problems that do not stop a story from being used are collected as ``warnings`` (and logged), so the
converter can list them in its summary; problems that do (no ``story.json``, invalid JSON, a bad root)
raise ``DatasetError`` with a message naming the file and what to do.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

logger = logging.getLogger(__name__)

__all__ = [
    "CHARACTER_TAGS", "DatasetError", "IMAGE_SUFFIXES", "LANGUAGES", "LITE_STORY_IDS", "SHOT_FIELDS",
    "VistoryCharacter", "VistoryShot", "VistoryStory", "dataset_root", "list_story_ids", "load_dataset",
    "load_story",
]

LANGUAGES = ("en", "ch")
# ViStoryBench's lite split (``StoryDataset.get_story_name_list(split='lite')``).
LITE_STORY_IDS = ("01", "08", "09", "15", "17", "19", "24", "27", "28", "29",
                  "32", "41", "52", "53", "55", "57", "60", "64", "68", "79")
# story.json shot field -> the short name ViStoryBench's loader gives it
SHOT_FIELDS = {
    "Setting Description": "scene",
    "Plot Correspondence": "plot",
    "Characters Appearing": "character_name",
    "Static Shot Description": "script",
    "Shot Perspective Design": "camera",
}
CHARACTER_TAGS = ("realistic_human", "unrealistic_human", "non_human")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DatasetError(ValueError):
    """The dataset cannot be read as ViStoryBench's layout; the message names the path and what to do."""


@dataclass(frozen=True)
class VistoryCharacter:
    key: str  # the ``Characters`` key = folder name under image/ = the name used in "Characters Appearing".en
    name_en: str
    name_ch: str
    prompt_en: str
    prompt_ch: str
    tag: str  # realistic_human / unrealistic_human / non_human (as given; may be "" or another value)
    num_of_appearances: int  # -1 when absent
    images: tuple[Path, ...]  # reference images, sorted; may be empty

    def name(self, language: str) -> str:
        """Display name in ``language``, else the other language's, else the key."""
        return _pick(self.name_en, self.name_ch, language) or self.key

    def prompt(self, language: str) -> str:
        """Description in ``language``, else the other language's (may be "")."""
        return _pick(self.prompt_en, self.prompt_ch, language)


@dataclass(frozen=True)
class VistoryShot:
    index: int  # the shot's "index"; also the output file name ViStoryBench's scorer looks up
    fields: dict[str, dict[str, Any]]  # original field name -> {"en": ..., "ch": ...} as in story.json
    text: dict[str, str]  # short name (scene, plot, script, camera) -> text in the chosen language
    character_keys: tuple[str, ...]  # on-stage characters known to ``Characters``, in listed order
    character_names: tuple[str, ...]  # "Characters Appearing" in the chosen language, as listed
    unknown_characters: tuple[str, ...] = ()  # listed names with no ``Characters`` entry (left out)
    fallbacks: tuple[str, ...] = ()  # fields taken from the other language


@dataclass
class VistoryStory:
    story_id: str  # the folder name, e.g. "01"
    path: Path  # the story folder
    language: str
    story_type: str
    characters: dict[str, VistoryCharacter]  # in story.json order
    shots: list[VistoryShot]
    warnings: list[str] = field(default_factory=list)


def _pick(en: Any, ch: Any, language: str) -> Any:
    first, second = (en, ch) if language == "en" else (ch, en)
    return first if _present(first) else (second if _present(second) else "")


def _present(value: Any) -> bool:
    return value is not None and value != "" and value != []


def _check_language(language: str) -> None:
    if language not in LANGUAGES:
        raise DatasetError(f"language {language!r} is not one of {', '.join(LANGUAGES)} (ViStoryBench's names)")


def dataset_root(root: str | Path) -> Path:
    """The folder holding the ``NN/`` story folders: ``root`` itself, or ``root/ViStory`` (the layout
    ViStoryBench's ``bench_run.py --dataset_path`` expects), or ``root/ViStoryBench`` (the download's name)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist; give the ViStoryBench dataset folder "
                           "(the one holding 01/, 02/, ... or ViStory/)")
    for candidate in (root, root / "ViStory", root / "ViStoryBench"):
        if candidate.is_dir() and any(_is_story_dir(p) for p in candidate.iterdir()):
            return candidate
    raise DatasetError(f"{root} holds no story folder (NN/story.json) and no ViStory/ folder; give the "
                       "ViStoryBench dataset folder (download it as docs/vistorybench.md says)")


def _is_story_dir(path: Path) -> bool:
    return path.is_dir() and path.name.isdigit() and (path / "story.json").is_file()


def list_story_ids(root: str | Path, split: str = "full") -> list[str]:
    """Story folder names (digits, with a story.json) sorted by number; ``split='lite'`` keeps the lite ids."""
    if split not in ("full", "lite"):
        raise DatasetError(f"split {split!r} is not 'full' or 'lite'")
    base = dataset_root(root)
    ids = sorted((p.name for p in base.iterdir() if _is_story_dir(p)), key=int)
    return [i for i in ids if i in LITE_STORY_IDS] if split == "lite" else ids


def load_dataset(root: str | Path, split: str = "full", stories: Iterable[str] | None = None,
                 language: str = "en", *, lenient_names: bool = False,
                 language_fallback: bool = False) -> list[VistoryStory]:
    """Load the stories of a split, or only ``stories`` (ids like "01" or "1"), in story-id order
    (``lenient_names``, ``language_fallback``: see :func:`load_story`).

    Raises ``DatasetError`` for a bad root, split or language, or a requested story that is not there.
    """
    _check_language(language)
    base = dataset_root(root)
    ids = list_story_ids(base, split)
    if stories is not None:
        by_number = {int(i): i for i in ids}
        everything = {int(p.name): p.name for p in base.iterdir() if _is_story_dir(p)}
        chosen = []
        for raw in stories:
            raw = str(raw).strip()
            if not raw.isdigit() or int(raw) not in everything:
                raise DatasetError(f"story {raw!r} is not in {base} (stories there: {', '.join(sorted(everything.values(), key=int)) or 'none'})")
            if int(raw) not in by_number:
                raise DatasetError(f"story {raw!r} is not in the {split} split; use --split full")
            if by_number[int(raw)] not in chosen:
                chosen.append(by_number[int(raw)])
        ids = sorted(chosen, key=int)
    return [load_story(base / i, language, lenient_names=lenient_names, language_fallback=language_fallback)
            for i in ids]


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetError(f"{path} does not exist; a ViStoryBench story folder holds story.json")
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path} is not UTF-8 text ({e}); re-download the dataset") from e
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e


def _images(folder: Path) -> tuple[Path, ...]:
    """Reference images in ``StoryDataset.load_characters``'s order: ``os.walk`` top-down, each folder's files
    sorted by name before its sub-folders (sorted here; theirs come in file-system order). The first one is
    the image their prompt merger gives other methods (``image_paths``)."""
    if not folder.is_dir():
        return ()
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [Path(root) / f for f in sorted(files)
                  if f.lower().endswith(IMAGE_SUFFIXES) and (Path(root) / f).is_file()]
    return tuple(found)


def _int(value: Any, default: int | None) -> int | None:
    try:
        return int(value) if not isinstance(value, bool) else default
    except (TypeError, ValueError):
        return default


def load_story(story_dir: str | Path, language: str = "en", *, lenient_names: bool = False,
               language_fallback: bool = False) -> VistoryStory:
    """Read one story folder (``story.json`` + ``image/``). Raises ``DatasetError`` if it cannot be read.

    By default as strictly as ViStoryBench's loader: a shot's characters are the names of its
    ``"Characters Appearing"["en"]`` that are keys of ``Characters`` exactly, and a field without text in
    ``language`` gets their placeholder ``(<language> data missing) <field>``. ``lenient_names``: also match
    names ignoring surrounding spaces and case, by ``name_en``/``name_ch``, and a shot listing only other-
    language names; ``language_fallback``: take the other language's text instead of the placeholder (and an
    empty text's). Every place the result differs from what ViStoryBench's loader reads is a warning.
    """
    _check_language(language)
    story_dir = Path(story_dir)
    doc = _read_json(story_dir / "story.json")
    if not isinstance(doc, dict):
        raise DatasetError(f"{story_dir / 'story.json'}: expected an object with Characters and Shots")
    warnings: list[str] = []
    where = f"story {story_dir.name}"
    characters = _characters(doc.get("Characters") or {}, story_dir, where, warnings)
    shots = _shots(doc.get("Shots") or [], characters, language, where, warnings, lenient_names, language_fallback)
    story_type = doc.get("Story_type") or {}
    story_type = _pick(story_type.get("en"), story_type.get("ch"), language) if isinstance(story_type, dict) else str(story_type)
    for message in warnings:
        logger.warning(message)
    return VistoryStory(story_id=story_dir.name, path=story_dir, language=language, story_type=story_type or "",
                        characters=characters, shots=shots, warnings=warnings)


def _characters(raw: Any, story_dir: Path, where: str, warnings: list[str]) -> dict[str, VistoryCharacter]:
    if not isinstance(raw, dict):
        warnings.append(f"{where}: Characters is not an object; no characters read")
        return {}
    out: dict[str, VistoryCharacter] = {}
    for key, data in raw.items():
        data = data if isinstance(data, dict) else {}
        images = _images(story_dir / "image" / key)
        if not images:
            warnings.append(f"{where}: character '{key}' has no reference image in image/{key}/")
        out[key] = VistoryCharacter(
            key=key, name_en=str(data.get("name_en") or ""), name_ch=str(data.get("name_ch") or ""),
            prompt_en=str(data.get("prompt_en") or ""), prompt_ch=str(data.get("prompt_ch") or ""),
            tag=str(data.get("tag") or ""), num_of_appearances=_int(data.get("num_of_appearances"), -1),
            images=images)
    return out


def _character_lookup(characters: dict[str, VistoryCharacter]) -> dict[str, str]:
    """Name -> key: exact keys first, then stripped / case-folded keys and English / Chinese names."""
    lookup: dict[str, str] = {}
    for key, char in characters.items():
        for name in (key, key.strip(), key.strip().casefold(), char.name_en.strip(), char.name_en.strip().casefold(),
                     char.name_ch.strip()):
            if name:
                lookup.setdefault(name, key)
    return lookup


def _resolve(name: Any, lookup: dict[str, str]) -> str | None:
    text = str(name)
    for candidate in (text, text.strip(), text.strip().casefold()):
        if candidate in lookup:
            return lookup[candidate]
    return None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _placeholder(raw: Any, language: str) -> str:
    """ViStoryBench's text for a field without ``language`` (``StoryDataset.load_shots``): the marker and
    Python's ``str()`` of the whole field, e.g. ``(en data missing) {'ch': '雨中的森林'}``."""
    return f"({language} data missing) " + str(raw)


def _shots(raw: Any, characters: dict[str, VistoryCharacter], language: str, where: str,
           warnings: list[str], lenient_names: bool = False, language_fallback: bool = False) -> list[VistoryShot]:
    if not isinstance(raw, list):
        warnings.append(f"{where}: Shots is not a list; no shots read")
        return []
    lookup = _character_lookup(characters)
    other = "ch" if language == "en" else "en"
    shots: list[VistoryShot] = []
    seen: set[int] = set()
    for position, shot in enumerate(raw):
        if not isinstance(shot, dict):
            warnings.append(f"{where}: Shots[{position}] is not an object; skipped")
            continue
        index = _int(shot.get("index"), None)
        label = f"{where} shot {shot.get('index', f'#{position + 1}')}"
        missing = [f for f in SHOT_FIELDS if f not in shot]
        if index is None:
            warnings.append(f"{label}: no integer 'index'; skipped (the output file is named by it)")
            continue
        if missing:
            warnings.append(f"{label}: missing {', '.join(missing)}; skipped (ViStoryBench's loader skips it too)")
            continue
        if index in seen:
            warnings.append(f"{label}: index {index} is used by an earlier shot; skipped (outputs are named by index)")
            continue
        seen.add(index)
        not_objects = [f for f in SHOT_FIELDS if not isinstance(shot[f], dict)]
        if not_objects:
            warnings.append(f"{label}: {', '.join(not_objects)} not an object of en/ch texts; read as the same text "
                            "in both languages (ViStoryBench's loader may stop on it: it indexes the field by language)")
        fields = {f: (shot[f] if isinstance(shot[f], dict) else {"en": shot[f], "ch": shot[f]}) for f in SHOT_FIELDS}
        # their loader: a field *with* the language key gives its value as it is (even ""); a field without it
        # gives every method the placeholder "(<language> data missing) <the field>"
        has_language = any(language in fields[f] for f in SHOT_FIELDS)
        fallbacks = []
        text: dict[str, str] = {}
        for original, short in SHOT_FIELDS.items():
            value = fields[original].get(language)
            if language in fields[original] and (not language_fallback or _present(value)):
                if short != "character_name":
                    text[short] = _text(value) if value is not None else ""
                continue
            fallbacks.append(original)
            if not language_fallback:
                if short != "character_name":
                    text[short] = _placeholder(shot[original], language)
                continue
            alternative = fields[original].get(other)
            if short != "character_name":
                text[short] = _text(alternative) if _present(alternative) else ""
            if language not in fields[original]:
                warnings.append(f"{label}: '{original}' has no {language} text; using the {other} text "
                                f"(differs from ViStoryBench, whose loader gives every method "
                                f"'{_placeholder(shot[original], language)[:60]}...')")
            elif _present(alternative):
                warnings.append(f"{label}: '{original}' has an empty {language} text; using the {other} text "
                                "(differs from ViStoryBench, which takes the empty text)")
        if fallbacks and not language_fallback:
            warnings.append(f"{label}: {', '.join(fallbacks)} without {language} text; given ViStoryBench's "
                            f"placeholder '({language} data missing) ...' as its loader gives every method "
                            "(--language-fallback: the other language's text instead)")
        names = _names(fields["Characters Appearing"].get(language))
        if language_fallback and not names:
            names = _names(fields["Characters Appearing"].get(other))
        if lenient_names:
            # the English list holds the Characters keys; without it, map the listed names (either language)
            listed = _names(fields["Characters Appearing"].get("en")) or names
        elif not has_language:
            listed = []
            warnings.append(f"{label}: no field has {language} text, so ViStoryBench's loader gives the shot no "
                            f"character_key: its prompt merger and CIDS stop with a KeyError on this story; "
                            "rendered without characters (--lenient-names: match the names it lists)")
        elif "en" not in fields["Characters Appearing"]:
            listed = []
            warnings.append(f"{label}: 'Characters Appearing' has no en list (the Characters keys): ViStoryBench's "
                            "loader stops with a KeyError on this story; rendered without characters "
                            "(--lenient-names: match the names it lists)")
        else:
            listed = _names(fields["Characters Appearing"]["en"])
        keys, unknown = [], []
        for name in listed:
            key = _resolve(name, lookup) if lenient_names else (str(name) if str(name) in characters else None)
            if key is None:
                unknown.append(str(name))
                near = None if lenient_names else _resolve(name, lookup)
                if near is not None:
                    warnings.append(f"{label}: character '{name}' is not a key of Characters (ViStoryBench matches "
                                    f"keys exactly: its prompt merger leaves the name out and CIDS stops with a "
                                    f"KeyError on this story); left out (--lenient-names would take it for "
                                    f"'{near}')")
                else:
                    warnings.append(f"{label}: character '{name}' is not in Characters; left out")
            elif key in keys:
                warnings.append(f"{label}: character '{name}' is listed twice; kept once")
            else:
                keys.append(key)
        shots.append(VistoryShot(index=index, fields=fields, text=text, character_keys=tuple(keys),
                                 character_names=tuple(str(n) for n in names), unknown_characters=tuple(unknown),
                                 fallbacks=tuple(fallbacks)))
    return shots


def _names(value: Any) -> list:
    if value is None or value == "":
        return []
    if isinstance(value, str):  # a single name given as text
        return [value]
    return [v for v in value if _present(v)] if isinstance(value, list) else []
