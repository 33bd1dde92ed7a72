"""Encode characters: CLIP vision features of their crops, then the resampler -> STORYMAKER_EMBEDS."""

from __future__ import annotations

import logging

from ..storymaker_core.characters import CharacterError, blend_characters
from ..storymaker_core.encode import encode_characters
from .common import CATEGORY, numpy_to_images, progress_bar

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


class StoryMakerEncodeCharacters:
    DESCRIPTION = ("Turns 1-3 characters (in order, e.g. left to right) into StoryMaker image tokens. Computed once "
                   "per workflow run, not per sampling step.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "storymaker": ("STORYMAKER",),
                "character_1": ("STORYMAKER_CHARACTER",),
                "face_only": ("BOOLEAN", {"default": False, "tooltip": "keep each face, let the prompt decide clothing "
                                                                        "and body (stylised stories). The default for "
                                                                        "every character: one whose own face_only "
                                                                        "(Character from Image) is on or off overrides "
                                                                        "it; an appearance-only character always keeps "
                                                                        "its crop"}),
            },
            "optional": {
                "clip_vision": ("CLIP_VISION", {"tooltip": "CLIP-ViT-H-14-laion2B; not needed for saved characters"}),
                "character_2": ("STORYMAKER_CHARACTER",),
                "character_3": ("STORYMAKER_CHARACTER",),
            },
        }

    RETURN_TYPES = ("STORYMAKER_EMBEDS",)
    FUNCTION = "encode"
    CATEGORY = CATEGORY

    def encode(self, storymaker, character_1, face_only, clip_vision=None, character_2=None, character_3=None):
        if character_3 is not None and character_2 is None:
            raise CharacterError("character_3 is connected but character_2 is not: connect characters in order.")
        cast = [c for c in (character_1, character_2, character_3) if c is not None]
        warn_about_repeats(cast)
        bar = progress_bar(len(cast) + 1)
        encoded = []
        for character in cast:
            encoded.append(with_clip_features(character, clip_vision))
            bar.update(1)
        embeds = encode_characters(storymaker.resampler, encoded, face_only=face_only)
        bar.update(1)
        return (embeds,)


NODE_CLASS_MAPPINGS = {"StoryMakerEncodeCharacters": StoryMakerEncodeCharacters}
NODE_DISPLAY_NAME_MAPPINGS = {"StoryMakerEncodeCharacters": "Encode StoryMaker Characters"}
