"""Which story template renders a shot with 0, 1, 2 or 3 characters, and what each template needs.

The converter reads each template once, the way the runner will (``story.workflow``), and learns:
how many ``character:N`` slots it has, whether each slot's character is cut out by Segment Anything (a
``sam`` link) or needs a ``mask:N`` image, whether its character node takes ``identity``, and which
image nodes feed StoryMaker Apply's region masks (``mask_1..3``) so the converter can bind its own
left-to-right masks to them. A template that cannot render a converted shot is refused here with what
to change, not discovered by a server hours later.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..bindings import Bindings
from ..errors import StoryError
from ..plan import CHARACTER_NODE
from ..workflow import Template, is_link, resolve

__all__ = ["DEFAULT_TEMPLATES", "TemplateInfo", "TemplateError", "default_template_dir", "inspect_template"]

#: characters in the shot -> template file (in workflows/api/ of this pack)
DEFAULT_TEMPLATES = {
    0: "story-template-no-character.api.json",
    1: "story-template-one-character-sam.api.json",
    2: "story-template-two-characters-sam.api.json",
    3: "story-template-three-characters-sam.api.json",
}
_APPLY = "StoryMakerApply"
_REGION_LOADERS = ("LoadImageMask", "LoadImage")


class TemplateError(StoryError):
    """A template cannot render converted shots; the message says what to change."""


@dataclass
class TemplateInfo:
    path: Path
    slots: int
    #: slot -> how its character is cut out of the reference: "sam" (Segment Anything), "mask" (a mask:N
    #: node: the cast needs `mask:`), "none" (the character node uses the whole reference, and only for a
    #: character without a face: it refuses a face without mask or SAM)
    masking: dict[int, str]
    identity: bool  # every character node has an `identity` input
    regions: dict[int, str] = field(default_factory=dict)  # region slot -> node id of its mask image

    @property
    def needs_mask(self) -> bool:
        return "mask" in self.masking.values()


def default_template_dir() -> Path:
    """``workflows/api`` of this pack (three levels above this package)."""
    return Path(__file__).resolve().parents[3] / "workflows" / "api"


def inspect_template(path: Path, count: int) -> TemplateInfo:
    """Read ``path`` as the template for shots with ``count`` characters; raise ``TemplateError`` if it
    cannot render them (wrong number of slots, a character node without an ``identity`` input)."""
    if not path.is_file():
        raise TemplateError(f"template for {count}-character shots: {path} does not exist (build it with "
                            "python scripts/build_workflows.py, or pass --template {count}=FILE)")
    tpl = Template.load(path)
    resolved = resolve(tpl, Bindings(), {})
    slots = sorted(int(k) for k in resolved.characters if k.isdigit())
    named = [k for k in resolved.characters if not k.isdigit()]
    problems = [p for p in resolved.problems if "who is not in the cast" not in p]
    if named or [n for n in resolved.problems if "who is not in the cast" in n]:
        problems.append("converted stories fill numbered slots: title the character nodes character:1, character:2, ...")
    if slots != list(range(1, count + 1)):
        problems.append(f"has character slots {slots or 'none'}; shots with {count} character(s) need "
                        f"character:1..{count}" if count else f"has character slots {slots}; it is the template "
                                                                 "for shots with no character")
    masking, identity = {}, True
    for slot in slots:
        parts = resolved.characters[str(slot)]
        nodes = [n for s in parts.get("image", []) for n, name in tpl.consumers(s.node)
                 if name == "image" and tpl.nodes[n]["class_type"] == CHARACTER_NODE]
        has_sam = any(is_link(tpl.nodes[n]["inputs"].get("sam")) for n in nodes)
        masking[slot] = "mask" if parts.get("mask") else "sam" if has_sam else "none"
        if not nodes:
            problems.append(f"character:{slot} feeds no {CHARACTER_NODE} node")
        elif not all("identity" in tpl.nodes[n]["inputs"] for n in nodes):
            problems.append(f"the {CHARACTER_NODE} node of character:{slot} has no `identity` input, so the "
                            "identity mode from ViStoryBench's tag cannot be set; regenerate the template "
                            "(python scripts/build_workflows.py) or re-export it with the current pack")
            identity = False
    if problems:
        raise TemplateError(f"template {path} for {count}-character shots: " + "; ".join(problems))
    return TemplateInfo(path, len(slots), masking, identity, _regions(tpl))


def _regions(tpl: Template) -> dict[int, str]:
    """Region slot -> the LoadImageMask/LoadImage node feeding StoryMaker Apply's ``mask_<slot>``."""
    regions: dict[int, str] = {}
    for node in tpl.nodes.values():
        if node["class_type"] != _APPLY:
            continue
        for slot in (1, 2, 3):
            link = node["inputs"].get(f"mask_{slot}")
            if is_link(link) and tpl.nodes[str(link[0])]["class_type"] in _REGION_LOADERS \
                    and isinstance(tpl.nodes[str(link[0])]["inputs"].get("image"), str):
                regions[slot] = str(link[0])
    return regions


def copy_template(info: TemplateInfo, folder: Path) -> Path:
    """Copy the template beside the converted stories, so the output folder renders from anywhere."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / info.path.name
    if not target.exists() or target.read_bytes() != info.path.read_bytes():
        shutil.copyfile(info.path, target)
    return target
