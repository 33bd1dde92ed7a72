"""Encode StoryMaker Characters (V3 schema): CLIP vision features of the characters' crops, then the resampler ->
STORYMAKER_EMBEDS; the work is in nodes/encode_ops.py."""

from __future__ import annotations

from comfy_api.latest import io

from . import encode_ops
from .common import progress_bar
from .v3_types import CATEGORY, Character, Embeds, StoryMaker


class StoryMakerEncodeCharacters(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        # Fixed optional slots, not an Autogrow: an Autogrow input's sockets are named `characters.character_2`
        # in prompts, which would break every workflow saved with character_2 / character_3.
        return io.Schema(
            node_id="StoryMakerEncodeCharacters", display_name="Encode StoryMaker Characters", category=CATEGORY,
            description="Turns 1-3 characters (in order, e.g. left to right) into StoryMaker image tokens. Computed "
                        "once per workflow run, not per sampling step.",
            inputs=[
                StoryMaker.Input("storymaker", tooltip="Load StoryMaker: its resampler makes the tokens"),
                Character.Input("character_1", tooltip="the first character (leftmost; mask_1 of Apply StoryMaker)"),
                io.Boolean.Input("face_only", default=False,
                                 tooltip="keep each face, let the prompt decide clothing and body (stylised "
                                         "stories). The default for every character: one whose own face_only "
                                         "(Character from Image) is on or off overrides it; an appearance-only "
                                         "character always keeps its crop"),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="CLIP-ViT-H-14-laion2B; not needed for saved characters"),
                Character.Input("character_2", optional=True,
                                tooltip="the second character (mask_2); connect character_1 first"),
                Character.Input("character_3", optional=True,
                                tooltip="the third character (mask_3); connect character_2 first"),
            ],
            outputs=[Embeds.Output(tooltip="the characters' image tokens, for Apply StoryMaker")],
        )

    @classmethod
    def execute(cls, storymaker, character_1, face_only, clip_vision=None, character_2=None,
                character_3=None) -> io.NodeOutput:
        return io.NodeOutput(encode_ops.encode_cast(storymaker, character_1, face_only, clip_vision, character_2,
                                                    character_3, progress=progress_bar))
