"""Run a story: plan it, skip what is verified done, upload + validate, queue across servers, collect.

Every state change is written to the manifest at once (atomically), so a run can stop at any point
(Ctrl-C, a crash, every server gone) and the next run continues: finished scenes whose files still
match their sha256 are skipped, prompts still queued on a server are picked up, a damaged local file
is fetched again, and scenes of a server that died are queued on another one.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from .client import ComfyClient
from .contact_sheet import write_contact_sheet
from .errors import CannotInspectModels, NoServerLeft, SceneTimeout, ServerUnavailable, StoryError
from .files import file_sha256, sha256_bytes, write_new_file
from .manifest import DONE, FAILED, PENDING, QUEUED, REMOVED, RUNNING, Manifest, now_iso
from .model_check import check_model_files
from .plan import ScenePlan, plan_story
from .pool import Server, ServerPool
from .progress import Progress
from .results import download_image, output_images
from .schema import Story, load_story

log = logging.getLogger(__name__)
_REMOVED_WHY = "the scene was removed from the story"


@dataclass
class RunOptions:
    out_dir: Path = Path("story")
    connect_timeout: float = 10.0  # seconds to open a connection
    request_timeout: float = 120.0  # seconds for one HTTP request (uploads and downloads included)
    scene_timeout: float = 3600.0  # seconds from queueing a scene to its result (queue wait included)
    poll_interval: float = 1.0  # seconds between /history checks and queue-length checks
    retries: int = 2  # extra tries of idempotent requests before a server counts as gone
    retry_delay: float = 0.5
    max_queue: int = 2  # a server gets another scene only while its queue is shorter than this
    max_attempts: int = 3  # servers a scene may be tried on before it is marked failed
    contact_sheet: bool = True
    progress: bool = True


@dataclass
class RunReport:
    story_dir: Path
    rendered: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    refetched: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    not_rendered: list[str] = field(default_factory=list)
    contact_sheet: Path | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return not self.failed and not self.not_rendered


class StoryRunner:
    def __init__(self, story: Story | str | Path, servers: list[str] | tuple[str, ...] = (),
                 options: RunOptions | None = None):
        self.story = story if isinstance(story, Story) else load_story(story)
        self.options = options or RunOptions()
        self.servers = list(servers)
        self.plans = plan_story(self.story)
        self.story_dir = Path(self.options.out_dir) / self.story.name
        self.manifest: Manifest | None = None
        self.progress = Progress(0, 0, enabled=False)
        self._triage: tuple[list, list, list] | None = None
        self._prompt_ids: dict[str, str] = {}  # scene id -> prompt id of its current try
        self._stale: list[tuple[str, str]] = []  # (server, prompt id) queued by a run for a scene since changed

    def _pool(self) -> ServerPool:
        o = self.options
        return ServerPool(self.servers, connect_timeout=o.connect_timeout, request_timeout=o.request_timeout,
                          retries=o.retries, retry_delay=o.retry_delay)

    # -- what is left to do -------------------------------------------------------------------------

    def triage(self) -> tuple[list[ScenePlan], list[ScenePlan], list[ScenePlan]]:
        """(verified done, to fetch again, to render). Needs no server; reads the manifest but writes it only
        once ``run`` has validated what it will render (a story that cannot run leaves no manifest)."""
        if self._triage is not None:
            return self._triage
        story = self.story
        self.manifest = m = Manifest.open(self.story_dir / "manifest.json", {
            "name": story.name, "file": str(story.path), "sha256": file_sha256(story.path)}, deferred=True)
        # the references, so `python -m storymaker evaluate story --manifest story/<name>` scores the story as it is
        m.set("cast", {c.name: {"image": str(c.image), **({"mask": str(c.mask)} if c.mask else {}),
                                **({"identity": c.identity} if c.identity else {})}  # read by `evaluate story`
                       for c in story.cast.values()})
        self._retire_removed()
        done, refetch, render = [], [], []
        for plan in self.plans:
            rec = m.scene(plan.id)
            if rec.get("status") == REMOVED:
                self._restore(plan)
            same = rec.get("fingerprint") == plan.fingerprint
            if rec.get("status") == DONE and same:
                self._describe(plan)  # a renamed cast or a moved scene changes these, not the image
                (done if self._verified(plan) else refetch).append(plan)
                continue
            if rec.get("status") == DONE:
                self._supersede(plan.id, "the story changed this scene")
            self._note_stale(rec, same)
            keep = rec.get("status") in (QUEUED, RUNNING) and same  # may still be on a server
            self._describe(plan, fingerprint=plan.fingerprint, **({} if keep else {"status": PENDING}))
            render.append(plan)
        self._triage = (done, refetch, render)
        return self._triage

    def needs_server(self) -> bool:
        _, refetch, render = self.triage()
        return bool(refetch or render)

    def _describe(self, plan: ScenePlan, **fields) -> None:
        """Bring the scene's record in line with the story (written only when something changed), so
        the manifest stays an evaluation manifest of the story as it is now."""
        rec = self.manifest.scene(plan.id)
        fields = dict(index=plan.scene.index, stem=plan.stem, prompt=plan.scene.prompt,
                      characters=list(plan.characters), seed=plan.scene.seed,
                      workflow=str(plan.scene.workflow.path), **fields)
        changed = {k: v for k, v in fields.items() if k not in rec or rec[k] != v}
        if changed:
            self.manifest.update(plan.id, **changed)

    def _verified(self, plan: ScenePlan) -> bool:
        """Whether a done scene's files (its image and the rest of its batch) still have their recorded
        sha256; a warning says what is wrong with each that does not."""
        damaged = [part for part in _parts(self.manifest.scene(plan.id)) if not self._intact(part)]
        for part in damaged:
            path = self.story_dir / str(part.get("file"))
            state = "does not match its recorded sha256 (edited or damaged?); it is kept and" \
                if path.exists() else "is missing;"
            log.warning("scene %s: %s %s the scene is fetched again", plan.stem, path, state)
        return not damaged

    _KEPT = ("file", "sha256", "bytes", "output", "batch_files", "fingerprint", "seed", "server", "prompt_id")

    def _supersede(self, scene_id: str, why: str, status: str = PENDING) -> None:
        """Move a scene's file (if any) from ``file`` to ``superseded``: kept on disk, no longer its image."""
        rec = self.manifest.scene(scene_id)
        old = [{**{k: rec[k] for k in self._KEPT if rec.get(k) is not None}, "why": why}] if rec.get("file") else []
        self.manifest.update(scene_id, status=status, file=None, sha256=None,
                             superseded=rec.get("superseded", []) + old,
                             **({"batch_files": None} if rec.get("batch_files") else {}))

    def _retire_removed(self) -> None:
        """Mark records of scenes no longer in the story ``removed``: `evaluate` must not score them."""
        ids = {plan.id for plan in self.plans}
        for scene_id, rec in list(self.manifest.scenes.items()):
            if scene_id not in ids and rec.get("status") != REMOVED:
                self._note_stale(rec, False)
                self._supersede(scene_id, _REMOVED_WHY, REMOVED)

    def _note_stale(self, rec: dict, same: bool) -> None:
        """Remember a prompt still queued for a scene that changed: left there, it would render first."""
        if rec.get("status") in (QUEUED, RUNNING) and not same and rec.get("server") and rec.get("prompt_id"):
            self._stale.append((rec["server"], rec["prompt_id"]))

    def _restore(self, plan: ScenePlan) -> None:
        """A removed scene put back unchanged gets its last file back (then verified) instead of a render."""
        rec = self.manifest.scene(plan.id)
        last = (rec.get("superseded") or [{}])[-1]
        if last.get("file") and last.get("fingerprint") == plan.fingerprint \
                and last.get("why") == _REMOVED_WHY:
            restored = {k: last[k] for k in self._KEPT if k in last}
            self.manifest.update(plan.id, status=DONE, superseded=rec["superseded"][:-1], **restored)

    # -- running ------------------------------------------------------------------------------------

    async def check(self) -> tuple[list[str], dict[str, str]]:
        """Upload references, validate every scene and every model file it loads on every server; queue
        nothing, write nothing. Returns the servers the story fits and those not checked (url -> why: it did
        not answer, or it cannot inspect model files). A problem on any server raises ``ValidationFailed``."""
        async with self._pool() as pool:
            await pool.prepare(self.plans)
            unchecked = await self._check_models(pool, self.plans)
            return [s.url for s in pool.live() if s.url not in unchecked], {**pool.dropped(), **unchecked}

    async def _check_models(self, pool: ServerPool, plans: list[ScenePlan]) -> dict[str, str]:
        """Every model file the plans load, judged by each live server (raises ``ModelFilesUnusable``);
        returns the servers that cannot inspect model files (url -> why). A server that stops answering
        is dropped."""
        unchecked = {}
        for server in pool.live():
            try:
                checked = await check_model_files(server.client, [(p.stem, server.adapt(p.prompt)) for p in plans])
            except CannotInspectModels as exc:
                unchecked[server.url] = str(exc)
            except ServerUnavailable as exc:
                pool.mark_dead(server, str(exc))
            else:
                if checked:
                    log.info("%s: %d model file(s) checked", server.url, checked)
        return unchecked

    def _start(self, done: int) -> None:
        """Validated: from here on the manifest is written and the progress bar drawn."""
        self.manifest.commit()
        self.progress = Progress(len(self.plans), done, self.options.progress)

    async def run(self) -> RunReport:
        done, refetch, render = self.triage()
        report = RunReport(self.story_dir, skipped=[p.stem for p in done])
        try:
            if not (refetch or render):
                self._start(len(done))
            else:
                async with self._pool() as pool:
                    await self._cancel_stale(pool)  # before validating: the manifest no longer lists them
                    await pool.prepare(refetch + render)
                    for reason in (await self._check_models(pool, refetch + render)).values():
                        log.warning("%s", reason)  # ComfyUI still checks the names when it queues
                    self._start(len(done))
                    for plan in refetch:
                        if await self._refetch(pool, plan):
                            report.refetched.append(plan.stem)
                            self.progress.advance()
                        else:
                            self._supersede(plan.id, "file did not match its sha256 and could not be fetched again")
                            render.append(plan)
                    render.sort(key=lambda p: p.scene.index)
                    await self._render_all(pool, render, report)
        finally:
            self.progress.close()
        if self.options.contact_sheet:
            report.contact_sheet = self._contact_sheet()
        return report

    async def _cancel_stale(self, pool: ServerPool) -> None:
        """Take back the prompts of changed scenes from their servers (those in this run's pool)."""
        stale: dict[str, list[str]] = {}
        for url, prompt_id in self._stale:
            if (server := pool.by_url(url)) is not None:
                stale.setdefault(server.url, []).append(prompt_id)
        for url, prompt_ids in stale.items():
            log.info("taking back %d prompt(s) of changed scenes from %s", len(prompt_ids), url)
            await pool.by_url(url).client.cancel(prompt_ids)

    async def _render_all(self, pool: ServerPool, plans: list[ScenePlan], report: RunReport) -> None:
        pending, running, tries = deque(plans), {}, Counter()

        def start(plan: ScenePlan, server: Server, adopt: str | None = None) -> None:
            server.in_flight += 1
            running[asyncio.ensure_future(self._render(plan, server, adopt))] = (plan, server)

        for plan in list(pending):  # prompts an earlier run left queued: collect them where they are
            rec = self.manifest.scene(plan.id)
            server = pool.by_url(rec.get("server")) if rec.get("status") in (QUEUED, RUNNING) else None
            if server is not None and rec.get("prompt_id"):
                pending.remove(plan)
                start(plan, server, rec["prompt_id"])
        try:
            while pending or running:
                try:
                    while pending and (server := await pool.pick(self.options.max_queue, bool(running))):
                        start(pending.popleft(), server)
                except NoServerLeft as exc:
                    if not running:
                        report.not_rendered = [p.stem for p in pending]
                        report.message = f"{exc}; {len(pending)} scene(s) not rendered: rerun to resume"
                        return
                finished, _ = await asyncio.wait(list(running), return_when=asyncio.FIRST_COMPLETED,
                                                 timeout=self.options.poll_interval if pending else None)
                for task in finished:
                    plan, server = running.pop(task)
                    server.in_flight -= 1
                    if self._settle(task, plan, server, pool, tries, report):
                        pending.append(plan)
                for task, (plan, server) in running.items():
                    if not server.alive:  # its server was just given up on: move the scene now
                        task.cancel()
                pending = deque(sorted(pending, key=lambda p: p.scene.index))
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    def _settle(self, task: asyncio.Task, plan: ScenePlan, server: Server, pool: ServerPool,
                tries: Counter, report: RunReport) -> bool:
        """Record how one try ended; True when the scene should be queued again elsewhere."""
        prompt_id = self._prompt_ids.get(plan.id) or None
        if task.cancelled():  # moved off a server that failed while this scene waited on it
            self.manifest.add_attempt(plan.id, server=server.url, prompt_id=prompt_id, outcome="moved",
                                      error=f"server given up on: {server.reason}")
            self.manifest.update(plan.id, status=PENDING)
            return True
        exc = task.exception()
        outcome = "done" if exc is None else type(exc).__name__
        self.manifest.add_attempt(plan.id, server=server.url, prompt_id=prompt_id, outcome=outcome,
                                  **({"error": str(exc)} if exc else {}))
        if exc is None:
            report.rendered.append(plan.stem)
            self.progress.advance()
            return False
        if isinstance(exc, (ServerUnavailable, SceneTimeout)):
            pool.mark_dead(server, str(exc))
            tries[plan.id] += 1
            if tries[plan.id] < self.options.max_attempts:
                log.warning("scene %s: %s; queueing it on another server", plan.stem, exc)
                self.manifest.update(plan.id, status=PENDING)
                return True
            exc = StoryError(f"gave up after {tries[plan.id]} servers failed; last: {exc}")
        if not isinstance(exc, StoryError):
            raise exc  # a bug: let it surface with its traceback
        log.error("scene %s failed: %s", plan.stem, exc)
        self.manifest.update(plan.id, status=FAILED, error=str(exc))
        report.failed[plan.stem] = str(exc)
        self.progress.advance()
        return False

    async def _render(self, plan: ScenePlan, server: Server, adopt: str | None) -> None:
        client, opts = server.client, self.options
        bar = self.progress.scene(f"{plan.stem} @ {server.url.split('://')[-1]}")

        def on_event(kind: str, data: dict) -> None:
            bar.on_event(kind, data)
            if kind == "execution_start":
                self.manifest.update(plan.id, status=RUNNING, started_at=now_iso())

        try:
            self._prompt_ids.pop(plan.id, None)
            prompt_id = adopt if adopt and await self._still_there(client, adopt) else None
            fresh, queued = prompt_id is None, time.time()
            prompt_id = prompt_id or uuid.uuid4().hex
            self._prompt_ids[plan.id] = prompt_id
            if fresh:
                client.watch(prompt_id, on_event)
                # recorded before posting: if the answer is lost, a rerun still finds the prompt by id
                self.manifest.update(plan.id, status=QUEUED, server=server.url, prompt_id=prompt_id,
                                     queued_at=now_iso(), started_at=None, error=None)
                answer = await client.queue_prompt(server.adapt(plan.prompt), prompt_id, f"scene {plan.stem}")
                prompt_id = self._prompt_ids[plan.id] = answer["prompt_id"]  # a server may ignore ours
                self.manifest.update(plan.id, prompt_id=prompt_id, number=answer.get("number"))
            try:
                entry, started = await client.wait(prompt_id, timeout=opts.scene_timeout,
                                                   poll_interval=opts.poll_interval, on_event=on_event)
            except SceneTimeout:
                await client.cancel([prompt_id])
                raise
            except asyncio.CancelledError:
                if not server.alive:  # moved elsewhere, not Ctrl-C (which leaves prompts to collect later)
                    await client.cancel([prompt_id])
                raise
            finished = time.time()
            images = output_images(entry, plan.prompt, plan.output_nodes)
            parts = [await self._download(client, image, stem, plan.stem)
                     for image, stem in zip(images, _batch_stems(plan.stem, len(images)))]
            if len(parts) > 1:
                log.info("scene %s: a batch of %d images; the first is the scene's, the others are %s",
                         plan.stem, len(parts), ", ".join(p["file"] for p in parts[1:]))
            batch = {"batch_files": parts[1:]} if parts[1:] else {}
            self.manifest.update(plan.id, status=DONE, **parts[0], **batch, finished_at=now_iso(), error=None, timings={
                                     "wait_s": round((started or finished) - queued, 3),
                                     "run_s": round(finished - started, 3) if started else None,
                                     "download_s": round(time.time() - finished, 3)})
        finally:
            bar.close()

    async def _download(self, client: ComfyClient, image: dict, stem: str, scene: str) -> dict:
        """Save one output image as ``stem`` (or its next free version); return its manifest entry."""
        data = await download_image(client, image, f"scene {scene}")
        path = write_new_file(self.story_dir, stem, Path(image["filename"]).suffix or ".png", data)
        if path.stem != stem:
            log.warning("scene %s: a different file already has its name; kept it, saved %s", scene, path.name)
        return {"file": path.name, "sha256": sha256_bytes(data), "bytes": len(data), "output": image}

    @staticmethod
    async def _still_there(client: ComfyClient, prompt_id: str) -> bool:
        """Whether the server knows the prompt. The queue is read first: a prompt leaves the queue only
        once it is in the history, so it cannot slip between the two reads."""
        running, pending = client.queue_ids(await client.queue())
        return prompt_id in running | pending or await client.history(prompt_id) is not None

    async def _refetch(self, pool: ServerPool, plan: ScenePlan) -> bool:
        """Download a finished scene's damaged files again if a server still has the same bytes: the one
        that made it first, then every other live one (a ComfyUI the runner starts gets a new port each run
        but keeps its output folder). Only the recorded sha256 is accepted: asking the wrong server is harmless."""
        rec = self.manifest.scene(plan.id)
        maker, parts = pool.by_url(rec.get("server")), _parts(rec)
        servers = [s for s in [maker] if s] + [s for s in pool.live() if s is not maker]
        names, source = [], None
        for part, stem in zip(parts, _batch_stems(plan.stem, len(parts))):
            if self._intact(part):
                names.append(part["file"])
                continue
            found = await self._find(servers, part)
            if found is None:
                return False
            source, data = found
            image = part["output"]
            names.append(write_new_file(self.story_dir, stem, Path(image["filename"]).suffix or ".png", data).name)
        batch = [{**part, "file": name} for part, name in zip(parts[1:], names[1:])]
        extra = {**({"batch_files": batch} if batch else {}), **({"server": source.url} if source else {})}
        self.manifest.update(plan.id, file=names[0], refetched_at=now_iso(), **extra)
        return True

    @staticmethod
    async def _find(servers: list[Server], part: dict) -> tuple[Server, bytes] | None:
        """The first server whose copy of the output has the recorded sha256, with those bytes."""
        image = part.get("output") or {}
        for server in servers if image.get("filename") else []:
            try:
                data = await server.client.view(image["filename"], image.get("subfolder", ""),
                                                image.get("type", "output"))
            except (ServerUnavailable, FileNotFoundError):
                continue
            if sha256_bytes(data) == part.get("sha256"):
                return server, data
        return None

    def _intact(self, part: dict) -> bool:
        path = self.story_dir / str(part.get("file"))
        return path.is_file() and file_sha256(path) == part.get("sha256")

    def _contact_sheet(self) -> Path:
        cells = []
        for plan in self.plans:
            rec = self.manifest.scene(plan.id)
            path = self.story_dir / str(rec.get("file"))
            ok = rec.get("status") == DONE and path.is_file()
            who = f" · {', '.join(plan.characters)}" if plan.characters else ""
            state = "" if ok else f" · {rec.get('status', PENDING)}"
            cells.append((path if ok else None, f"{plan.stem}{who} · seed {plan.scene.seed}{state}"))
        sheet = write_contact_sheet(cells, self.story_dir / "contact-sheet.png")
        self.manifest.set("contact_sheet", {"file": sheet.name, "sha256": file_sha256(sheet)})
        return sheet


def _parts(rec: dict) -> list[dict]:
    """A done scene's files, each ``{file, sha256, bytes, output}``: its image, then the rest of its batch."""
    return [rec, *(rec.get("batch_files") or [])]


def _batch_stems(stem: str, count: int) -> list[str]:
    """``01-cafe``, ``01-cafe-b2``, ``01-cafe-b3``...: the scene's image first, then the rest of its batch."""
    return [stem] + [f"{stem}-b{k}" for k in range(2, count + 1)]


def run_story(story: Story | str | Path, servers: list[str], options: RunOptions | None = None) -> RunReport:
    """Synchronous convenience wrapper: ``run_story("stories/x.yaml", ["http://127.0.0.1:8188"])``."""
    return asyncio.run(StoryRunner(story, servers, options).run())
