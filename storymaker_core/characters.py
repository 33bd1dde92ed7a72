"""A character: what StoryMaker needs from one reference, and its reusable file format.

From a reference photo: the ArcFace identity embedding, the 5 face keypoints, the character crop (mask
on white, 224x224) and the aligned face crop (224x224). Once a CLIP vision model has encoded the crops,
the character also carries their penultimate hidden states; saved to `.safetensors`, such a character is
reused across workflows with neither insightface nor CLIP at generation time.

A character's identity comes from its face (`face`: ArcFace + aligned face crop) or from its appearance
alone (`appearance`: no face, e.g. a cartoon animal; its 4 face tokens are zeroed, as the release's training
drops the face). A character may also carry its own `face_only` choice, overriding the Encode/Cast node's
switch. docs/characters.md explains both.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from .messages import detail
from .preprocess import PreprocessError, character_crop, clothing_crop, face_crop, mask_to_uint8

logger = logging.getLogger(__name__)

FORMAT = "storymaker-character/1"
FACE, APPEARANCE = "face", "appearance"
IDENTITY_MODES = (FACE, APPEARANCE)
ARCFACE_DIM = 512  # the zero identity an appearance-only character stores (buffalo_l's embedding width)


class CharacterError(ValueError):
    """A character that cannot be built, saved, loaded or encoded, with the reason and the fix."""


@dataclass
class Character:
    name: str
    id_embedding: Tensor  # [512] ArcFace normed_embedding (zeros for an appearance-only character)
    kps: Optional[np.ndarray] = None  # [5, 2] face keypoints in the reference
    character_image: Optional[np.ndarray] = None  # uint8 [R, 224, 224, 3]: masked crop on white, or clothing
    face_image: Optional[np.ndarray] = None  # uint8 [R, 224, 224, 3]: aligned face (R references)
    character_clip: Optional[Tensor] = None  # [257, 1280] CLIP penultimate hidden states, mean over R
    face_clip: Optional[Tensor] = None  # [257, 1280] same for the face crops
    # A blend: tokens = lerp(tokens(blend_base), tokens(blend_with), blend_weight); either side may be a blend.
    blend_with: Optional["Character"] = field(default=None, repr=False)
    blend_weight: float = 0.0  # 0 = blend_base, 1 = blend_with
    blend_base: Optional["Character"] = field(default=None, repr=False)  # the first character, as given
    identity: str = FACE  # FACE or APPEARANCE (no face: kps, face_image and face_clip stay None)
    # This character's own face_only: None follows the Encode/Cast node's switch; True/False overrides it.
    # It applies to a character with a face only (an appearance-only character always keeps its crop).
    face_only: Optional[bool] = None

    def __post_init__(self):
        if self.identity not in IDENTITY_MODES:
            raise CharacterError(f"character '{self.name}': identity must be one of {IDENTITY_MODES}, "
                                 f"got {self.identity!r}.")

    @property
    def has_face(self) -> bool:
        return self.identity == FACE

    @property
    def is_encoded(self) -> bool:
        return all(m.character_clip is not None and (m.face_clip is not None or not m.has_face)
                   for m in self.members())

    def members(self) -> list:
        """The plain (unblended) characters this one is made of: itself, or every leaf of its blends."""
        if self.blend_with is None:
            return [self]
        return self.blend_base.members() + self.blend_with.members()

    def with_clip(self, character_clip: Tensor, face_clip: Optional[Tensor]) -> "Character":
        return replace(self, character_clip=character_clip, face_clip=face_clip)


def character_from_reference(image: np.ndarray, mask: Optional[np.ndarray], kps: Optional[np.ndarray],
                             id_embedding: Optional[np.ndarray], name: str = "character",
                             clothing: Optional[np.ndarray] = None, image_name: str = "image",
                             mask_name: str = "mask") -> Character:
    """Crops and identity of one character in one reference image (RGB uint8 image, [H, W] mask).

    With `kps` and `id_embedding` (a detected face), a `face` character; with both None, an `appearance`
    character: no face crop, the character crop alone carries the identity. With `clothing`, a
    clothing-only image replaces the character crop (clothing swap) and no mask is needed.
    """
    if (kps is None) != (id_embedding is None):
        raise CharacterError(f"{name}: give both the face keypoints and the identity embedding, or neither "
                             f"(appearance only).")
    if clothing is not None:
        crop = clothing_crop(clothing)
    elif mask is None:
        raise CharacterError(f"{name}: {image_name} needs a {mask_name} of the character (or a clothing image).")
    else:
        crop = character_crop(image, _checked_mask(mask, image, kps, image_name, mask_name), image_name=image_name,
                              mask_name=mask_name)
    if kps is None:
        return Character(name=name, id_embedding=torch.zeros(ARCFACE_DIM), character_image=crop[None],
                         identity=APPEARANCE)
    return Character(name=name, id_embedding=torch.as_tensor(np.asarray(id_embedding, np.float32)).flatten(),
                     kps=np.asarray(kps, np.float32), character_image=crop[None],
                     face_image=face_crop(image, kps, image_name=image_name)[None])


def whole_image_mask(image: np.ndarray) -> np.ndarray:
    """A mask covering the whole image: the character crop becomes the whole reference, squashed to 224."""
    return np.ones(np.asarray(image).shape[:2], np.float32)


def _checked_mask(mask: np.ndarray, image: np.ndarray, kps: Optional[np.ndarray], image_name: str,
                  mask_name: str) -> np.ndarray:
    """uint8 `[H, W]` mask of the image's size that covers the chosen face (if there is one)."""
    mask_u8 = mask_to_uint8(mask, mask_name)
    if mask_u8.shape != np.asarray(image).shape[:2]:
        raise PreprocessError(f"{mask_name} is {mask_u8.shape[1]}x{mask_u8.shape[0]} but {image_name} is "
                              f"{np.asarray(image).shape[1]}x{np.asarray(image).shape[0]}: the mask must have the "
                              f"image's size.")
    if kps is None:
        return mask_u8
    x, y = np.round(np.asarray(kps, np.float64)[:3].mean(axis=0)).astype(int)  # between the eyes and nose
    h, w = mask_u8.shape
    at_face = mask_u8[min(max(y, 0), h - 1), min(max(x, 0), w - 1)]
    if mask_u8.any() and not at_face:
        if (mask_u8 < 128).mean() < 0.5:  # mostly white but not at the face: the mask is most likely inverted
            raise CharacterError(f"{mask_name} looks inverted: it is white around the face found in {image_name} "
                                 f"(near x={x}, y={y}) and black on it. The character must be white; a MASK from "
                                 f"LoadImage is 1 - alpha (white where the PNG is transparent): add an InvertMask node.")
        raise CharacterError(f"the face found in {image_name} (near x={x}, y={y}) is outside {mask_name}: the mask "
                             f"belongs to someone else, or the wrong face was picked (try another face_index).")
    return mask_u8


def combine_references(references: list, name: str) -> Character:
    """Several photos of one character -> one character: mean identity (re-normalised, as IP-Adapter FaceID
    does with several images), all crops kept; their CLIP features are averaged when encoded."""
    if not references:
        raise CharacterError("no reference images given")
    if len({r.identity for r in references}) > 1:
        raise CharacterError(f"{name}: the references mix face and appearance-only identities; a character is one "
                             f"mode (build every reference with the same identity).")
    if len(references) == 1:
        return replace(references[0], name=name)
    crops = np.concatenate([r.character_image for r in references])
    if not references[0].has_face:
        return Character(name=name, id_embedding=torch.zeros(ARCFACE_DIM), character_image=crops, identity=APPEARANCE)
    ids = torch.stack([r.id_embedding for r in references]).mean(0)
    return Character(name=name, id_embedding=ids / ids.norm().clamp_min(1e-12), kps=references[0].kps,
                     character_image=crops, face_image=np.concatenate([r.face_image for r in references]))


def person_box_from_face(face_bbox: np.ndarray, image_hw: tuple) -> np.ndarray:
    """A box prompt for segmenting the whole person from their face box: wider than the shoulders, from
    above the hair down to the image's bottom edge (the body is below the face in reference photos)."""
    x1, y1, x2, y2 = (float(v) for v in face_bbox)
    w, h = x2 - x1, y2 - y1
    cx = (x1 + x2) / 2
    height, width = image_hw
    return np.array([max(cx - 2.5 * w, 0), max(y1 - 0.6 * h, 0), min(cx + 2.5 * w, width - 1), height - 1], np.float32)


def reference_mask(image: np.ndarray, mask: Optional[np.ndarray], face_bbox: Optional[np.ndarray], segmenter,
                   name: str = "character", image_name: str = "image") -> np.ndarray:
    """The character's mask in one reference: the given one, else Segment Anything, else the whole image.

    SAM is prompted with a box around the person below the face, or with the whole image when there is no
    face (it then picks the most prominent object). Without SAM, an appearance-only character (no face
    box) uses the whole reference, background included, and says so; a character with a face gets an
    error, since a photo's background in its crop would be copied into every scene.

    Args:
        image: RGB uint8 `[H, W, 3]`. mask: `[H, W]` or None. face_bbox: `[4]` x1, y1, x2, y2, or None
        (appearance only). segmenter: has `segment(image, box) -> [H, W]`, or None.
    Returns: float32 `[H, W]`.
    """
    if mask is not None:
        return np.asarray(mask, np.float32)
    height, width = np.asarray(image).shape[:2]
    if segmenter is not None:
        box = (person_box_from_face(face_bbox, (height, width)) if face_bbox is not None
               else np.array([0, 0, width - 1, height - 1], np.float32))
        if face_bbox is None:
            logger.info("%s: no face in %s: Segment Anything is prompted with the whole image.", name, image_name)
        return np.asarray(segmenter.segment(image, box), np.float32)
    if face_bbox is not None:
        raise CharacterError(f"{name}: connect a MASK of the character, or a Segment Anything model (sam input) so "
                             f"the character can be segmented automatically. (Set identity to 'appearance' to use "
                             f"the whole {image_name} as the character crop, background included.)")
    logger.warning("%s: no mask and no Segment Anything model: the whole %s (background included) is the character "
                   "crop. Connect a MASK or a SAM model if the background should not be part of the character.",
                   name, image_name)
    return whole_image_mask(image)


def blend_characters(a: Character, b: Character, weight: float) -> Character:
    """A character between `a` (weight 0) and `b` (weight 1); blended at token level when encoded."""
    if not 0.0 <= weight <= 1.0:
        raise CharacterError(f"blend weight must be within 0..1, got {weight}")
    return replace(a, name=f"{a.name}~{b.name}@{weight:g}", blend_with=b, blend_weight=float(weight), blend_base=a)


MAX_FILE_STEM = 200
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}
_NOT_IN_FILE_NAMES = '<>:"/\\|?*'


def character_file_stem(text: str, what: str) -> str:
    """``text`` as the stem of the file *Save StoryMaker Character* writes, or ``CharacterError`` naming ``what``
    (the input it came from) and what to write in ``filename`` instead. Only a plain file name is accepted, on
    every OS: no path separator, drive, '..', leading dot, control character, character or device name that
    Windows refuses, at most ``MAX_FILE_STEM`` characters; a trailing ``.safetensors`` is dropped (added again)."""
    stem = str(text).strip()
    if stem.lower().endswith(".safetensors"):
        stem = stem[: -len(".safetensors")].rstrip()
    shown = repr(stem if len(stem) <= 60 else stem[:57] + "...")
    if not stem:
        why = "is empty"
    elif len(stem) > MAX_FILE_STEM:
        why = f"is {len(stem)} characters long (at most {MAX_FILE_STEM})"
    elif any(ord(c) < 32 or ord(c) == 127 for c in stem):
        why = "holds a control character (NUL, newline, tab...)"
    elif "/" in stem or "\\" in stem:
        why = "is a path ('/' or '\\')"
    elif ":" in stem:
        why = "holds ':' (a drive letter or a Windows stream)"
    elif ".." in stem:
        why = "holds '..'"
    elif stem.startswith("."):
        why = "starts with '.'"
    elif any(c in _NOT_IN_FILE_NAMES for c in stem) or stem.endswith("."):
        why = f"holds one of {' '.join(_NOT_IN_FILE_NAMES)} or ends with '.' (Windows refuses them)"
    elif stem.split(".")[0].rstrip().upper() in _WINDOWS_RESERVED:
        why = "is a device name on Windows (CON, PRN, AUX, NUL, COM1-9, LPT1-9)"
    else:
        return stem
    raise CharacterError(f"{what} {shown} {why}: write a plain file name in filename, such as 'ava' (saved as "
                         f"models/storymaker_characters/ava.safetensors).")


def save_character(path: str, character: Character, metadata: Optional[dict] = None) -> None:
    """Write an encoded character (identity + CLIP features + crops for preview) as `.safetensors`."""
    from safetensors.torch import save_file

    if character.blend_with is not None:
        raise CharacterError(f"'{character.name}' is a blend; save its two characters instead.")
    if not character.is_encoded:
        raise CharacterError(f"'{character.name}' has no CLIP features yet: connect a CLIP vision model (ViT-H) "
                             f"so it can be encoded before saving.")
    tensors = {"id_embedding": character.id_embedding.float(), "character_clip": character.character_clip.half()}
    if character.has_face:
        tensors["face_clip"] = character.face_clip.half()
    for name in ("kps", "character_image", "face_image"):
        value = getattr(character, name)
        if value is not None:
            tensors[name] = torch.tensor(np.asarray(value))  # a copy: the arrays may be read-only
    info = {"format": FORMAT, "name": character.name, "identity": character.identity,
            "extra": json.dumps(metadata or {})}
    if character.face_only is not None:  # absent: follows the node's switch (as every file saved before it)
        info["face_only"] = "on" if character.face_only else "off"
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=info)


def load_character(path: str) -> Character:
    """Read a character written by `save_character`, checking it is one (files without an identity are faces)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, "pt") as f:
            info = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CharacterError(f"{path}: cannot be read as a saved character ({detail(e, path)}).") from e
    identity = info.get("identity", FACE)  # files from before appearance-only characters all have a face
    needed = {"id_embedding", "character_clip"} | ({"face_clip"} if identity == FACE else set())
    if info.get("format") != FORMAT or not needed <= tensors.keys():
        raise CharacterError(f"{path}: not a StoryMaker character file (saved by 'Save StoryMaker character').")
    if identity not in IDENTITY_MODES:
        raise CharacterError(f"{path}: identity {identity!r} is not one of {IDENTITY_MODES}; the file was written "
                             f"by a newer version of this node pack, or edited.")

    face_only = info.get("face_only")  # absent in files saved before it: the node's switch decides
    if face_only not in (None, "on", "off"):
        raise CharacterError(f"{path}: face_only {face_only!r} is not 'on' or 'off'; the file was written by a newer "
                             f"version of this node pack, or edited.")

    def array(name):
        return tensors[name].numpy() if name in tensors else None

    return Character(name=info.get("name", "character"), id_embedding=tensors["id_embedding"].float(),
                     kps=array("kps"), character_image=array("character_image"), face_image=array("face_image"),
                     character_clip=tensors["character_clip"].float(),
                     face_clip=tensors["face_clip"].float() if identity == FACE else None, identity=identity,
                     face_only=None if face_only is None else face_only == "on")
