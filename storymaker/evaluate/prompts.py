"""FastComposer's 40 evaluation prompts (shipped as prompts_fastcomposer.json) and subsets.

Why a subset parameter: StoryMaker reports 20 of FastComposer's prompts but does not
say which, so the choice must be explicit and recorded with the results.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

PROMPTS_FILE = Path(__file__).with_name("prompts_fastcomposer.json")
GROUPS = ("accessory", "style", "action", "context")
DEFAULT_SUBSET = "first5-per-group"

SUBSET_HELP = (
    "which FastComposer prompts: 'all' (40), 'first5-per-group' (default, 20: first 5 of each "
    "group), 'every-other' (20: indices 0,2,4,... of each group), group names "
    "('accessory,action'), or global indices 0-39 in source order ('0-4,10-14')"
)


@dataclass(frozen=True)
class PromptTemplate:
    """One prompt: ``id`` like ``"accessory/03"``, its group, and the raw template."""

    id: str
    group: str
    index: int  # global index 0..39 in the source order accessory, style, action, context
    template: str

    def render(self, class_token: str = "person", unique_token: str = "") -> str:
        """Fill the placeholders; an empty unique token is dropped (no double space)."""
        text = self.template.replace("{unique_token}", unique_token).replace("{class_token}", class_token)
        return re.sub(r"\s+", " ", text).strip()


def load_prompt_file(path: str | Path = PROMPTS_FILE) -> dict:
    """The whole JSON document (groups + source + notes)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_prompts(path: str | Path = PROMPTS_FILE) -> list[PromptTemplate]:
    """All prompts in source order."""
    doc = load_prompt_file(path)
    out: list[PromptTemplate] = []
    for group in GROUPS:
        for i, template in enumerate(doc["groups"][group]):
            out.append(PromptTemplate(f"{group}/{i:02d}", group, len(out), template))
    return out


def select_prompts(subset: str = DEFAULT_SUBSET, prompts: list[PromptTemplate] | None = None) -> list[PromptTemplate]:
    """Apply a subset spec (see ``SUBSET_HELP``); raises ValueError for a bad spec."""
    prompts = load_prompts() if prompts is None else prompts
    spec = subset.strip().lower()
    if spec == "all":
        return list(prompts)
    by_group: dict[str, list[PromptTemplate]] = {g: [p for p in prompts if p.group == g] for g in GROUPS}
    if spec == "first5-per-group":
        return [p for g in GROUPS for p in by_group[g][:5]]
    if spec == "every-other":
        return [p for g in GROUPS for p in by_group[g][::2]]
    parts = [s.strip() for s in spec.split(",") if s.strip()]
    if parts and all(s in GROUPS for s in parts):
        return [p for g in GROUPS if g in parts for p in by_group[g]]
    chosen: list[int] = []
    for part in parts:
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"bad prompt subset {subset!r}: {SUBSET_HELP}")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo > hi or hi >= len(prompts):
            raise ValueError(f"prompt indices {part!r} out of range 0-{len(prompts) - 1}")
        chosen.extend(i for i in range(lo, hi + 1) if i not in chosen)
    if not chosen:
        raise ValueError(f"empty prompt subset {subset!r}: {SUBSET_HELP}")
    return [prompts[i] for i in chosen]
