"""The story script: what an artist types into one node of the ComfyUI editor, one scene per line.

::

    # Ava's Sunday                                     <- a comment
    [Ava] reading a newspaper on a bench | seed=7
    [ava][ben] share an umbrella in the rain | candidates=4 layout=0-0.6,0.5-1
    an empty street at dawn, [NC]

Tags (``[ava]``, ``[ava, ben]``) put characters on stage in slot order (slot 1 = the first tag =
leftmost) and are replaced in the prompt by the characters' descriptions (or names); options after the
first ``|`` pin a seed, ask for several candidates, change IP strength or say where each character
stands. ``docs/story-script.md`` is the artist's reference; the tests hold this module to it.

Every mistake of every line is collected and raised as one :class:`ScriptError` before anything renders,
so an artist fixes the whole script in one pass. Seeds depend on a scene's own text, never on its
position, so inserting or moving lines re-renders nothing that was already there.
"""

from __future__ import annotations

import difflib
import math
import re
import unicodedata
import zlib
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from .regions import normalise_region, user_mask_index

__all__ = [
    "MAX_CANDIDATES",
    "MAX_IP_SCALE",
    "MAX_SEED",
    "OPTION_KEYS",
    "Scene",
    "ScriptError",
    "parse_script",
    "scene_prompt",
    "scene_seeds",
    "scene_stem",
    "slug",
]

MAX_SEED = 2**64 - 1
MAX_CANDIDATES = 16
MAX_IP_SCALE = 2.0
MAX_ON_STAGE = 3  # StoryMaker's released weights place at most three characters in one image
OPTION_KEYS = ("seed", "candidates", "ip_scale", "layout")
NO_CHARACTER = "nc"  # [NC], folded

#: characters on stage -> where they stand when the line gives no layout=
DEFAULT_LAYOUTS = {
    0: (),
    1: ("full",),
    2: ("left", "right"),
    3: ("left-third", "middle-third", "right-third"),
}
#: layout= words that stand for a whole layout: word -> (characters it needs, regions)
LAYOUT_PRESETS = {"halves": (2, DEFAULT_LAYOUTS[2]), "thirds": (3, DEFAULT_LAYOUTS[3])}

_TAG = re.compile(r"\[([^\[\]]*)\]")
_WHOLE_NUMBER = re.compile(r"\d+")
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_CAST_FORBIDDEN = "[],|"


class ScriptError(ValueError):
    """Every mistake of a story script, one per line of the message, each
    ``line N: <what is wrong>; <what to write instead>`` (``cast: ...`` for a bad cast name)."""

    def __init__(self, problems: Sequence[str]):
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Scene:
    """One scene line, checked and resolved against the cast."""

    number: int  # 1-based scene number (order among scene lines)
    line: int  # 1-based line number in the script text
    source: str  # the line as written, stripped
    text: str  # the prompt with tags replaced (no shared prefix/suffix)
    cast: tuple[str, ...]  # canonical cast names on stage, in tag order (slot 1 = first tag = leftmost)
    seed: Optional[int]  # from seed=, else None
    candidates: int  # from candidates=, default 1
    layout: tuple[str, ...]  # one region name per on-stage character; () when nobody is on stage
    ip_scale: Optional[float]  # from ip_scale=, else None (the node's value)


def _name_key(name: str) -> str:
    """How names are compared: case-insensitive, outer blanks stripped, inner blanks collapsed."""
    return " ".join(str(name).split()).casefold()


def _join_naturally(words: Sequence[str]) -> str:
    """``a`` / ``a and b`` / ``a, b and c``: how a tag group reads inside a prompt."""
    if len(words) <= 1:
        return "".join(words)
    return f"{', '.join(words[:-1])} and {words[-1]}"


def _tidy(text: str) -> str:
    """Close the gaps a removed or replaced tag leaves: one space between words, no space before
    punctuation, no doubled commas, no comma or blank at either end."""
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r" ([,.;:!?])", r"\1", text)
    text = re.sub(r",(?: ?,)+", ",", text)
    return text.strip(" ,")


def _quote(text: str, limit: int = 40) -> str:
    text = text.strip()
    return f"'{text if len(text) <= limit else text[: limit - 3] + '...'}'"


class _Line:
    """Checks one scene line; ``problems`` collects what is wrong, in the order the line reads."""

    def __init__(self, number: int, raw: str, cast: Mapping[str, str], cast_names: Sequence[str],
                 descriptions: Mapping[str, str], max_on_stage: int, user_masks: int):
        self.number, self.raw = number, raw
        self.cast, self.cast_names, self.descriptions = cast, cast_names, descriptions
        self.max_on_stage, self.user_masks = max_on_stage, user_masks
        self.problems: list[str] = []

    def bad(self, what: str, instead: str) -> None:
        self.problems.append(f"line {self.number}: {what}; {instead}")

    # -- tags ---------------------------------------------------------------------------------------

    def _stray_brackets(self, text: str, offset: int) -> None:
        """Report every '[' or ']' outside a balanced tag (``offset`` = where ``text`` starts)."""
        for i, char in enumerate(text):
            column = offset + i + 1
            if char == "[":
                self.bad(f"'[' at column {column} is never closed ({_quote(text[i:i + 24])})",
                         "close the tag with ']', e.g. [ava], or remove the '['")
            elif char == "]":
                self.bad(f"']' at column {column} closes no tag ({_quote(text[max(0, i - 23):i + 1])})",
                         "open the tag with '[', e.g. [ava], or remove the ']'")

    def _tag_members(self, inner: str, written: str) -> tuple[list[str], bool]:
        """The names inside one tag, as written (stripped), and whether the tag is sound; reports empty
        tags and empty names."""
        if not inner.strip():
            self.bad(f"{_quote(written)} is an empty tag",
                     "write a name inside, e.g. [ava], or [NC] for a scene with nobody, or remove it")
            return [], False
        parts = [part.strip() for part in inner.split(",")]
        names = [part for part in parts if part]
        if len(names) != len(parts):
            self.bad(f"{_quote(written)} has an empty name between commas",
                     f"separate the names with single commas: [{', '.join(names)}]")
            return names, False
        return names, True

    def _resolve(self, name: str, written: str) -> Optional[str]:
        """The canonical cast name of a tagged name, or None (reported) when the cast has none."""
        canonical = self.cast.get(_name_key(name))
        if canonical is not None:
            return canonical
        if not self.cast_names:
            self.bad(f"{_quote(written)} names '{name}' but the cast is empty",
                     "connect the characters to the cast node, or write [NC] (or no tag) for a scene "
                     "with nobody")
            return None
        close = difflib.get_close_matches(_name_key(name), list(self.cast), n=1, cutoff=0.6)
        hint = f"did you mean [{self.cast[close[0]]}]? " if close else ""
        self.bad(f"'{name}' in {_quote(written)} is not in the cast",
                 f"{hint}write one of {', '.join(self.cast_names)} (any case), or [NC] for a scene with "
                 "nobody")
        return None

    def _replacement(self, canonical: Optional[str], written_name: str) -> str:
        if canonical is None:
            return written_name
        description = self.descriptions.get(canonical)
        if description is None:
            folded = {_name_key(k): v for k, v in self.descriptions.items()}
            description = folded.get(_name_key(canonical))
        description = " ".join(str(description or "").split())
        return description or canonical

    def tags(self, prompt: str):
        """Split the prompt part of the line into text and tag groups (tags with only blanks between
        them form one group, replaced by its members joined naturally).

        Returns (text with tags replaced, text with tags removed, (name, tag) as written per tagged
        character, canonical name or None per tagged character, whether the tags are sound enough to
        count the characters on stage)."""
        pieces: list[str] = []  # text between groups, and each group's replacement, in line order
        bare: list[str] = []  # text between groups only
        group: Optional[list[str]] = None  # replacements of the group being read; None between groups
        tagged: list[tuple[str, str]] = []
        resolved: list[Optional[str]] = []
        nobody_tags: list[str] = []
        sound = True
        position = 0

        for match in _TAG.finditer(prompt):
            between = prompt[position:match.start()]
            if group is None or between.strip():
                if group is not None:
                    pieces.append(_join_naturally(group))
                if "[" in between or "]" in between:
                    self._stray_brackets(between, position)
                    sound = False
                pieces.append(between)
                bare.append(between)
                group = []
            written = match.group(0)
            names, tag_sound = self._tag_members(match.group(1), written)
            sound = sound and tag_sound
            for name in names:
                if _name_key(name) == NO_CHARACTER:
                    nobody_tags.append(written)
                    continue
                canonical = self._resolve(name, written)
                tagged.append((name, written))
                resolved.append(canonical)
                group.append(self._replacement(canonical, name))
            position = match.end()
        if group is not None:
            pieces.append(_join_naturally(group))
        tail = prompt[position:]
        if "[" in tail or "]" in tail:
            self._stray_brackets(tail, position)
            sound = False
        pieces.append(tail)
        bare.append(tail)

        if nobody_tags and tagged:
            names = ", ".join(name for name, _ in tagged)
            self.bad(f"[NC] (nobody on stage) stands together with {names}",
                     "write either [NC] for a scene with nobody or the characters' tags, not both")
            sound = False
        seen: dict[str, str] = {}
        for (name, written), canonical in zip(tagged, resolved):
            key = _name_key(canonical or name)
            if key in seen:
                self.bad(f"'{name}' is tagged twice ({_quote(seen[key])} and {_quote(written)})",
                         f"tag each character once: remove one '{name}'")
                sound = False
            else:
                seen[key] = written
        return _tidy("".join(pieces)), _tidy(" ".join(bare)), tagged, resolved, sound

    # -- options ------------------------------------------------------------------------------------

    def options(self, text: str) -> dict[str, tuple[str, str]]:
        """``key=value`` pairs after the first '|': folded key -> (value, pair as written)."""
        found: dict[str, tuple[str, str]] = {}
        for pair in _option_tokens(text):
            if "=" not in pair:
                if pair.startswith("[") or pair.endswith("]"):
                    self.bad(f"{_quote(pair)} stands after the '|', where only options go",
                             "move the tag before the first '|'")
                elif pair.casefold() in OPTION_KEYS:
                    self.bad(f"option {_quote(pair)} has no '=' and no value",
                             f"write {pair.casefold()}=<value>, e.g. {_example(pair.casefold())}")
                else:
                    self.bad(f"{_quote(pair)} after the '|' is not a key=value option",
                             "write options as key=value with no spaces inside, e.g. seed=7 "
                             "candidates=4; prompt text goes before the first '|'")
                continue
            key, value = pair.split("=", 1)
            folded = key.casefold()
            if not folded:
                self.bad(f"{_quote(pair)} has no key before '='",
                         f"write key=value with a key from {', '.join(k + '=' for k in OPTION_KEYS)}")
                continue
            if folded not in OPTION_KEYS:
                close = difflib.get_close_matches(folded, OPTION_KEYS, n=1, cutoff=0.6)
                hint = f"did you mean {close[0]}=? " if close else ""
                self.bad(f"unknown option '{key}' in {_quote(pair)}",
                         f"{hint}the options are {', '.join(k + '=' for k in OPTION_KEYS)}")
                continue
            if not value:
                self.bad(f"option {_quote(pair)} has no value", f"write e.g. {_example(folded)}")
                continue
            if folded in found:
                self.bad(f"option {folded}= is given twice ({_quote(found[folded][1])} and {_quote(pair)})",
                         f"keep one {folded}=")
                continue
            found[folded] = (value, pair)
        return found

    def whole_number(self, key: str, value: str, pair: str, low: int, high: int) -> Optional[int]:
        if not _WHOLE_NUMBER.fullmatch(value):
            self.bad(f"{_quote(pair)}: {key}= takes a whole number",
                     f"write a whole number from {low} to {high}, e.g. {_example(key)}")
            return None
        number = int(value)
        if not low <= number <= high:
            self.bad(f"{_quote(pair)}: {key}= is out of range",
                     f"write a whole number from {low} to {high}, e.g. {_example(key)}")
            return None
        return number

    def ip_scale(self, value: str, pair: str) -> Optional[float]:
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None and not math.isfinite(number):  # float() takes nan/inf: never a scale
            self.bad(f"{_quote(pair)}: ip_scale= must be a finite number",
                     f"write a number from 0 to {MAX_IP_SCALE:g}, e.g. ip_scale=0.8")
            return None
        if number is None or not _DECIMAL.fullmatch(value):
            self.bad(f"{_quote(pair)}: ip_scale= takes a number",
                     f"write a number from 0 to {MAX_IP_SCALE:g}, e.g. ip_scale=0.8")
            return None
        if not 0.0 <= number <= MAX_IP_SCALE:
            self.bad(f"{_quote(pair)}: ip_scale= is out of range",
                     f"write a number from 0 to {MAX_IP_SCALE:g}, e.g. ip_scale=0.8")
            return None
        return number + 0.0  # -0 -> 0.0

    def layout(self, value: str, pair: str, on_stage: Sequence[str], countable: bool) -> tuple[str, ...]:
        """One region name per character on stage (``countable``: the tags are sound enough to
        check the count against; otherwise only the region names are checked)."""
        count = len(on_stage)
        who = ", ".join(on_stage)
        word = value.casefold()
        if countable and count == 0:
            self.bad(f"{_quote(pair)} on a scene with nobody on stage",
                     "remove layout=, or tag the characters it places, e.g. [ava] ...")
            return ()
        if word == "full":
            return ("full",) * count
        if word in LAYOUT_PRESETS:
            needs, regions = LAYOUT_PRESETS[word]
            if countable and count != needs:
                self.bad(f"{_quote(pair)} needs exactly {needs} characters on stage, this scene has "
                         f"{count} ({who})", f"write {_layout_example(count)}")
            return regions
        regions: list[str] = []
        for part in value.split(","):
            part = part.strip()
            if not part:
                self.bad(f"{_quote(pair)} has an empty region between commas",
                         f"separate the regions with single commas, e.g. {_layout_example(max(count, 2))}")
                return ()
            if part.casefold() in LAYOUT_PRESETS:
                self.bad(f"'{part}' in {_quote(pair)} is a whole layout, not one region",
                         f"write layout={part.casefold()} alone, or one region per character such as "
                         f"{_layout_example(max(count, 2))}")
                continue
            try:
                region = normalise_region(part)
            except ValueError as error:
                what, _, instead = str(error).partition("; ")
                self.bad(f"{what} (in {_quote(pair)})", instead)
                continue
            mask = user_mask_index(region)
            if mask is not None and mask > self.user_masks:
                if self.user_masks == 0:
                    self.bad(f"'{part}' in {_quote(pair)} asks for a MASK, but no MASK is connected to "
                             "the story node", "connect the MASK to the story node, or use a named region "
                             "such as left or 0-0.6")
                else:
                    self.bad(f"'{part}' in {_quote(pair)} asks for MASK {mask}, but only "
                             f"{self.user_masks} MASK{'s are' if self.user_masks > 1 else ' is'} connected",
                             f"connect MASK {mask} to the story node, or use "
                             f"{'mask1' if self.user_masks == 1 else f'mask1..mask{self.user_masks}'} "
                             "or a named region such as left")
                continue
            regions.append(region)
        if countable and len(value.split(",")) != count:
            self.bad(f"{_quote(pair)} gives {len(value.split(','))} region(s) for {count} character(s) on "
                     f"stage ({who})", f"write one region per character in tag order, e.g. "
                     f"{_layout_example(count)}")
        return tuple(regions)

    # -- the whole line -----------------------------------------------------------------------------

    def parse(self, scene_number: int) -> Optional[Scene]:
        prompt, bar, option_text = self.raw.partition("|")
        text, bare, tagged, resolved, sound = self.tags(prompt)
        if not re.search(r"\w", bare):
            self.bad(f"{_quote(self.raw)} has no prompt text besides its tags and options",
                     "write what happens in the scene, e.g. [ava] reading a newspaper on a bench")
        too_many = len(tagged) > self.max_on_stage
        if too_many:
            names = ", ".join(name for name, _ in tagged)
            capacity = (f"StoryMaker places at most {MAX_ON_STAGE} characters in one image"
                        if self.max_on_stage == MAX_ON_STAGE
                        else f"this story places at most {self.max_on_stage} character(s) in one image")
            first = ", ".join(name for name, _ in tagged[:self.max_on_stage])
            rest = ", ".join(name for name, _ in tagged[self.max_on_stage:])
            self.bad(f"{len(tagged)} character(s) on stage ({names}), but {capacity}",
                     f"split the scene into two lines, e.g. one with [{first}] and one with [{rest}]"
                     if self.max_on_stage else "remove the tags: this story's scenes have nobody on stage")
        options = self.options(option_text) if bar else {}

        seed = candidates = ip_scale = None
        if "seed" in options:
            seed = self.whole_number("seed", *options["seed"], 0, MAX_SEED)
        if "candidates" in options:
            candidates = self.whole_number("candidates", *options["candidates"], 1, MAX_CANDIDATES)
        if "ip_scale" in options:
            ip_scale = self.ip_scale(*options["ip_scale"])
        on_stage = [canonical or name for (name, _), canonical in zip(tagged, resolved)]
        if "layout" in options:
            layout = self.layout(*options["layout"], on_stage, countable=sound and not too_many)
        else:
            layout = DEFAULT_LAYOUTS.get(len(on_stage), ())

        if self.problems:
            return None
        return Scene(number=scene_number, line=self.number, source=self.raw.strip(), text=text,
                     cast=tuple(resolved), seed=seed, candidates=candidates or 1, layout=tuple(layout),
                     ip_scale=ip_scale)


def _option_tokens(text: str) -> list[str]:
    """The pairs of an option text, split at blanks and '|'; blanks around an '=' are forgiven when
    that makes one pair (``seed = 7`` -> ``seed=7``) but never glue two pairs (``seed= candidates=4``
    stays an empty seed= and a candidates=4)."""
    tokens = [token for token in re.split(r"[\s|]+", text) if token]
    pairs: list[str] = []
    for token in tokens:
        previous = pairs[-1] if pairs else None
        if previous is not None and token.startswith("=") and "=" not in previous:
            pairs[-1] = previous + token  # "seed" "=7" or "seed" "="
        elif previous is not None and previous.endswith("=") and previous.count("=") == 1 and "=" not in token:
            pairs[-1] = previous + token  # "seed=" "7"
        else:
            pairs.append(token)
    return pairs


def _example(key: str) -> str:
    return {"seed": "seed=12345", "candidates": "candidates=4", "ip_scale": "ip_scale=0.8",
            "layout": "layout=left,right"}[key]


def _layout_example(count: int) -> str:
    if count <= 1:
        return "layout=full, or no layout= at all"
    return f"layout={','.join(DEFAULT_LAYOUTS[min(count, 3)])}"


def _cast_index(cast_names: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """name key -> canonical name, and the problems of names no tag could reach unambiguously."""
    index: dict[str, str] = {}
    problems = []
    for name in cast_names:
        key = _name_key(name)
        if not key:
            problems.append("cast: a character has an empty name; give every character a name")
        elif key == NO_CHARACTER:
            problems.append(f"cast: '{name}' is reserved ([NC] means nobody on stage); rename the character")
        elif any(char in name for char in _CAST_FORBIDDEN):
            problems.append(f"cast: '{name}' contains one of {' '.join(_CAST_FORBIDDEN)}, which no tag can "
                            "hold; rename the character without them")
        elif key in index:
            problems.append(f"cast: '{index[key]}' and '{name}' are the same name to a tag (tags ignore "
                            "case); give the characters different names")
        else:
            index[key] = str(name).strip()
    return index, problems


def parse_script(script: str, cast_names: Sequence[str], descriptions: Optional[Mapping[str, str]] = None,
                 max_on_stage: int = MAX_ON_STAGE, user_masks: int = 0) -> list[Scene]:
    """Every scene of ``script`` (one per non-blank, non-comment line), resolved against the cast
    (``cast_names``: canonical spellings; ``descriptions``: name -> text a tag becomes in the prompt).

    Raises :class:`ScriptError` listing every mistake of every line at once; nothing is returned
    unless the whole script is sound, so a render never starts on half a story."""
    if not 0 <= max_on_stage <= MAX_ON_STAGE:
        raise ValueError(f"max_on_stage must be 0..{MAX_ON_STAGE}, got {max_on_stage}")
    if user_masks < 0:
        raise ValueError(f"user_masks must be >= 0, got {user_masks}")
    cast_names = [str(name) for name in cast_names]
    cast, problems = _cast_index(cast_names)
    descriptions = dict(descriptions or {})
    scenes = []
    scene_lines = 0
    for number, raw in enumerate(str(script).splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        scene_lines += 1
        line = _Line(number, raw, cast, list(cast.values()), descriptions, max_on_stage, user_masks)
        scene = line.parse(scene_lines)
        problems.extend(line.problems)
        if scene is not None:
            scenes.append(scene)
    if scene_lines == 0:
        example = (f"[{next(iter(cast.values()))}] reading a newspaper on a bench | seed=7" if cast
                   else "a lighthouse on a cliff at dawn | seed=7")
        problems.append(f"line 1: the script has no scene (only blank lines and # comments); write one "
                        f"scene per line, e.g. {example}")
    if problems:
        raise ScriptError(problems)
    return scenes


def scene_prompt(scene: Scene, prefix: str = "", suffix: str = "") -> str:
    """The positive prompt of a scene: the story's shared prefix and suffix around the scene text,
    joined with ", " (a part that is empty, or only commas and blanks, is left out)."""
    parts = (str(prefix).strip(" ,\t\r\n"), scene.text, str(suffix).strip(" ,\t\r\n"))
    return ", ".join(part for part in parts if part)


def _default_seed(scene: Scene, story_seed: int) -> int:
    """Derived from the line's own text (before '|', blanks collapsed), not its position: inserting,
    removing or moving lines leaves every other scene's seed, and image, as it was."""
    text = " ".join(scene.source.partition("|")[0].split())
    return (story_seed + zlib.crc32(text.encode("utf-8"))) % (MAX_SEED + 1)


def scene_seeds(scene: Scene, story_seed: int) -> list[int]:
    """One seed per candidate: seed= (or the text-derived default) plus the 0-based candidate index,
    so ``seed=<a candidate's seed>`` without candidates= renders that candidate again."""
    first = scene.seed if scene.seed is not None else _default_seed(scene, story_seed)
    return [(first + k) % (MAX_SEED + 1) for k in range(scene.candidates)]


def slug(text: str, max_length: int = 40) -> str:
    """A file-name-safe ASCII stem of a prompt: ``"Ava's café, at night!"`` -> ``avas-cafe-at-night``;
    letters lose their accents (NFKD), other characters go, apostrophes join their word; cut at a word
    boundary to ``max_length`` (one over-long word is cut inside); ``scene`` when nothing is left."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode().lower()
    words = re.findall(r"[a-z0-9]+", ascii_text.replace("'", ""))
    if not words:
        return "scene"
    result = words[0][:max_length]
    for word in words[1:]:
        if len(result) + 1 + len(word) > max_length:
            break
        result += "-" + word
    return result


def scene_stem(scene: Scene, candidate: Optional[int] = None) -> str:
    """The file stem of a scene's image: ``03-reading-a-newspaper-on-a-bench``, with ``-2`` for the
    second candidate (1-based) when the scene has several candidates."""
    stem = f"{scene.number:02d}-{slug(scene.text)}"
    if candidate is None:
        return stem
    if not 1 <= candidate <= scene.candidates:
        raise ValueError(f"scene {scene.number} has candidates 1..{scene.candidates}, not {candidate}")
    return f"{stem}-{candidate}" if scene.candidates > 1 else stem
