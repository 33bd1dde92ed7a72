"""Start a local ComfyUI when no server URL is given, and stop it when the story is done.

Which ComfyUI, and which Python starts it, is ``storymaker.comfyui``'s answer (``find_comfyui``,
``find_python``): by default the ComfyUI this pack is installed in, with its own Python.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Sequence

import aiohttp

from ..comfyui import find_python
from .errors import StoryError

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


_NO_GPU = ("Found no NVIDIA driver", "Torch not compiled with CUDA enabled", "No CUDA GPUs are available")


def _no_gpu_hint(log_tail: str, cpu: bool) -> str:
    """ComfyUI stops at start-up on a machine without a GPU unless told --cpu: say so in the runner's words."""
    if cpu or not any(marker in log_tail for marker in _NO_GPU):
        return ""
    return ("\nComfyUI found no GPU. Rerun with --cpu (SDXL then takes minutes per image), or render on a machine "
            "with one: --server http://HOST:8188")


class LocalComfyUI:
    """``async with LocalComfyUI(root, cpu=True) as url:`` runs ``main.py`` until the block ends."""

    def __init__(self, root: Path, *, python: str | None = None, cpu: bool = False, port: int | None = None,
                 extra_args: Sequence[str] = (), startup_timeout: float = 180.0, log_path: Path | None = None):
        self.root = Path(root)
        self.python = python or find_python(self.root)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [self.python, "main.py", "--listen", "127.0.0.1", "--port", str(self.port),
                        "--disable-auto-launch", *(["--cpu"] if cpu else []), *extra_args]
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else Path.cwd() / f"comfyui-{self.port}.log"
        self.process: subprocess.Popen | None = None

    async def __aenter__(self) -> str:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def start(self) -> str:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting ComfyUI: %s (in %s; log: %s)", " ".join(self.command), self.root, self.log_path)
        with open(self.log_path, "ab") as log_file:  # the child keeps its own handle
            self.process = subprocess.Popen(
                self.command, cwd=self.root, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                # own process group: a Ctrl-C in the terminal reaches the runner, which then stops ComfyUI
                start_new_session=(os.name == "posix"),
                creationflags=getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0))
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise
        return self.url

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                code = self.process.poll()
                if code is not None:
                    tail = _tail(self.log_path)
                    raise StoryError(f"ComfyUI exited with code {code} while starting; last lines of "
                                     f"{self.log_path}:\n{tail}{_no_gpu_hint(tail, '--cpu' in self.command)}")
                try:
                    async with session.get(f"{self.url}/object_info") as resp:
                        if resp.status == 200:
                            await resp.json()
                            log.info("ComfyUI is up at %s", self.url)
                            return
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise StoryError(f"ComfyUI did not answer {self.url}/object_info within "
                                     f"{self.startup_timeout:g} s (raise --startup-timeout?); see {self.log_path}")
                await asyncio.sleep(0.25)

    async def stop(self, grace: float = 15.0) -> None:
        """Terminate (then kill after ``grace`` seconds) the ComfyUI this object started."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        deadline = time.monotonic() + grace
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if process.poll() is None:
            process.kill()
            process.wait()
        log.info("stopped ComfyUI at %s", self.url)
