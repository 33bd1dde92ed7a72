"""Characters (with CLIP features) -> StoryMaker image tokens for the positive and negative prompts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch
from torch import Tensor

from .characters import Character, CharacterError
from .resampler import StoryMakerResampler, interpolate_character_tokens


@dataclass
class StoryMakerEmbeds:
    cond: Tensor  # [N+1, 20, D] background first, then characters in slot order
    uncond: Tensor  # [N+1, 20, D] the release's negative tokens
    names: list

    @property
    def num_characters(self) -> int:
        return self.cond.shape[0] - 1


def _check_features(character: Character, clip_dim: int, id_dim: int) -> None:
    if character.id_embedding.numel() != id_dim:
        raise CharacterError(f"character '{character.name}': identity embedding has {character.id_embedding.numel()} "
                             f"values, this StoryMaker file needs {id_dim} (InsightFace buffalo_l ArcFace).")
    if not character.is_encoded:
        raise CharacterError(f"character '{character.name}' has no CLIP features: connect a CLIP vision model "
                             f"(CLIP-ViT-H-14) to the encode node.")
    for what in ("character_clip", "face_clip"):
        features = getattr(character, what)
        if features.dim() != 2 or features.shape[-1] != clip_dim:
            raise CharacterError(f"character '{character.name}': CLIP features are {tuple(features.shape)}, StoryMaker "
                                 f"needs [257, {clip_dim}] from CLIP-ViT-H-14 (laion2B). Load that CLIP vision model; "
                                 f"ViT-L or bigG do not fit.")


def _raw_tokens(resampler: StoryMakerResampler, characters: Sequence[Character], zero_character) -> Tensor:
    """Per-character tokens before position/fusion `[N, 20, D]`."""
    param = resampler.bg_embed
    stack = lambda name: torch.stack([getattr(c, name) for c in characters]).to(param.device, param.dtype)
    return resampler.character_tokens(stack("id_embedding"), stack("character_clip"), stack("face_clip"),
                                      zero_character=zero_character)


def _blended_tokens(resampler: StoryMakerResampler, character: Character, face_only: bool) -> Tensor:
    """`[20, D]` of a character; a blend is the lerp of its two sides' tokens, each side maybe a blend too."""
    if character.blend_with is None:
        return _raw_tokens(resampler, [character], face_only)[0]
    return interpolate_character_tokens(_blended_tokens(resampler, character.blend_base, face_only),
                                        _blended_tokens(resampler, character.blend_with, face_only),
                                        character.blend_weight)


@torch.no_grad()
def encode_characters(resampler: StoryMakerResampler, characters: Sequence[Character],
                      face_only: Union[bool, Sequence[bool]] = False) -> StoryMakerEmbeds:
    """1..max characters in slot order -> cond and uncond tokens; blends are interpolated token-wise."""
    limit = resampler.config.max_characters
    if not 1 <= len(characters) <= limit:
        raise CharacterError(f"StoryMaker takes 1 to {limit} characters; got {len(characters)}.")
    for character in characters:
        for member in character.members():
            _check_features(member, resampler.config.clip_dim, resampler.config.id_dim)
    tokens = _raw_tokens(resampler, characters, face_only)
    for i, character in enumerate(characters):
        if character.blend_with is not None:
            tokens[i] = _blended_tokens(resampler, character, face_only if isinstance(face_only, bool) else face_only[i])
    cond = resampler.assemble(tokens)
    uncond = resampler.uncond_tokens(len(characters), num_clip_tokens=characters[0].character_clip.shape[0])
    return StoryMakerEmbeds(cond=cond.float().cpu(), uncond=uncond.float().cpu(), names=[c.name for c in characters])
