"""Moving a finished download into place when the model folder is on another disk (a symlinked folder)."""

from __future__ import annotations

import errno
import os

import pytest

from storymaker.models import place


def test_move_across_disks_copies_to_a_part_file_then_renames(tmp_path, monkeypatch):
    source, dest = tmp_path / "staged.bin", tmp_path / "models" / "final.bin"
    source.write_bytes(b"weights" * 1000)
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append((os.fspath(src), os.fspath(dst)))
        if os.fspath(src) == os.fspath(source):  # the direct rename crosses a filesystem boundary
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(src, dst)

    monkeypatch.setattr(place.os, "replace", replace)
    place.move_into_place(source, dest)
    assert dest.read_bytes() == b"weights" * 1000 and not source.exists()
    assert calls[-1] == (os.fspath(dest) + ".part", os.fspath(dest))  # the final name appears in one rename
    assert not (tmp_path / "models" / "final.bin.part").exists()


def test_other_move_errors_are_not_swallowed(tmp_path, monkeypatch):
    source = tmp_path / "staged.bin"
    source.write_bytes(b"x")

    def replace(src, dst):
        raise PermissionError(errno.EACCES, "denied")

    monkeypatch.setattr(place.os, "replace", replace)
    with pytest.raises(PermissionError):
        place.move_into_place(source, tmp_path / "final.bin")
    assert source.exists()
