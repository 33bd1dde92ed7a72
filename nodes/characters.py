"""Character nodes: reference photo -> character, save/load a cast, blend two characters."""

from __future__ import annotations

import os
import logging
from dataclasses import replace

import numpy as np

from ..storymaker_core.characters import (
    blend_characters,
    character_file_stem,
    character_from_reference,
    combine_references,
    load_character,
    reference_mask,
    save_character,
)
from ..storymaker_core.model_files import CLIP_VIT_H_WIDTH
from ..storymaker_core.identity import (
    AUTO,
    FACE_ONLY_CHOICES,
    FACE_ONLY_DEFAULT,
    IDENTITY_CHOICES,
    decide_identity,
    face_only_line,
    face_only_setting,
)
from .common import CATEGORY, checked_floats, images_to_numpy, mask_row, numpy_to_images, progress_bar
from .encode import with_clip_features

logger = logging.getLogger(__name__)

CHARACTER = "STORYMAKER_CHARACTER"


class StoryMakerCharacterFromImage:
    DESCRIPTION = ("A character from reference images: its identity from the face (ArcFace + face crop) or, for "
                   "characters without a photographed face (anime, animals), from its appearance only; and the "
                   "character cut out by its mask. Several images in the batch = several references of the same "
                   "character.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                "insightface": ("INSIGHTFACE",),
                "name": ("STRING", {"default": "character"}),
                "face_index": ("INT", {"default": 0, "min": 0, "max": 32, "tooltip": "0 = largest face, 1 = next, ..."}),
                "identity": (list(IDENTITY_CHOICES), {
                    "default": AUTO,
                    "tooltip": "face: ArcFace identity + aligned face crop (error if no face is found). appearance: "
                               "no face (anime/cartoon people, animals): the character crop alone carries the "
                               "identity. auto: face when every reference has a confident face, else appearance "
                               "(see the identity_used output)."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "the character (white); without it Segment Anything is used, or for an "
                                             "appearance-only character without SAM the whole image"}),
                "sam": ("STORYMAKER_SAM",),
                "clothing": ("IMAGE", {"tooltip": "clothing-only image: replaces the character crop (clothing swap)"}),
                "face_only": (list(FACE_ONLY_CHOICES), {
                    "default": FACE_ONLY_DEFAULT,
                    "tooltip": "this character's own face_only. default: the Encode/Cast node's face_only switch "
                               "decides. on: keep only its face, the prompt decides clothing and body. off: keep its "
                               "character crop even when the Encode/Cast node's face_only is on. Never applies to an "
                               "appearance-only character (it keeps its crop)."}),
            },
        }

    RETURN_TYPES = (CHARACTER, "IMAGE", "IMAGE", "MASK", "STRING")
    RETURN_NAMES = ("character", "character_crop", "face_crop", "mask", "identity_used")
    OUTPUT_TOOLTIPS = ("the character", "what CLIP sees of the character", "the aligned face (white when appearance "
                       "only)", "the character's mask per reference", "one line per reference: face or appearance, "
                       "and why; then a line on this character's own face_only when it is not default")
    FUNCTION = "build"
    CATEGORY = CATEGORY

    def build(self, image, insightface, name, face_index, identity=AUTO, mask=None, sam=None, clothing=None,
              face_only=FACE_ONLY_DEFAULT):
        import torch

        own_face_only = face_only_setting(face_only, name)  # checked before any face detection runs
        images = images_to_numpy(image)
        clothing_rgb = images_to_numpy(clothing)[0] if clothing is not None else None
        labels = [f"image #{i + 1}" if len(images) > 1 else "image" for i in range(len(images))]
        bar = progress_bar(len(images) + 1)
        decision = decide_identity(insightface.select_face, images, labels, identity, face_index, name)
        bar.update(1)
        references, masks = [], []
        for i, (rgb, label, face) in enumerate(zip(images, labels, decision.faces)):
            char_mask = _usable_mask(mask_row(mask, i, "mask"), rgb, name)
            if clothing_rgb is None:  # else the clothing image replaces the masked crop: no mask needed
                char_mask = reference_mask(rgb, char_mask, None if face is None else face.bbox, sam, name, label)
            references.append(character_from_reference(rgb, char_mask, None if face is None else face.kps,
                                                       None if face is None else face.embedding, name=name,
                                                       clothing=clothing_rgb, image_name=label, mask_name="mask"))
            masks.append(torch.from_numpy(np.asarray(char_mask if char_mask is not None else
                                                     np.zeros(rgb.shape[:2]), np.float32)))
            bar.update(1)
        character = replace(combine_references(references, name), face_only=own_face_only)
        own_line = face_only_line(face_only, character.identity)
        report = decision.report + (f"\n{own_line}" if own_line else "")
        return (character, numpy_to_images(character.character_image), _face_preview(character), torch.stack(masks),
                report)


def _face_preview(character):
    """The face crops; white squares for a character without a face, so a preview node still shows something."""
    if character.face_image is not None:
        return numpy_to_images(character.face_image)
    return numpy_to_images(np.full_like(character.character_image, 255))


def _usable_mask(mask, rgb, name):
    """The MASK row, refusing LoadImage's stand-in for an image without alpha (64x64 zeros) with what to do."""
    if mask is not None and mask.shape == (64, 64) != rgb.shape[:2] and not mask.any():
        raise ValueError(f"{name}: the mask is LoadImage's empty 64x64 placeholder (the image has no alpha channel). "
                         f"Load the character's mask with LoadImageMask, paint it in the mask editor, or connect a "
                         f"Segment Anything model instead.")
    if mask is not None and float(mask.min()) >= 0.5:
        logger.warning("%s: the mask is white everywhere, so the character crop is the whole reference, background "
                       "included, and StoryMaker will copy that background too. Paint only the character white.", name)
    return mask


class StoryMakerBlendCharacters:
    DESCRIPTION = "A character between two others (0 = character_a, 1 = character_b), blended token by token."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"character_a": (CHARACTER,), "character_b": (CHARACTER,),
                             "weight": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05})}}

    RETURN_TYPES = (CHARACTER,)
    FUNCTION = "blend"
    CATEGORY = CATEGORY

    @classmethod
    def VALIDATE_INPUTS(cls, weight=None):
        return checked_floats(cls, weight=weight)

    def blend(self, character_a, character_b, weight):
        return (blend_characters(character_a, character_b, weight),)


class StoryMakerSaveCharacter:
    DESCRIPTION = ("Saves a character's identity and CLIP features to models/storymaker_characters/, so later "
                   "workflows need neither InsightFace nor CLIP vision for it.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"character": (CHARACTER,), "filename": ("STRING", {"default": "character"})},
                "optional": {"clip_vision": ("CLIP_VISION",)}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = CATEGORY

    def save(self, character, filename, clip_vision=None):
        import folder_paths

        if str(filename).strip():
            stem = character_file_stem(filename, "filename")
        else:
            stem = character_file_stem(character.name, "filename is empty, so the character's name")
        folder = folder_paths.get_folder_paths("storymaker_characters")[0]
        os.makedirs(folder, exist_ok=True)
        path, n = os.path.join(folder, f"{stem}.safetensors"), 1
        while os.path.lexists(path):  # never overwrite a saved cast member (nor write through a symlink)
            path, n = os.path.join(folder, f"{stem}_{n:03d}.safetensors"), n + 1
        real_folder = os.path.realpath(folder)
        if os.path.commonpath([real_folder, os.path.realpath(path)]) != real_folder:  # a second guard
            raise ValueError(f"filename: {os.path.basename(path)!r} would be written outside "
                             f"models/storymaker_characters/; write a plain file name such as 'ava'.")
        encoded = with_clip_features(character, clip_vision)
        width = encoded.character_clip.shape[-1]
        if width != CLIP_VIT_H_WIDTH:
            raise ValueError(f"clip_vision gives {width}-wide features; StoryMaker reads CLIP-ViT-H-14's "
                             f"{CLIP_VIT_H_WIDTH} (a character saved with them could never be used). Connect "
                             f"CLIP-ViT-H-14-laion2B to clip_vision.")
        save_character(path, encoded, {"node": "StoryMakerSaveCharacter"})
        return {"ui": {"text": [os.path.basename(path)]}}


class StoryMakerLoadCharacter:
    DESCRIPTION = "Loads a character saved by 'Save StoryMaker character'."

    @classmethod
    def INPUT_TYPES(cls):
        import folder_paths

        return {"required": {"character_file": (folder_paths.get_filename_list("storymaker_characters"),)}}

    RETURN_TYPES = (CHARACTER, "IMAGE", "IMAGE")
    RETURN_NAMES = ("character", "character_crop", "face_crop")
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, character_file):
        import folder_paths

        character = load_character(folder_paths.get_full_path_or_raise("storymaker_characters", character_file))
        return (character, numpy_to_images(character.character_image), _face_preview(character))


NODE_CLASS_MAPPINGS = {"StoryMakerCharacterFromImage": StoryMakerCharacterFromImage,
                       "StoryMakerBlendCharacters": StoryMakerBlendCharacters,
                       "StoryMakerSaveCharacter": StoryMakerSaveCharacter,
                       "StoryMakerLoadCharacter": StoryMakerLoadCharacter}
NODE_DISPLAY_NAME_MAPPINGS = {"StoryMakerCharacterFromImage": "StoryMaker Character from Image",
                              "StoryMakerBlendCharacters": "Blend StoryMaker Characters",
                              "StoryMakerSaveCharacter": "Save StoryMaker Character",
                              "StoryMakerLoadCharacter": "Load StoryMaker Character"}
