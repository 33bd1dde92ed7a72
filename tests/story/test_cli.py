"""The command line as a user runs it: output, exit codes, --check, a local ComfyUI, Ctrl-C + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from story_support import fake_comfyui, gone

from storymaker.story.cli import main

REPO = Path(__file__).resolve().parents[2]
FAST = ["--poll-interval", "0.05", "--connect-timeout", "2", "--request-timeout", "5"]


def cli(story, out, *args) -> int:
    return main([str(story), "--out", str(out), *FAST, *args])


def test_render_then_rerun_skips_everything(comfy, make_story, tmp_path, capsys):
    server = comfy.start()
    story, out = make_story(), tmp_path / "out"
    assert cli(story, out, "--server", server.url) == 0
    captured = capsys.readouterr()
    assert "test-story: 3 rendered, 0 already done, 0 fetched again, 0 failed, 0 not rendered" in captured.out
    assert "story: 100%" in captured.err and "3/3" in captured.err  # the overall progress bar
    assert sorted(p.name for p in (out / "test-story").iterdir()) == [
        "01-morning.png", "02-street.png", "03-alice-reads-a-book-by-the.png", "contact-sheet.png", "manifest.json"]
    assert cli(story, out, "--server", server.url, "--quiet") == 0
    assert "0 rendered, 3 already done" in capsys.readouterr().out
    assert len(server.accepted) == 3


def test_several_stories_render_in_one_command_on_the_same_servers(comfy, make_story, tmp_path, capsys):
    """A benchmark's 80 story files are one command: each is rendered, in order, into its own folder; a
    failed story makes the exit code non-zero without stopping the others."""
    server = comfy.start(reject_seed=7)  # the second story's 'street' scene (seed 7) is refused
    first = make_story("first.yaml", name="first", scenes=[{"id": "a", "prompt": "alice", "seed": 1}])
    second = make_story("second.yaml", name="second")
    assert main([str(first), str(second), "--out", str(tmp_path / "out"), "--server", server.url, *FAST,
                 "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "first: 1 rendered" in out and "second: 2 rendered, 0 already done, 0 fetched again, 1 failed" in out
    assert (tmp_path / "out" / "first" / "01-a.png").is_file() and (tmp_path / "out" / "second" / "manifest.json").is_file()


def test_story_errors_exit_2_with_the_field(make_story, tmp_path, capsys):
    story = make_story(scenes=[{"prompt": "x", "characters": ["zoe"]}])
    assert cli(story, tmp_path / "out", "--server", "http://127.0.0.1:9", "--quiet") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "scenes[0].characters[0]: 'zoe' is not in the cast (alice)" in err


def test_failed_scene_exits_1_and_is_listed(comfy, make_story, tmp_path, capsys):
    server = comfy.start(reject_seed=7)
    assert cli(make_story(), tmp_path / "out", "--server", server.url, "--quiet") == 1
    captured = capsys.readouterr()
    assert "2 rendered, 0 already done, 0 fetched again, 1 failed" in captured.out
    assert "02-street: ComfyUI" in captured.err and "bigger than max of 100.0" in captured.err


def test_check_validates_without_queueing(comfy, make_story, tmp_path, capsys):
    server = comfy.start()
    assert cli(make_story(), tmp_path / "out", "--server", server.url, "--check", "--quiet") == 0
    assert f"test-story: all 3 scene(s) fit {server.url}" in capsys.readouterr().out
    assert cli(make_story(sampling={"scheduler": "karas"}), tmp_path / "out", "--server", server.url, "--check") == 2
    assert "input 'scheduler' is 'karas', not offered by this server" in capsys.readouterr().err
    assert server.requests["POST /prompt"] == 0


def test_check_with_an_unreachable_server_fails_and_lists_only_live_ones(comfy, make_story, tmp_path, capsys):
    server, dead = comfy.start(), "http://127.0.0.1:9"
    assert cli(make_story(), tmp_path / "out", "--server", server.url, "--server", dead, "--check", "--quiet") == 2
    captured = capsys.readouterr()
    assert f"test-story: all 3 scene(s) fit {server.url}\n" in captured.out and dead not in captured.out
    assert f"error: not checked: ComfyUI server {dead} is not answering" in captured.err


def test_without_a_server_the_comfyui_around_the_pack_is_started_and_stopped(make_story, tmp_path, capsys):
    root = fake_comfyui(tmp_path / "ComfyUI")
    out = tmp_path / "out"
    assert cli(make_story(), out, "--comfyui", str(root), "--python", sys.executable, "--cpu", "--quiet") == 0
    assert "3 rendered" in capsys.readouterr().out
    launched = json.loads((root / "launched.json").read_text())
    assert launched["argv"][:5] == ["--listen", "127.0.0.1", "--port", launched["argv"][3], "--disable-auto-launch"]
    assert "--cpu" in launched["argv"]
    assert gone(launched["pid"])
    assert (out / "test-story" / "comfyui.log").exists()
    os.remove(root / "launched.json")
    assert cli(make_story(), out, "--comfyui", str(root), "--quiet") == 0  # all done: nothing started
    assert not (root / "launched.json").exists()


def test_no_comfyui_to_start_is_a_clear_error(make_story, tmp_path, capsys):
    assert cli(make_story(), tmp_path / "out", "--comfyui", str(tmp_path / "none"), "--quiet") == 2
    assert "no ComfyUI at" in capsys.readouterr().err


@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT")
def test_ctrl_c_leaves_a_consistent_manifest_and_the_rerun_finishes(comfy, make_story, tmp_path, capsys):
    server = comfy.start()
    comfy.call(server.pause)
    story, out = make_story(), tmp_path / "out"
    # Ctrl-C as in a terminal: a pytest started in the background by a non-interactive shell passes its
    # children SIGINT *ignored*, and Python keeps an ignored SIGINT ignored; restore the default first.
    proc = subprocess.Popen([sys.executable, "-m", "storymaker", "story", str(story), "--out", str(out), *FAST,
                             "--server", server.url, "--quiet"], cwd=REPO, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60  # generous: a loaded 2-core CI machine starts Python slowly
    while len(server.accepted) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(server.accepted) == 2, "the runner did not queue its first two scenes within 60 s"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: the manifest is up to date" in err
    scenes = json.loads((out / "test-story" / "manifest.json").read_text())["scenes"]
    assert [scenes[k]["status"] for k in ("morning", "street", "alice-reads-a-book-by-the")] == [
        "queued", "queued", "pending"]
    assert [scenes[k]["prompt_id"] for k in ("morning", "street")] == [pid for pid, _ in server.accepted]

    comfy.call(server.resume)
    assert cli(story, out, "--server", server.url, "--quiet") == 0
    assert "3 rendered" in capsys.readouterr().out
    assert len(server.accepted) == 3  # the two queued prompts were collected, not queued again
