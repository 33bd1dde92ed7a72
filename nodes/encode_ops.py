"""What Encode StoryMaker Characters does: CLIP vision features of each character's crops, then the resampler ->
STORYMAKER_EMBEDS. Imports nothing of ComfyUI at import time (offline tests call these functions; nodes/encode.py
holds the V3 node). `clip_vision` is ComfyUI's CLIP_VISION object (its `encode_image`)."""

from __future__ import annotations

import logging

from ..storymaker_core.characters import CharacterError, blend_characters
from ..storymaker_core.encode import encode_characters
from .common import NoProgress, numpy_to_images

logger = logging.getLogger(__name__)


def clip_features(clip_vision, crops):
    """Penultimate hidden states of 224x224 crops `[R, 224, 224, 3]`, averaged over the R references."""
    output = clip_vision.encode_image(numpy_to_images(crops), crop=False)  # crops are already square 224
    return output.penultimate_hidden_states.float().mean(dim=0).cpu()


def with_clip_features(character, clip_vision):
    """The character with CLIP features (computed now if it has none; every side of a blend too)."""
    if character.blend_with is not None:
        return blend_characters(with_clip_features(character.blend_base, clip_vision),
                                with_clip_features(character.blend_with, clip_vision), character.blend_weight)
    if character.is_encoded:
        return character
    if clip_vision is None:
        raise CharacterError(f"character '{character.name}' needs a CLIP vision model: connect CLIP-ViT-H-14 "
                             f"(laion2B) to clip_vision, or use a character saved with its features.")
    face = clip_features(clip_vision, character.face_image) if character.has_face else None  # no face: no crop
    return character.with_clip(clip_features(clip_vision, character.character_image), face)


def warn_about_repeats(cast: list) -> None:
    """Say so when one character fills two slots: it is drawn twice (two copies in two regions)."""
    seen = {}
    for slot, character in enumerate(cast, start=1):
        key = id(character)
        if key in seen or character.name.strip().lower() in {n for _, n in seen.values()}:
            first = next(s for k, (s, n) in seen.items() if k == key or n == character.name.strip().lower())
            logger.warning("Encode StoryMaker Characters: character_%d and character_%d are the same character "
                           "('%s'): it will appear twice. Connect each character once.", first, slot, character.name)
        seen[key] = (slot, character.name.strip().lower())


def encode_cast(storymaker, character_1, face_only: bool, clip_vision=None, character_2=None, character_3=None,
                progress=NoProgress):
    """STORYMAKER_EMBEDS of 1-3 characters in slot order; `progress(total)` gives the bar to advance (one step
    per character, one for the resampler)."""
    if character_3 is not None and character_2 is None:
        raise CharacterError("character_3 is connected but character_2 is not: connect characters in order.")
    cast = [c for c in (character_1, character_2, character_3) if c is not None]
    warn_about_repeats(cast)
    bar = progress(len(cast) + 1)
    encoded = []
    for character in cast:
        encoded.append(with_clip_features(character, clip_vision))
        bar.update(1)
    embeds = encode_characters(storymaker.resampler, encoded, face_only=face_only)
    bar.update(1)
    return embeds
