"""A story's cast: named characters that a script calls by name, each encoded once and placed per scene.

The cast itself holds the characters as given (no tokens): encoding is per member, so an edit to one
character re-encodes that character only, and a scene's tokens are its on-stage members' tokens put into
slots in tag order (`encode.embeds_for_slots`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from .characters import Character

logger = logging.getLogger(__name__)

# Names are written inside [tags] of a script: brackets, commas and '|' would break the tag grammar.
_BAD_NAME_CHARACTERS = re.compile(r"[\[\],|#\x00-\x1f]")
RESERVED_NAMES = {"nc"}  # [NC] means "no character"


class CastError(ValueError):
    """A cast that a script could not call by name (empty, duplicate or unusable names)."""


@dataclass(frozen=True)
class Cast:
    """Named characters in the order they were connected; names are unique ignoring case."""

    names: tuple  # canonical spelling, connection order
    characters: tuple  # Character, same order
    descriptions: Mapping[str, str] = field(default_factory=dict)  # name -> text that replaces its tag
    face_only: bool = False  # the default for members whose own face_only is unset; never drops a faceless crop
    slots: tuple = ()  # the node input each member came from (e.g. "character_2"), for error messages
    clip_vision: Optional[object] = field(default=None, compare=False, repr=False)  # the host's CLIP vision

    def character(self, name: str) -> Character:
        """The member called `name` (any case)."""
        for known, character in zip(self.names, self.characters):
            if known.lower() == name.strip().lower():
                return character
        raise CastError(f"no character named {name!r} in the cast; known: {', '.join(self.names) or '(none)'}")


def check_name(name: str, where: str) -> str:
    """The name, stripped; a CastError naming `where` when a script could not call it by that name."""
    stripped = (name or "").strip()
    if not stripped:
        raise CastError(f"{where}: the character has no name; give it one in its node's 'name' (e.g. ava).")
    if _BAD_NAME_CHARACTERS.search(stripped):
        raise CastError(f"{where}: the name {stripped!r} contains [ ] , | # or a control character, which the script's "
                        f"tags cannot hold; use letters, digits, spaces, '-' or '_'.")
    if stripped.lower() in RESERVED_NAMES:
        raise CastError(f"{where}: 'NC' is reserved ([NC] = no character on stage); rename the character.")
    return stripped


def parse_descriptions(text: str, names: Sequence[str]) -> dict:
    """`name: description` lines -> {canonical name: description}; blank lines and `#` comments skipped."""
    canonical = {name.lower(): name for name in names}
    descriptions, problems = {}, []
    for number, raw in enumerate((text or "").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, description = line.partition(":")
        if not colon or not description.strip():
            problems.append(f"descriptions line {number}: write 'name: description', e.g. 'ava: a woman with "
                            f"short red hair' (got {line!r})")
            continue
        key = name.strip().lower()
        if key not in canonical:
            problems.append(f"descriptions line {number}: no character named {name.strip()!r}; known: "
                            f"{', '.join(names) or '(none)'}")
        elif canonical[key] in descriptions:
            problems.append(f"descriptions line {number}: {canonical[key]!r} is described twice; keep one line")
        else:
            descriptions[canonical[key]] = description.strip()
    if problems:
        raise CastError("\n".join(problems))
    return descriptions


def make_cast(characters: Sequence[Character], slots: Sequence[str], descriptions: str = "",
              face_only: bool = False, clip_vision=None) -> Cast:
    """Check the members' names (unique ignoring case, usable in tags) and gather them into a Cast."""
    if not characters:
        raise CastError("the cast is empty: connect at least one character (Character from Image, Load StoryMaker "
                        "Character or a blend) to character_1.")
    names, seen = [], {}
    for character, slot in zip(characters, slots):
        name = check_name(character.name, slot)
        if name.lower() in seen:
            raise CastError(f"{seen[name.lower()]} and {slot} are both called {name!r}: a script calls characters by "
                            f"name, so give each a different name in its node.")
        seen[name.lower()] = slot
        names.append(name)
    if face_only:  # the default for every member; it applies only to members with a face (encode.face_only_applies)
        faceless = [n for n, c in zip(names, characters) if not any(m.has_face for m in c.members())]
        if faceless:
            logger.info("face_only is on: it does not apply to %s (appearance only, no face tokens), which keep their "
                        "character crop.", ", ".join(faceless))
    return Cast(names=tuple(names), characters=tuple(characters), descriptions=parse_descriptions(descriptions, names),
                face_only=face_only, slots=tuple(slots), clip_vision=clip_vision)
