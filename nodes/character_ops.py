"""What the character nodes do: reference photos -> a character, a character saved to / loaded from a file.
Imports nothing of ComfyUI at import time (offline tests call these functions with stand-in face detectors and
segmenters; nodes/characters.py holds the V3 nodes). Images are ComfyUI IMAGE/MASK tensors."""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import numpy as np
import torch

from ..storymaker_core.characters import (
    character_file_stem,
    character_from_reference,
    combine_references,
    load_character,
    reference_mask,
    save_character,
)
from ..storymaker_core.identity import AUTO, FACE_ONLY_DEFAULT, decide_identity, face_only_line, face_only_setting
from ..storymaker_core.model_files import CLIP_VIT_H_WIDTH
from .common import NoProgress, images_to_numpy, mask_row, numpy_to_images
from .encode_ops import with_clip_features

logger = logging.getLogger(__name__)


def character_from_images(image, insightface, name, face_index, identity=AUTO, mask=None, sam=None, clothing=None,
                          face_only=FACE_ONLY_DEFAULT, progress=NoProgress) -> tuple:
    """(character, character crops, face crops, masks, identity report) of the references in `image` (a batch:
    several references of one character). `insightface` selects faces (`select_face`), `sam` segments (`segment`);
    `progress(total)` gives the bar to advance: face detection, then each reference."""
    own_face_only = face_only_setting(face_only, name)  # checked before any face detection runs
    images = images_to_numpy(image)
    clothing_rgb = images_to_numpy(clothing)[0] if clothing is not None else None
    labels = [f"image #{i + 1}" if len(images) > 1 else "image" for i in range(len(images))]
    bar = progress(len(images) + 1)
    decision = decide_identity(insightface.select_face, images, labels, identity, face_index, name)
    bar.update(1)
    references, masks = [], []
    for i, (rgb, label, face) in enumerate(zip(images, labels, decision.faces)):
        char_mask = usable_mask(mask_row(mask, i, "mask"), rgb, name)
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
    return (character, numpy_to_images(character.character_image), face_preview(character), torch.stack(masks),
            report)


def face_preview(character):
    """The face crops; white squares for a character without a face, so a preview node still shows something."""
    if character.face_image is not None:
        return numpy_to_images(character.face_image)
    return numpy_to_images(np.full_like(character.character_image, 255))


def usable_mask(mask, rgb, name):
    """The MASK row, refusing LoadImage's stand-in for an image without alpha (64x64 zeros) with what to do."""
    if mask is not None and mask.shape == (64, 64) != rgb.shape[:2] and not mask.any():
        raise ValueError(f"{name}: the mask is LoadImage's empty 64x64 placeholder (the image has no alpha channel). "
                         f"Load the character's mask with LoadImageMask, paint it in the mask editor, or connect a "
                         f"Segment Anything model instead.")
    if mask is not None and float(mask.min()) >= 0.5:
        logger.warning("%s: the mask is white everywhere, so the character crop is the whole reference, background "
                       "included, and StoryMaker will copy that background too. Paint only the character white.", name)
    return mask


def save_character_file(character, filename: str, folder: str, clip_vision=None) -> str:
    """Save the character (with CLIP features, computed now if it has none) as `filename`.safetensors in
    `folder` (models/storymaker_characters/), or as its name when `filename` is empty; never over an existing
    file nor through a symlink (`_001`, `_002`, ... are added). Anything but a plain file name is refused.
    Returns the file name written."""
    if str(filename).strip():
        stem = character_file_stem(filename, "filename")
    else:
        stem = character_file_stem(character.name, "filename is empty, so the character's name")
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
    return os.path.basename(path)


def load_character_file(path: str) -> tuple:
    """(character, character crops, face crops) of a file written by `save_character_file`."""
    character = load_character(path)
    return character, numpy_to_images(character.character_image), face_preview(character)
