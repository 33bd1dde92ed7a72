"""A ViStoryBench shot -> one text prompt for an SDXL template.

Order and separators follow ViStoryBench's own prompt merger (``StoryDataset.story_prompt_merge``), so
StoryMaker gets the same text other methods on the leaderboard got:

    <Shot Perspective Design>; <Plot Correspondence>; <Static Shot Description>;
    <name> is <description>; ... (every on-stage character, listed order); <Setting Description>

ViStoryBench's prompts run to a few hundred tokens. ComfyUI's CLIPTextEncode does not cut them at 77
tokens: it splits the text into chunks of 75 tokens at word boundaries, encodes each chunk (with start and
end tokens, 77 tokens) through both SDXL text encoders and concatenates the chunks along the sequence, so
the UNet cross-attends to every chunk; the pooled embedding (SDXL's global text vector) comes from the
first chunk only, and each chunk is encoded without seeing the others. What the picture is (framing,
action) therefore comes first, as in ViStoryBench's order. Parentheses would be read as ComfyUI's weight
syntax (``(word:1.2)``), so they are escaped.
"""

from __future__ import annotations

from .dataset import VistoryCharacter, VistoryShot

__all__ = ["NEGATIVE", "PROMPT_ORDER", "character_sentence", "escape_comfy", "shot_prompt"]

NEGATIVE = "bad quality, NSFW, low quality, ugly, disfigured, deformed"
#: (part of the prompt, where it comes from), in prompt order
PROMPT_ORDER = (
    ("camera", "Shot Perspective Design"),
    ("plot", "Plot Correspondence"),
    ("script", "Static Shot Description"),
    ("characters", "'<name> is <prompt>' for each on-stage character in Characters (listed order)"),
    ("scene", "Setting Description"),
)


def escape_comfy(text: str) -> str:
    """Escape ``(`` and ``)`` so ComfyUI's prompt parser keeps them as text, not as emphasis weights."""
    return text.replace("(", "\\(").replace(")", "\\)")


def character_sentence(character: VistoryCharacter, language: str) -> str:
    """``"<name> is <description>"`` (ViStoryBench's wording); the name alone when there is no description."""
    name, prompt = character.name(language).strip(), character.prompt(language).strip()
    return f"{name} is {prompt}" if prompt else name


def shot_prompt(shot: VistoryShot, characters: dict[str, VistoryCharacter], language: str) -> str:
    """The prompt of one shot: its fields and its on-stage characters' descriptions, escaped for ComfyUI.

    Args:
        shot: the shot (its ``text`` is already in ``language``, with fallbacks).
        characters: the story's characters by key; every key in ``shot.character_keys`` is described,
            also those beyond the template's three identity slots.
        language: "en" or "ch".
    """
    parts = []
    for part, _ in PROMPT_ORDER:
        if part == "characters":
            parts += [character_sentence(characters[k], language) for k in shot.character_keys]
        else:
            parts.append(shot.text.get(part, ""))
    text = "; ".join(p.strip().rstrip(";").strip() for p in parts if p and p.strip())
    return escape_comfy(text)
