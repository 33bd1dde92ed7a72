"""Character nodes with ComfyUI's own CLIP vision (a tiny ViT built by ComfyUI): encode, save, load, blend.

Needs COMFYUI_PATH (a ComfyUI v0.14.1 source tree) and its requirements; skipped otherwise.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from storymaker_core.adapter import StoryMakerAdapter
from storymaker_core.faces import DetectedFace
from storymaker_core.layout import SDXL, unet_attention_layers
from storymaker_core.resampler import interpolate_character_tokens
from storymaker_core.weights import expected_image_proj_shapes, expected_ip_adapter_shapes, storymaker_weights_from_state_dict
from support import measured, relative_error, seeded_weights, tiny_resampler_config
from support.v3 import node_function, outputs, recorded_progress, ui

pytestmark = pytest.mark.comfyui
CLIP_WIDTH = 32


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    from support.comfyui import comfyui_path_or_skip

    path = str(comfyui_path_or_skip())
    from support.comfyui import import_comfyui, load_pack

    import_comfyui(Path(path))
    import comfy.clip_vision
    import folder_paths

    config = tmp_path_factory.mktemp("clip") / "tiny_clip_vision.json"
    config.write_text(json.dumps({"hidden_act": "gelu", "hidden_size": CLIP_WIDTH, "image_size": 224, "intermediate_size": 64,
                                  "layer_norm_eps": 1e-5, "model_type": "clip_vision_model", "num_attention_heads": 2,
                                  "num_channels": 3, "num_hidden_layers": 3, "patch_size": 14, "projection_dim": 16}))
    vision = comfy.clip_vision.ClipVisionModel(str(config))
    g = torch.Generator().manual_seed(0)
    vision.load_sd({k: torch.randn(v.shape, generator=g) * 0.05 if v.dim() > 1 else torch.ones(v.shape) if "norm" in k
                    else torch.zeros(v.shape) for k, v in vision.get_sd().items()})
    characters = tmp_path_factory.mktemp("characters")
    pack = load_pack()
    folder_paths.folder_names_and_paths["storymaker_characters"] = ([str(characters)], {".safetensors"})
    resampler = tiny_resampler_config(id_dim=512, clip_dim=CLIP_WIDTH, cross_attention_dim=2048, dim_head=64,
                                      face_heads=1, character_heads=1, character_dim=64, ff_mult=1)
    state = {"image_proj_model": seeded_weights(expected_image_proj_shapes(resampler), 1, scale=0.05),
             "ip_adapter": seeded_weights(expected_ip_adapter_shapes(unet_attention_layers(SDXL), 4), 2)}
    adapter = StoryMakerAdapter(storymaker_weights_from_state_dict(state, "tiny"))
    # the Save node refuses features that are not ViT-H's width; this tiny CLIP vision stands in for ViT-H
    sys.modules[f"{pack.__name__}.nodes.character_ops"].CLIP_VIT_H_WIDTH = CLIP_WIDTH
    return pack, vision, adapter, characters


class StandInFaces:
    """An INSIGHTFACE stand-in with a fixed face (the node's face selection is tested elsewhere)."""

    def __init__(self, seed):
        self.embedding = np.random.default_rng(seed).normal(size=512).astype(np.float32)

    def select_face(self, image, image_name, index):
        kps = np.array([[185, 110], [235, 105], [212, 140], [190, 170], [232, 167]], np.float32)
        return DetectedFace(np.array([170, 80, 250, 190], np.float32), kps, self.embedding, 0.9)


def character(pack, seed, clothing=None):
    from skimage import data

    image = torch.from_numpy(data.astronaut()).float()[None] / 255
    mask = torch.zeros(1, 512, 512)
    mask[:, 40:, 100:330] = 1
    build = node_function(pack.nodes.characters.StoryMakerCharacterFromImage)
    return build(image, StandInFaces(seed), f"c{seed}", 0, mask=mask, clothing=clothing)[0]


def test_saved_character_encodes_like_the_original_without_clip_or_insightface(comfy):
    pack, vision, adapter, folder = comfy
    encode = node_function(pack.nodes.encode.StoryMakerEncodeCharacters)
    original = character(pack, 1)
    (direct,) = encode(adapter, original, False, clip_vision=vision)
    assert ui(pack.nodes.characters.StoryMakerSaveCharacter, original, "ava", clip_vision=vision) == {
        "text": ["ava.safetensors"]}
    assert outputs(pack.nodes.characters.StoryMakerSaveCharacter, original, "ava", clip_vision=vision) == ()
    assert sorted(p.name for p in folder.iterdir()) == ["ava.safetensors", "ava_001.safetensors"]  # never overwritten
    loaded, crop, face = outputs(pack.nodes.characters.StoryMakerLoadCharacter, "ava.safetensors")
    assert crop.shape == face.shape == (1, 224, 224, 3)
    (reused,) = encode(adapter, loaded, False)  # no clip_vision connected
    measured("tokens of a saved+loaded character (fp16 features) vs encoded directly", relative_error(reused.cond, direct.cond), 1e-3)
    assert direct.cond.shape == (2, 20, 2048)


def test_encode_needs_clip_vision_for_fresh_characters(comfy):
    pack, vision, adapter, _ = comfy
    with pytest.raises(ValueError, match="needs a CLIP vision model"):
        outputs(pack.nodes.encode.StoryMakerEncodeCharacters, adapter, character(pack, 1), False)


def test_blend_and_clothing_through_the_nodes(comfy):
    pack, vision, adapter, _ = comfy
    encode = node_function(pack.nodes.encode.StoryMakerEncodeCharacters)
    a, b = character(pack, 1), character(pack, 2)
    (blend,) = outputs(pack.nodes.characters.StoryMakerBlendCharacters, a, b, 0.25)
    (blended,) = encode(adapter, blend, False, clip_vision=vision)
    (both,) = encode(adapter, a, False, clip_vision=vision, character_2=b)
    encoded = [pack.nodes.encode_ops.with_clip_features(c, vision) for c in (a, b)]
    stack = lambda name: torch.stack([getattr(c, name) for c in encoded])
    with torch.no_grad():  # blend = lerp of the two characters' tokens before position and fusion
        raw = adapter.resampler.character_tokens(stack("id_embedding"), stack("character_clip"), stack("face_clip"))
        expected = adapter.resampler.assemble(interpolate_character_tokens(raw[:1], raw[1:], 0.25))
    measured("blend node tokens vs lerp of the two characters' tokens", relative_error(blended.cond, expected), 1e-5)
    assert both.cond.shape == (3, 20, 2048)
    clothing = torch.zeros(1, 300, 200, 3)
    clothing[..., 0] = 1.0
    (swapped,) = encode(adapter, character(pack, 1, clothing=clothing), False, clip_vision=vision)
    (plain,) = encode(adapter, a, False, clip_vision=vision)
    assert relative_error(swapped.cond[1, 4:], plain.cond[1, 4:]) > 1e-3  # the character tokens changed


class NoFaces:
    """An INSIGHTFACE stand-in for a character without a face (raises the pack's own NoFaceFoundError)."""

    def __init__(self, pack):
        self.error = pack.storymaker_core.faces.NoFaceFoundError

    def select_face(self, image, image_name, index):
        raise self.error(f"no face found in {image_name}")


def fused_position_alone(adapter, slot):
    """float64: what fusion makes of a slot's 4 face tokens when they are zero, `LN(W pos + b) + pos`."""
    p = {k: v.double() for k, v in adapter.resampler.state_dict().items()}
    pos = p["pos_embed"][slot, :4]
    x = pos @ p["proj_out.weight"].T + p["proj_out.bias"]
    x = (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    return x * p["norm_out.weight"] + p["norm_out.bias"] + pos


def test_appearance_character_through_the_nodes_and_its_saved_file(comfy):
    """auto on a reference without a face and without mask or SAM: the whole image is the character; the
    saved file keeps the mode; its face tokens are dropped (zero before position and fusion), as the release's
    training drops the face."""
    pack, vision, adapter, folder = comfy
    from skimage import data

    image = torch.from_numpy(data.coffee()).float()[None] / 255
    rabbit, crop, face, mask, used = outputs(pack.nodes.characters.StoryMakerCharacterFromImage,
                                             image, NoFaces(pack), "Big Brown Rabbit", 0, "auto")
    assert rabbit.identity == "appearance" and used == "image: appearance (auto: no face found)" and (mask == 1).all()
    encode = node_function(pack.nodes.encode.StoryMakerEncodeCharacters)
    (direct,) = encode(adapter, rabbit, False, clip_vision=vision)
    measured("appearance character through the nodes: face tokens vs float64 fusion of its slot's position alone",
             relative_error(direct.cond[1, :4], fused_position_alone(adapter, 0)), 1e-5)
    outputs(pack.nodes.characters.StoryMakerSaveCharacter, rabbit, "rabbit", clip_vision=vision)
    loaded, crop, face = outputs(pack.nodes.characters.StoryMakerLoadCharacter, "rabbit.safetensors")
    assert loaded.identity == "appearance" and (face == 1).all() and crop.shape == (1, 224, 224, 3)
    (reused,) = encode(adapter, loaded, False)
    measured("tokens of a saved+loaded appearance character vs encoded directly", relative_error(reused.cond, direct.cond), 1e-3)
    (face_only,) = encode(adapter, loaded, True)  # face_only does not apply to it: its crop is kept
    assert torch.equal(face_only.cond, reused.cond)


def test_a_stylised_photographed_girl_with_an_appearance_only_rabbit(comfy):
    """The girl's own face_only is on (the prompt dresses her), the Encode node's is off; the rabbit keeps its
    crop. The same with the Encode node's face_only on: it does not apply to the rabbit."""
    pack, vision, adapter, folder = comfy
    from skimage import data

    build = node_function(pack.nodes.characters.StoryMakerCharacterFromImage)
    image = torch.from_numpy(data.astronaut()).float()[None] / 255
    mask = torch.zeros(1, 512, 512)
    mask[:, 40:, 100:330] = 1
    girl, *_, girl_used = build(image, StandInFaces(3), "girl", 0, "auto", mask=mask, face_only="on")
    assert girl.face_only is True
    assert girl_used.splitlines()[-1].startswith("face_only: on (only its face is kept")
    rabbit_image = torch.from_numpy(data.coffee()).float()[None] / 255
    rabbit, *_, rabbit_used = build(rabbit_image, NoFaces(pack), "rabbit", 0, "auto", face_only="on")
    assert rabbit_used.splitlines() == ["image: appearance (auto: no face found)",
                                        "face_only: on, not applied: appearance only (no face tokens), so its "
                                        "character crop is kept and carries the character"]
    encode = node_function(pack.nodes.encode.StoryMakerEncodeCharacters)
    (own,) = encode(adapter, girl, False, clip_vision=vision, character_2=rabbit)
    (cast_wide,) = encode(adapter, girl, True, clip_vision=vision, character_2=rabbit)
    assert torch.equal(own.cond, cast_wide.cond)
    encoded = [pack.nodes.encode_ops.with_clip_features(c, vision) for c in (girl, rabbit)]
    tokens = pack.storymaker_core.encode.character_tokens(adapter.resampler, encoded, False)
    assert not tokens[0, 4:].any() and tokens[1, 4:].abs().min() > 0  # her crop dropped, the rabbit's kept
    assert not tokens[1, :4].any() and tokens[0, :4].abs().min() > 0  # the rabbit has no face tokens
    outputs(pack.nodes.characters.StoryMakerSaveCharacter, girl, "girl", clip_vision=vision)
    loaded = outputs(pack.nodes.characters.StoryMakerLoadCharacter, "girl.safetensors")[0]
    assert loaded.face_only is True
    (reused,) = encode(adapter, loaded, False, character_2=rabbit, clip_vision=vision)
    measured("saved girl with her own face_only + rabbit vs encoded directly", relative_error(reused.cond, own.cond),
             1e-3)


def test_auto_falls_back_to_appearance_when_the_face_index_is_missing(comfy):
    pack, _, _, _ = comfy
    from skimage import data

    image = torch.from_numpy(data.astronaut()).float()[None] / 255
    build = node_function(pack.nodes.characters.StoryMakerCharacterFromImage)
    faces = OneFace(pack)
    character, *_, used = build(image, faces, "ava", 1, "auto")
    assert character.identity == "appearance"
    assert used == "image: appearance (auto: no face at face_index 1 (fewer faces found))"
    with pytest.raises(pack.storymaker_core.faces.FaceIndexError, match="face index 1"):
        build(image, faces, "ava", 1, "face", mask=torch.ones(1, 512, 512))


class OneFace(StandInFaces):
    """One face: face_index 0 only (raises the pack's own FaceIndexError for any other)."""

    def __init__(self, pack):
        super().__init__(4)
        self.error = pack.storymaker_core.faces.FaceIndexError

    def select_face(self, image, image_name, index):
        if index != 0:
            raise self.error(f"face index {index} out of range for {image_name}: 1 face(s) found")
        return super().select_face(image, image_name, index)


def test_character_and_encode_progress_reaches_the_editor_through_the_v3_api(comfy):
    """Run as a node of a prompt: detection then each reference (Character from Image), each character then the
    resampler (Encode), as ComfyUI's progress registry receives them."""
    pack, vision, adapter, _ = comfy
    from skimage import data

    image = torch.from_numpy(data.astronaut()).float()[None].repeat(2, 1, 1, 1) / 255
    with recorded_progress(node_id="3") as updates:
        a = outputs(pack.nodes.characters.StoryMakerCharacterFromImage, image, StandInFaces(1), "a", 0,
                    mask=torch.ones(1, 512, 512))[0]
    assert updates == [("3", 1, 3), ("3", 2, 3), ("3", 3, 3)]
    b = character(pack, 2)
    with recorded_progress(node_id="4") as updates:
        outputs(pack.nodes.encode.StoryMakerEncodeCharacters, adapter, a, False, clip_vision=vision, character_2=b)
    assert updates == [("4", 1, 3), ("4", 2, 3), ("4", 3, 3)]
