"""The ComfyUI servers a story runs on: which are alive, what each was given, where the next scene goes.

Scenes go to the server with the shortest queue (``GET /queue``: running + pending, everyone's jobs),
and only while that queue is shorter than ``max_queue``: prompts are handed out as servers free up
instead of all at once, so a slow or dying server never holds more than a couple of scenes and a
second GPU picks up work as soon as it is added.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Iterable

from .client import ComfyClient, normalize_url
from .errors import NoServerLeft, ServerUnavailable, StoryError
from .plan import ScenePlan, Upload
from .validate import validate_prompts

log = logging.getLogger(__name__)


@dataclass
class Server:
    client: ComfyClient
    order: int
    alive: bool = True
    in_flight: int = 0
    reason: str = ""
    renamed: dict[str, str] = field(default_factory=dict)  # planned upload name -> name the server chose

    @property
    def url(self) -> str:
        return self.client.url

    def adapt(self, prompt: dict) -> dict:
        """The prompt with upload names this server changed (normally none) replaced."""
        if not self.renamed:
            return prompt
        return {nid: {**node, "inputs": {k: self.renamed.get(v, v) if isinstance(v, str) else v
                                         for k, v in node["inputs"].items()}}
                for nid, node in prompt.items()}


class ServerPool:
    def __init__(self, urls: Iterable[str], **client_options):
        self.servers = [Server(ComfyClient(url, **client_options), i) for i, url in enumerate(urls)]
        if not self.servers:
            raise StoryError("no ComfyUI server given (use --server URL, or --comfyui PATH to start one)")

    async def __aenter__(self) -> "ServerPool":
        return self

    async def __aexit__(self, *exc) -> None:
        await asyncio.gather(*(s.client.close() for s in self.servers), return_exceptions=True)

    def live(self) -> list[Server]:
        return [s for s in self.servers if s.alive]

    def dropped(self) -> dict[str, str]:
        """Servers given up on, with why: ``--check`` must not pass them off as fitting."""
        return {s.url: s.reason for s in self.servers if not s.alive}

    def by_url(self, url: str | None) -> Server | None:
        if not url:
            return None
        url = normalize_url(url)
        return next((s for s in self.live() if s.url == url), None)

    def mark_dead(self, server: Server, reason: str) -> None:
        if server.alive:
            server.alive = False
            server.reason = reason
            server.client.stop_events()
            log.warning("dropping server %s for the rest of this run: %s", server.url, reason)

    def _require_live(self) -> list[Server]:
        live = self.live()
        if not live:
            reasons = "; ".join(f"{s.url}: {s.reason}" for s in self.servers)
            raise NoServerLeft(f"no ComfyUI server is left ({reasons})")
        return live

    async def prepare(self, plans: list[ScenePlan]) -> None:
        """Upload the references every plan needs and validate every prompt on every live server.

        A server that does not answer is dropped; a prompt that does not fit a server's nodes, models
        or value ranges raises ``ValidationFailed`` before anything is queued anywhere.
        """
        uploads = list(dict.fromkeys(u for p in plans for u in p.uploads))
        live = self._require_live()
        results = await asyncio.gather(*(self._prepare_one(s, plans, uploads) for s in live),
                                       return_exceptions=True)
        for server, result in zip(live, results):
            if isinstance(result, ServerUnavailable):
                self.mark_dead(server, str(result))
            elif isinstance(result, BaseException):
                raise result
        for server in self._require_live():
            server.client.start_events()

    async def _prepare_one(self, server: Server, plans: list[ScenePlan], uploads: list[Upload]) -> None:
        for upload in uploads:
            value = await server.client.upload_image(upload.path, upload.name)
            if value != upload.name:
                server.renamed[upload.name] = value
        info = await server.client.object_info()  # read after uploading: LoadImage lists input/ files
        validate_prompts(((p.stem, server.adapt(p.prompt)) for p in plans), info, server.url)

    async def pick(self, max_queue: int, anything_in_flight: bool) -> Server | None:
        """The live server with the shortest queue if it has room; None means wait for a finish."""
        live = self._require_live()
        loads = await asyncio.gather(*(s.client.queue_load() for s in live), return_exceptions=True)
        ranked = []
        for server, load in zip(live, loads):
            if isinstance(load, ServerUnavailable):
                self.mark_dead(server, str(load))
            elif isinstance(load, BaseException):
                raise load
            else:  # our scenes still downloading from it are not in its queue, but count
                ranked.append((max(load, server.in_flight), server.in_flight, server.order, server))
        if not ranked:
            self._require_live()  # every server just failed: raises NoServerLeft
        load, _, _, best = min(ranked, key=lambda r: r[:3])
        if load < max_queue or not anything_in_flight:
            return best
        return None
