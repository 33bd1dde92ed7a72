"""Moving a finished download to its final name without ever exposing a partial file there."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

STAGING_NAME = ".storymaker-download"


def staging_dir(models_dir: Path, key: str) -> Path:
    """``ComfyUI/models/.storymaker-download/<key>`` (``models_dir``: ComfyUI's ``models`` folder): on the
    models' disk, but in no folder ComfyUI lists (it lists ``models/checkpoints`` and the like recursively,
    hidden folders included)."""
    return Path(models_dir) / STAGING_NAME / key


def move_into_place(source: Path, dest: Path) -> None:
    """``os.replace`` (atomic); when ``dest``'s folder is on another disk (a symlinked model folder), copy to
    ``dest.part`` there first, then rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, dest)
        return
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    part = dest.with_name(dest.name + ".part")
    shutil.copyfile(source, part)
    os.replace(part, dest)
    source.unlink()


def remove_staging(folder: Path) -> None:
    """Remove a staging folder, and its parent when that is left empty."""
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()
    except OSError:
        pass


def prune_staging(models_dir: Path) -> None:
    """Remove the empty folders of ``models/.storymaker-download`` (partial downloads stay, to be resumed)."""
    root = Path(models_dir) / STAGING_NAME
    if not root.is_dir():
        return
    for folder, _, _ in sorted(os.walk(root), key=lambda entry: -len(entry[0])):
        try:
            os.rmdir(folder)
        except OSError:
            pass
