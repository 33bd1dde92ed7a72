"""Character nodes (V3 schema): reference photo -> character, save/load a cast, blend two characters; the work is
in nodes/character_ops.py."""

from __future__ import annotations

from comfy_api.latest import io

from ..storymaker_core.characters import blend_characters
from ..storymaker_core.identity import AUTO, FACE_ONLY_CHOICES, FACE_ONLY_DEFAULT, IDENTITY_CHOICES
from . import character_ops
from .common import checked_floats, progress_bar
from .v3_types import CATEGORY, Character, InsightFace, Sam


class StoryMakerCharacterFromImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StoryMakerCharacterFromImage", display_name="StoryMaker Character from Image", category=CATEGORY,
            description="A character from reference images: its identity from the face (ArcFace + face crop) or, "
                        "for characters without a photographed face (anime, animals), from its appearance only; and "
                        "the character cut out by its mask. Several images in the batch = several references of the "
                        "same character.",
            inputs=[
                io.Image.Input("image", tooltip="the reference photo(s) of this one character; a batch = several "
                                                "references"),
                InsightFace.Input("insightface", tooltip="Load InsightFace (StoryMaker): finds the face and its "
                                                         "ArcFace identity"),
                io.String.Input("name", default="character",
                                tooltip="the character's name: warnings name it, a story script calls it [name], and "
                                        "Save StoryMaker Character uses it when its filename is empty"),
                io.Int.Input("face_index", default=0, min=0, max=32, tooltip="0 = largest face, 1 = next, ..."),
                io.Combo.Input("identity", options=list(IDENTITY_CHOICES), default=AUTO,
                               tooltip="face: ArcFace identity + aligned face crop (error if no face is found). "
                                       "appearance: no face (anime/cartoon people, animals): the character crop "
                                       "alone carries the identity. auto: face when every reference has a confident "
                                       "face, else appearance (see the identity_used output)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="the character (white); without it Segment Anything is used, or for an "
                                      "appearance-only character without SAM the whole image"),
                Sam.Input("sam", optional=True,
                          tooltip="Load Segment Anything (StoryMaker): masks the character when no mask is "
                                  "connected"),
                io.Image.Input("clothing", optional=True,
                               tooltip="clothing-only image: replaces the character crop (clothing swap)"),
                io.Combo.Input("face_only", options=list(FACE_ONLY_CHOICES), default=FACE_ONLY_DEFAULT, optional=True,
                               tooltip="this character's own face_only. default: the Encode/Cast node's face_only "
                                       "switch decides. on: keep only its face, the prompt decides clothing and "
                                       "body. off: keep its character crop even when the Encode/Cast node's "
                                       "face_only is on. Never applies to an appearance-only character (it keeps "
                                       "its crop)."),
            ],
            outputs=[
                Character.Output(display_name="character", tooltip="the character"),
                io.Image.Output(display_name="character_crop", tooltip="what CLIP sees of the character"),
                io.Image.Output(display_name="face_crop", tooltip="the aligned face (white when appearance only)"),
                io.Mask.Output(display_name="mask", tooltip="the character's mask per reference"),
                io.String.Output(display_name="identity_used",
                                 tooltip="one line per reference: face or appearance, and why; then a line on this "
                                         "character's own face_only when it is not default"),
            ],
        )

    @classmethod
    def execute(cls, image, insightface, name, face_index, identity=AUTO, mask=None, sam=None, clothing=None,
                face_only=FACE_ONLY_DEFAULT) -> io.NodeOutput:
        return io.NodeOutput(*character_ops.character_from_images(
            image, insightface, name, face_index, identity, mask=mask, sam=sam, clothing=clothing,
            face_only=face_only, progress=progress_bar))


class StoryMakerBlendCharacters(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StoryMakerBlendCharacters", display_name="Blend StoryMaker Characters", category=CATEGORY,
            description="A character between two others (0 = character_a, 1 = character_b), blended token by token.",
            inputs=[
                Character.Input("character_a", tooltip="the character at weight 0"),
                Character.Input("character_b", tooltip="the character at weight 1"),
                io.Float.Input("weight", default=0.5, min=0.0, max=1.0, step=0.05,
                               tooltip="0 = character_a, 1 = character_b, between = a mix of their tokens"),
            ],
            outputs=[Character.Output(tooltip="the blend (encoded when Encode StoryMaker Characters or Save "
                                              "StoryMaker Character gets it)")],
        )

    @classmethod
    def validate_inputs(cls, weight=None):
        return checked_floats(cls, weight=weight)

    @classmethod
    def execute(cls, character_a, character_b, weight) -> io.NodeOutput:
        return io.NodeOutput(blend_characters(character_a, character_b, weight))


class StoryMakerSaveCharacter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="StoryMakerSaveCharacter", display_name="Save StoryMaker Character", category=CATEGORY,
            description="Saves a character's identity and CLIP features to models/storymaker_characters/, so later "
                        "workflows need neither InsightFace nor CLIP vision for it.",
            inputs=[
                Character.Input("character", tooltip="the character to save (from Character from Image, a blend, "
                                                     "or a loaded one)"),
                io.String.Input("filename", default="character",
                                tooltip="a plain file name (no folders) in models/storymaker_characters/; "
                                        "'.safetensors' is added, an existing file is never replaced (_001 is "
                                        "added); empty = the character's name"),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="CLIP-ViT-H-14-laion2B: computes the character's CLIP features (not "
                                            "needed for a character that already has them)"),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, character, filename, clip_vision=None) -> io.NodeOutput:
        import folder_paths

        folder = folder_paths.get_folder_paths("storymaker_characters")[0]
        written = character_ops.save_character_file(character, filename, folder, clip_vision)
        return io.NodeOutput(ui={"text": [written]})


class StoryMakerLoadCharacter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        import folder_paths

        return io.Schema(
            node_id="StoryMakerLoadCharacter", display_name="Load StoryMaker Character", category=CATEGORY,
            description="Loads a character saved by 'Save StoryMaker Character'.",
            inputs=[io.Combo.Input("character_file", options=folder_paths.get_filename_list("storymaker_characters"),
                                   tooltip="a character file in models/storymaker_characters/ (written by Save "
                                           "StoryMaker Character)")],
            outputs=[
                Character.Output(display_name="character", tooltip="the saved character, with its CLIP features"),
                io.Image.Output(display_name="character_crop", tooltip="what CLIP saw of the character"),
                io.Image.Output(display_name="face_crop", tooltip="the aligned face (white when appearance only)"),
            ],
        )

    @classmethod
    def execute(cls, character_file) -> io.NodeOutput:
        import folder_paths

        path = folder_paths.get_full_path_or_raise("storymaker_characters", character_file)
        return io.NodeOutput(*character_ops.load_character_file(path))
