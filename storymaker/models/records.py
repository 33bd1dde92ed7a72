"""What this command last verified, so that a re-run does not re-hash gigabytes.

Hashing SDXL (6.9 GB) takes a minute or more, every run. Instead, after a file is downloaded or hashed,
its size, modification time and sha256 are written to ``ComfyUI/models/.storymaker-models.json`` (the
``models`` folder of ``--base-directory`` when ComfyUI runs with one). Files inside that base folder are keyed
by their relative path, files elsewhere (folders of ``extra_model_paths.yaml``) by their absolute path. A file
whose size and mtime still match its record is taken as verified; any change (a corrupted copy, a file
replaced by hand) makes the next run hash it again. ``--verify`` ignores the records and hashes everything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)
RECORDS_NAME = ".storymaker-models.json"


def sha256_file(path: str | Path, desc: str | None = None, chunk: int = 1 << 22) -> str:
    """sha256 of a file with a tqdm bar (large files take a while)."""
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1000,
                                     desc=desc or f"sha256 {Path(path).name}", leave=False,
                                     disable=size < (64 << 20)) as bar:
        while block := f.read(chunk):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


@dataclass(frozen=True)
class FileRecord:
    size: int
    mtime_ns: int
    sha256: str
    source: str


class Records:
    """The JSON file of :class:`FileRecord` keyed by path relative to ``root`` (ComfyUI's base folder), or
    absolute for a file outside it."""

    def __init__(self, root: Path, read_only: bool = False):
        self.root = Path(root)
        self.read_only = read_only  # --dry-run writes nothing
        self.path = self.root / "models" / RECORDS_NAME
        self._data: dict[str, dict] = {}
        if self.path.is_file():
            try:
                self._data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:  # a broken record only costs a re-hash
                logger.warning("ignoring %s (%s): files will be hashed again", self.path, e)

    def _key(self, path: Path) -> str:
        absolute = os.path.abspath(path)
        try:
            relative = os.path.relpath(absolute, os.path.abspath(self.root))
        except ValueError:  # another drive (Windows)
            return Path(absolute).as_posix()
        if relative == ".." or relative.startswith(".." + os.sep):
            return Path(absolute).as_posix()
        return Path(relative).as_posix()

    def get(self, path: Path) -> FileRecord | None:
        entry = self._data.get(self._key(path))
        try:
            return FileRecord(**entry) if entry else None
        except TypeError:
            return None

    def unchanged(self, path: Path) -> FileRecord | None:
        """The record of ``path`` if the file still has the recorded size and mtime, else None."""
        record = self.get(path)
        if record is None or not path.is_file():
            return None
        stat = path.stat()
        return record if (stat.st_size, stat.st_mtime_ns) == (record.size, record.mtime_ns) else None

    def put(self, path: Path, sha256: str, source: str) -> None:
        stat = path.stat()
        self._data[self._key(path)] = asdict(FileRecord(stat.st_size, stat.st_mtime_ns, sha256, source))
        self._save()

    def forget(self, path: Path) -> None:
        if self._data.pop(self._key(path), None) is not None:
            self._save()

    def _save(self) -> None:
        if self.read_only:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".part")
        tmp.write_text(json.dumps(self._data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path)
