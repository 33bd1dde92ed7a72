"""The node layer without ComfyUI: every node is declared (from the V3 snapshot: ids, names, a description and a
tooltip on every input), the nodes' work runs through the comfy_api-free `*_ops` modules with stand-in face
detectors and segmenters, and missing optional packages fail at run time with a message that says what to
install (the pack itself must still import)."""

import importlib
import math
import sys

import numpy as np
import pytest
import torch

from support.node_specs import node_module, our_snapshot, pack

CLASSIC = {"StoryMakerLoader", "StoryMakerInsightFaceLoader", "StoryMakerSAMLoader", "StoryMakerCharacterFromImage",
           "StoryMakerBlendCharacters", "StoryMakerSaveCharacter", "StoryMakerLoadCharacter",
           "StoryMakerEncodeCharacters", "StoryMakerApply"}  # the nodes of the first release: ids kept for saved workflows
STORY = {"StoryMakerCast", "StoryMakerStory", "StoryMakerStoryboard", "StoryMakerConsistencyScores",
         "StoryMakerEncodeMember", "StoryMakerApplyLoRA", "StoryMakerApplyScene", "StoryMakerSaveScene",
         "StoryMakerJoinImages"}


def test_every_node_is_declared_with_a_description_and_a_tooltip_on_every_input():
    specs = our_snapshot()
    assert set(specs) == CLASSIC | STORY
    for name, spec in specs.items():
        assert spec["name"] == name and spec["display_name"] and spec["description"], name
        assert spec["category"] == ("StoryMaker" if name in CLASSIC else "StoryMaker/story"), name
        assert len(spec["output_name"]) == len(spec["output"]) == len(spec["output_tooltips"]), name
        assert set(spec["input"]) <= {"required", "optional"} and spec["input"]["required"], name
        for section, inputs in spec["input"].items():
            assert list(inputs) == spec["input_order"][section], name
            for input_name, entry in inputs.items():
                assert entry[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
                template = entry[1].get("template", {}).get("input", {})  # an Autogrow's socket
                for grown in [e for sect in template.values() for e in sect.values()]:
                    assert grown[1].get("tooltip"), f"{name}.{input_name}'s sockets have no tooltip"


def test_the_classic_nodes_keep_their_names_inputs_and_outputs():
    """What saved workflows rely on: input names, order and kinds, defaults and ranges, outputs (the whole
    snapshot is checked against a live server by tests/comfyui/test_server_loads_pack.py)."""
    specs = our_snapshot()
    kinds = {name: {section: [(k, v[0]) for k, v in spec["input"][section].items()] for section in spec["input"]}
             for name, spec in specs.items() if name in CLASSIC}
    assert kinds["StoryMakerCharacterFromImage"] == {
        "required": [("image", "IMAGE"), ("insightface", "INSIGHTFACE"), ("name", "STRING"), ("face_index", "INT"),
                     ("identity", "COMBO")],
        "optional": [("mask", "MASK"), ("sam", "STORYMAKER_SAM"), ("clothing", "IMAGE"), ("face_only", "COMBO")]}
    assert kinds["StoryMakerEncodeCharacters"] == {
        "required": [("storymaker", "STORYMAKER"), ("character_1", "STORYMAKER_CHARACTER"), ("face_only", "BOOLEAN")],
        "optional": [("clip_vision", "CLIP_VISION"), ("character_2", "STORYMAKER_CHARACTER"),
                     ("character_3", "STORYMAKER_CHARACTER")]}
    assert kinds["StoryMakerApply"] == {
        "required": [("model", "MODEL"), ("storymaker", "STORYMAKER"), ("embeds", "STORYMAKER_EMBEDS"),
                     ("ip_scale", "FLOAT"), ("lora_scale", "FLOAT"), ("start_at", "FLOAT"), ("end_at", "FLOAT")],
        "optional": [("mask_1", "MASK"), ("mask_2", "MASK"), ("mask_3", "MASK")]}
    assert specs["StoryMakerInsightFaceLoader"]["input"]["required"]["det_size"][1] | {"tooltip": ""} == {
        "tooltip": "", "default": 640, "min": 160, "max": 2048, "step": 32}
    assert specs["StoryMakerCharacterFromImage"]["output_name"] == ["character", "character_crop", "face_crop", "mask",
                                                                    "identity_used"]
    assert specs["StoryMakerLoadCharacter"]["output"] == ["STORYMAKER_CHARACTER", "IMAGE", "IMAGE"]
    assert specs["StoryMakerSaveCharacter"]["output_node"] and specs["StoryMakerSaveCharacter"]["output"] == []
    assert specs["StoryMakerEncodeCharacters"]["output"] == ["STORYMAKER_EMBEDS"]


def test_floats_are_checked_from_the_declared_limits():
    """`checked_floats` (the nodes' validate_inputs) reads the limits from INPUT_TYPES(), which a V3 node derives
    from its schema; here the snapshot's spec stands in for it."""
    checked_floats = node_module("common").checked_floats

    class Apply:
        @classmethod
        def INPUT_TYPES(cls):
            return our_snapshot()["StoryMakerApply"]["input"]

    assert checked_floats(Apply, ip_scale=0.8, lora_scale=2.0, start_at=0.0, end_at=None) is True
    problems = checked_floats(Apply, ip_scale=math.nan, lora_scale=math.inf, start_at=-0.5, end_at=1.0)
    assert problems == ("ip_scale is nan: give a number from 0.0 to 2.0 (NaN and infinity are not allowed); "
                        "lora_scale is inf: give a number from 0.0 to 2.0 (NaN and infinity are not allowed); "
                        "start_at is -0.5: give a number from 0.0 to 1.0")


def test_apply_refuses_a_nan_or_an_empty_step_range_before_touching_the_model():
    apply_storymaker = node_module("apply_ops").apply_storymaker
    with pytest.raises(ValueError, match="ip_scale is nan"):
        apply_storymaker(object(), object(), object(), math.nan, 0.8, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"start_at \(0.5\) must be below end_at \(0.5\)"):
        apply_storymaker(object(), object(), object(), 0.8, 0.8, 0.5, 0.5)


def test_insightface_missing_is_reported_at_run_time(monkeypatch):
    monkeypatch.setitem(sys.modules, "insightface", None)  # import insightface -> ImportError
    monkeypatch.setitem(sys.modules, "insightface.app", None)
    with pytest.raises(ImportError, match="pip install insightface"):
        node_module("loader_ops").face_analyzer(["/nonexistent/models/insightface"], "buffalo_l", "CPU", 640)


class Recorder:
    """A progress factory (what the V3 nodes pass as `progress`) that records the totals and updates."""

    def __init__(self):
        self.updates = []

    def __call__(self, total):
        self.updates.append(("total", total))
        return self

    def update(self, n):
        self.updates.append(("update", n))


@pytest.fixture
def build():
    return node_module("character_ops").character_from_images


def test_character_without_mask_or_sam_says_what_to_connect(build):
    class OneFace:
        def select_face(self, image, image_name, index):
            from storymaker_core.faces import DetectedFace
            kps = np.array([[30, 30], [50, 30], [40, 40], [32, 50], [48, 50]], np.float32)
            return DetectedFace(np.array([20, 20, 60, 60], np.float32), kps, np.ones(512, np.float32), 0.9)

    with pytest.raises(ValueError, match="connect a MASK of the character, or a Segment Anything model"):
        build(torch.rand(1, 96, 96, 3), OneFace(), "ava", 0)
    with pytest.raises(ValueError, match="LoadImage's empty 64x64 placeholder.*LoadImageMask"):
        build(torch.rand(1, 96, 96, 3), OneFace(), "ava", 0, mask=torch.zeros(1, 64, 64))
    character, crops, _, masks, used = build(torch.rand(1, 96, 96, 3), OneFace(), "ava", 0,
                                             clothing=torch.rand(1, 80, 60, 3))  # clothing swap: no mask needed
    assert crops.shape == (1, 224, 224, 3) and masks.shape == (1, 96, 96) and not masks.any()


def test_a_white_mask_is_warned_about(caplog):
    usable_mask = node_module("character_ops").usable_mask
    rgb = np.zeros((96, 96, 3), np.uint8)
    assert usable_mask(None, rgb, "ava") is None
    with caplog.at_level("WARNING"):
        usable_mask(np.ones((96, 96), np.float32), rgb, "ava")
    assert "ava: the mask is white everywhere" in caplog.text


def test_character_from_a_batch_of_references_with_progress(build):
    from skimage import data

    class Astronaut:
        def select_face(self, image, image_name, index):
            from storymaker_core.faces import DetectedFace
            kps = np.array([[185, 110], [235, 105], [212, 140], [190, 170], [232, 167]], np.float32)
            return DetectedFace(np.array([170, 80, 250, 190], np.float32), kps, np.ones(512, np.float32), 0.9)

    image = torch.from_numpy(data.astronaut()).float()[None].repeat(2, 1, 1, 1) / 255
    mask = torch.zeros(1, 512, 512)
    mask[:, 40:, 100:330] = 1
    progress = Recorder()
    character, crops, faces, masks, used = build(image, Astronaut(), "ava", 0, mask=mask, progress=progress)
    assert crops.shape == faces.shape == (2, 224, 224, 3) and masks.shape == (2, 512, 512)
    assert character.name == "ava" and character.character_image.shape == (2, 224, 224, 3)
    assert character.identity == "face" and used.splitlines() == ["image #1: face (auto: face found, confidence 0.90)",
                                                                  "image #2: face (auto: face found, confidence 0.90)"]
    assert progress.updates == [("total", 3), ("update", 1), ("update", 1), ("update", 1)]  # detection, then each


class NoFace:
    """An INSIGHTFACE stand-in that finds no face (a cartoon rabbit), raising the pack's own error class."""

    def select_face(self, image, image_name, index):
        faces = importlib.import_module(f"{pack().__name__}.storymaker_core.faces")
        raise faces.NoFaceFoundError(f"no face found in {image_name}")


def test_character_without_a_face_mask_or_sam_uses_the_whole_image(build):
    from PIL import Image

    rabbit = torch.rand(1, 120, 90, 3)
    character, crops, faces, masks, used = build(rabbit, NoFace(), "Big Brown Rabbit", 0)
    assert character.identity == "appearance" and used == "image: appearance (auto: no face found)"
    rgb = (rabbit[0] * 255).round().to(torch.uint8).numpy()
    whole = np.asarray(Image.fromarray(rgb).resize((224, 224), Image.BICUBIC))
    assert np.array_equal((crops[0] * 255).round().to(torch.uint8).numpy(), whole)
    assert masks.shape == (1, 120, 90) and (masks == 1).all()
    assert faces.shape == (1, 224, 224, 3) and (faces == 1).all()  # no face: a white preview
    with pytest.raises(Exception, match="no face found in image"):
        build(rabbit, NoFace(), "rabbit", 0, "face")


def test_appearance_is_used_as_asked_and_segmented_from_the_whole_image(build):
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
    character, crops, faces, masks, used = build(torch.rand(2, 64, 96, 3), Untouched(), "mascot", 0, "appearance",
                                                 sam=sam)
    assert character.identity == "appearance" and character.character_image.shape == (2, 224, 224, 3)
    assert sam.box == [0, 0, 95, 63] and masks[:, 10:50, 20:60].all() and masks.sum() == 2 * 40 * 40
    assert used.splitlines() == ["image #1: appearance (chosen: no face is used)",
                                 "image #2: appearance (chosen: no face is used)"]


def test_a_bad_face_only_is_refused_before_any_face_detection(build):
    class Untouched:
        def select_face(self, *args, **kwargs):
            raise AssertionError("refused before detection")

    with pytest.raises(ValueError, match="face_only"):
        build(torch.rand(1, 64, 64, 3), Untouched(), "ava", 0, face_only="maybe")


def test_encode_takes_characters_in_order_with_progress():
    encode_ops = node_module("encode_ops")
    from storymaker_core.characters import Character

    CharacterError = importlib.import_module(f"{pack().__name__}.storymaker_core.characters").CharacterError

    ava = Character(name="ava", id_embedding=torch.zeros(512), character_image=np.zeros((1, 8, 8, 3), np.uint8),
                    character_clip=torch.zeros(4, 8), identity="appearance")
    with pytest.raises(CharacterError, match="character_3 is connected but character_2 is not"):
        encode_ops.encode_cast(None, ava, False, character_3=ava)
    unencoded = Character(name="ben", id_embedding=torch.zeros(512), character_image=np.zeros((1, 8, 8, 3), np.uint8),
                          identity="appearance")
    progress = Recorder()
    with pytest.raises(CharacterError, match="character 'ben' needs a CLIP vision model"):
        encode_ops.encode_cast(None, ava, False, character_2=unencoded, progress=progress)
    assert progress.updates == [("total", 3), ("update", 1)]  # ava was ready; ben stopped it

    class StandInVision:  # CLIP_VISION's encode_image: penultimate hidden states per image
        def encode_image(self, images, crop):
            assert not crop and images.shape[1:] == (8, 8, 3)
            return type("Output", (), {"penultimate_hidden_states": torch.ones(images.shape[0], 4, 8)})()

    encoded = encode_ops.with_clip_features(unencoded, StandInVision())
    assert encoded.is_encoded and torch.equal(encoded.character_clip, torch.ones(4, 8))


def test_pack_imports_with_every_optional_package_missing(monkeypatch):
    """ComfyUI skips a pack whose import fails ('IMPORT FAILED'): the pack must load without insightface,
    segment-anything, OpenCV or open_clip, and fail only in the node that needs them. It offers its nodes through
    `comfy_entrypoint` and has no NODE_CLASS_MAPPINGS (ComfyUI would read those instead)."""
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
    assert callable(module.comfy_entrypoint) and not hasattr(module, "NODE_CLASS_MAPPINGS")
    assert "comfy_api" not in sys.modules  # offline: nothing of ComfyUI was imported
    for ops in ("loader_ops", "character_ops", "encode_ops", "apply_ops", "common", "patching", "routes"):
        importlib.import_module(f"pack_without_optionals.nodes.{ops}")
    with pytest.raises(ImportError, match="pip install opencv-python"):
        sys.modules["pack_without_optionals.storymaker_core.preprocess"].character_crop(np.zeros((8, 8, 3), np.uint8), np.ones((8, 8)))
