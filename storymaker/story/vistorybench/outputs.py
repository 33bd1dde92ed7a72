"""The folder layout ViStoryBench's ``bench_run.py`` reads generated images from, and a reader that
reads it the way theirs does.

Their reader is ``vistorybench/dataset_loader/read_outputs.py``: ``load_outputs`` walks
``<outputs>/<method>/<mode>/<language>/<timestamp>/`` (or ``<method>/<language>/<mode>/...`` when
``<method>/<language>`` exists), takes *every* sub-folder there as a story id (``natsorted(...,
key=int)``: a folder whose name is not an integer stops it with a ValueError), and hands each story folder
to ``_collect_story_images``:

- a story folder holding timestamp sub-folders (``^\\d{8}[_-]\\d{6}$``) is read through them, not
  directly: ``bench_run.py`` and every evaluator call it with ``return_latest=False``, so *all* of them
  are read, in ``os.listdir`` order, a later one replacing an earlier one's image of the same shot;
- in each folder read, an entry whose name is ``shot``/``shots`` in any case, or ends in ``shot`` or
  ``shots`` (case-sensitive), is the shots folder (the last such entry listed; when it is not a folder the
  story folder itself is read); without one the images lie in the folder itself;
- every file ending (any case) in ``.png .jpg .jpeg .gif .bmp`` is a shot image, in ``natsorted`` order,
  keyed by ``int(name.split('_')[-1].split('.')[0])``; a name that gives no integer stops their reader with
  a ValueError; two files with the same key: the later one counts.

Their scorers then look each dataset shot up by ``int(shot["index"])``. So this pack writes a shot image
to ``<outputs>/<method>/<mode>/<language>/<timestamp>/<NN>/shots/<index>.png``. (Their README also draws
a ``<timestamp>/shots/<NN>/`` tree; the reader would take ``shots`` for a story id there and fail, so
that one is never written.) ``timestamp`` must look like ``YYYYMMDD_HHMMSS`` (or with ``-``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["IMAGE_SUFFIXES", "OutputRun", "TIMESTAMP_PATTERN", "check_timestamp", "natural_key", "new_timestamp",
           "output_shot_path", "output_story_dir", "read_output_run", "read_output_shots", "read_story_folder",
           "shot_key", "timestamp_value"]

TIMESTAMP_PATTERN = re.compile(r"^\d{8}[_-]\d{6}$")  # read_outputs.TIMESTAMP_PATTERN
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp")  # read_outputs.IMAGE_EXTS
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def new_timestamp(now: datetime | None = None) -> str:
    """``YYYYMMDD_HHMMSS`` in UTC: the run-folder name ViStoryBench's reader understands."""
    return (now or datetime.now(timezone.utc)).strftime("%Y%m%d_%H%M%S")


def timestamp_value(name: str) -> datetime:
    """The time a timestamp folder name stands for, parsed as ``read_outputs._latest_timestamp`` does."""
    return datetime.strptime(name.replace("_", "-"), "%Y%m%d-%H%M%S")


def _time_order(name: str) -> tuple:
    try:
        return (timestamp_value(name), name)
    except ValueError:  # matches the pattern but is no date (20251399_...): before every real one
        return (datetime.min, name)


def check_timestamp(timestamp: str) -> str:
    """``timestamp`` if ViStoryBench's reader can parse it; a ValueError saying what it must look like."""
    try:
        ok = bool(TIMESTAMP_PATTERN.match(timestamp)) and timestamp_value(timestamp) is not None
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"timestamp {timestamp!r} must look like 20250101_120000 (YYYYMMDD_HHMMSS, a real date "
                         "and time): ViStoryBench's reader parses it")
    return timestamp


def natural_key(name: str) -> tuple:
    """Sort key of ``natsort.natsorted`` with its default algorithm (unsigned integers compared as numbers)."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name)))


def shot_key(file_name: str) -> int:
    """The shot index ViStoryBench's reader gives an image file: ``int(name.split('_')[-1].split('.')[0])``
    (``shot_03.png`` -> 3, ``12.jpg`` -> 12). Raises ValueError, as their reader does, when there is none."""
    return int(file_name.split("_")[-1].split(".")[0])


def _is_shots_entry(name: str) -> bool:
    return name.lower() in {"shots", "shot"} or name.endswith("shot") or name.endswith("shots")


def _is_chars_entry(name: str) -> bool:
    return name.lower() in {"chars", "characters"} or name.endswith("character") or name.endswith("characters")


def _check_name(value: str, what: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"{what} {value!r} must be letters, digits, '.', '_', '+' or '-' (it is a folder name)")
    return value


def output_story_dir(outputs_root: str | Path, method: str, mode: str, language: str, timestamp: str,
                     story_id: str) -> Path:
    """``<outputs>/<method>/<mode>/<language>/<timestamp>/<story_id>``: the folder holding ``shots/``."""
    for value, what in ((method, "method"), (mode, "mode"), (language, "language"), (story_id, "story id")):
        _check_name(str(value), what)
    return Path(outputs_root) / method / mode / language / check_timestamp(timestamp) / str(story_id)


def output_shot_path(outputs_root: str | Path, method: str, mode: str, language: str, timestamp: str,
                     story_id: str, shot_index: int, suffix: str = ".png") -> Path:
    """Where the image of shot ``shot_index`` of story ``story_id`` goes (``.../<story_id>/shots/<index>.png``)."""
    return output_story_dir(outputs_root, method, mode, language, timestamp, story_id) / "shots" / f"{int(shot_index)}{suffix}"


@dataclass
class OutputRun:
    """One run folder read as ViStoryBench's ``bench_run.py`` reads it.

    ``stories``: story folder name -> {shot index -> image}. ``notes`` (story folder name -> notes): where
    their reader does something a user should know (several timestamp folders inside a story, several shots
    folders, two files for one shot). ``errors``: what stops their reader, for the whole run (a folder name
    that is not an integer) or per story (``story_errors``: an image name without a shot number); those
    entries are left out here.
    """

    folder: Path
    stories: dict[str, dict[int, Path]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    story_errors: dict[str, list[str]] = field(default_factory=dict)

    def problems(self) -> list[str]:
        """Every error and note, run-level first."""
        return self.errors + [m for k in self.stories for m in self.story_errors.get(k, []) + self.notes.get(k, [])]


def _listdir(folder: Path) -> list[str]:
    # os.listdir order is the file system's; sorted here so that a choice their reader leaves to that order
    # is made the same way on every machine (and reported as a note)
    return sorted(os.listdir(folder))


def read_story_folder(story_dir: str | Path, return_latest: bool = False) -> tuple[dict[int, Path], list[str], list[str]]:
    """(shot index -> image, notes, errors) of one story folder, by ``read_outputs._collect_story_images``.

    ``return_latest=False`` is what ``bench_run.py`` and the evaluators use: every timestamp sub-folder is
    read; their order is the file system's there, so here they are read oldest first (the latest image of a
    shot wins) and a shot found in several is noted.
    """
    story_dir = Path(story_dir)
    where = story_dir.name
    notes: list[str] = []
    errors: list[str] = []
    stamped = [d for d in _listdir(story_dir) if (story_dir / d).is_dir() and TIMESTAMP_PATTERN.match(d)]
    if stamped:
        stamped.sort(key=_time_order)
        targets = [story_dir / stamped[-1]] if return_latest else [story_dir / d for d in stamped]
        if len(stamped) > 1:
            notes.append(f"story {where}: {len(stamped)} timestamp folders ({', '.join(stamped)}); "
                         + ("the latest is read" if return_latest else
                            "bench_run.py reads all of them and keeps, per shot, the image of the folder it "
                            "lists last (file-system order); here the latest folder's image is kept"))
        loose = [f for f in _listdir(story_dir) if (story_dir / f).is_file() and f.lower().endswith(IMAGE_SUFFIXES)]
        if loose:
            notes.append(f"story {where}: images beside the timestamp folders are not read ({', '.join(loose[:3])}"
                         f"{', ...' if len(loose) > 3 else ''})")
    else:
        targets = [story_dir]
    shots: dict[int, Path] = {}
    doubled: dict[int, list[str]] = {}
    for target in targets:
        entries = _listdir(target)
        shots_entries = [e for e in entries if _is_shots_entry(e)]
        shot_sub = target / shots_entries[-1] if shots_entries else None
        if len(shots_entries) > 1:
            notes.append(f"story {where}: several shots folders in {target.name} ({', '.join(shots_entries)}); "
                         f"their reader takes the one it lists last (file-system order); here {shots_entries[-1]}")
        base = shot_sub if shot_sub is not None and shot_sub.is_dir() else target
        for name in sorted(os.listdir(base), key=natural_key):
            path = base / name
            if not (path.is_file() and name.lower().endswith(IMAGE_SUFFIXES)):
                continue
            try:
                index = shot_key(name)
            except ValueError:
                errors.append(f"story {where}: image {path.relative_to(story_dir).as_posix()} has no shot number "
                              "after its last '_' (ViStoryBench's reader stops with a ValueError on it)")
                continue
            if index in shots:
                doubled.setdefault(index, [shots[index].relative_to(story_dir).as_posix()])
                doubled[index].append(path.relative_to(story_dir).as_posix())
            shots[index] = path
    if doubled:
        example = next(iter(doubled.values()))
        notes.append(f"story {where}: shot(s) {sorted(doubled)} have several images (e.g. {', '.join(example)}); "
                     "the last one read counts, as in their reader")
    return shots, notes, errors


def read_output_run(run: str | Path, return_latest: bool = False) -> OutputRun:
    """Every story folder of one run folder ``<outputs>/<method>/<mode>/<language>/<timestamp>``."""
    run = Path(run)
    result = OutputRun(run)
    if not run.is_dir():
        return result
    ids = []
    for name in sorted(d for d in os.listdir(run) if (run / d).is_dir()):
        try:
            ids.append((int(name), name))
        except ValueError:
            result.errors.append(f"{run.name}/{name}: not an integer story id (ViStoryBench's reader sorts the "
                                 "folders of a run by int(name) and stops with a ValueError on this one)")
    for _, story_id in sorted(ids):
        shots, notes, errors = read_story_folder(run / story_id, return_latest)
        result.stories[story_id] = shots
        if notes:
            result.notes[story_id] = notes
        if errors:
            result.story_errors[story_id] = errors
    return result


def read_output_shots(outputs_root: str | Path, method: str, mode: str, language: str,
                      timestamp: str | None = None) -> dict[str, dict[int, Path]]:
    """Story id -> {shot index -> image} for one run, read as ViStoryBench's reader does.

    ``timestamp=None`` takes the latest run folder (``bench_run.py`` without ``--timestamp`` scores every
    run folder, each on its own). Returns {} when the run folder does not exist.
    """
    lang_dir = Path(outputs_root) / method / mode / language
    if timestamp is None:
        runs = [p.name for p in lang_dir.iterdir() if p.is_dir() and TIMESTAMP_PATTERN.match(p.name)] \
            if lang_dir.is_dir() else []
        if not runs:
            return {}
        timestamp = max(runs, key=_time_order)
    return read_output_run(lang_dir / timestamp).stories
