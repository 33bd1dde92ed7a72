"""Unzip an InsightFace model pack so that its ``.onnx`` files sit directly in ``models/<pack>/``.

insightface looks for ``<root>/models/buffalo_l/*.onnx``; a zip that holds a ``buffalo_l/`` folder,
unzipped in place, nests it one level too deep. So members are found by their base name, wherever the
zip puts them, checked (CRC) while being written, and renamed to their final names only once all are good.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

from .errors import VerificationFailed


def _find_members(archive: zipfile.ZipFile, wanted: tuple[str, ...], what: str) -> dict[str, zipfile.ZipInfo]:
    found: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        name = info.filename.rsplit("/", 1)[-1]
        if name in wanted and not info.is_dir() and "__MACOSX" not in info.filename:
            found.setdefault(name, info)
    missing = [name for name in wanted if name not in found]
    if missing:
        raise VerificationFailed(f"{what}: the zip lacks {', '.join(missing)} (it holds "
                                 f"{', '.join(i.filename for i in archive.infolist()) or 'nothing'})")
    return found


def unpack(zip_path: Path, folder: Path, members: tuple[str, ...]) -> dict[str, str]:
    """Write ``members`` of ``zip_path`` flat into ``folder``; returns {member: sha256}.

    Raises:
        VerificationFailed: not a zip, a member missing, or a member's CRC does not match (corrupt zip).
    """
    folder.mkdir(parents=True, exist_ok=True)
    what = f"{zip_path.name}"
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as e:
        raise VerificationFailed(f"{what}: not a valid zip ({e})") from e
    digests: dict[str, str] = {}
    parts: list[tuple[Path, Path]] = []
    try:
        with archive:
            for name, info in _find_members(archive, members, what).items():
                target = folder / name
                part = target.with_name(name + ".part")
                parts.append((part, target))
                digest = hashlib.sha256()
                try:
                    with archive.open(info) as src, open(part, "wb") as dst:  # zipfile checks the CRC at the end
                        while block := src.read(1 << 20):
                            digest.update(block)
                            dst.write(block)
                except (zipfile.BadZipFile, OSError, EOFError) as e:
                    raise VerificationFailed(f"{what}: {info.filename} is corrupt ({e})") from e
                digests[name] = digest.hexdigest()
    except VerificationFailed:
        for part, _ in parts:
            part.unlink(missing_ok=True)
        raise
    for part, target in parts:  # only once every member is good: never a mix of two versions
        os.replace(part, target)
    return digests
