"""The Positional-aware Perceiver Resampler: references -> StoryMaker image tokens.

Per character, 4 identity tokens (ArcFace embedding through an MLP, refined by a perceiver over the
CLIP hidden states of the aligned face crop) and 16 character tokens (a perceiver over the CLIP hidden
states of the masked character crop) make 20 tokens; a per-slot positional embedding tells the
characters apart, a zero-initialised residual layer fuses them, and 20 learned background tokens go
first. Output for N characters: `[N+1, 20, D]` = `[bg, char1, ..., charN]`.

Parameter names and shapes are exactly the release's `image_proj_model` (module `faceid_plus`), so its
state dict loads with `strict=True`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence, Union

import torch
from torch import Tensor, nn

BoolPerCharacter = Union[bool, Sequence[bool]]


@dataclass(frozen=True)
class ResamplerConfig:
    """Released SDXL values by default; tests use smaller ones."""

    cross_attention_dim: int = 2048  # D: the UNet's context width
    id_dim: int = 512  # ArcFace embedding
    id_hidden_dim: int = 1024  # hidden width of the ID MLP
    clip_dim: int = 1280  # CLIP ViT-H/14 hidden width
    face_tokens: int = 4
    face_depth: int = 4
    face_heads: int = 32
    character_tokens: int = 16
    character_dim: int = 1280  # width inside the character perceiver
    character_depth: int = 4
    character_heads: int = 20
    dim_head: int = 64
    ff_mult: int = 4
    max_characters: int = 3

    @property
    def tokens_per_character(self) -> int:
        return self.face_tokens + self.character_tokens

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Tensor], dim_head: int = 64) -> "ResamplerConfig":
        """Read the dimensions off a release-layout state dict (head width is not recorded: 64 in the release)."""
        shape = {k: tuple(v.shape) for k, v in state_dict.items()}
        dim = shape["bg_embed"][2]
        for key in ("perceiver_resampler.layers.0.0.to_q.weight", "resample.layers.0.0.to_q.weight"):
            if shape[key][0] % dim_head:
                raise ValueError(f"{key} is {shape[key][0]} wide, not a multiple of the head width {dim_head}")

        def depth(prefix: str) -> int:
            return len({k.split(".")[2] for k in shape if k.startswith(prefix + ".layers.")})

        return cls(
            cross_attention_dim=dim,
            id_dim=shape["proj.0.weight"][1],
            id_hidden_dim=shape["proj.0.weight"][0],
            clip_dim=shape["resample.proj_in.weight"][1],
            face_tokens=shape["proj.2.weight"][0] // dim,
            face_depth=depth("perceiver_resampler"),
            face_heads=shape["perceiver_resampler.layers.0.0.to_q.weight"][0] // dim_head,
            character_tokens=shape["resample.latents"][1],
            character_dim=shape["resample.latents"][2],
            character_depth=depth("resample"),
            character_heads=shape["resample.layers.0.0.to_q.weight"][0] // dim_head,
            dim_head=dim_head,
            ff_mult=shape["resample.layers.0.1.1.weight"][0] // shape["resample.latents"][2],
            max_characters=shape["pos_embed"][0],
        )


class PerceiverAttention(nn.Module):
    """Latents attend to [features; latents] (IP-Adapter's perceiver attention)."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)  # on the features
        self.norm2 = nn.LayerNorm(dim)  # on the latents
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _split_heads(self, t: Tensor) -> Tensor:  # [B, L, heads*dh] -> [B, heads, L, dh]
        return t.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)

    def forward(self, features: Tensor, latents: Tensor) -> Tensor:
        features, latents = self.norm1(features), self.norm2(latents)
        q = self._split_heads(self.to_q(latents))  # [B, h, n_lat, dh]
        k, v = self.to_kv(torch.cat([features, latents], dim=1)).chunk(2, dim=-1)
        k, v = self._split_heads(k), self._split_heads(v)  # [B, h, n_in + n_lat, dh]
        scale = self.dim_head ** -0.25  # on q and k both, as the release (keeps fp16 products small)
        weight = (q * scale) @ (k * scale).transpose(-2, -1)
        weight = torch.softmax(weight, dim=-1, dtype=torch.promote_types(weight.dtype, torch.float32)).to(weight.dtype)
        out = (weight @ v).transpose(1, 2).flatten(2)  # [B, n_lat, heads*dh]
        return self.to_out(out)


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    """LayerNorm -> Linear -> GELU -> Linear, no biases (keys `.0`, `.1`, `.3`)."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


class _PerceiverStack(nn.Module):
    """proj_in -> depth x [attention + FF, both residual] -> proj_out -> norm_out."""

    def __init__(self, dim: int, depth: int, dim_head: int, heads: int, input_dim: int, output_dim: int,
                 ff_mult: int):
        super().__init__()
        self.proj_in = nn.Linear(input_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), feed_forward(dim, ff_mult)])
            for _ in range(depth)
        )

    def _run(self, latents: Tensor, features: Tensor) -> Tensor:
        features = self.proj_in(features)
        for attention, ff in self.layers:
            latents = attention(features, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


class FacePerceiver(_PerceiverStack):
    """Refines the caller's ID tokens with face-crop CLIP features (FaceID-PlusV2 style, no own latents)."""

    def forward(self, latents: Tensor, features: Tensor) -> Tensor:
        return self._run(latents, features)


class CharacterResampler(_PerceiverStack):
    """16 learned queries over character-crop CLIP features (IP-Adapter-Plus style)."""

    def __init__(self, num_queries: int, dim: int, **kwargs):
        super().__init__(dim=dim, **kwargs)
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim ** 0.5)

    def forward(self, features: Tensor) -> Tensor:
        return self._run(self.latents.expand(features.shape[0], -1, -1), features)


def _per_character(flag: BoolPerCharacter, n: int, like: Tensor) -> Tensor:
    """A bool or one bool per character -> a [n, 1, 1] 0/1 multiplier."""
    flags = [bool(flag)] * n if isinstance(flag, bool) else [bool(f) for f in flag]
    if len(flags) != n:
        raise ValueError(f"got {len(flags)} per-character flags for {n} characters")
    return torch.tensor(flags, dtype=like.dtype, device=like.device).view(n, 1, 1)


class StoryMakerResampler(nn.Module):
    """Positional-aware Perceiver Resampler with the release's parameter names (`faceid_plus`)."""

    def __init__(self, config: ResamplerConfig = ResamplerConfig()):
        super().__init__()
        self.config = c = config
        d = c.cross_attention_dim
        self.pos_embed = nn.Parameter(torch.zeros(c.max_characters, c.tokens_per_character, d))
        self.bg_embed = nn.Parameter(torch.zeros(1, c.tokens_per_character, d))
        self.proj = nn.Sequential(nn.Linear(c.id_dim, c.id_hidden_dim), nn.GELU(),
                                  nn.Linear(c.id_hidden_dim, d * c.face_tokens))
        self.norm = nn.LayerNorm(d)
        self.proj_out = nn.Linear(d, d)
        self.norm_out = nn.LayerNorm(d)
        nn.init.zeros_(self.proj_out.weight)  # the fusion starts as the identity, as in the release
        nn.init.zeros_(self.proj_out.bias)
        self.perceiver_resampler = FacePerceiver(dim=d, depth=c.face_depth, dim_head=c.dim_head,
                                                 heads=c.face_heads, input_dim=c.clip_dim, output_dim=d,
                                                 ff_mult=c.ff_mult)
        self.resample = CharacterResampler(num_queries=c.character_tokens, dim=c.character_dim,
                                           depth=c.character_depth, dim_head=c.dim_head,
                                           heads=c.character_heads, input_dim=c.clip_dim, output_dim=d,
                                           ff_mult=c.ff_mult)

    def character_tokens(self, id_embeds: Tensor, character_clip: Tensor, face_clip: Tensor,
                         zero_face: BoolPerCharacter = False, zero_character: BoolPerCharacter = False) -> Tensor:
        """Per-character tokens before position and fusion: `[N, 20, D]` = 4 face + 16 character tokens.

        id_embeds `[N, 512]`; character_clip, face_clip `[N, 257, 1280]` (CLIP penultimate hidden states).
        `zero_character` zeroes the character-crop branch (face-only / stylised mode); `zero_face` the
        identity branch. Zeroing tokens is what the release's training dropout does, so both are in
        distribution.
        """
        n = id_embeds.shape[0]
        if character_clip.shape[0] != n or face_clip.shape[0] != n:
            raise ValueError(f"id_embeds, character_clip and face_clip must have one row per character; got "
                             f"{n}, {character_clip.shape[0]}, {face_clip.shape[0]}")
        c = self.config
        x = self.norm(self.proj(id_embeds).reshape(n, c.face_tokens, c.cross_attention_dim))
        face = x + self.perceiver_resampler(x, face_clip)  # [N, 4, D]
        body = self.resample(character_clip)  # [N, 16, D]
        if zero_face is not False:
            face = face * (1 - _per_character(zero_face, n, face))
        if zero_character is not False:
            body = body * (1 - _per_character(zero_character, n, body))
        return torch.cat([face, body], dim=1)

    def assemble(self, character_tokens: Tensor) -> Tensor:
        """`[N, 20, D]` character tokens in slot order -> `[N+1, 20, D]` with background first."""
        n = character_tokens.shape[0]
        if not 1 <= n <= self.config.max_characters:
            raise ValueError(f"StoryMaker takes 1 to {self.config.max_characters} characters (this file has "
                             f"{self.config.max_characters} position slots); got {n}")
        tokens = character_tokens + self.pos_embed[:n]
        tokens = self.norm_out(self.proj_out(tokens)) + tokens
        return torch.cat([self.bg_embed.to(tokens.dtype), tokens], dim=0)

    def forward(self, id_embeds: Tensor, character_clip: Tensor, face_clip: Tensor,
                zero_face: BoolPerCharacter = False, zero_character: BoolPerCharacter = False) -> Tensor:
        """References of N characters (in slot order) -> image tokens `[N+1, 20, D]`."""
        return self.assemble(self.character_tokens(id_embeds, character_clip, face_clip, zero_face,
                                                   zero_character))

    def uncond_tokens(self, num_characters: int, num_clip_tokens: int = 257) -> Tensor:
        """The release's negative image tokens: all inputs zeroed (hidden states, not a blank image).

        Background tokens stay `bg_embed` (the release computes a zeroed background but never uses it).
        Depends only on N, so callers may cache it.
        """
        p = self.bg_embed
        zeros_id = p.new_zeros(num_characters, self.config.id_dim)
        zeros_clip = p.new_zeros(num_characters, num_clip_tokens, self.config.clip_dim)
        return self(zeros_id, zeros_clip, zeros_clip)


def interpolate_character_tokens(a: Tensor, b: Tensor, weight: float) -> Tensor:
    """Blend two characters' `[.., 20, D]` tokens (before position/fusion): 0 -> a, 1 -> b."""
    if a.shape != b.shape:
        raise ValueError(f"cannot interpolate character tokens of shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return torch.lerp(a, b, float(weight))
