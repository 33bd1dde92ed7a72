"""The node layer without ComfyUI: declarations are well formed, and missing optional packages fail at run time
with a message that says what to install (the pack itself must still import)."""

import sys

import numpy as np
import pytest
import torch

from support.node_specs import our_node_classes

EXPECTED = {"StoryMakerLoader", "StoryMakerInsightFaceLoader", "StoryMakerSAMLoader", "StoryMakerCharacterFromImage",
            "StoryMakerBlendCharacters", "StoryMakerSaveCharacter", "StoryMakerLoadCharacter",
            "StoryMakerEncodeCharacters", "StoryMakerApply"}


@pytest.fixture(scope="module")
def classes():
    """The classic-API nodes (the V3-schema story nodes register only inside ComfyUI: tests/comfyui)."""
    return {name: cls for name, cls in our_node_classes().items() if not hasattr(cls, "define_schema")}


def test_every_node_is_declared_for_the_classic_api(classes):
    assert set(classes) == EXPECTED
    for name, cls in classes.items():
        spec = cls.INPUT_TYPES()
        assert set(spec) <= {"required", "optional"} and spec["required"], name
        assert callable(getattr(cls, cls.FUNCTION)), name
        assert cls.CATEGORY == "StoryMaker" and cls.DESCRIPTION, name
        names = getattr(cls, "RETURN_NAMES", None)
        assert names is None or len(names) == len(cls.RETURN_TYPES), name


def test_insightface_missing_is_reported_at_run_time(classes, monkeypatch):
    monkeypatch.setitem(sys.modules, "insightface", None)  # import insightface -> ImportError
    monkeypatch.setitem(sys.modules, "insightface.app", None)
    with pytest.raises(ImportError, match="pip install insightface"):
        classes["StoryMakerInsightFaceLoader"]().load("buffalo_l", "CPU", 640)


@pytest.fixture
def progress(monkeypatch):
    """A stand-in for comfy.utils.ProgressBar that records the updates."""
    import types

    updates = []

    class ProgressBar:
        def __init__(self, total):
            updates.append(("total", total))

        def update(self, n):
            updates.append(("update", n))

    comfy = types.ModuleType("comfy")
    comfy.utils = types.ModuleType("comfy.utils")
    comfy.utils.ProgressBar = ProgressBar
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.utils", comfy.utils)
    return updates


def test_character_without_mask_or_sam_says_what_to_connect(classes, progress):
    class OneFace:
        def select_face(self, image, image_name, index):
            from storymaker_core.faces import DetectedFace
            kps = np.array([[30, 30], [50, 30], [40, 40], [32, 50], [48, 50]], np.float32)
            return DetectedFace(np.array([20, 20, 60, 60], np.float32), kps, np.ones(512, np.float32), 0.9)

    node = classes["StoryMakerCharacterFromImage"]()
    with pytest.raises(ValueError, match="connect a MASK of the character, or a Segment Anything model"):
        node.build(torch.rand(1, 96, 96, 3), OneFace(), "ava", 0)
    with pytest.raises(ValueError, match="LoadImage's empty 64x64 placeholder.*LoadImageMask"):
        node.build(torch.rand(1, 96, 96, 3), OneFace(), "ava", 0, mask=torch.zeros(1, 64, 64))
    character, crops, _, masks, used = node.build(torch.rand(1, 96, 96, 3), OneFace(), "ava", 0,
                                                  clothing=torch.rand(1, 80, 60, 3))  # clothing swap: no mask needed
    assert crops.shape == (1, 224, 224, 3) and masks.shape == (1, 96, 96) and not masks.any()


def test_character_from_a_batch_of_references_with_progress(classes, progress):
    from skimage import data

    class Astronaut:
        def select_face(self, image, image_name, index):
            from storymaker_core.faces import DetectedFace
            kps = np.array([[185, 110], [235, 105], [212, 140], [190, 170], [232, 167]], np.float32)
            return DetectedFace(np.array([170, 80, 250, 190], np.float32), kps, np.ones(512, np.float32), 0.9)

    image = torch.from_numpy(data.astronaut()).float()[None].repeat(2, 1, 1, 1) / 255
    mask = torch.zeros(1, 512, 512)
    mask[:, 40:, 100:330] = 1
    character, crops, faces, masks, used = classes["StoryMakerCharacterFromImage"]().build(image, Astronaut(), "ava", 0,
                                                                                           mask=mask)
    assert crops.shape == faces.shape == (2, 224, 224, 3) and masks.shape == (2, 512, 512)
    assert character.name == "ava" and character.character_image.shape == (2, 224, 224, 3)
    assert character.identity == "face" and used.splitlines() == ["image #1: face (auto: face found, confidence 0.90)",
                                                                  "image #2: face (auto: face found, confidence 0.90)"]
    assert progress == [("total", 3), ("update", 1), ("update", 1), ("update", 1)]  # detection, then each reference


class NoFace:
    """An INSIGHTFACE stand-in that finds no face (a cartoon rabbit), raising the pack's own error class."""

    def select_face(self, image, image_name, index):
        import importlib

        pack = our_node_classes()["StoryMakerCharacterFromImage"].__module__.rsplit(".nodes.", 1)[0]
        raise importlib.import_module(f"{pack}.storymaker_core.faces").NoFaceFoundError(f"no face found in {image_name}")


def test_character_without_a_face_mask_or_sam_uses_the_whole_image(classes, progress):
    from PIL import Image

    rabbit = torch.rand(1, 120, 90, 3)
    character, crops, faces, masks, used = classes["StoryMakerCharacterFromImage"]().build(rabbit, NoFace(), "Big Brown "
                                                                                           "Rabbit", 0)
    assert character.identity == "appearance" and used == "image: appearance (auto: no face found)"
    rgb = (rabbit[0] * 255).round().to(torch.uint8).numpy()
    whole = np.asarray(Image.fromarray(rgb).resize((224, 224), Image.BICUBIC))
    assert np.array_equal((crops[0] * 255).round().to(torch.uint8).numpy(), whole)
    assert masks.shape == (1, 120, 90) and (masks == 1).all()
    assert faces.shape == (1, 224, 224, 3) and (faces == 1).all()  # no face: a white preview
    with pytest.raises(Exception, match="no face found in image"):
        classes["StoryMakerCharacterFromImage"]().build(rabbit, NoFace(), "rabbit", 0, "face")


def test_appearance_is_used_as_asked_and_segmented_from_the_whole_image(classes, progress):
    class Untouched:
        def select_face(self, *args, **kwargs):
            raise AssertionError("appearance runs no face detection")

    class Segmenter:
        def segment(self, image, box):
            self.box = list(box)
            mask = np.zeros(image.shape[:2], bool)
            mask[10:50, 20:60] = True
            return mask

    sam = Segmenter()
    character, crops, faces, masks, used = classes["StoryMakerCharacterFromImage"]().build(
        torch.rand(2, 64, 96, 3), Untouched(), "mascot", 0, "appearance", sam=sam)
    assert character.identity == "appearance" and character.character_image.shape == (2, 224, 224, 3)
    assert sam.box == [0, 0, 95, 63] and masks[:, 10:50, 20:60].all() and masks.sum() == 2 * 40 * 40
    assert used.splitlines() == ["image #1: appearance (chosen: no face is used)",
                                 "image #2: appearance (chosen: no face is used)"]


def test_pack_imports_with_every_optional_package_missing(monkeypatch):
    """ComfyUI skips a pack whose import fails ('IMPORT FAILED'): the pack must load without insightface,
    segment-anything, OpenCV or open_clip, and fail only in the node that needs them."""
    import importlib.util

    from support.comfyui import REPO
    from support.node_specs import _stand_in_folder_paths

    for name in ("insightface", "insightface.app", "segment_anything", "cv2", "open_clip", "onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "folder_paths", _stand_in_folder_paths())
    for name in [m for m in sys.modules if m.startswith("pack_without_optionals")]:
        monkeypatch.delitem(sys.modules, name)
    spec = importlib.util.spec_from_file_location("pack_without_optionals", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "pack_without_optionals", module)
    spec.loader.exec_module(module)
    assert set(module.NODE_CLASS_MAPPINGS) == EXPECTED  # no comfy_api here: the V3 nodes are left out
    with pytest.raises(ImportError, match="pip install opencv-python"):
        sys.modules["pack_without_optionals.storymaker_core.preprocess"].character_crop(np.zeros((8, 8, 3), np.uint8), np.ones((8, 8)))
