"""File writes that never lose data: temp file + fsync + atomic rename, and never clobber a result.

A downloaded image is the expensive part of a story (minutes of GPU time), and a user may have edited
one by hand: a different file already at the target name is kept and the new one gets ``-v2``, ``-v3``.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
from pathlib import Path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _temp_beside(path: Path, data: bytes) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    with open(tmp, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _sync_dir(directory: Path) -> None:
    if os.name == "posix":  # make the rename itself durable; not possible (nor needed) on Windows
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (for files the runner owns: manifest, contact sheet)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path, data)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _sync_dir(path.parent)


def _link_no_clobber(tmp: Path, target: Path) -> bool:
    """Atomically make ``target`` hold ``tmp``'s bytes unless ``target`` exists (False then)."""
    try:
        os.link(tmp, target)  # fails if target exists, even under a race
        return True
    except FileExistsError:
        return False
    except OSError:  # file system without hard links: check-then-rename, the best it allows
        if os.path.lexists(target):
            return False
        os.replace(tmp, target)
        return True


def write_new_file(directory: Path, stem: str, suffix: str, data: bytes) -> Path:
    """Store ``data`` as ``stem+suffix`` (or the first free ``stem-vN+suffix``) and return the path.

    An identical file already there is reused as is; anything else with the name (a different file,
    a folder, a broken symlink, a file that appeared meanwhile) is never touched: the next version is tried.
    """
    directory.mkdir(parents=True, exist_ok=True)
    digest = sha256_bytes(data)
    tmp = _temp_beside(directory / f"{stem}{suffix}", data)
    try:
        for version in itertools.count(1):
            target = directory / (f"{stem}{suffix}" if version == 1 else f"{stem}-v{version}{suffix}")
            if not os.path.lexists(target) and _link_no_clobber(tmp, target):
                _sync_dir(directory)
                return target
            if target.is_file() and file_sha256(target) == digest:
                return target
    finally:
        tmp.unlink(missing_ok=True)
