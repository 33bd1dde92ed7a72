"""Segment Anything person masks from a box prompt: the character mask when the user gives none.

Why a wrapper: StoryMaker's character crop and its training loss both need one mask per character. The
Load SAM node and the dataset builder (`training/prepare.py`) get it from a box around the person (see
`characters.person_box_from_face`), and both need the same things done right: the model type read off
the checkpoint (file name `sam_vit_b_...`, or the encoder width in the weights), a clear message when
`segment-anything` is not installed or the checkpoint is missing, and the best of SAM's three masks.

`segment_anything` is imported lazily, so `storymaker_core` imports without it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .messages import detail

MODEL_TYPES = ("vit_b", "vit_l", "vit_h")
ENCODER_WIDTHS = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}  # image_encoder.patch_embed.proj.weight [W, 3, 16, 16]
ENCODER_KEY = "image_encoder.patch_embed.proj.weight"
INSTALL_HINT = "pip install segment-anything"
CHECKPOINTS_HINT = ("Put a Segment Anything checkpoint in ComfyUI/models/sams/ (sam_vit_b_01ec64.pth, "
                    "sam_vit_l_0b3195.pth or sam_vit_h_4b8939.pth from "
                    "https://github.com/facebookresearch/segment-anything#model-checkpoints).")


class SegmentError(RuntimeError):
    """Base class for every segmentation failure this module reports."""


class SegmentAnythingNotInstalledError(SegmentError, ImportError):
    """The `segment_anything` package cannot be imported."""


class SamCheckpointError(SegmentError, FileNotFoundError):
    """The checkpoint is missing, unreadable or not a SAM model."""


def _import_sam():
    try:
        from segment_anything import SamPredictor, sam_model_registry
    except ImportError as e:
        raise SegmentAnythingNotInstalledError(f"segment_anything could not be imported ({detail(e)}). Install it with: "
                                               f"{INSTALL_HINT}") from e
    return sam_model_registry, SamPredictor


def model_type_from_name(path: str) -> Optional[str]:
    """`vit_b`/`vit_l`/`vit_h` when the file name says so (`sam_vit_h_4b8939.pth`, `SAM-ViT-L.pth`)."""
    m = re.search(r"vit[_-]?([blh])(?![a-z])", Path(path).name.lower())
    return f"vit_{m.group(1)}" if m else None


def load_sam_state_dict(path: str) -> dict:
    """A SAM state dict from `.safetensors` or a `.pth` of plain tensors (never unpickles code)."""
    import torch

    try:
        if str(path).lower().endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any failure here means "not a readable SAM checkpoint"
        raise SamCheckpointError(f"{path}: cannot be read as a SAM checkpoint ({detail(e, path)}). The file "
                                 f"is truncated or not a state dict of tensors: download it again. "
                                 f"{CHECKPOINTS_HINT}") from e
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or ENCODER_KEY not in state:
        raise SamCheckpointError(f"{path}: has no '{ENCODER_KEY}', so it is not a Segment Anything (v1) "
                                 f"checkpoint. {CHECKPOINTS_HINT}")
    return state


def model_type_from_state_dict(state: dict, path: str) -> str:
    """The image encoder's width says which SAM it is."""
    width = int(state[ENCODER_KEY].shape[0])
    if width not in ENCODER_WIDTHS:
        raise SamCheckpointError(f"{path}: image encoder width {width} is none of SAM's ViT-B/L/H "
                                 f"({sorted(ENCODER_WIDTHS)}).")
    return ENCODER_WIDTHS[width]


def model_type_from_weights(path: str) -> str:
    """Read the image encoder's width from the checkpoint (memory-mapped for `.pth`)."""
    return model_type_from_state_dict(load_sam_state_dict(path), path)


def detect_model_type(path: str) -> str:
    """From the file name when it says, else from the weights' shapes."""
    return model_type_from_name(path) or model_type_from_weights(path)


def _check_box(box_xyxy: Sequence[float], hw: tuple) -> np.ndarray:
    box = np.asarray(box_xyxy, dtype=np.float32).reshape(-1)
    if box.shape != (4,) or not np.isfinite(box).all():
        raise ValueError(f"box must be 4 finite numbers (x1, y1, x2, y2), got {box_xyxy!r}")
    h, w = hw
    box = np.array([np.clip(box[0], 0, w - 1), np.clip(box[1], 0, h - 1),
                    np.clip(box[2], 0, w - 1), np.clip(box[3], 0, h - 1)], np.float32)
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"box {list(map(float, box_xyxy))} is empty inside the {w}x{h} image")
    return box


class PersonSegmenter:
    """`segment(image, box) -> bool [H, W]`: SAM's best-scoring of its three masks for a box prompt.

    `model` is the torch module: a host may move it between devices (ComfyUI loads it onto the GPU only
    while it segments); the predictor follows wherever it is.
    """

    def __init__(self, checkpoint: str, model_type: Optional[str] = None, device="cpu"):
        checkpoint = str(checkpoint)
        if not os.path.isfile(checkpoint):
            raise SamCheckpointError(f"SAM checkpoint {checkpoint} does not exist. {CHECKPOINTS_HINT}")
        if model_type is not None and model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES} (or None to detect it), got {model_type!r}")
        registry, predictor_cls = _import_sam()
        state = load_sam_state_dict(checkpoint)
        self.model_type = model_type or model_type_from_name(checkpoint) or model_type_from_state_dict(state, checkpoint)
        self.checkpoint = checkpoint
        sam = registry[self.model_type](checkpoint=None)
        try:
            sam.load_state_dict(state)
        except RuntimeError as e:  # a state dict of another size: "size mismatch for ..."
            raise SamCheckpointError(f"{checkpoint}: does not fit SAM {self.model_type} "
                                     f"({detail(e, checkpoint, limit=200)}). Pass the right model_type or rename the "
                                     f"file (sam_vit_b/l/h_...).") from e
        self.model = sam.to(device).eval()
        self.predictor = predictor_cls(self.model)

    def segment(self, image_rgb_uint8: np.ndarray, box_xyxy: Sequence[float], image_name: str = "image") -> np.ndarray:
        """RGB uint8 `[H, W, 3]` and a box in pixels -> bool mask `[H, W]`."""
        image = np.asarray(image_rgb_uint8)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{image_name}: expected an RGB uint8 array [H, W, 3], got {image.dtype} {image.shape}")
        box = _check_box(box_xyxy, image.shape[:2])
        import torch

        with torch.inference_mode():
            self.predictor.set_image(np.ascontiguousarray(image), image_format="RGB")
            masks, scores, _ = self.predictor.predict(box=box, multimask_output=True)  # [3, H, W], [3]
        return np.asarray(masks[int(np.argmax(scores))], dtype=bool)
