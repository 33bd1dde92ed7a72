"""Field-by-field checking of a parsed story document: every problem is collected as
``field.path: what is wrong (what to do)``, so a user fixes a story file in one pass."""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import unicodedata
from pathlib import Path
from typing import Any

import yaml

from .errors import StoryFileError

MAX_SEED = 2**64 - 1


def _ascii_slug(text: str, max_len: int) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:max_len].rstrip("-")


def slugify(text: str, max_len: int = 40) -> str:
    """ASCII file-name-safe slug: ``"Alice at the café!"`` → ``alice-at-the-cafe``."""
    return _ascii_slug(text, max_len) or "scene"


def slug_or_hash(text: str, prefix: str, max_len: int = 40) -> str:
    """``slugify``, or ``<prefix>-<8 hex of sha256>`` when nothing ASCII is left (Japanese, Russian, ...):
    two different texts must not both become ``scene``, and the same text always gives the same slug."""
    return _ascii_slug(text, max_len) or f"{prefix}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:8]}"


def cast_name(cast: dict, name: str) -> str | None:
    folded = {k.casefold(): k for k in cast}
    return folded.get(str(name).casefold())


class Checker:
    """Collects problems while walking the raw document; helpers return None for bad values."""

    def __init__(self, base: Path):
        self.base = base
        self.problems: list[str] = []
        self.unusable_members: set[str] = set()  # cast names whose entry has a problem of its own (casefolded)

    def bad(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def mapping(self, value: Any, where: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()):
        if not isinstance(value, dict):
            self.bad(where, f"expected a mapping with {', '.join(allowed)}; got {type(value).__name__}")
            return None
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"known fields: {', '.join(allowed)}"
                self.bad(f"{where}.{key}", f"unknown field ({hint})")
        for key in required:
            if value.get(key) is None:
                self.bad(f"{where}.{key}", "is required")
        return value

    def string(self, value: Any, where: str) -> str | None:
        if not isinstance(value, str) or not value.strip():
            self.bad(where, f"expected non-empty text; got {value!r}")
            return None
        return value

    def integer(self, value: Any, where: str, lo: int = 0, hi: int = MAX_SEED) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.bad(where, f"expected a whole number from {lo} to {hi}; got {value!r}")
            return None
        return value

    def number(self, value: Any, where: str, lo: float, hi: float) -> float | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            self.bad(where, f"expected a number from {lo} to {hi}; got {value!r}")
            return None
        return value

    def file(self, value: Any, where: str, image: bool = True) -> Path | None:
        if self.string(value, where) is None:
            return None
        path = (self.base / value).resolve()
        if not path.is_file():
            self.bad(where, f"file not found: {path} (paths are relative to the story file)")
            return None
        if image:
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(path) as im:
                    im.verify()
            except (UnidentifiedImageError, OSError, SyntaxError) as exc:
                self.bad(where, f"cannot read {path} as an image ({exc})")
                return None
        return path


def read_document(path: Path) -> Any:
    """Parse YAML or JSON, turning syntax errors into ``StoryFileError`` with line and column.

    Files are UTF-8; a byte-order mark (Notepad, PowerShell) is accepted, any other encoding is a
    story-file error that says how to fix it rather than a traceback.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise StoryFileError(path, f"line {line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); "
                                   f"save the file as UTF-8") from None
    except OSError as exc:
        raise StoryFileError(path, f"cannot read the file ({exc.strerror or exc})") from None
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise StoryFileError(path, f"line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problem = getattr(exc, "problem", None) or str(exc)
        raise StoryFileError(path, f"{where}: invalid YAML: {problem}") from None
