"""Fixtures for the story runner tests: fake ComfyUI servers on a background event loop, a story folder
with reference images and an API workflow, and run options with short timeouts."""

from __future__ import annotations

import asyncio
import copy
import json
import sys
import threading
from pathlib import Path

import pytest
import yaml
sys.path.insert(0, str(Path(__file__).parent))  # the helper modules beside this file
from story_fake_comfy import FakeComfy, Faults  # noqa: E402
from story_support import SCENES, WORKFLOW, write_png  # noqa: E402

from storymaker.story.runner import RunOptions  # noqa: E402

class ServerThread:
    """Fake servers on their own event loop in a thread, so the runner (and the CLI, which calls
    ``asyncio.run``) can be driven from the test's thread exactly as a user would."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[FakeComfy] = []

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    def call(self, fn, *args):
        self.loop.call_soon_threadsafe(fn, *args)

    def start(self, **faults) -> FakeComfy:
        server = self.run(FakeComfy(Faults(**faults)).start())
        self.servers.append(server)
        return server

    def hold_until(self, servers: list[FakeComfy], ready) -> None:
        """Pause ``servers`` now and resume them once ``ready()`` is true (checked on the server loop)."""
        for server in servers:
            self.call(server.pause)

        async def release():
            while not ready():
                await asyncio.sleep(0.005)
            for server in servers:
                server.resume()
        asyncio.run_coroutine_threadsafe(release(), self.loop)

    def kill(self, server: FakeComfy) -> None:
        self.run(server.kill())

    def close(self) -> None:
        for server in self.servers:
            self.run(server.kill())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def comfy():
    servers = ServerThread()
    yield servers
    servers.close()


@pytest.fixture
def story_dir(tmp_path: Path) -> Path:
    """A folder with reference images, a pose, and the one-character API workflow."""
    root = tmp_path / "project"
    write_png(root / "refs" / "alice.png", (200, 30, 30))
    write_png(root / "refs" / "alice-mask.png", (255, 255, 255))
    write_png(root / "refs" / "bob.png", (30, 30, 200))
    write_png(root / "poses" / "sitting.png", (0, 0, 0))
    (root / "workflows").mkdir()
    (root / "workflows" / "one.json").write_text(json.dumps(WORKFLOW, indent=1))
    return root


@pytest.fixture
def make_story(story_dir: Path):
    """``make_story(**fields)`` writes ``story.yaml`` (one character, three scenes) with fields replaced."""
    def make(filename: str = "story.yaml", **fields) -> Path:
        doc = {"name": "test-story", "workflow": "workflows/one.json", "base_seed": 100,
               "cast": [{"name": "alice", "image": "refs/alice.png"}], "scenes": copy.deepcopy(SCENES)}
        doc.update(fields)
        path = story_dir / filename
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path
    return make


@pytest.fixture
def options(tmp_path: Path) -> RunOptions:
    return RunOptions(out_dir=tmp_path / "out", connect_timeout=2, request_timeout=5, scene_timeout=10,
                      poll_interval=0.05, retries=1, retry_delay=0.02, progress=False)
