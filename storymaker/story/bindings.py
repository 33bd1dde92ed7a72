"""The ``bindings:`` section: which node input each story field (or custom value) is written to.

A target names a node by ``title`` (``_meta.title``, what the editor shows; every node with that title)
or by ``node`` id, plus the ``input`` to fill. Resolution against a workflow is in ``workflow.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .checker import Checker, cast_name

#: Binding names the runner fills from story fields, with the node input each one targets by default.
KNOWN_BINDINGS = {
    "prompt": "text", "negative": "text", "seed": None, "width": "width", "height": "height",
    "steps": "steps", "cfg": "cfg", "sampler_name": "sampler_name", "scheduler": "scheduler",
    "denoise": "denoise", "pose": "image", "filename_prefix": "filename_prefix", "output": None,
}
#: ``bindings.characters.<name>`` parts -> the node input each targets by default (identity: the cast's
#: ``identity`` mode, written to a StoryMaker Character from Image node)
CHARACTER_PARTS = {"image": "image", "mask": "image", "identity": "identity"}
_CUSTOM = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Target:
    """One node input to fill: by node ``title`` (every node with that title) or by node id."""

    field: str
    input: str | None
    node: str | None = None
    title: str | None = None


@dataclass
class Bindings:
    targets: dict[str, tuple[Target, ...]] = field(default_factory=dict)
    #: cast name or slot number ("1") -> {"image": targets, "mask": targets, "identity": targets}
    characters: dict[str, dict[str, tuple[Target, ...]]] = field(default_factory=dict)

    def merged(self, other: "Bindings") -> "Bindings":
        chars = {k: dict(v) for k, v in self.characters.items()}
        for key, parts in other.characters.items():
            chars.setdefault(key, {}).update(parts)
        return Bindings({**self.targets, **other.targets}, chars)


def _targets(c: Checker, raw: Any, where: str, default_input: str | None, need_input: bool):
    items = raw if isinstance(raw, list) else [raw]
    out = []
    for i, item in enumerate(items):
        spot = f"{where}[{i}]" if isinstance(raw, list) else where
        if c.mapping(item, spot, ("node", "title", "input")) is None:
            continue
        if ("node" in item) == ("title" in item):
            c.bad(spot, "give exactly one of 'title' (node title in the workflow) or 'node' (node id)")
            continue
        key = "node" if "node" in item else "title"
        ref = str(item[key]) if isinstance(item[key], (str, int)) and str(item[key]).strip() else None
        name = item.get("input", default_input)
        if ref is None:
            c.bad(f"{spot}.{key}", f"expected a node {key}; got {item[key]!r}")
        elif need_input and not (isinstance(name, str) and name):
            c.bad(f"{spot}.input", "is required: the name of the node input to fill")
        else:
            out.append(Target(spot, name, **{key: ref}))
    return tuple(out)


def _character_bindings(c: Checker, raw: Any, where: str, cast: dict) -> dict[str, dict[str, tuple[Target, ...]]]:
    if not isinstance(raw, dict):
        c.bad(where, "expected a mapping of cast name (or slot number) -> {image: ..., mask: ..., identity: ...}")
        return {}
    out = {}
    for key, parts in raw.items():
        spot = f"{where}.{key}"
        key = str(key).strip()
        name = str(int(key)) if key.isdigit() else cast_name(cast, key)
        if name is None:
            c.bad(spot, f"'{key}' is not in the cast ({', '.join(cast) or 'empty'}) nor a slot number")
        elif c.mapping(parts, spot, tuple(CHARACTER_PARTS)) is not None:
            out[name] = {part: _targets(c, t, f"{spot}.{part}", CHARACTER_PARTS[part], True) for part, t in parts.items()
                         if part in CHARACTER_PARTS}
    return out


def parse_bindings(c: Checker, raw: Any, where: str, cast: dict) -> Bindings:
    """``bindings:`` as written in the story (or under a workflow) -> ``Bindings``; problems go to ``c``."""
    result = Bindings()
    if raw is None:
        return result
    if not isinstance(raw, dict):
        c.bad(where, "expected a mapping of binding name -> {title|node, input}")
        return result
    for name, spec in raw.items():
        spot = f"{where}.{name}"
        if name == "characters":
            result.characters = _character_bindings(c, spec, spot, cast)
        elif name in KNOWN_BINDINGS:
            result.targets[name] = _targets(c, spec, spot, KNOWN_BINDINGS[name], False)
        elif _CUSTOM.match(str(name)):
            result.targets[name] = _targets(c, spec, spot, None, True)
        else:
            c.bad(spot, "binding names are letters, digits and '_' (fill custom ones with `values:`)")
    return result
