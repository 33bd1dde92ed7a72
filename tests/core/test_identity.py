"""How Character from Image decides a character's mode (`decide_identity`) and reads its own face_only."""

import numpy as np
import pytest

from storymaker_core.faces import DetectedFace, FaceIndexError, NoFaceFoundError
from storymaker_core.identity import decide_identity

KPS = np.array([[185, 110], [235, 105], [212, 140], [190, 170], [232, 167]], np.float32)


def faces_per_image(counts, score=0.9):
    """A `select_face` stand-in: image i (its first pixel holds i) has `counts[i]` faces, like FaceAnalyzer."""
    def select_face(image, image_name="image", index=0):
        count = counts[int(image[0, 0, 0])]
        if count == 0:
            raise NoFaceFoundError(f"no face found in {image_name}")
        if not -count <= index < count:
            raise FaceIndexError(f"face index {index} out of range for {image_name}: {count} face(s) found")
        return DetectedFace(np.array([170, 80, 250, 190], np.float32), KPS, np.ones(512, np.float32), score)

    return select_face


def images(n):
    return [np.full((8, 8, 3), i, np.uint8) for i in range(n)]


def test_auto_falls_back_to_appearance_when_face_index_does_not_exist():
    decision = decide_identity(faces_per_image([1]), images(1), ["image"], "auto", index=1, name="rabbit")
    assert decision.identity == "appearance" and decision.faces == [None]
    assert decision.report == "image: appearance (auto: no face at face_index 1 (fewer faces found))"


def test_face_keeps_the_face_index_error():
    with pytest.raises(FaceIndexError, match="face index 1 out of range"):
        decide_identity(faces_per_image([1]), images(1), ["image"], "face", index=1)


def test_a_reference_without_the_requested_face_makes_the_whole_character_appearance():
    labels = ["image #1", "image #2"]
    decision = decide_identity(faces_per_image([2, 1]), images(2), labels, "auto", index=1)
    assert decision.identity == "appearance" and decision.faces == [None, None]
    assert decision.lines[0].startswith("image #1: appearance (auto: face found, confidence 0.90, but image #2 has "
                                        "none")
    assert decision.lines[1] == "image #2: appearance (auto: no face at face_index 1 (fewer faces found))"
    found = decide_identity(faces_per_image([2, 2]), images(2), labels, "auto", index=1)
    assert found.identity == "face" and all(f is not None for f in found.faces)


def test_a_characters_own_face_only_choice():
    from storymaker_core.identity import face_only_line, face_only_setting

    assert [face_only_setting(c) for c in ("default", "on", "off")] == [None, True, False]
    with pytest.raises(ValueError, match="ava: face_only must be one of"):
        face_only_setting(True, "ava")
    assert face_only_line("default", "face") is None and face_only_line("default", "appearance") is None
    assert face_only_line("on", "face").startswith("face_only: on (only its face is kept")
    assert face_only_line("on", "appearance").startswith("face_only: on, not applied: appearance only")
    assert face_only_line("off", "appearance").startswith("face_only: off (this character keeps its character crop")
