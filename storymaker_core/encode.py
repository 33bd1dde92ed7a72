"""Characters (with CLIP features) -> StoryMaker image tokens for the positive and negative prompts.

An appearance-only character (no face) feeds the face branch the release's negative inputs, a zero ArcFace
embedding and zero face hidden states, so its 4 face tokens are those of the negative prompt and carry no
face guidance; its 16 character tokens come from its crop as usual. A blend lerps the two sides' tokens,
each computed in its own mode (docs/characters.md).
"""

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
    if character.has_face and character.id_embedding.numel() != id_dim:
        raise CharacterError(f"character '{character.name}': identity embedding has {character.id_embedding.numel()} "
                             f"values, this StoryMaker file needs {id_dim} (InsightFace buffalo_l ArcFace).")
    if not character.is_encoded:
        raise CharacterError(f"character '{character.name}' has no CLIP features: connect a CLIP vision model "
                             f"(CLIP-ViT-H-14) to the encode node.")
    for what in ("character_clip", "face_clip") if character.has_face else ("character_clip",):
        features = getattr(character, what)
        if features.dim() != 2 or features.shape[-1] != clip_dim:
            raise CharacterError(f"character '{character.name}': CLIP features are {tuple(features.shape)}, StoryMaker "
                                 f"needs [257, {clip_dim}] from CLIP-ViT-H-14 (laion2B). Load that CLIP vision model; "
                                 f"ViT-L or bigG do not fit.")


def _face_inputs(character: Character, id_dim: int) -> tuple:
    """`(id_embedding [id_dim], face_clip [L, C])`: the character's, or the negative's zeros without a face."""
    if character.has_face:
        return character.id_embedding, character.face_clip
    return character.id_embedding.new_zeros(id_dim), torch.zeros_like(character.character_clip)


def _raw_tokens(resampler: StoryMakerResampler, characters: Sequence[Character], zero_character) -> Tensor:
    """Per-character tokens before position/fusion `[N, 20, D]`."""
    param = resampler.bg_embed
    ids, faces = zip(*(_face_inputs(c, resampler.config.id_dim) for c in characters))
    stack = lambda tensors: torch.stack(list(tensors)).to(param.device, param.dtype)
    return resampler.character_tokens(stack(ids), stack(c.character_clip for c in characters), stack(faces),
                                      zero_character=zero_character)


def _blended_tokens(resampler: StoryMakerResampler, character: Character, face_only: bool) -> Tensor:
    """`[20, D]` of a character; a blend is the lerp of its two sides' tokens, each side maybe a blend too."""
    if character.blend_with is None:
        return _raw_tokens(resampler, [character], face_only)[0]
    return interpolate_character_tokens(_blended_tokens(resampler, character.blend_base, face_only),
                                        _blended_tokens(resampler, character.blend_with, face_only),
                                        character.blend_weight)


@torch.no_grad()
def character_tokens(resampler: StoryMakerResampler, characters: Sequence[Character],
                     face_only: Union[bool, Sequence[bool]] = False) -> Tensor:
    """Each character's tokens before position and fusion, `[N, 20, D]` float32 on the CPU.

    Slot-independent, so a story encodes each cast member once and places it in any slot of any scene
    (`embeds_for_slots`). Checks every character's features first.
    """
    flags = [face_only] * len(characters) if isinstance(face_only, bool) else list(face_only)
    for character, flag in zip(characters, flags):
        for member in character.members():
            _check_features(member, resampler.config.clip_dim, resampler.config.id_dim)
        if flag and not any(member.has_face for member in character.members()):
            raise CharacterError(f"character '{character.name}' has no face (appearance only) and face_only drops its "
                                 f"character crop: nothing of it would be left. Turn face_only off, or build the "
                                 f"character from a reference with a face (identity 'face').")
    tokens = _raw_tokens(resampler, characters, face_only)
    for i, character in enumerate(characters):
        if character.blend_with is not None:
            tokens[i] = _blended_tokens(resampler, character, flags[i])
    return tokens.float().cpu()


@torch.no_grad()
def embeds_for_slots(resampler: StoryMakerResampler, tokens: Tensor, names: Sequence[str],
                     num_clip_tokens: int = 257) -> StoryMakerEmbeds:
    """Characters' tokens `[N, 20, D]` in slot order (slot 1 = leftmost) -> cond and uncond image tokens.

    N = 0 (a scene with nobody on stage) gives the background tokens alone for both prompts: every pixel then
    attends to what the model learned for the background.
    """
    param = resampler.bg_embed
    if tokens.shape[0] == 0:
        background = param.detach().float().cpu()
        return StoryMakerEmbeds(cond=background.clone(), uncond=background.clone(), names=[])
    cond = resampler.assemble(tokens.to(param.device, param.dtype))
    uncond = resampler.uncond_tokens(tokens.shape[0], num_clip_tokens=num_clip_tokens)
    return StoryMakerEmbeds(cond=cond.float().cpu(), uncond=uncond.float().cpu(), names=list(names))


@torch.no_grad()
def encode_characters(resampler: StoryMakerResampler, characters: Sequence[Character],
                      face_only: Union[bool, Sequence[bool]] = False) -> StoryMakerEmbeds:
    """1..max characters in slot order -> cond and uncond tokens; blends are interpolated token-wise."""
    limit = resampler.config.max_characters
    if not 1 <= len(characters) <= limit:
        raise CharacterError(f"StoryMaker takes 1 to {limit} characters; got {len(characters)}.")
    tokens = character_tokens(resampler, characters, face_only)
    return embeds_for_slots(resampler, tokens, [c.name for c in characters],
                            num_clip_tokens=characters[0].character_clip.shape[0])
