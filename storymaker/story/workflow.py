"""API-workflow templates: load them, resolve bindings to (node id, input name) slots, fill values in.

No node id is hard-coded: a binding names a node by ``title`` (``_meta.title``, what the editor shows) or
by id, and when the story file says nothing the runner follows conventions on node titles
(``positive``, ``negative``, ``sampler``, ``latent``, ``pose``, ``output``, ``character:<name|N>``,
``mask:<name|N>``) or on the graph itself (the only sampler; the text encoder feeding its ``positive``).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bindings import Bindings, Target
from .checker import read_document
from .errors import StoryFileError, describe_node
from .schema import CastMember

_CHARACTER_TITLE = re.compile(r"^\s*(character|mask)\s*:\s*(.+?)\s*$", re.IGNORECASE)
SAMPLER_BINDINGS = ("seed", "steps", "cfg", "sampler_name", "scheduler", "denoise")
_TITLE_CONVENTIONS = {  # binding -> (titles, input)
    "prompt": (("positive", "prompt"), "text"),
    "negative": (("negative",), "text"),
    "pose": (("pose",), "image"),
    "width": (("latent", "size"), "width"),
    "height": (("latent", "size"), "height"),
    "output": (("output",), None),
}


def is_link(value: Any) -> bool:
    """API format links are ``[source_node_id, output_index]``."""
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and isinstance(value[1], int) and not isinstance(value[1], bool))


@dataclass(frozen=True)
class Slot:
    node: str
    input: str | None  # None for `output` (a node, not an input)


class Template:
    """One API-format workflow file (``Export (API)`` in the editor)."""

    def __init__(self, path: Path, nodes: dict[str, dict]):
        self.path = path
        self.nodes = nodes
        self._titles: dict[str, list[str]] = {}
        for node_id, node in nodes.items():
            self._titles.setdefault(self.title(node_id).strip().casefold(), []).append(node_id)

    @classmethod
    def load(cls, path: Path) -> "Template":
        doc = read_document(path)
        if isinstance(doc, dict) and isinstance(doc.get("nodes"), list) and "links" in doc:
            raise StoryFileError(path, "this is the editor's workflow format; save it with 'Export (API)' "
                                       "(Workflow menu) and point the story at that file")
        if isinstance(doc, dict) and isinstance(doc.get("prompt"), dict) and len(doc) <= 3:
            doc = doc["prompt"]  # {"prompt": {...}} as posted to /prompt
        if not isinstance(doc, dict) or not doc:
            raise StoryFileError(path, "expected an API-format workflow: {node_id: {class_type, inputs}}")
        problems = []
        for node_id, node in doc.items():
            if not isinstance(node, dict) or not isinstance(node.get("class_type"), str):
                problems.append(f"node {node_id}: expected {{'class_type': ..., 'inputs': {{...}}}}")
            elif not isinstance(node.get("inputs", {}), dict):
                problems.append(f"node {node_id}: 'inputs' must be a mapping")
        if problems:
            raise StoryFileError(path, problems)
        nodes = {str(k): {**v, "inputs": dict(v.get("inputs") or {})} for k, v in doc.items()}
        for node_id, node in nodes.items():
            for name, value in node["inputs"].items():
                if is_link(value) and str(value[0]) not in nodes:
                    problems.append(f"{describe_node(node_id, nodes)} input '{name}' links to node "
                                    f"{value[0]}, which is not in the workflow")
        if problems:
            raise StoryFileError(path, problems)
        return cls(path, nodes)

    def title(self, node_id: str) -> str:
        node = self.nodes[node_id]
        return str((node.get("_meta") or {}).get("title") or node["class_type"])

    def with_title(self, title: str) -> list[str]:
        return list(self._titles.get(title.strip().casefold(), []))

    def describe(self, node_id: str) -> str:
        return describe_node(node_id, self.nodes)

    def consumers(self, node_id: str) -> list[tuple[str, str]]:
        """(node id, input name) of every input linked to an output of ``node_id``."""
        return [(other, name) for other, node in self.nodes.items() for name, value in node["inputs"].items()
                if is_link(value) and str(value[0]) == node_id]

    def fill(self, values: dict[Slot, Any]) -> dict[str, dict]:
        """A new prompt dict with each slot's input set to its value (the template is left untouched)."""
        prompt = copy.deepcopy(self.nodes)
        for slot, value in values.items():
            prompt[slot.node]["inputs"][slot.input] = value
        return prompt


@dataclass
class Resolved:
    """Where each binding of one template lands; ``missing`` says why a binding found nothing."""

    template: Template
    slots: dict[str, list[Slot]] = field(default_factory=dict)
    characters: dict[str, dict[str, list[Slot]]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def get(self, name: str) -> list[Slot]:
        return self.slots.get(name, [])


def resolve(template: Template, bindings: Bindings, cast: dict[str, CastMember]) -> Resolved:
    """Resolve explicit bindings first, then conventions for whatever the story file left out."""
    r = Resolved(template)
    for name, targets in bindings.targets.items():
        r.slots[name] = [s for t in targets for s in _explicit(r, t, name)]
    _conventions(r, bindings)
    _character_conventions(r, cast)
    for key, parts in bindings.characters.items():
        for part, targets in parts.items():
            r.characters.setdefault(key, {})[part] = [s for t in targets for s in _explicit(r, t, part)]
    return r


def _explicit(r: Resolved, t: Target, binding: str) -> list[Slot]:
    tpl = r.template
    if t.node is not None:
        ids = [t.node] if t.node in tpl.nodes else []
        if not ids:
            r.problems.append(f"{t.field}.node: no node '{t.node}' in {tpl.path.name} "
                              f"(ids: {', '.join(sorted(tpl.nodes, key=_id_order))})")
    else:
        ids = tpl.with_title(t.title or "")
        if not ids:
            titles = sorted({tpl.title(n) for n in tpl.nodes})
            r.problems.append(f"{t.field}.title: no node titled '{t.title}' in {tpl.path.name} "
                              f"(titles: {', '.join(titles)})")
    slots = []
    for node_id in ids:
        name = t.input if t.input is not None or binding == "output" else _seed_input(tpl, node_id)
        problem = _check_input(tpl, node_id, name)
        if problem:
            r.problems.append(f"{t.field}: {problem}")
        else:
            slots.append(Slot(node_id, name))
    return slots


def _check_input(tpl: Template, node_id: str, name: str | None) -> str | None:
    if name is None:
        return None
    inputs = tpl.nodes[node_id]["inputs"]
    if name not in inputs:
        return (f"{tpl.describe(node_id)} in {tpl.path.name} has no input '{name}' "
                f"(its inputs: {', '.join(inputs) or 'none'})")
    if is_link(inputs[name]):
        return (f"{tpl.describe(node_id)} input '{name}' is connected to node {inputs[name][0]}; "
                f"bind the value on that node instead")
    return None


def _seed_input(tpl: Template, node_id: str) -> str:
    inputs = tpl.nodes[node_id]["inputs"]
    return "seed" if "seed" in inputs or "noise_seed" not in inputs else "noise_seed"


def _id_order(node_id: str):
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def _sampler(tpl: Template) -> tuple[str | None, str]:
    titled = tpl.with_title("sampler") or tpl.with_title("ksampler")
    if len(titled) == 1:
        return titled[0], ""
    found = titled or [n for n, node in sorted(tpl.nodes.items(), key=lambda kv: _id_order(kv[0]))
                       if {"steps", "cfg"} <= node["inputs"].keys()
                       and ({"seed", "noise_seed"} & node["inputs"].keys())]
    if len(found) == 1:
        return found[0], ""
    if not found:
        return None, f"no sampler node (with steps, cfg and seed inputs) in {tpl.path.name}"
    return None, (f"{tpl.path.name} has several sampler nodes ({', '.join(found)}); title the one to use "
                  f"'sampler' or bind it in the story file")


def _walk_to_text(tpl: Template, node_id: str, polarity: str) -> str | None:
    """Follow the sampler's ``positive``/``negative`` link upstream through conditioning nodes
    (ControlNet apply, StoryMaker apply, ...) to the node that has a ``text`` value."""
    link = tpl.nodes[node_id]["inputs"].get(polarity)
    for _ in range(32):
        if not is_link(link):
            return None
        source = str(link[0])
        inputs = tpl.nodes[source]["inputs"]
        if isinstance(inputs.get("text"), str):
            return source
        link = inputs.get(polarity) if is_link(inputs.get(polarity)) else inputs.get("conditioning")
    return None


def _conventions(r: Resolved, bindings: Bindings) -> None:
    tpl = r.template
    sampler, why = _sampler(tpl)
    for name in SAMPLER_BINDINGS:
        if name in bindings.targets:
            continue
        wanted = _seed_input(tpl, sampler) if (sampler and name == "seed") else name
        if sampler is None:
            r.missing[name] = why
        elif wanted not in tpl.nodes[sampler]["inputs"]:
            r.missing[name] = f"the sampler {tpl.describe(sampler)} has no input '{wanted}'"
        elif _check_input(tpl, sampler, wanted):
            r.missing[name] = _check_input(tpl, sampler, wanted)
        else:
            r.slots[name] = [Slot(sampler, wanted)]
    for name, (titles, input_name) in _TITLE_CONVENTIONS.items():
        if name in bindings.targets:
            continue
        ids = [n for t in titles for n in tpl.with_title(t)]
        if not ids and name in ("prompt", "negative") and sampler:
            found = _walk_to_text(tpl, sampler, "positive" if name == "prompt" else "negative")
            ids = [found] if found else []
        if not ids and name in ("width", "height"):
            ids = [n for n, node in tpl.nodes.items() if {"width", "height", "batch_size"} <= node["inputs"].keys()]
            ids = ids if len(ids) == 1 else []
        problems = [p for n in ids if (p := _check_input(tpl, n, input_name))]
        if problems:
            r.problems.extend(f"{tpl.path.name}: {p}" for p in problems)
        elif ids:
            r.slots[name] = [Slot(n, input_name) for n in ids]
        else:
            r.missing[name] = (f"no node titled {' or '.join(repr(t) for t in titles)} in {tpl.path.name}"
                               + (f" ({why})" if why and name in ("prompt", "negative") else ""))
    if "filename_prefix" not in bindings.targets:
        r.slots["filename_prefix"] = [Slot(n, "filename_prefix") for n, node in tpl.nodes.items()
                                      if isinstance(node["inputs"].get("filename_prefix"), str)]


def _character_conventions(r: Resolved, cast: dict[str, CastMember]) -> None:
    tpl = r.template
    folded = {name.casefold(): name for name in cast}
    for node_id in sorted(tpl.nodes, key=_id_order):
        match = _CHARACTER_TITLE.match(tpl.title(node_id))
        if not match:
            continue
        part = "image" if match.group(1).lower() == "character" else "mask"
        key = match.group(2)
        if key.isdigit():
            key = str(int(key))
            if key == "0":
                r.problems.append(f"{tpl.path.name}: {tpl.describe(node_id)}: character slots count from 1")
                continue
        elif key.casefold() in folded:
            key = folded[key.casefold()]
        else:
            r.problems.append(f"{tpl.path.name}: {tpl.describe(node_id)} names '{key}', who is not in the cast "
                              f"({', '.join(cast) or 'empty'}); rename the node or add '{key}' to `cast:`")
            continue
        problem = _check_input(tpl, node_id, "image")
        if problem:
            r.problems.append(f"{tpl.path.name}: {problem}")
        else:
            r.characters.setdefault(key, {}).setdefault(part, []).append(Slot(node_id, "image"))
