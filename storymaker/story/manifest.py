"""The story manifest (``story/<name>/manifest.json``): per scene its state, seed, server, prompt id,
timings, output file and sha256.

It is the runner's memory between runs: rewritten atomically after every state change, so Ctrl-C, a
crash or a power cut always leaves a manifest a rerun can trust, and a rerun skips every scene whose
file still matches the recorded hash.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .files import atomic_write

FORMAT = "storymaker-story-manifest"
VERSION = 1
log = logging.getLogger(__name__)

#: Scene states. ``queued``/``running`` keep their prompt id so a rerun can pick the result up;
#: ``removed``: the scene is no longer in the story (its file, if any, is listed under ``superseded``).
PENDING, QUEUED, RUNNING, DONE, FAILED = "pending", "queued", "running", "done", "failed"
REMOVED = "removed"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Manifest:
    def __init__(self, path: Path, data: dict[str, Any], deferred: bool = False):
        self.path = path
        self.data = data
        self.deferred = deferred  # changes stay in memory until ``commit``

    @classmethod
    def open(cls, path: Path, story: dict[str, Any], deferred: bool = False) -> "Manifest":
        """Load the manifest at ``path`` (or start one). An unreadable one is moved aside, never deleted.

        ``deferred``: write nothing until ``commit()`` (the runner commits once the story is validated, so a
        story that cannot run leaves no manifest behind)."""
        data: dict[str, Any] = {}
        if path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(data, dict) or data.get("format") != FORMAT:
                    raise ValueError(f"not a {FORMAT} file")
                if data.get("version") != VERSION:
                    raise ValueError(f"manifest version {data.get('version')!r}, expected {VERSION}")
            except (ValueError, OSError) as exc:
                aside = path.with_name(f"{path.stem}.unreadable-{int(time.time())}{path.suffix}")
                path.rename(aside)
                log.warning("%s could not be read (%s); moved it to %s and started a new manifest",
                            path, exc, aside.name)
                data = {}
        if not data:
            data = {"format": FORMAT, "version": VERSION, "created": now_iso(), "scenes": {}}
        previous = (data.get("story") or {}).get("file")
        if previous and previous != story.get("file"):
            log.warning("%s was written for %s, now for %s: scenes are matched by id and checked by "
                        "fingerprint, so nothing is mixed up", path, previous, story.get("file"))
        data["story"] = story
        manifest = cls(path, data, deferred)
        manifest.save()
        return manifest

    def commit(self) -> None:
        """Start writing: save now and after every change from here on."""
        self.deferred = False
        self.save()

    @property
    def scenes(self) -> dict[str, dict[str, Any]]:
        return self.data.setdefault("scenes", {})

    def scene(self, scene_id: str) -> dict[str, Any]:
        """The record of one scene ({} if none); read it, change it only through ``update``."""
        return self.scenes.get(scene_id, {})

    def update(self, scene_id: str, **fields: Any) -> dict[str, Any]:
        record = self.scenes.setdefault(scene_id, {})
        record.update(fields)
        record["updated"] = now_iso()
        self.save()
        return record

    def add_attempt(self, scene_id: str, **attempt: Any) -> None:
        """Remember one try of a scene (server, prompt id, outcome): the history a user debugs with."""
        record = self.scenes.setdefault(scene_id, {})
        record.setdefault("attempts", []).append({"at": now_iso(), **attempt})
        self.save()

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()

    def save(self) -> None:
        if self.deferred:
            return
        self.data["updated"] = now_iso()
        text = json.dumps(self.data, indent=2, ensure_ascii=False) + "\n"
        atomic_write(self.path, text.encode("utf-8"))
