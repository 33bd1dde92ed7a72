"""The folder layout ViStoryBench's ``bench_run.py`` reads generated images from.

Its reader (``vistorybench/dataset_loader/read_outputs.py``) walks
``<outputs>/<method>/<mode>/<language>/<timestamp>/<story id>/`` and takes the images of the ``shots/``
sub-folder there, keyed by ``int(file name after the last '_', before the extension)``; its scorers then
look each dataset shot up by ``int(shot["index"])``. So a shot image is
``<outputs>/<method>/<mode>/<language>/<timestamp>/<NN>/shots/<index>.png``. (The README also draws a
``<timestamp>/shots/<NN>/`` tree; the reader would take ``shots`` for a story id there, so it is not
written.) ``timestamp`` must look like ``YYYYMMDD_HHMMSS`` (or with ``-``): the reader parses it to pick
the latest run.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["IMAGE_SUFFIXES", "TIMESTAMP_PATTERN", "check_timestamp", "new_timestamp", "output_shot_path",
           "output_story_dir", "read_output_shots"]

TIMESTAMP_PATTERN = re.compile(r"^\d{8}[_-]\d{6}$")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp")  # what their reader accepts
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def new_timestamp(now: datetime | None = None) -> str:
    """``YYYYMMDD_HHMMSS`` in UTC: the run-folder name ViStoryBench's reader understands."""
    return (now or datetime.now(timezone.utc)).strftime("%Y%m%d_%H%M%S")


def check_timestamp(timestamp: str) -> str:
    if not TIMESTAMP_PATTERN.match(timestamp):
        raise ValueError(f"timestamp {timestamp!r} must look like 20250101_120000 (YYYYMMDD_HHMMSS): "
                         "ViStoryBench's reader parses it to find the latest run")
    return timestamp


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


def read_output_shots(outputs_root: str | Path, method: str, mode: str, language: str,
                      timestamp: str | None = None) -> dict[str, dict[int, Path]]:
    """Story id -> {shot index -> image} for one run, read the way ViStoryBench's reader does.

    ``timestamp=None`` takes the latest run folder. Returns {} when the run folder does not exist.
    """
    lang_dir = Path(outputs_root) / method / mode / language
    if timestamp is None:
        runs = sorted((p.name for p in lang_dir.iterdir() if p.is_dir() and TIMESTAMP_PATTERN.match(p.name)),
                      key=lambda n: n.replace("-", "_")) if lang_dir.is_dir() else []
        if not runs:
            return {}
        timestamp = runs[-1]
    run = lang_dir / timestamp
    out: dict[str, dict[int, Path]] = {}
    if not run.is_dir():
        return out
    for story in sorted((p for p in run.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        shots_dir = story / "shots"
        base = shots_dir if shots_dir.is_dir() else story
        found: dict[int, Path] = {}
        for image in sorted(base.iterdir()):
            stem = image.stem.split("_")[-1]
            if image.is_file() and image.suffix.lower() in IMAGE_SUFFIXES and stem.isdigit():
                found[int(stem)] = image
        out[story.name] = found
    return out
