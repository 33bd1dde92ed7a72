"""Unzipping the InsightFace pack flat, whatever folder the zip puts its files in."""

from __future__ import annotations

import pytest
from models_support import ONNX_NAMES, payload, zip_of

from storymaker_core.models.errors import VerificationFailed
from storymaker_core.models.insightface_pack import unpack

MEMBERS = {name: payload(name, 3000) for name in ONNX_NAMES}


@pytest.mark.parametrize("prefix", ["", "buffalo_l/", "models/buffalo_l/"])
def test_members_land_directly_in_the_pack_folder(tmp_path, prefix):
    archive = tmp_path / "pack.zip"
    archive.write_bytes(zip_of({**MEMBERS}, prefix))
    with_junk = tmp_path / "junk.zip"
    with_junk.write_bytes(zip_of({**MEMBERS, "readme.txt": b"x"}, prefix))
    for source in (archive, with_junk):
        folder = tmp_path / f"out-{source.stem}"
        digests = unpack(source, folder, ONNX_NAMES)
        assert sorted(p.name for p in folder.iterdir()) == sorted(ONNX_NAMES)  # nothing else, nothing nested
        assert all((folder / name).read_bytes() == data for name, data in MEMBERS.items())
        assert set(digests) == set(ONNX_NAMES)


def test_a_corrupt_member_leaves_the_old_files_untouched(tmp_path):
    archive = tmp_path / "pack.zip"
    data = bytearray(zip_of(MEMBERS))
    start = data.find(b"det_10g.onnx") + len(b"det_10g.onnx") + 100  # inside det_10g's compressed bytes
    data[start] ^= 0xFF
    archive.write_bytes(bytes(data))
    folder = tmp_path / "buffalo_l"
    folder.mkdir()
    for name in ONNX_NAMES:
        (folder / name).write_bytes(b"previous version")
    with pytest.raises(VerificationFailed, match="det_10g.onnx"):
        unpack(archive, folder, ONNX_NAMES)
    assert all((folder / name).read_bytes() == b"previous version" for name in ONNX_NAMES)  # no mix of versions
    assert sorted(p.name for p in folder.iterdir()) == sorted(ONNX_NAMES)  # no .part left


def test_not_a_zip_is_named(tmp_path):
    bogus = tmp_path / "buffalo_l.zip"
    bogus.write_bytes(b"<html>rate limited</html>")
    with pytest.raises(VerificationFailed, match="buffalo_l.zip: not a valid zip"):
        unpack(bogus, tmp_path / "out", ONNX_NAMES)
