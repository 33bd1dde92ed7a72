"""The cast of a story: named characters gathered once, and each member encoded once per run."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from comfy_api.latest import io

from ..storymaker_core.cast import Cast, make_cast
from ..storymaker_core.encode import character_tokens
from .encode_ops import with_clip_features
from .v3_types import STORY_CATEGORY, Cast as CastType, Character, Member, StoryMaker

MAX_CAST = 16
CAST_SLOTS = [f"character_{i}" for i in range(1, MAX_CAST + 1)]


@dataclass(frozen=True)
class EncodedMember:
    """One cast member's tokens before position and fusion: a scene puts them into any slot."""

    name: str
    tokens: torch.Tensor  # [20, D] float32
    num_clip_tokens: int


class StoryMakerCast(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        template = io.Autogrow.TemplateNames(
            Character.Input("character", tooltip="a cast member (its own name is the script's [name])"),
            names=CAST_SLOTS, min=1)
        return io.Schema(
            node_id="StoryMakerCast", display_name="StoryMaker Cast", category=STORY_CATEGORY,
            description="Gathers the characters a story script calls by name ([ava], [ben]); each is encoded once "
                        "per run, and a scene uses the members it names.",
            inputs=[
                io.Autogrow.Input("characters", template=template,
                                  tooltip="Character from Image, Load StoryMaker Character or a blend; each with "
                                          "its own name"),
                io.Boolean.Input("face_only", default=False,
                                 tooltip="keep each face, let the prompt decide clothing and body (stylised "
                                         "stories); not for appearance-only characters"),
                io.String.Input("descriptions", multiline=True, default="",
                                tooltip="optional 'name: description' lines; a description replaces the name's tag "
                                        "in the prompt (e.g. 'ava: a woman with short red hair')"),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="CLIP-ViT-H-14-laion2B; not needed when every member is a saved "
                                            "character"),
            ],
            outputs=[CastType.Output(display_name="cast")],
        )

    @classmethod
    def execute(cls, characters, face_only, descriptions, clip_vision=None) -> io.NodeOutput:
        slots = [slot for slot in CAST_SLOTS if characters.get(slot) is not None]
        members = [characters[slot] for slot in slots]
        if clip_vision is None:
            unencoded = [s for s, c in zip(slots, members) if not c.is_encoded]
            if unencoded:
                raise ValueError(f"{', '.join(unencoded)} need CLIP vision features: connect CLIP-ViT-H-14 (laion2B) "
                                 f"to clip_vision, or use saved characters.")
        return io.NodeOutput(make_cast(members, slots, descriptions, face_only, clip_vision))


class StoryMakerEncodeMember(io.ComfyNode):
    """One member's tokens. A story links it to the member's own character node, so editing one character
    re-encodes (and re-renders) only the scenes that name it; `cast` + `name` is the fallback when the
    cast's members cannot be traced."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StoryMakerEncodeMember", display_name="StoryMaker Encode Cast Member", category=STORY_CATEGORY,
            description="Used inside a StoryMaker Story: one character's image tokens, encoded once per run.",
            inputs=[
                StoryMaker.Input("storymaker", tooltip="Load StoryMaker: its resampler makes the tokens"),
                io.Boolean.Input("face_only", default=False,
                                 tooltip="keep the face, let the prompt decide clothing and body (the cast's "
                                         "face_only)"),
                Character.Input("character", optional=True, tooltip="the member's own character node"),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="CLIP-ViT-H-14-laion2B; not needed for a saved character"),
                CastType.Input("cast", optional=True, tooltip="the cast, with name: when no character is connected"),
                io.String.Input("name", default="", optional=True, tooltip="the member's name in the cast"),
            ],
            outputs=[Member.Output(display_name="member")],
        )

    @classmethod
    def execute(cls, storymaker, face_only, character=None, clip_vision=None, cast: Cast = None,
                name="") -> io.NodeOutput:
        if character is None:
            if cast is None:
                raise ValueError("connect a character, or a cast and a name")
            character, clip_vision = cast.character(name), cast.clip_vision
        encoded = with_clip_features(character, clip_vision)
        tokens = character_tokens(storymaker.resampler, [encoded], face_only)[0]
        return io.NodeOutput(EncodedMember(encoded.name, tokens, encoded.character_clip.shape[0]))
