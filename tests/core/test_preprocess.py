"""Character and face crops on a real photo (scikit-image's astronaut) with synthetic masks."""

import numpy as np
import pytest
from skimage import data
from skimage.transform import SimilarityTransform

from storymaker_core.preprocess import (
    ARCFACE_TEMPLATE_112,
    PreprocessError,
    character_composite,
    character_crop,
    clothing_crop,
    face_crop,
    mask_bounding_box,
    similarity_transform,
)


@pytest.fixture(scope="module")
def photo():
    return data.astronaut()  # RGB uint8 512x512, a real portrait


def rect_mask(shape, y0, y1, x0, x1, value=255):
    mask = np.zeros(shape[:2], np.uint8)
    mask[y0:y1, x0:x1] = value
    return mask


def test_rectangular_mask_crops_its_rectangle_and_keeps_the_inside(photo):
    comp = character_composite(photo, rect_mask(photo.shape, 40, 300, 100, 260))
    assert comp.shape == (260, 160, 3)
    # away from the blurred edge (2 px for a 5x5 kernel) the pixels are the photo's own
    assert np.array_equal(comp[3:-3, 3:-3], photo[43:297, 103:257])
    # at the edge the blurred mask mixes in white: corner alpha = (6+4+1)^2/256 of the 5x5 binomial kernel
    assert np.all(comp[0, 0] >= photo[40, 100])


def test_crop_is_squashed_to_224(photo):
    crop = character_crop(photo, rect_mask(photo.shape, 0, 400, 100, 200))
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8


def test_non_contiguous_mask_spans_both_parts_with_white_between(photo):
    mask = rect_mask(photo.shape, 50, 150, 20, 120) | rect_mask(photo.shape, 300, 400, 350, 450)
    assert mask_bounding_box(mask) == (20, 50, 450, 400)
    comp = character_composite(photo, mask)
    assert comp.shape == (350, 430, 3)
    assert np.all(comp[150:250, 150:300] == 255)  # between the parts: white
    assert np.array_equal(comp[10:90, 10:90], photo[60:140, 30:110])  # inside the first part: photo


def test_mask_touching_the_border(photo):
    mask = rect_mask(photo.shape, 0, 100, 412, 512)
    assert mask_bounding_box(mask) == (412, 0, 512, 100)
    comp = character_composite(photo, mask)
    assert comp.shape == (100, 100, 3)
    # the crop border reflects (REFLECT_101), so border pixels of a full mask stay the photo's
    assert np.array_equal(comp, photo[0:100, 412:512])


def test_soft_and_float_and_colour_masks(photo):
    soft = rect_mask(photo.shape, 100, 200, 100, 200, value=128)
    comp = character_composite(photo, soft)
    inside = photo[110:190, 110:190].astype(np.float64)
    assert np.array_equal(comp[10:90, 10:90], (255 * (1 - 128 / 255) + 128 / 255 * inside).astype(np.uint8))
    as_float = character_composite(photo.astype(np.float32) / 255, soft.astype(np.float32) / 255)
    assert np.array_equal(as_float, comp)
    green = np.zeros(photo.shape, np.uint8)
    green[100:200, 100:200, 1] = 128  # the release read channel 0 only and crashed on a green mask
    assert np.array_equal(character_composite(photo, green), comp)


def test_empty_mask_is_a_clear_error(photo):
    with pytest.raises(PreprocessError, match="mask_1 is empty"):
        character_crop(photo, np.zeros(photo.shape[:2]), mask_name="mask_1")


def test_mask_of_another_size_is_a_clear_error(photo):
    with pytest.raises(PreprocessError, match="mask is 256x256 but image is 512x512"):
        character_crop(photo, np.ones((256, 256)))


def test_clothing_is_squashed_without_mask(photo):
    crop = clothing_crop(photo[:, :300])
    assert crop.shape == (224, 224, 3)
    assert abs(float(crop.mean()) - float(photo[:, :300].mean())) < 2


def known_similarity(scale, angle, tx, ty):
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, tx], [s, c, ty]])


def test_similarity_estimate_matches_scikit_image():
    g = np.random.default_rng(0)
    src = g.uniform(100, 300, size=(5, 2))
    dst = ARCFACE_TEMPLATE_112 * 2 + g.normal(0, 2, size=(5, 2))  # not exactly similar: least squares
    ours = similarity_transform(src, dst)
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        reference = SimilarityTransform.from_estimate(src, dst)
    else:
        reference = SimilarityTransform()
        reference.estimate(src, dst)
    assert np.abs(ours - reference.params[:2]).max() < 1e-9


def test_face_crop_inverts_a_known_alignment(photo):
    import cv2

    truth = known_similarity(0.9, 0.2, -120.0, -20.0)  # image -> 224 crop
    template = ARCFACE_TEMPLATE_112 * 2
    inverse = cv2.invertAffineTransform(truth)
    kps = template @ inverse[:, :2].T + inverse[:, 2]  # where the face's 5 points are in the photo
    assert np.abs(similarity_transform(kps, template) - truth).max() < 1e-9
    crop = face_crop(photo, kps)
    assert crop.shape == (224, 224, 3)
    assert np.array_equal(crop, cv2.warpAffine(photo, truth, (224, 224), borderValue=0.0))


def test_face_crop_matches_insightface_norm_crop(photo):
    face_align = pytest.importorskip("insightface.utils.face_align", reason="insightface not installed")
    kps = np.array([[185.0, 110.0], [235.0, 105.0], [212.0, 140.0], [190.0, 170.0], [232.0, 167.0]], np.float32)
    ours = face_crop(photo, kps).astype(int)
    theirs = face_align.norm_crop(photo, landmark=kps, image_size=224).astype(int)
    # insightface estimates the transform in float32, we in float64: bilinear samples may round 1 apart
    assert np.abs(ours - theirs).max() <= 1
    assert (ours != theirs).mean() < 0.01


def test_degenerate_keypoints_are_a_clear_error(photo):
    with pytest.raises(PreprocessError, match="degenerate"):
        face_crop(photo, np.full((5, 2), 100.0))
    with pytest.raises(PreprocessError, match="5 \\(x, y\\) points"):
        face_crop(photo, np.zeros((3, 2)), image_name="ref")
