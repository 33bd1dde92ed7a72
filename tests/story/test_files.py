"""Never lose a file: no-clobber result writes, atomic replaces, an unreadable manifest kept aside."""

from __future__ import annotations

import json
import os
import threading

from storymaker.story.files import atomic_write, file_sha256, sha256_bytes, write_new_file
from storymaker.story.manifest import Manifest


def test_write_new_file_keeps_a_different_file_and_reuses_an_identical_one(tmp_path):
    first = write_new_file(tmp_path, "01-scene", ".png", b"one")
    assert first.name == "01-scene.png" and first.read_bytes() == b"one"
    assert write_new_file(tmp_path, "01-scene", ".png", b"one") == first  # same bytes: same file
    second = write_new_file(tmp_path, "01-scene", ".png", b"two")
    assert second.name == "01-scene-v2.png"
    assert first.read_bytes() == b"one" and second.read_bytes() == b"two"
    assert write_new_file(tmp_path, "01-scene", ".png", b"three").name == "01-scene-v3.png"
    assert write_new_file(tmp_path, "01-scene", ".png", b"two") == second
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_write_new_file_skips_a_directory_in_the_way(tmp_path):
    (tmp_path / "01-scene.png").mkdir()
    assert write_new_file(tmp_path, "01-scene", ".png", b"x").name == "01-scene-v2.png"


def test_write_new_file_skips_a_broken_symlink(tmp_path):
    """A dangling link is not a file (exists() is False) but still holds the name: it used to loop forever."""
    (tmp_path / "01-scene.png").symlink_to(tmp_path / "gone.png")
    result = []
    worker = threading.Thread(target=lambda: result.append(write_new_file(tmp_path, "01-scene", ".png", b"x")),
                              daemon=True)
    worker.start()
    worker.join(5)
    assert result and result[0].name == "01-scene-v2.png" and result[0].read_bytes() == b"x"
    assert (tmp_path / "01-scene.png").is_symlink() and not (tmp_path / "gone.png").exists()


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "sub" / "m.json"
    atomic_write(target, b"first")
    inode = target.stat().st_ino
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert target.stat().st_ino != inode  # a new file renamed over the old one, never a partial write
    assert file_sha256(target) == sha256_bytes(b"second")
    assert os.listdir(target.parent) == ["m.json"]


def test_manifest_round_trip_and_every_update_is_on_disk(tmp_path):
    path = tmp_path / "manifest.json"
    m = Manifest.open(path, {"name": "s"})
    m.update("a", status="queued", prompt_id="p1")
    on_disk = json.loads(path.read_text())
    assert on_disk["format"] == "storymaker-story-manifest" and on_disk["scenes"]["a"]["prompt_id"] == "p1"
    m.add_attempt("a", server="http://x", outcome="done")
    again = Manifest.open(path, {"name": "s"})
    assert again.scene("a")["status"] == "queued"
    assert again.scene("a")["attempts"][0]["server"] == "http://x"
    assert again.scene("missing") == {}


def test_unreadable_manifest_is_moved_aside_not_deleted(tmp_path, caplog):
    path = tmp_path / "manifest.json"
    path.write_text("{ half a manifest")
    m = Manifest.open(path, {"name": "s"})
    assert m.scenes == {}
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("manifest.unreadable-")]
    assert len(aside) == 1 and aside[0].read_text() == "{ half a manifest"
    assert "could not be read" in caplog.text
