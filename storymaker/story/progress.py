"""Progress bars (tqdm): one for the story, one per scene being rendered (sampler steps from the
websocket ``progress`` messages), and a logging handler that prints above the bars, not through them.
"""

from __future__ import annotations

import logging
import sys
from typing import IO

from tqdm import tqdm


class TqdmHandler(logging.Handler):
    """Route log records through ``tqdm.write`` so warnings do not tear the bars apart."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise
            self.handleError(record)


class SceneBar:
    """Sampler steps of one scene on one server."""

    def __init__(self, label: str, enabled: bool, file: IO[str]):
        self.bar = tqdm(total=1, desc=label, unit="step", leave=False, disable=not enabled, file=file,
                        dynamic_ncols=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {postfix}")
        self.bar.set_postfix_str("queued", refresh=False)

    def on_event(self, kind: str, data: dict) -> None:
        if kind == "execution_start":
            self.bar.set_postfix_str("running")
        elif kind == "progress":
            total, value = int(data.get("max") or 1), int(data.get("value") or 0)
            if self.bar.total != total:
                self.bar.reset(total=total)
            self.bar.n = min(value, total)
            self.bar.refresh()
        elif kind == "executing" and data.get("node") is not None:
            self.bar.set_postfix_str(f"node {data['node']}")

    def close(self) -> None:
        self.bar.close()


class Progress:
    def __init__(self, total: int, done: int, enabled: bool = True, file: IO[str] | None = None):
        self.enabled = enabled
        self.file = file or sys.stderr
        self.overall = tqdm(total=total, initial=done, desc="story", unit="scene", disable=not enabled,
                            file=self.file, dynamic_ncols=True)

    def scene(self, label: str) -> SceneBar:
        return SceneBar(label, self.enabled, self.file)

    def advance(self) -> None:
        self.overall.update(1)

    def close(self) -> None:
        self.overall.close()
