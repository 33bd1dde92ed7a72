"""Reference preprocessing: the character crop and the aligned face crop, as the release makes them.

* Character crop: bounding rectangle of the mask's outer contours -> crop image and mask -> 5x5 Gaussian
  blur of the mask -> composite the crop over white with that soft mask -> squash to 224x224 (bicubic).
* Face crop: 5-point similarity alignment of the *original* image to the ArcFace template x 2 -> 224x224.
* Clothing image (clothing swap): squashed to 224x224, no mask.

All functions take RGB `uint8 [H, W, 3]` numpy images (or float images in 0..1, as ComfyUI's IMAGE rows)
and masks `[H, W]` (uint8 0..255 or float 0..1). CLIP normalisation happens in the CLIP encoder.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .messages import detail

CLIP_SIZE = 224
# ArcFace's 5-point template for 112x112 crops: eyes, nose tip, mouth corners (insightface `arcface_dst`).
ARCFACE_TEMPLATE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                                 [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


class PreprocessError(ValueError):
    """A reference image or mask that cannot be used, naming the input and the fix."""


def _cv2():
    """OpenCV, imported when first needed so the pack loads without it and says what to install."""
    try:
        import cv2
    except ImportError as e:
        raise ImportError(f"OpenCV is needed for StoryMaker's crops ({detail(e)}): pip install opencv-python") from e
    return cv2


def to_uint8_rgb(image: np.ndarray, name: str = "image") -> np.ndarray:
    """RGB uint8 `[H, W, 3]` from uint8 or float-in-0..1 input (RGBA and gray are converted)."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise PreprocessError(f"{name}: expected an RGB image [H, W, 3], got shape {image.shape}.")
    image = image[..., :3]
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


def mask_to_uint8(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    """`[H, W]` uint8 mask from uint8/float/bool masks; colour masks use their brightest channel.

    (The release reads channel 0 only, so a green or blue mask crashed it.)
    """
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    if mask.ndim != 2:
        raise PreprocessError(f"{name}: expected a mask [H, W], got shape {mask.shape}.")
    if mask.dtype == np.bool_:
        return mask.astype(np.uint8) * 255
    if mask.dtype != np.uint8:
        mask = np.clip(np.rint(mask.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return mask


def squash_resize(image: np.ndarray, size: int = CLIP_SIZE) -> np.ndarray:
    """Resize to `size x size` ignoring aspect ratio, with PIL's bicubic filter (as the release)."""
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


def mask_bounding_box(mask_u8: np.ndarray, name: str = "mask") -> tuple:
    """`(x0, y0, x1, y1)` (x1, y1 exclusive) enclosing every outer contour of the mask's non-zero pixels."""
    cv2 = _cv2()
    contours, _ = cv2.findContours(mask_u8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        raise PreprocessError(f"{name} is empty (no pixel above 0): draw or segment the character in it, or "
                              f"connect a different mask.")
    boxes = np.array([cv2.boundingRect(c) for c in contours])  # x, y, w, h
    return (int(boxes[:, 0].min()), int(boxes[:, 1].min()), int((boxes[:, 0] + boxes[:, 2]).max()),
            int((boxes[:, 1] + boxes[:, 3]).max()))


def character_composite(image: np.ndarray, mask: np.ndarray, image_name: str = "image",
                        mask_name: str = "mask") -> np.ndarray:
    """The mask's bounding rectangle of the image, composited over white with the blurred mask (full size)."""
    image = to_uint8_rgb(image, image_name)
    mask = mask_to_uint8(mask, mask_name)
    if mask.shape != image.shape[:2]:
        raise PreprocessError(f"{mask_name} is {mask.shape[1]}x{mask.shape[0]} but {image_name} is "
                              f"{image.shape[1]}x{image.shape[0]}: the mask must have the image's size.")
    x0, y0, x1, y1 = mask_bounding_box(mask, mask_name)
    crop, mask_crop = image[y0:y1, x0:x1], mask[y0:y1, x0:x1]
    alpha = _cv2().GaussianBlur(mask_crop, (5, 5), 0)[..., None] / 255.0  # uint8 blur, as the release
    return (255.0 * (1.0 - alpha) + alpha * crop).astype(np.uint8)  # truncates, as the release


def character_crop(image: np.ndarray, mask: np.ndarray, size: int = CLIP_SIZE, image_name: str = "image",
                   mask_name: str = "mask") -> np.ndarray:
    """The character cut out by its mask, over white, squashed to `size x size`: `uint8 [size, size, 3]`."""
    return squash_resize(character_composite(image, mask, image_name, mask_name), size)


def clothing_crop(image: np.ndarray, size: int = CLIP_SIZE, image_name: str = "clothing") -> np.ndarray:
    """A clothing-only image for the character branch (clothing swap): squashed, no mask."""
    return squash_resize(to_uint8_rgb(image, image_name), size)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src -> dst: `[2, 3]`.

    Umeyama (1991), the estimate insightface's `norm_crop` uses (through scikit-image).
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    n = src.shape[0]
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / n
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[-1] = -1
    rotation = u @ np.diag(d) @ vt
    var_src = (src_c ** 2).sum() / n
    if var_src <= 1e-12 or s.min() <= 1e-12 * max(s.max(), 1e-12):
        raise PreprocessError("face keypoints are degenerate (all on one point or line); cannot align the face.")
    scale = (s * d).sum() / var_src
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]])


def face_crop(image: np.ndarray, kps: np.ndarray, size: int = CLIP_SIZE, image_name: str = "image") -> np.ndarray:
    """The face aligned to the ArcFace template scaled to `size` (multiple of 112): `uint8 [size, size, 3]`."""
    if size % 112:
        raise ValueError(f"face crop size must be a multiple of 112, got {size}")
    kps = np.asarray(kps, np.float64)
    if kps.shape != (5, 2):
        raise PreprocessError(f"{image_name}: face keypoints must be 5 (x, y) points, got shape {kps.shape}.")
    matrix = similarity_transform(kps, ARCFACE_TEMPLATE_112 * (size / 112.0))
    return _cv2().warpAffine(to_uint8_rgb(image, image_name), matrix, (size, size), borderValue=0.0)
