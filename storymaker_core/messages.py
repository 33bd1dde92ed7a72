"""Another library's error text inside one of our messages: plain text (no terminal colour codes), its first
line, and without repeating what our message already names (a file's full path becomes its name)."""

from __future__ import annotations

import os
import re

_TERMINAL_CODES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[\x30-\x5a\x5c-\x5f]")  # CSI, then 2-byte escapes


def plain(text: str) -> str:
    """`text` without terminal colour/cursor codes."""
    return _TERMINAL_CODES.sub("", text)


def detail(error: BaseException, *named_paths, limit: int = 300) -> str:
    """The first line of `error`'s text for a message that already names `named_paths` (there they are shortened
    to their file names), without terminal codes, at most `limit` characters."""
    text = plain(str(error)).strip()
    text = text.splitlines()[0] if text else type(error).__name__
    for path in named_paths:
        path = str(path)
        if path and os.path.basename(path) != path:
            text = text.replace(path, os.path.basename(path.rstrip("/\\")) or path)
    return text if len(text) <= limit else text[:limit - 3] + "..."
