"""A fake ComfyUI (aiohttp.web): the protocol subset the story runner uses, with injectable faults.

It "executes" a prompt by saving a small PNG whose colour is ``scene_color(seed, positive text)``, so a
test can check that the right image landed in the right file. Faults: HTTP 400 with node_errors for
one seed, an execution error for one seed, dropped websockets, a server killed after accepting N
prompts, damaged ``/view`` answers, a paused queue, foreign prompts occupying the queue, and a server
that picks its own prompt ids (ComfyUI before July 2025).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import json
import socket
import uuid
from collections import Counter
from dataclasses import dataclass

from aiohttp import WSMsgType, web
from PIL import Image

MAX_SEED = 2**64 - 1


def scene_color(seed: int, text: str) -> tuple[int, int, int]:
    digest = hashlib.sha256(f"{seed}|{text}".encode()).digest()
    return digest[0], digest[1], digest[2]


def render_png(seed: int, text: str, size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), scene_color(seed, text)).save(buffer, format="PNG")
    return buffer.getvalue()


def _node(name, required, optional=None, output=(), output_node=False):
    optional = optional or {}
    return {"input": {"required": required, "optional": optional},
            "input_order": {"required": list(required), "optional": list(optional)},
            "output": list(output), "output_is_list": [False] * len(output), "output_name": list(output),
            "name": name, "display_name": name, "description": "", "python_module": "nodes",
            "category": "test", "output_node": output_node}


def catalog(input_files: list[str]) -> dict:
    """``/object_info`` for the nodes the tests use (COMBOs in both the old and the new format)."""
    def number(kind, default, lo, hi):
        return [kind, {"default": default, "min": lo, "max": hi}]
    nodes = {
        "CheckpointLoaderSimple": _node("CheckpointLoaderSimple", {"ckpt_name": [["sdxl-test.safetensors"], {}]},
                                        output=("MODEL", "CLIP", "VAE")),
        "CLIPTextEncode": _node("CLIPTextEncode", {"text": ["STRING", {"multiline": True}], "clip": ["CLIP", {}]},
                                output=("CONDITIONING",)),
        "EmptyLatentImage": _node("EmptyLatentImage", {"width": number("INT", 1024, 16, 16384),
                                                       "height": number("INT", 1024, 16, 16384),
                                                       "batch_size": number("INT", 1, 1, 4096)}, output=("LATENT",)),
        "KSampler": _node("KSampler", {
            "model": ["MODEL", {}], "seed": number("INT", 0, 0, MAX_SEED), "steps": number("INT", 20, 1, 10000),
            "cfg": number("FLOAT", 8.0, 0.0, 100.0),
            "sampler_name": ["COMBO", {"options": ["euler", "euler_ancestral", "dpmpp_2m"]}],
            "scheduler": [["normal", "karras"], {}], "positive": ["CONDITIONING", {}],
            "negative": ["CONDITIONING", {}], "latent_image": ["LATENT", {}],
            "denoise": number("FLOAT", 1.0, 0.0, 1.0)}, output=("LATENT",)),
        "VAEDecode": _node("VAEDecode", {"samples": ["LATENT", {}], "vae": ["VAE", {}]}, output=("IMAGE",)),
        "SaveImage": _node("SaveImage", {"images": ["IMAGE", {}],
                                         "filename_prefix": ["STRING", {"default": "ComfyUI"}]}, output_node=True),
        "LoadImage": _node("LoadImage", {"image": [sorted(input_files), {"image_upload": True}]},
                           output=("IMAGE", "MASK")),
        "ControlNetLoader": _node("ControlNetLoader", {"control_net_name": [["pose.safetensors"], {}]},
                                  output=("CONTROL_NET",)),
        "ControlNetApplyAdvanced": _node("ControlNetApplyAdvanced", {
            "positive": ["CONDITIONING", {}], "negative": ["CONDITIONING", {}], "control_net": ["CONTROL_NET", {}],
            "image": ["IMAGE", {}], "strength": number("FLOAT", 1.0, 0.0, 10.0),
            "start_percent": number("FLOAT", 0.0, 0.0, 1.0), "end_percent": number("FLOAT", 1.0, 0.0, 1.0)},
            output=("CONDITIONING", "CONDITIONING")),
        "StoryMakerCharacterFromImage": _node("StoryMakerCharacterFromImage", {
            "image": ["IMAGE", {}], "name": ["STRING", {"default": "character"}],
            "face_index": number("INT", 0, 0, 32), "identity": [["auto", "face", "appearance"], {"default": "auto"}]},
            output=("STORYMAKER_CHARACTER",)),
        "TestCharacterApply": _node("TestCharacterApply", {"model": ["MODEL", {}], "image": ["IMAGE", {}],
                                                           "weight": number("FLOAT", 0.8, 0.0, 2.0)},
                                    optional={"mask": ["MASK", {}]}, output=("MODEL",)),
    }
    return nodes


@dataclass
class Faults:
    reject_seed: int | None = None  # HTTP 400 with node_errors for the prompt with this seed
    fail_seed: int | None = None  # execution_error for the prompt with this seed
    drop_ws_after: int | None = None  # close a websocket after it was sent this many messages ...
    drop_ws_times: int = 1  # ... this many times
    die_after_accepting: int | None = None  # kill the server right after accepting the Nth prompt
    corrupt_views: int = 0  # damage the next N /view answers
    external_load: int = 0  # foreign prompts that sit in queue_pending forever
    own_prompt_ids: bool = False  # ignore the client's prompt_id, as ComfyUI did before July 2025
    inspect_route: bool = True  # serve the pack's /storymaker/inspect (False: a ComfyUI without the pack)
    models_root: str | None = None  # judge model files there (ComfyUI's models/ layout); None: all are fine
    steps: int = 3
    step_delay: float = 0.002


def _link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def positive_text(prompt: dict) -> str:
    sampler = next(n for n in prompt.values() if "seed" in n["inputs"] and "steps" in n["inputs"])
    link = sampler["inputs"]["positive"]
    while _link(link):
        inputs = prompt[str(link[0])]["inputs"]
        if isinstance(inputs.get("text"), str):
            return inputs["text"]
        link = inputs.get("positive")
    return ""


def prompt_seed(prompt: dict) -> int:
    return next(n["inputs"]["seed"] for n in prompt.values() if "seed" in n["inputs"] and "steps" in n["inputs"])


class FakeComfy:
    def __init__(self, faults: Faults | None = None):
        self.faults = faults or Faults()
        self.requests: Counter = Counter()  # "METHOD /path" -> count
        self.accepted: list[tuple[str, dict]] = []  # (prompt_id, prompt) in queue order
        self.rejected = 0
        self.inspected: list[dict] = []  # every {folder, name, kind} asked about on /storymaker/inspect
        self.inputs: dict[str, bytes] = {}
        self.outputs: dict[tuple[str, str], bytes] = {}
        self.history: dict[str, dict] = {}
        self.pending: list[list] = []
        self.running: list[list] = []
        self.ws_connections = 0
        self.dead = False
        self._sockets: dict[str, list[web.WebSocketResponse]] = {}
        self._sent: Counter = Counter()  # messages sent per websocket (by id)
        self._numbers = itertools.count(1)
        self._files = itertools.count(1)
        self._wakeup: asyncio.Event | None = None
        self._gate: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self, port: int = 0) -> "FakeComfy":
        self._wakeup, self._gate = asyncio.Event(), asyncio.Event()
        self._gate.set()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.middlewares.append(self._count)
        app.router.add_get("/object_info", self.h_object_info)
        app.router.add_post("/prompt", self.h_prompt)
        app.router.add_get("/history/{prompt_id}", self.h_history)
        app.router.add_get("/view", self.h_view)
        app.router.add_post("/upload/image", self.h_upload)
        app.router.add_get("/queue", self.h_queue)
        app.router.add_post("/queue", self.h_queue_post)
        app.router.add_post("/interrupt", self.h_interrupt)
        app.router.add_get("/ws", self.h_ws)
        if self.faults.inspect_route:
            app.router.add_post("/storymaker/inspect", self.h_inspect)
        app.on_shutdown.append(self._close_websockets)
        self._runner = web.AppRunner(app, shutdown_timeout=0.2)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", port))
        site = web.SockSite(self._runner, sock)
        await site.start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._worker = asyncio.get_running_loop().create_task(self._work())
        return self

    async def _close_websockets(self, app) -> None:
        for sockets in self._sockets.values():
            for ws in list(sockets):
                await ws.close()

    async def kill(self) -> None:
        """Like a crashed process: stop listening, drop every connection, forget the queue."""
        if self.dead:
            return
        self.dead = True
        if self._worker:
            self._worker.cancel()
        await self._close_websockets(None)
        await self._runner.cleanup()

    def pause(self) -> None:
        self._gate.clear()

    def resume(self) -> None:
        self._gate.set()

    @web.middleware
    async def _count(self, request, handler):
        self.requests[f"{request.method} {request.path}"] += 1
        return await handler(request)

    # -- HTTP ---------------------------------------------------------------------------------------

    async def h_object_info(self, request):
        return web.json_response(catalog(list(self.inputs)))

    async def h_prompt(self, request):
        body = await request.json()
        prompt = body["prompt"]
        for node_id, node in prompt.items():
            if node.get("class_type") not in catalog([]):
                self.rejected += 1
                return web.json_response({"error": {
                    "type": "missing_node_type", "message": f"Node '{node.get('class_type')}' not found",
                    "details": f"Node ID '#{node_id}'", "extra_info": {}}, "node_errors": {}}, status=400)
        if self.faults.reject_seed is not None and prompt_seed(prompt) == self.faults.reject_seed:
            self.rejected += 1
            sampler = next(k for k, n in prompt.items() if "seed" in n["inputs"])
            return web.json_response({
                "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                          "details": "", "extra_info": {}},
                "node_errors": {sampler: {"errors": [{
                    "type": "value_bigger_than_max", "message": "Value 150.0 bigger than max of 100.0",
                    "details": "cfg", "extra_info": {"input_name": "cfg"}}],
                    "dependent_outputs": ["9"], "class_type": "KSampler"}}}, status=400)
        prompt_id = (None if self.faults.own_prompt_ids else body.get("prompt_id")) or uuid.uuid4().hex
        number = next(self._numbers)
        self.pending.append([number, prompt_id, prompt, {"client_id": body.get("client_id")}, []])
        self.accepted.append((prompt_id, prompt))
        self._wakeup.set()
        if self.faults.die_after_accepting == len(self.accepted):  # dies before running it
            self._worker.cancel()
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self.kill()))
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": {}})

    async def h_history(self, request):
        prompt_id = request.match_info["prompt_id"]
        entry = self.history.get(prompt_id)
        return web.json_response({prompt_id: entry} if entry else {})

    async def h_view(self, request):
        q = request.query
        if q.get("type", "output") == "input":
            data = self.inputs.get(q["filename"])
        else:
            data = self.outputs.get((q.get("subfolder", ""), q["filename"]))
        if data is None:
            return web.Response(status=404)
        if self.faults.corrupt_views > 0:
            self.faults.corrupt_views -= 1
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
        return web.Response(body=data, content_type="image/png")

    async def h_upload(self, request):
        post = await request.post()
        image = post["image"]
        name, data = image.filename, image.file.read()
        if post.get("overwrite") not in ("true", "1"):
            stem, dot, ext = name.rpartition(".")
            for i in itertools.count(1):
                if name not in self.inputs or self.inputs[name] == data:
                    break
                name = f"{stem} ({i}).{ext}"
        self.inputs[name] = data
        return web.json_response({"name": name, "subfolder": post.get("subfolder", ""), "type": "input"})

    async def h_inspect(self, request):
        """The pack's route, judging files under ``models_root`` with the same core code as the real one."""
        files = (await request.json())["files"]
        self.inspected.extend(files)
        results = []
        for item in files:
            if self.faults.models_root is None:
                verdict = {"ok": True, "found": "fake", "problem": "", "fix": ""}
                path = None
            else:
                from pathlib import Path

                from storymaker_core.model_files import inspect

                root = Path(self.faults.models_root) / item["folder"]
                path = root / "models" / item["name"] if item["kind"] == "insightface_pack" else root / item["name"]
                verdict = inspect(path, item["kind"]).to_json()
            results.append({**item, **verdict, "path": str(path) if path else None})
        return web.json_response({"version": 1, "results": results})

    async def h_queue(self, request):
        foreign = [[0, f"foreign-{i}", {}, {}, []] for i in range(self.faults.external_load)]
        return web.json_response({"queue_running": self.running, "queue_pending": self.pending + foreign})

    async def h_queue_post(self, request):
        body = await request.json()
        delete = set(body.get("delete") or [])
        self.pending = [item for item in self.pending if item[1] not in delete and not body.get("clear")]
        return web.json_response({})

    async def h_interrupt(self, request):
        return web.json_response({})

    async def h_ws(self, request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.ws_connections += 1
        client_id = request.query.get("clientId", "")
        self._sockets.setdefault(client_id, []).append(ws)
        status = {"status": {"exec_info": {"queue_remaining": 0}}, "sid": client_id}
        await ws.send_json({"type": "status", "data": status})
        try:
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            self._sockets[client_id].remove(ws)
        return ws

    # -- execution ----------------------------------------------------------------------------------

    async def _send(self, client_id: str, kind: str, data: dict) -> None:
        for ws in list(self._sockets.get(client_id, [])):
            if ws.closed:
                continue
            try:
                await ws.send_str(json.dumps({"type": kind, "data": data}))
            except (ConnectionError, RuntimeError):  # the client went away: ComfyUI carries on too
                continue
            self._sent[id(ws)] += 1
            f = self.faults
            if f.drop_ws_after is not None and f.drop_ws_times > 0 and self._sent[id(ws)] >= f.drop_ws_after:
                f.drop_ws_times -= 1
                await ws.close()

    async def _work(self) -> None:
        while True:
            await self._gate.wait()
            if not self.pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            item = self.pending.pop(0)
            self.running = [item]
            await self._execute(item)
            self.running = []

    async def _execute(self, item: list) -> None:
        number, prompt_id, prompt, extra, _ = item
        client, f = extra.get("client_id") or "", self.faults
        await self._send(client, "execution_start", {"prompt_id": prompt_id, "timestamp": 0})
        seed, text = prompt_seed(prompt), positive_text(prompt)
        messages = [["execution_start", {"prompt_id": prompt_id}]]
        for node_id, node in prompt.items():
            await self._send(client, "executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id})
            if node["class_type"] == "KSampler":
                for step in range(1, f.steps + 1):
                    await asyncio.sleep(f.step_delay)
                    await self._send(client, "progress", {"value": step, "max": f.steps, "prompt_id": prompt_id,
                                                          "node": node_id})
                    for ws in self._sockets.get(client, []):  # a preview frame, as ComfyUI sends them
                        if not ws.closed:
                            try:
                                await ws.send_bytes(b"\x00\x00\x00\x01" + b"\x89PNG-preview")
                            except (ConnectionError, RuntimeError):
                                pass
                if seed == f.fail_seed:
                    error = {"prompt_id": prompt_id, "node_id": node_id, "node_type": "KSampler",
                             "exception_message": "CUDA out of memory (fake)", "exception_type": "RuntimeError",
                             "traceback": [], "current_inputs": {}, "current_outputs": {}}
                    await self._send(client, "execution_error", error)
                    self.history[prompt_id] = {"prompt": item, "outputs": {}, "status": {
                        "status_str": "error", "completed": False, "messages": messages + [["execution_error", error]]}}
                    return
        outputs = {}
        batch = next((n["inputs"]["batch_size"] for n in prompt.values() if "batch_size" in n["inputs"]), 1)
        for node_id, node in prompt.items():
            if node["class_type"] == "SaveImage":
                subfolder, _, base = node["inputs"]["filename_prefix"].rpartition("/")
                images = []
                for k in range(batch):  # image k of a batch is coloured as if rendered with seed + k
                    filename = f"{base}_{next(self._files):05d}_.png"
                    self.outputs[(subfolder, filename)] = render_png(seed + k, text)
                    images.append({"filename": filename, "subfolder": subfolder, "type": "output"})
                outputs[node_id] = {"images": images}
                await self._send(client, "executed",
                                 {"node": node_id, "output": outputs[node_id], "prompt_id": prompt_id})
        self.history[prompt_id] = {"prompt": item, "outputs": outputs, "meta": {}, "status": {
            "status_str": "success", "completed": True,
            "messages": messages + [["execution_success", {"prompt_id": prompt_id}]]}}
        await self._send(client, "executing", {"node": None, "prompt_id": prompt_id})
        await self._send(client, "execution_success", {"prompt_id": prompt_id, "timestamp": 0})


def serve_forever() -> None:
    """``python story_fake_comfy.py --port P ...``: a stand-in for ComfyUI's ``main.py`` in CLI tests."""
    import os
    import sys

    port = int(sys.argv[sys.argv.index("--port") + 1])
    with open("launched.json", "w") as f:
        json.dump({"argv": sys.argv[1:], "pid": os.getpid()}, f)

    async def main():
        await FakeComfy().start(port=port)
        await asyncio.Event().wait()

    asyncio.run(main())


if __name__ == "__main__":
    serve_forever()
