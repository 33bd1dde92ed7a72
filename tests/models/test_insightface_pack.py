"""Installing the InsightFace pack: flat, whatever folder the zip puts its files in, unzipped beside the live
folder and swapped in whole (never a partial or mixed pack in the live folder, not even after Ctrl-C)."""

from __future__ import annotations

import hashlib
import os

import pytest
from models_support import ONNX_NAMES, payload, zip_of

from storymaker.models import insightface_pack
from storymaker.models.errors import VerificationFailed
from storymaker.models.insightface_pack import install, recover

MEMBERS = {name: payload(name, 3000) for name in ONNX_NAMES}
PINS = {name: hashlib.sha256(data).hexdigest() for name, data in MEMBERS.items()}


def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def old_pack(models):
    folder = models / "buffalo_l"
    folder.mkdir(parents=True)
    for name in ONNX_NAMES:
        (folder / name).write_bytes(b"previous version")
    return folder


@pytest.mark.parametrize("prefix", ["", "buffalo_l/", "models/buffalo_l/"])
def test_members_land_directly_in_the_pack_folder(tmp_path, prefix):
    archive = tmp_path / "pack.zip"
    archive.write_bytes(zip_of({**MEMBERS}, prefix))
    with_junk = tmp_path / "junk.zip"
    with_junk.write_bytes(zip_of({**MEMBERS, "readme.txt": b"x"}, prefix))
    for source in (archive, with_junk):
        models = tmp_path / f"out-{source.stem}"
        digests = install(source, models / "buffalo_l", ONNX_NAMES, PINS)
        assert listing(models / "buffalo_l") == sorted(ONNX_NAMES)  # nothing else, nothing nested
        assert all((models / "buffalo_l" / name).read_bytes() == data for name, data in MEMBERS.items())
        assert digests == PINS
        assert listing(models) == ["buffalo_l"]  # no staging folder, no old pack left beside it


def test_a_corrupt_member_leaves_the_old_files_untouched(tmp_path):
    archive = tmp_path / "pack.zip"
    data = bytearray(zip_of(MEMBERS))
    start = data.find(b"det_10g.onnx") + len(b"det_10g.onnx") + 100  # inside det_10g's compressed bytes
    data[start] ^= 0xFF
    archive.write_bytes(bytes(data))
    folder = old_pack(tmp_path / "models")
    with pytest.raises(VerificationFailed, match="det_10g.onnx"):
        install(archive, folder, ONNX_NAMES)
    assert all((folder / name).read_bytes() == b"previous version" for name in ONNX_NAMES)  # no mix of versions
    assert listing(folder) == sorted(ONNX_NAMES)  # no .part left
    assert listing(folder.parent) == ["buffalo_l"]


def test_a_member_that_is_not_the_pinned_file_is_refused(tmp_path):
    archive = tmp_path / "pack.zip"
    archive.write_bytes(zip_of({**MEMBERS, "w600k_r50.onnx": payload("another model", 3000)}))
    folder = old_pack(tmp_path / "models")
    with pytest.raises(VerificationFailed, match="w600k_r50.onnx has sha256 .* the pin says"):
        install(archive, folder, ONNX_NAMES, PINS)
    assert all((folder / name).read_bytes() == b"previous version" for name in ONNX_NAMES)
    assert listing(folder.parent) == ["buffalo_l"]


def test_the_live_folder_never_holds_a_partial_file_and_ctrl_c_leaves_the_old_pack(tmp_path, monkeypatch):
    """Ctrl-C while the third member is being written: the live folder was never touched, and no staging
    folder or .part file is left anywhere."""
    archive = tmp_path / "pack.zip"
    archive.write_bytes(zip_of(MEMBERS, "buffalo_l/"))
    folder = old_pack(tmp_path / "models")
    real_copy, seen = insightface_pack._copy, []

    def copy(src, dst, digest):
        seen.append(listing(folder))  # what insightface would see in the live folder at this moment
        assert not os.path.samefile(os.path.dirname(dst.name), folder)
        if len(seen) == 3:
            real_copy(src, dst, digest)
            raise KeyboardInterrupt
        real_copy(src, dst, digest)

    monkeypatch.setattr(insightface_pack, "_copy", copy)
    with pytest.raises(KeyboardInterrupt):
        install(archive, folder, ONNX_NAMES, PINS)
    assert seen == [sorted(ONNX_NAMES)] * 3
    assert all((folder / name).read_bytes() == b"previous version" for name in ONNX_NAMES)
    assert listing(folder.parent) == ["buffalo_l"]  # the staging folder is gone
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".part")]
    monkeypatch.setattr(insightface_pack, "_copy", real_copy)
    install(archive, folder, ONNX_NAMES, PINS)  # the next run installs it whole
    assert all((folder / name).read_bytes() == data for name, data in MEMBERS.items())


def test_a_failed_swap_puts_the_old_pack_back(tmp_path, monkeypatch):
    archive = tmp_path / "pack.zip"
    archive.write_bytes(zip_of(MEMBERS))
    folder = old_pack(tmp_path / "models")
    real_rename = os.rename

    def rename(src, dst):
        if str(src).endswith(".storymaker-new"):
            raise KeyboardInterrupt  # between the two renames of the swap
        return real_rename(src, dst)

    monkeypatch.setattr(insightface_pack.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        install(archive, folder, ONNX_NAMES, PINS)
    assert all((folder / name).read_bytes() == b"previous version" for name in ONNX_NAMES)
    assert listing(folder.parent) == ["buffalo_l"]


def test_recover_after_a_run_killed_between_the_renames(tmp_path):
    models = tmp_path / "models"
    old = old_pack(models)
    os.rename(old, models / ".buffalo_l.storymaker-old")  # killed after moving the old pack aside
    (models / ".buffalo_l.storymaker-new").mkdir()
    (models / ".buffalo_l.storymaker-new" / "det_10g.onnx").write_bytes(b"half")
    recover(models / "buffalo_l")
    assert listing(models) == ["buffalo_l"]
    assert all((models / "buffalo_l" / name).read_bytes() == b"previous version" for name in ONNX_NAMES)
    (models / "buffalo_l" / "w600k_r50.onnx.part").write_bytes(b"half")  # what the unzip in place used to leave
    recover(models / "buffalo_l")
    assert listing(models / "buffalo_l") == sorted(ONNX_NAMES)


def test_not_a_zip_is_named(tmp_path):
    bogus = tmp_path / "buffalo_l.zip"
    bogus.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(VerificationFailed, match="buffalo_l.zip: not a valid zip"):
        install(bogus, tmp_path / "out" / "buffalo_l", ONNX_NAMES)
    assert not (tmp_path / "out" / "buffalo_l").exists()
