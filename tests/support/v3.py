"""The pack's V3 nodes called as a library (library-mode ComfyUI tests, benchmarks): `execute` is a classmethod
that returns an `io.NodeOutput`; these unwrap it. Needs ComfyUI importable."""

from __future__ import annotations

import contextlib
import functools


def outputs(node_class, *args, **kwargs) -> tuple:
    """The outputs of `node_class.execute(...)` as the tuple a classic node returned (`()` for none)."""
    return node_class.execute(*args, **kwargs).result or ()


def node_function(node_class):
    """`node_class`'s execute returning its outputs' tuple (what `Node().FUNCTION` was for a classic node)."""
    return functools.partial(outputs, node_class)


def ui(node_class, *args, **kwargs) -> dict:
    """The `ui` part of what `node_class.execute(...)` returns (what the editor shows on the node)."""
    return node_class.execute(*args, **kwargs).ui


@contextlib.contextmanager
def recorded_progress(prompt_id: str = "test", node_id: str = "7"):
    """Runs the block as node `node_id` of a prompt and yields the list of (node id, value, max) updates that
    ComfyUI's progress registry receives (what the editor's bar for the node shows)."""
    from comfy_execution.progress import ProgressHandler, add_progress_handler, get_progress_state
    from comfy_execution.utils import CurrentNodeContext

    updates = []

    class Recorder(ProgressHandler):
        def __init__(self):
            super().__init__("storymaker-test-recorder")

        def update_handler(self, node_id, value, max_value, state, prompt_id, image=None):
            updates.append((node_id, value, max_value))

    add_progress_handler(Recorder())
    try:
        with CurrentNodeContext(prompt_id, node_id):
            yield updates
    finally:
        get_progress_state().unregister_handler("storymaker-test-recorder")
