"""ComfyUI's two workflow formats and how they map, given each node's input spec.

* API format (what `POST /prompt` takes): `{id: {"class_type", "inputs": {name: value | [src_id, slot]},
  "_meta": {"title"}}}`.
* UI format (what the editor saves): `nodes` with `widgets_values` (the widget inputs' values in input
  order, plus the editor's extra widgets: `control_after_generate` right after a seed, the upload button after
  an image picker) and `links` `[id, from_node, from_slot, to_node, to_slot, type]`.

A node spec is `/object_info`'s entry: `{"input": {"required": {...}, "optional": {...}}, "output": [...],
"output_name": [...]}`. Used to ship every example in both formats and to check they describe one graph
(prompts are checked against the specs by `story.validate.check_prompt`).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

from .workflow_layout import COLUMN_WIDTH, TITLE_HEIGHT, positions as layered_positions

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
NOTE_TYPES = {"Note", "MarkdownNote"}  # the editor's own text boxes: never sent in a prompt
SEED_NAMES = {"seed", "noise_seed"}


class WorkflowFormatError(ValueError):
    """A workflow that does not match the node specs, naming the node and input."""


AUTOGROW = "COMFY_AUTOGROW_V3"  # a V3 input that grows one socket at a time: `name.slot` in prompts


def autogrow_slots(name: str, options: Mapping) -> list:
    """[(`name.slot`, type, options, required)] of every socket an Autogrow input can grow, in order."""
    template = options.get("template", {})
    section = template.get("input", {})
    (slot_name, entry), required_template = next(
        ((item, kind == "required") for kind in ("required", "optional") for item in section.get(kind, {}).items()))
    names = template.get("names") or [f"{template.get('prefix', '')}{i}" for i in range(template.get("max", 1))]
    minimum = template.get("min", 1)
    kind, entry_options = entry[0], entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
    return [(f"{name}.{slot}", kind, entry_options, i < minimum and required_template) for i, slot in enumerate(names)]


def declared_inputs(spec: Mapping) -> tuple:
    """(required, optional) {input name: entry} as a prompt spells them: an Autogrow input becomes its
    `name.slot` sockets (the first `min` required)."""
    out = ({}, {})
    for section, target in (("required", 0), ("optional", 1)):
        for name, entry in spec.get("input", {}).get(section, {}).items():
            options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            if entry[0] == AUTOGROW:
                for slot, kind, slot_options, required in autogrow_slots(name, options):
                    out[0 if required and target == 0 else 1][slot] = [kind, slot_options]
            else:
                out[target][name] = entry
    return out


def _inputs(spec: Mapping, sections=("required", "optional")) -> list:
    """[(name, type_or_choices, options)] in declaration order, required first (Autogrow sockets expanded)."""
    out = []
    declared = dict(zip(("required", "optional"), declared_inputs(spec)))
    for section in sections:
        for name, entry in declared[section].items():
            out.append((name, entry[0], entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}))
    return out


def shown_sockets(spec: Mapping, linked: set) -> list:
    """[(name, type)] of the sockets the editor draws for a node whose linked inputs are `linked`: every plain
    socket; of an Autogrow input, its sockets up to the last linked one plus one free (at least `min`)."""
    out = []
    for section in ("required", "optional"):
        for name, entry in spec.get("input", {}).get(section, {}).items():
            options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            if entry[0] == AUTOGROW:
                slots = autogrow_slots(name, options)
                used = [i for i, slot in enumerate(slots) if slot[0] in linked]
                count = max(options.get("template", {}).get("min", 1), (used[-1] + 2) if used else 1)
                out += [(slot, kind) for slot, kind, _, _ in slots[:count]]
            elif not is_widget(entry[0], options):
                out.append((name, entry[0]))
    return out


def is_widget(kind, options: Mapping) -> bool:
    """A value typed in the node (not a socket): primitives and choice lists, unless forced to a socket."""
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput", False)


class EditorWidget(NamedTuple):
    """A widget the editor keeps in `widgets_values` but never sends in a prompt."""

    name: str  # the editor's own name for it
    default: str  # what the editor saves for a new node


SEED_CONTROL = EditorWidget("control_after_generate", "fixed")  # added right after its seed widget
UPLOAD_BUTTON = EditorWidget("upload", "image")  # added after the node's required widgets
UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload")


def widget_slots(spec: Mapping) -> list:
    """`widgets_values` order as the editor builds it: input names, and `EditorWidget`s where the editor adds
    its own: a seed's control right after it, an upload button after the required widgets (checked in a
    real editor by tests/comfyui/test_workflows_in_editor.py)."""
    slots, upload = [], False
    for section in ("required", "optional"):
        for name, kind, options in _inputs(spec, (section,)):
            if not is_widget(kind, options):
                continue
            slots.append(name)
            control = options.get("control_after_generate")
            if control or (control is None and kind == "INT" and name in SEED_NAMES):
                slots.append(SEED_CONTROL)
            upload = upload or (section == "required" and any(options.get(f) for f in UPLOAD_FLAGS))
        if section == "required" and upload:
            slots.append(UPLOAD_BUTTON)
    return slots


def socket_inputs(spec: Mapping) -> list:
    """[(name, type)] of the inputs drawn as sockets, in order."""
    return [(name, kind) for name, kind, options in _inputs(spec) if not is_widget(kind, options)]


def _spec(specs: Mapping, class_type: str, node_id) -> Mapping:
    if class_type not in specs:
        raise WorkflowFormatError(f"node {node_id}: unknown node type '{class_type}' (not a core node or ours)")
    return specs[class_type]


def ui_to_api(ui: Mapping, specs: Mapping) -> dict:
    """The API prompt a UI-format workflow queues (muted nodes left out)."""
    links = {link[0]: link for link in ui.get("links", [])}
    api = {}
    for node in ui["nodes"]:
        if node.get("mode", 0) == 4:
            raise WorkflowFormatError(f"node {node['id']} ({node['type']}) is bypassed; un-bypass or delete it")
        if node.get("mode", 0) == 2 or node["type"] in NOTE_TYPES:
            continue
        spec = _spec(specs, node["type"], node["id"])
        inputs = {}
        values = list(node.get("widgets_values") or [])
        slots = widget_slots(spec)
        if len(values) != len(slots):
            raise WorkflowFormatError(f"node {node['id']} ({node['type']}): {len(values)} widget values for "
                                      f"{len(slots)} widgets")
        inputs.update({name: value for name, value in zip(slots, values) if isinstance(name, str)})
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                _, source, slot, _, _, _ = links[socket["link"]]
                inputs[socket["name"]] = [str(source), slot]
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                "_meta": {"title": node.get("title") or node["type"]}}
    return api


def _height(spec: Mapping, sockets: int, values: list) -> int:
    """About the height of a node's body as the editor draws it (the title bar sits above it): slot rows,
    widget rows, a text box's extra."""
    multiline = any(options.get("multiline") for _, _, options in _inputs(spec))
    return 10 + 22 * max(sockets, len(spec["output"])) + 24 * len(values) + (90 if multiline else 0)


def _note_node(text: str, nodes: list) -> dict:
    """A markdown note above the top-left of the graph; the other nodes move down to make room."""
    width = 2 * COLUMN_WIDTH + 60
    lines = sum(max(1, -(-len(line) // 80)) for line in text.splitlines())  # ~80 characters a line at this width
    height = 30 + 15 * lines
    left = min(n["pos"][0] for n in nodes)
    top = min(n["pos"][1] for n in nodes)
    for n in nodes:
        n["pos"][1] += height + TITLE_HEIGHT + 40
    return {"id": max(n["id"] for n in nodes) + 1, "type": "MarkdownNote", "title": "About this workflow",
            "pos": [left, top], "size": [width, height], "flags": {}, "order": len(nodes), "mode": 0,
            "inputs": [], "outputs": [], "properties": {}, "widgets_values": [text]}


def api_to_ui(api: Mapping, specs: Mapping, positions: Mapping = None, note: str = None) -> dict:
    """A UI-format workflow for an API prompt (node ids must be integers, as the editor uses); nodes are laid
    out left to right by data flow unless `positions` ({node id: (x, y)}) places them. `note` (markdown)
    goes in a note above the graph: what the workflow shows and which files it needs."""
    nodes, links = [], []
    outgoing: dict = {}
    for node_id, node in api.items():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                source = api[value[0]]
                kind = _spec(specs, source["class_type"], value[0])["output"][value[1]]
                links.append([len(links) + 1, int(value[0]), value[1], int(node_id), name, kind])
                outgoing.setdefault((value[0], value[1]), []).append(len(links))
    link_for = {(link[3], link[4]): link for link in links}
    for order, (node_id, node) in enumerate(api.items()):
        spec = _spec(specs, node["class_type"], node_id)
        inputs = []
        linked = {name for name, value in node["inputs"].items() if isinstance(value, list)}
        for name, kind in shown_sockets(spec, linked):
            link = link_for.get((int(node_id), name))
            inputs.append({"name": name, "type": kind, "link": link[0] if link else None})
        values = []
        for slot in widget_slots(spec):
            values.append(slot.default if isinstance(slot, EditorWidget) else node["inputs"][slot])
        outputs = [{"name": output_name, "type": kind, "links": outgoing.get((node_id, slot), []), "slot_index": slot}
                   for slot, (kind, output_name) in enumerate(zip(spec["output"], spec.get("output_name", spec["output"])))]
        nodes.append({"id": int(node_id), "type": node["class_type"], "title": node.get("_meta", {}).get("title", node["class_type"]),
                      "pos": [0, 0], "size": [COLUMN_WIDTH, _height(spec, len(inputs), values)], "flags": {}, "order": order,
                      "mode": 0, "inputs": inputs, "outputs": outputs,
                      "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": values})
    placed = layered_positions(api, {str(n["id"]): TITLE_HEIGHT + n["size"][1] for n in nodes})
    placed.update(positions or {})
    for n in nodes:
        n["pos"] = list(placed[str(n["id"])])
    if note and nodes:
        nodes.append(_note_node(note, nodes))
    for link in links:  # the editor stores the target slot index, not the input name
        target = next(n for n in nodes if n["id"] == link[3])
        link[4] = [i["name"] for i in target["inputs"]].index(link[4])
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}
