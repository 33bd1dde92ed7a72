"""Install an InsightFace model pack so that its ``.onnx`` files sit directly in ``models/<pack>/``, swapped
in whole.

insightface looks for ``<root>/models/buffalo_l/*.onnx``; a zip that holds a ``buffalo_l/`` folder,
unzipped in place, nests it one level too deep. So members are found by their base name, wherever the
zip puts them, and written flat.

Nothing is ever written into the live pack folder. The members are unzipped into a staging folder beside
it (``.buffalo_l.storymaker-new``: same disk, so the swap is a rename, and a name insightface never looks
at), each checked while it is written (the zip's CRC, and the member's pinned sha256 when known). Only when
all are good is the staging folder swapped in whole: the old pack is renamed aside
(``.buffalo_l.storymaker-old``), the new one renamed to ``buffalo_l``, the old one deleted. An error or a
Ctrl-C before the swap deletes the staging folder and leaves the old pack as it was; one between the two
renames puts the old pack back. A run killed outright can leave those two folders; :func:`recover` (called
by the next run) deletes a stale staging folder and puts an old pack back if ``buffalo_l`` is missing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zipfile
from pathlib import Path
from typing import BinaryIO, Mapping

from .errors import VerificationFailed

STAGING_SUFFIX = ".storymaker-new"
OLD_SUFFIX = ".storymaker-old"


def staging_for(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}{STAGING_SUFFIX}")


def old_for(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}{OLD_SUFFIX}")


def recover(folder: Path) -> None:
    """Clean up after a run that was killed while installing ``folder`` (see the module docstring), and
    remove the ``*.onnx.part`` files that earlier versions of this command, which unzipped in place, could
    leave in the live folder after a Ctrl-C."""
    shutil.rmtree(staging_for(folder), ignore_errors=True)
    if folder.is_dir():
        for part in folder.glob("*.onnx.part"):
            part.unlink(missing_ok=True)
    old = old_for(folder)
    if old.is_dir():
        if not folder.exists():
            os.rename(old, folder)  # killed between the two renames: the previous pack is still whole
        else:
            shutil.rmtree(old, ignore_errors=True)


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


def _copy(src: BinaryIO, dst: BinaryIO, digest) -> None:
    """Copy one member, hashing it (zipfile checks the CRC when the member's end is read)."""
    while block := src.read(1 << 20):
        digest.update(block)
        dst.write(block)


def _unpack(zip_path: Path, staging: Path, members: tuple[str, ...], sha256: Mapping[str, str]) -> dict[str, str]:
    what = zip_path.name
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as e:
        raise VerificationFailed(f"{what}: not a valid zip ({e})") from e
    digests: dict[str, str] = {}
    with archive:
        for name, info in _find_members(archive, members, what).items():
            digest = hashlib.sha256()
            try:
                with archive.open(info) as src, open(staging / name, "wb") as dst:
                    _copy(src, dst, digest)
            except (zipfile.BadZipFile, EOFError) as e:
                raise VerificationFailed(f"{what}: {info.filename} is corrupt ({e})") from e
            digests[name] = digest.hexdigest()
            expected = sha256.get(name)
            if expected is not None and digests[name] != expected:
                raise VerificationFailed(f"{what}: {info.filename} has sha256 {digests[name]}, the pin says "
                                         f"{expected}")
    return digests


def _swap(staging: Path, folder: Path) -> None:
    """Put ``staging`` in place of ``folder`` (which may not exist), keeping the old one until it is done."""
    old = old_for(folder)
    if not (folder.exists() or folder.is_symlink()):
        os.rename(staging, folder)
        return
    shutil.rmtree(old, ignore_errors=True)
    os.rename(folder, old)
    try:
        os.rename(staging, folder)
    except BaseException:
        os.rename(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


def install(zip_path: Path, folder: Path, members: tuple[str, ...],
            sha256: Mapping[str, str] | None = None) -> dict[str, str]:
    """Unzip ``members`` of ``zip_path`` flat into a staging folder beside ``folder`` and swap it in whole.

    Returns:
        {member: sha256}.

    Raises:
        VerificationFailed: not a zip, a member missing, a member's CRC or sha256 does not match (then
            ``folder`` is untouched). OSError: the folder cannot be written.
    """
    folder = Path(folder)
    if folder.is_symlink():  # a pack folder linked to another disk: install there, keep the link
        folder = Path(os.path.realpath(folder))
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_for(folder)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        digests = _unpack(Path(zip_path), staging, tuple(members), dict(sha256 or {}))
        _swap(staging, folder)
    except BaseException:  # KeyboardInterrupt included: the live folder never holds a partial pack
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return digests
