"""Characters (with CLIP features) -> StoryMaker image tokens for the positive and negative prompts.

Each plain character is encoded in its own mode (docs/characters.md, "What each mode feeds the resampler"):

* `face`: ArcFace embedding + face-crop CLIP states -> 4 face tokens; character-crop CLIP states -> 16
  character tokens.
* `appearance` (no face): its 4 face tokens are zeroed after the face perceiver, before position and fusion,
  which is how the release's training drops the face (`out = out*0` in `faceid_plus.forward`, 10 % of steps),
  so the model has seen exactly this; the 16 character tokens come from its crop. The face branch is fed
  zeros (ArcFace and face CLIP states), which do not matter once its output is zeroed.
* `face_only` (each character's own setting, else the node's switch) zeroes the 16 character tokens of a
  character **with a face** (the release's other training dropout); an appearance-only character keeps its
  crop, as nothing else carries it.

A blend lerps the two sides' tokens, each side computed in its own mode with its own face_only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence, Union

import torch
from torch import Tensor

from .characters import Character, CharacterError
from .resampler import StoryMakerResampler, interpolate_character_tokens

logger = logging.getLogger(__name__)


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
    """`(id_embedding [id_dim], face_clip [L, C])`: the character's; zeros without a face (its face tokens are
    zeroed after the face branch, so what is fed there does not reach the tokens)."""
    if character.has_face:
        return character.id_embedding, character.face_clip
    return character.id_embedding.new_zeros(id_dim), torch.zeros_like(character.character_clip)


def face_only_applies(character: Character, default: bool) -> bool:
    """Whether face_only drops this plain character's 16 character tokens: its own setting, else `default` (the
    Encode/Cast node's switch), and only if it has a face (appearance only: its crop is all there is)."""
    wanted = default if character.face_only is None else character.face_only
    return bool(wanted) and character.has_face


def _raw_tokens(resampler: StoryMakerResampler, characters: Sequence[Character], face_only: Sequence[bool]) -> Tensor:
    """Tokens of plain characters before position/fusion `[N, 20, D]`, each in its own mode."""
    param = resampler.bg_embed
    ids, faces = zip(*(_face_inputs(c, resampler.config.id_dim) for c in characters))
    stack = lambda tensors: torch.stack(list(tensors)).to(param.device, param.dtype)
    return resampler.character_tokens(stack(ids), stack(c.character_clip for c in characters), stack(faces),
                                      zero_face=[not c.has_face for c in characters],
                                      zero_character=[face_only_applies(c, flag)
                                                      for c, flag in zip(characters, face_only)])


def _assembled(character: Character, leaf_tokens) -> Tensor:
    """`[20, D]` of a character from its leaves' tokens (in `members()` order): a blend is the lerp of its two
    sides' tokens, each side maybe a blend too."""
    if character.blend_with is None:
        return next(leaf_tokens)
    return interpolate_character_tokens(_assembled(character.blend_base, leaf_tokens),
                                        _assembled(character.blend_with, leaf_tokens), character.blend_weight)


def _log_face_only_not_applied(character: Character, default: bool) -> None:
    for member in character.members():
        if not member.has_face and (member.face_only or (member.face_only is None and default)):
            log = logger.warning if member.face_only else logger.info
            log("character '%s' is appearance only: face_only does not apply to it (it has no face tokens), so it "
                "keeps its character crop.", member.name)


@torch.no_grad()
def character_tokens(resampler: StoryMakerResampler, characters: Sequence[Character],
                     face_only: Union[bool, Sequence[bool]] = False) -> Tensor:
    """Each character's tokens before position and fusion, `[N, 20, D]` float32 on the CPU.

    `face_only`: the node's switch, one for all or one per character; a character's own `face_only`
    overrides it, and it applies to characters with a face only (`face_only_applies`).
    Slot-independent, so a story encodes each cast member once and places it in any slot of any scene
    (`embeds_for_slots`). Checks every character's features first.
    """
    flags = [face_only] * len(characters) if isinstance(face_only, bool) else [bool(f) for f in face_only]
    if len(flags) != len(characters):
        raise ValueError(f"got {len(flags)} face_only flags for {len(characters)} characters")
    leaves, leaf_flags = [], []
    for character, flag in zip(characters, flags):
        for member in character.members():
            _check_features(member, resampler.config.clip_dim, resampler.config.id_dim)
        _log_face_only_not_applied(character, flag)
        leaves += character.members()
        leaf_flags += [flag] * len(character.members())
    leaf_tokens = iter(_raw_tokens(resampler, leaves, leaf_flags))
    tokens = torch.stack([_assembled(character, leaf_tokens) for character in characters])
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
