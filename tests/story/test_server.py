"""Starting a local ComfyUI: which folder and Python, the command line, readiness, failures, stopping."""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp
import pytest
from story_support import fake_comfyui, gone

from storymaker import comfyui as comfyui_module
from storymaker.comfyui import ComfyUINotFound, find_comfyui, find_python
from storymaker.story.errors import StoryError
from storymaker.story.server import LocalComfyUI


def test_find_comfyui_order_of_precedence(tmp_path, monkeypatch):
    explicit, from_env = fake_comfyui(tmp_path / "a"), fake_comfyui(tmp_path / "b")
    repo = tmp_path / "ComfyUI" / "custom_nodes" / "ComfyUI-StoryMaker"
    repo.mkdir(parents=True)
    installed = fake_comfyui(tmp_path / "ComfyUI")
    monkeypatch.setattr(comfyui_module, "REPO_ROOT", repo)
    assert find_comfyui(explicit, {"COMFYUI_PATH": str(from_env)}) == explicit
    assert find_comfyui(None, {"COMFYUI_PATH": str(from_env)}) == from_env
    assert find_comfyui(None, {}) == installed  # the ComfyUI this pack is installed in
    with pytest.raises(ComfyUINotFound, match=r"no ComfyUI at .*nowhere \(--comfyui\).*main\.py does not exist"):
        find_comfyui(tmp_path / "nowhere", {})
    with pytest.raises(ComfyUINotFound, match=r"\(COMFYUI_PATH\)"):
        find_comfyui(None, {"COMFYUI_PATH": str(tmp_path / "nowhere")})


def test_find_python_prefers_comfyuis_own(tmp_path):
    root = fake_comfyui(tmp_path / "ComfyUI")
    assert find_python(root, None, {}) == sys.executable
    venv_python = root / "venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text("")
    assert find_python(root, None, {}) == str(venv_python)
    portable = tmp_path / "python_embeded" / "python.exe"
    portable.parent.mkdir()
    portable.write_text("")
    assert find_python(root, None, {}) == str(portable)
    assert find_python(root, None, {"COMFYUI_PYTHON": "/opt/py"}) == "/opt/py"
    assert find_python(root, "/my/python", {"COMFYUI_PYTHON": "/opt/py"}) == "/my/python"


def test_local_comfyui_starts_answers_and_stops(tmp_path):
    root = fake_comfyui(tmp_path / "ComfyUI")
    local = LocalComfyUI(root, python=sys.executable, cpu=True, extra_args=["--highvram"],
                         log_path=tmp_path / "logs" / "comfyui.log", startup_timeout=30)

    async def scenario():
        async with local as url:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{url}/object_info") as resp:
                    assert "KSampler" in await resp.json()
        return url

    url = asyncio.run(scenario())
    launched = json.loads((root / "launched.json").read_text())
    assert launched["argv"] == ["--listen", "127.0.0.1", "--port", str(local.port), "--disable-auto-launch",
                                "--cpu", "--highvram"]
    assert url == f"http://127.0.0.1:{local.port}"
    assert gone(launched["pid"])
    assert (tmp_path / "logs" / "comfyui.log").exists()


def test_local_comfyui_that_exits_shows_its_log(tmp_path):
    root = fake_comfyui(tmp_path / "ComfyUI", "print('Traceback: no module named torch')\nraise SystemExit(3)\n")
    with pytest.raises(StoryError, match=r"(?s)exited with code 3 while starting.*no module named torch"):
        asyncio.run(LocalComfyUI(root, python=sys.executable, log_path=tmp_path / "c.log").start())


def test_local_comfyui_that_never_answers_is_stopped(tmp_path):
    root = fake_comfyui(tmp_path / "ComfyUI", """
        import json, os, time
        json.dump({"pid": os.getpid()}, open("launched.json", "w"))
        time.sleep(60)
    """)
    local = LocalComfyUI(root, python=sys.executable, startup_timeout=1.0, log_path=tmp_path / "c.log")
    with pytest.raises(StoryError, match=r"did not answer .*/object_info within 1 s"):
        asyncio.run(local.start())
    assert gone(json.loads((root / "launched.json").read_text())["pid"])


@pytest.mark.parametrize("cpu", [False, True])
def test_local_comfyui_without_a_gpu_says_to_use_cpu(tmp_path, cpu):
    root = fake_comfyui(tmp_path / "ComfyUI", "print('RuntimeError: Found no NVIDIA driver on your system.')\n"
                                              "raise SystemExit(1)\n")
    with pytest.raises(StoryError) as info:
        asyncio.run(LocalComfyUI(root, python=sys.executable, cpu=cpu, log_path=tmp_path / "c.log").start())
    assert ("ComfyUI found no GPU. Rerun with --cpu" in str(info.value)) is not cpu
