"""A small ComfyUI client: the HTTP endpoints and the websocket the story runner uses, nothing more.

Every failure to reach a server becomes ``ServerUnavailable`` (so the runner can move scenes to another
server); idempotent requests are retried with backoff first. Completion is always confirmed through
``/history``: websocket messages only wake the waiter early and drive progress bars, because a
websocket can drop (and be reconnected) at any time and miss messages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import aiohttp

from .errors import PromptRejected, SceneTimeout, ServerUnavailable

log = logging.getLogger(__name__)
EventHandler = Callable[[str, dict], None]
_FINISHED = {"execution_success", "execution_error", "execution_interrupted"}


def normalize_url(url: str) -> str:
    url = url.strip()
    return (url if "://" in url else f"http://{url}").rstrip("/")


class _Watch:
    """One prompt being waited on: woken by websocket messages about it (or by a websocket drop)."""

    def __init__(self, on_event: EventHandler | None):
        self.event = asyncio.Event()
        self.on_event = on_event
        self.started: float | None = None  # wall time of execution_start, when the websocket saw it


class ComfyClient:
    def __init__(self, url: str, *, connect_timeout: float = 10.0, request_timeout: float = 60.0,
                 retries: int = 2, retry_delay: float = 0.5, client_id: str | None = None):
        self.url = normalize_url(url)
        self.client_id = client_id or uuid.uuid4().hex
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.ws_connects = 0  # how many times the websocket (re)connected; tests and logs read it
        self._session: aiohttp.ClientSession | None = None
        self._events_task: asyncio.Task | None = None
        self._watches: dict[str, _Watch] = {}

    async def __aenter__(self) -> "ComfyClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=None, connect=self.connect_timeout,
                                            sock_connect=self.connect_timeout)
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    async def close(self) -> None:
        if self._events_task is not None:
            self._events_task.cancel()
            await asyncio.gather(self._events_task, return_exceptions=True)
            self._events_task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- HTTP ---------------------------------------------------------------------------------------

    async def _request(self, method: str, path: str, *, idempotent: bool = True,
                       make_data: Callable[[], Any] | None = None, **kwargs: Any) -> tuple[int, bytes]:
        tries = 1 + (self.retries if idempotent else 0)
        timeout = aiohttp.ClientTimeout(total=self.request_timeout, connect=self.connect_timeout)
        reason = "no answer"
        for attempt in range(tries):
            try:
                if make_data is not None:
                    kwargs["data"] = make_data()  # a multipart body can be sent only once
                async with self.session.request(method, self.url + path, timeout=timeout, **kwargs) as resp:
                    body = await resp.read()
                    if resp.status < 500:
                        return resp.status, body
                    reason = f"HTTP {resp.status}: {body[:200].decode('utf-8', 'replace')}"
            except asyncio.TimeoutError:
                reason = f"no answer within {self.request_timeout:g} s"
            except (aiohttp.ClientError, OSError) as exc:
                reason = str(exc) or type(exc).__name__
            if attempt + 1 < tries:
                await asyncio.sleep(self.retry_delay * 2**attempt)
        raise ServerUnavailable(self.url, f"{method} {path}: {reason}")

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        status, body = await self._request(method, path, **kwargs)
        if status != 200:
            raise ServerUnavailable(self.url, f"{method} {path} answered HTTP {status} (is this a ComfyUI server?)")
        try:
            return json.loads(body)
        except ValueError:
            raise ServerUnavailable(self.url, f"{method} {path} did not answer JSON "
                                              f"(is this a ComfyUI server?)") from None

    async def object_info(self) -> dict[str, Any]:
        return await self._json("GET", "/object_info")

    async def queue(self) -> dict[str, list]:
        return await self._json("GET", "/queue")

    async def queue_load(self) -> int:
        """Prompts running plus waiting on this server (everyone's, not only ours)."""
        queue = await self.queue()
        return len(queue.get("queue_running") or []) + len(queue.get("queue_pending") or [])

    @staticmethod
    def queue_ids(queue: dict[str, list]) -> tuple[set[str], set[str]]:
        """(running, pending) prompt ids; a queue item is ``[number, prompt_id, prompt, extra, outputs]``."""
        def ids(items):
            return {str(item[1]) for item in items or [] if isinstance(item, list) and len(item) > 1}
        return ids(queue.get("queue_running")), ids(queue.get("queue_pending"))

    async def upload_image(self, path: Path, name: str) -> str:
        """Upload ``path`` into ``input/`` as ``name``; return the value a LoadImage ``image`` input takes."""
        data = path.read_bytes()
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"

        def form() -> aiohttp.FormData:
            fd = aiohttp.FormData()
            fd.add_field("image", data, filename=name, content_type=content_type)
            fd.add_field("type", "input")
            fd.add_field("overwrite", "true")  # names carry the content hash: same name, same bytes
            return fd

        answer = await self._json("POST", "/upload/image", make_data=form)
        subfolder = answer.get("subfolder") or ""
        return f"{subfolder}/{answer['name']}" if subfolder else str(answer["name"])

    async def queue_prompt(self, prompt: dict, prompt_id: str, label: str = "the prompt") -> dict:
        """``POST /prompt`` offering our own prompt id; HTTP 400 raises ``PromptRejected`` (node by node).

        The answer's ``prompt_id`` is the one to follow: ComfyUI honours a client's id only since July
        2025, older servers pick their own. A watch set up for our id is moved to the server's.
        """
        body = {"prompt": prompt, "client_id": self.client_id, "prompt_id": prompt_id}
        status, raw = await self._request("POST", "/prompt", json=body, idempotent=False)
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = raw.decode("utf-8", "replace")
        if status == 400:
            raise PromptRejected(self.url, answer, prompt, label)
        if status != 200 or not isinstance(answer, dict):
            raise ServerUnavailable(self.url, f"POST /prompt answered HTTP {status}: {str(answer)[:200]}")
        answer["prompt_id"] = server_id = str(answer.get("prompt_id") or prompt_id)
        if server_id != prompt_id and prompt_id in self._watches:
            self._watches[server_id] = self._watches.pop(prompt_id)
        return answer

    async def inspect_model_files(self, files: list[dict]) -> list[dict] | None:
        """``POST /storymaker/inspect``: the pack's verdict on each ``{folder, name, kind}`` (same order), or
        None when the server has no such route (no StoryMaker pack there, or an older one)."""
        status, body = await self._request("POST", "/storymaker/inspect", json={"files": files})
        if status in (404, 405):
            return None
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("results"), list):
            raise ServerUnavailable(self.url, f"POST /storymaker/inspect answered HTTP {status}: "
                                              f"{body[:200].decode('utf-8', 'replace')}")
        return answer["results"]

    async def history(self, prompt_id: str) -> dict | None:
        """The finished prompt's history entry, or None while it is queued or running."""
        answer = await self._json("GET", f"/history/{prompt_id}")
        return answer.get(prompt_id) if isinstance(answer, dict) else None

    async def view(self, filename: str, subfolder: str = "", kind: str = "output") -> bytes:
        params = {"filename": filename, "subfolder": subfolder, "type": kind}
        status, body = await self._request("GET", "/view", params=params)
        if status != 200:
            raise FileNotFoundError(f"{self.url}/view has no {kind} file {subfolder}/{filename} (HTTP {status})")
        return body

    async def cancel(self, prompt_ids: list[str]) -> None:
        """Best effort: drop our waiting prompts and interrupt ours if one is running (never others')."""
        try:  # no retries: this runs when a server is given up on or the run is being stopped
            status, body = await self._request("GET", "/queue", idempotent=False)
            running, _ = self.queue_ids(json.loads(body)) if status == 200 else (set(), set())
            await self._request("POST", "/queue", json={"delete": list(prompt_ids)}, idempotent=False)
            for prompt_id in running & set(prompt_ids):
                await self._request("POST", "/interrupt", json={"prompt_id": prompt_id}, idempotent=False)
        except (ServerUnavailable, ValueError) as exc:
            log.debug("could not cancel prompts on %s: %s", self.url, exc)

    # -- websocket ----------------------------------------------------------------------------------

    @property
    def ws_url(self) -> str:
        scheme, rest = self.url.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws?clientId={self.client_id}"

    def start_events(self) -> None:
        """Follow the websocket in the background (reconnecting as needed) until ``close``."""
        if self._events_task is None:
            self._events_task = asyncio.get_running_loop().create_task(self._events_loop())

    async def _events_loop(self) -> None:
        delay = self.retry_delay
        while True:
            try:
                async with self.session.ws_connect(self.ws_url, heartbeat=30.0) as ws:
                    self.ws_connects += 1
                    delay = self.retry_delay
                    self._wake_all()  # messages sent while we were not connected are lost: check /history
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            self._dispatch(msg.data)
                        elif msg.type == aiohttp.WSMsgType.ERROR:
                            break
                        # binary frames are previews: ignored
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                log.debug("websocket %s: %s", self.ws_url, exc)
            self._wake_all()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _wake_all(self) -> None:
        for watch in self._watches.values():
            watch.event.set()

    def stop_events(self) -> None:
        """Stop following the websocket (a server given up on should not be reconnected to forever)."""
        if self._events_task is not None:
            self._events_task.cancel()

    def _dispatch(self, text: str) -> None:
        try:
            message = json.loads(text)
            kind, data = message.get("type"), message.get("data") or {}
        except (ValueError, AttributeError):
            return
        watch = self._watches.get(str(data.get("prompt_id")))
        if watch is None:
            return
        if kind == "execution_start":
            watch.started = time.time()
        if watch.on_event is not None:
            try:
                watch.on_event(kind, data)
            except Exception:  # a progress bar must never break a render
                log.debug("progress handler failed", exc_info=True)
        if kind in _FINISHED or (kind == "executing" and data.get("node") is None):
            watch.event.set()

    def watch(self, prompt_id: str, on_event: EventHandler | None = None) -> _Watch:
        """Start listening for ``prompt_id`` (call before queueing so no message is missed)."""
        return self._watches.setdefault(prompt_id, _Watch(on_event))

    async def wait(self, prompt_id: str, *, timeout: float, poll_interval: float,
                   on_event: EventHandler | None = None) -> tuple[dict, float | None]:
        """Wait until ``/history`` has the prompt; return (history entry, execution start time or None)."""
        watch = self.watch(prompt_id, on_event)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                watch.event.clear()
                entry = await self.history(prompt_id)
                if entry is not None:
                    return entry, watch.started
                left = deadline - loop.time()
                if left <= 0:
                    raise SceneTimeout(f"prompt {prompt_id} did not finish within {timeout:g} s on {self.url} "
                                       f"(raise --scene-timeout for slow machines)")
                try:
                    await asyncio.wait_for(watch.event.wait(), min(poll_interval, left))
                except asyncio.TimeoutError:
                    pass
        finally:
            self._watches.pop(prompt_id, None)
