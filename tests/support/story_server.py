"""Queueing a StoryMaker Story on a real ComfyUI server and watching what it samples (tests and benchmarks)."""

from __future__ import annotations

import asyncio
import json


async def queue_and_watch(url: str, prompt: dict, interrupt_at_sample: int = 0, timeout: float = 1200,
                          client_id: str = "story-test") -> dict:
    """Queue `prompt` and follow its websocket events until it ends: the ids of the expanded samplers that
    started (a story's KSampler ids end in `.sample`), the outcome (success / error / interrupted), the error
    event, and the prompt id. With `interrupt_at_sample` = k, POST /interrupt when the k-th sampler starts."""
    import aiohttp

    started, outcome, error = [], None, None
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{url}/ws?clientId={client_id}") as ws:
            async with session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client_id}) as response:
                body = await response.json()
                assert response.status == 200, body
            prompt_id = body["prompt_id"]
            while outcome is None:
                message = await ws.receive(timeout=timeout)
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(message.data)
                data = event.get("data", {})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                kind, node_id = event["type"], data.get("node")
                if kind == "executing" and isinstance(node_id, str) and node_id.endswith(".sample"):
                    started.append(node_id)
                    if len(started) == interrupt_at_sample:
                        await session.post(f"{url}/interrupt", json={})
                elif kind == "execution_error":
                    outcome, error = "error", data
                elif kind == "execution_interrupted":
                    outcome = "interrupted"
                elif kind == "execution_success":
                    outcome = "success"
    return {"started": started, "outcome": outcome, "error": error, "prompt_id": prompt_id}


def run_story(url: str, prompt: dict, **kwargs) -> dict:
    """`queue_and_watch`, from synchronous code."""
    return asyncio.run(queue_and_watch(url, prompt, **kwargs))
