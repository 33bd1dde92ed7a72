"""StoryMaker Consistency Scores inside a real ComfyUI (library mode), run by ComfyUI's own executor: the same
numbers as the core `score_panels` for the same images and embedders (a tiny insightface pack and a tiny CLIP
vision built by ComfyUI with the real key layout), flags on the returned story, the table in the node's UI,
and errors that name the input to connect.

Needs COMFYUI_PATH (a ComfyUI v0.14.1 source tree) and its requirements; skipped otherwise.
"""

import asyncio
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from storymaker_core.characters import APPEARANCE, Character, character_from_reference
from storymaker.evaluate.embedders import FaceEmbedder
from storymaker.evaluate.panels import cast_identities, on_stage_names, score_panels
from storymaker_core.story_render import RenderedPanel, StoryRender
from support.v3 import recorded_progress
from tests.fixtures.tiny_insightface import blank_image, face_at, face_pattern, paint_face, write_tiny_insightface

pytestmark = pytest.mark.comfyui
BIG, SMALL = face_at(200, 320, 180), face_at(470, 320, 140)


class StandInCast:
    """The interface of storymaker_core.cast.Cast the node uses: names, characters, character(name)."""

    def __init__(self, *characters):
        self.names = tuple(c.name for c in characters)
        self.characters = tuple(characters)

    def character(self, name):
        for known, character in zip(self.names, self.characters):
            if known.lower() == name.lower():
                return character
        raise KeyError(f"no character named {name!r}")


class ClipI:
    """CLIP-I with ComfyUI's CLIP vision, written here from the brief (not the node's adapter)."""

    def __init__(self, vision):
        self.vision = vision

    def encode_images(self, images):
        rows = []
        for im in images:
            pixels = torch.from_numpy(np.asarray(im.convert("RGB"), np.float32))[None] / 255.0
            e = self.vision.encode_image(pixels, crop=True).image_embeds.detach().float()
            rows.append(torch.nn.functional.normalize(e, dim=-1).numpy())
        return np.concatenate(rows)


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    from support.comfyui import PACK_MODULE, comfyui_path_or_skip, import_comfyui, load_pack

    path = comfyui_path_or_skip()
    import_comfyui(Path(path))
    pytest.importorskip("insightface")
    pytest.importorskip("onnx")
    import comfy.clip_vision

    config = tmp_path_factory.mktemp("clip") / "tiny_clip_vision.json"
    config.write_text(json.dumps({"hidden_act": "gelu", "hidden_size": 32, "image_size": 224, "intermediate_size": 64,
                                  "layer_norm_eps": 1e-5, "model_type": "clip_vision_model", "num_attention_heads": 2,
                                  "num_channels": 3, "num_hidden_layers": 2, "patch_size": 14, "projection_dim": 16}))
    vision = comfy.clip_vision.ClipVisionModel(str(config))
    g = torch.Generator().manual_seed(0)
    vision.load_sd({k: torch.randn(v.shape, generator=g) * 0.3 if v.dim() > 1 else torch.ones(v.shape) if "norm" in k
                    else torch.zeros(v.shape) for k, v in vision.get_sd().items()})
    load_pack()
    node = importlib.import_module(f"{PACK_MODULE}.nodes.consistency").StoryMakerConsistencyScores
    faces_module = importlib.import_module(f"{PACK_MODULE}.storymaker_core.faces")  # INSIGHTFACE as the loader makes it
    root = write_tiny_insightface(tmp_path_factory.mktemp("insightface"), faces=[BIG, SMALL])
    analyzer = faces_module.FaceAnalyzer(faces_module.FaceAnalyzerConfig(root=str(root), providers="CPU"))
    return node, vision, analyzer


def scene(face_seed=None, value=128, right=None):
    img = blank_image(value=value)
    if face_seed is not None:
        paint_face(img, BIG, face_pattern(face_seed))
    if right is not None:
        img[:, 320:] = right
    return img


def panel(index, cast, regions=()):
    return RenderedPanel(scene=index + 1, candidate=1, candidates=1, seed=index, text="t", source="s", cast=tuple(cast),
                         layout=tuple("full" for _ in cast), file=f"story/p{index}.png", regions=tuple(regions))


@pytest.fixture(scope="module")
def story(comfy):
    _, _, analyzer = comfy
    rng = np.random.default_rng(5)
    look = rng.integers(0, 256, (320, 320, 3), dtype=np.uint8)  # rex: a pattern, no face
    ref = scene(1)
    face = analyzer.largest_face(ref)
    ava = character_from_reference(ref, np.ones((640, 640), np.float32), face.kps, face.embedding, name="ava")
    rex = Character(name="rex", id_embedding=torch.zeros(512), identity=APPEARANCE,
                    character_image=np.asarray(Image.fromarray(look).resize((224, 224)))[None])
    right = np.zeros((640, 640), np.float32)
    right[:, 320:] = 1
    wide_look = np.asarray(Image.fromarray(look).resize((320, 640)))
    images = [scene(1), scene(1, right=wide_look), scene(None, right=wide_look), np.zeros((640, 640, 3), np.uint8),
              scene(2)]
    render = StoryRender("tale", 640, 640, (panel(0, ["ava"]), panel(1, ["ava", "rex"], (None, right)),
                                            panel(2, ["rex"]), panel(3, ["ava"]), panel(4, ["ava"])))
    return StandInCast(ava, rex), render, images


def run_node(node, **inputs):
    """The node as ComfyUI's executor runs it (V3 class clone, NodeOutput merged into outputs and ui)."""
    import execution

    data = {k: [v] for k, v in inputs.items()}
    output, ui, _, _ = asyncio.run(execution.get_output_data("test", "7", node, data))
    return [o[0] for o in output], ui


def test_node_gives_the_core_numbers_and_flags_the_story(comfy, story):
    node, vision, analyzer = comfy
    cast, render, images = story
    batch = torch.from_numpy(np.stack(images).astype(np.float32)) / 255.0
    with recorded_progress() as progress:  # what ComfyUI's V3 progress API receives
        (flagged, table, text), ui = run_node(node, images=batch, story=render, cast=cast, insightface=analyzer,
                                              clip_vision=vision, face_threshold=0.3, clip_threshold=0.98)
    clip = ClipI(vision)
    expected = score_panels(images, render, cast_identities(cast, on_stage_names(render), clip),
                            FaceEmbedder(analyzer), clip, 0.3, 0.98)
    assert json.loads(text) == json.loads(expected.to_json())  # every number, exactly
    assert table == expected.markdown() and ui == {"text": [table]}
    assert [p.flag for p in flagged.panels] == expected.flags()
    assert progress[-1] == ("7", len(render.panels) + 1, len(render.panels) + 1)

    ava_own = expected.panels[0].characters[0]
    assert ava_own.similarity > 0.99 and flagged.panels[0].flag is None  # the reference's own face
    assert expected.panels[1].characters[1].compared == "region x320-640, y0-640"
    assert expected.panels[2].characters[0].compared == "whole panel"
    # rex on its region (its look) passes 0.98; on a whole panel (its look beside grey) it does not
    assert flagged.panels[1].flag is None
    assert flagged.panels[2].flag == f"rex {expected.panels[2].characters[0].similarity:.2f} < 0.98"
    assert flagged.panels[3].flag == "ava: no face detected"
    other = expected.panels[4].characters[0]  # another face pattern: a different identity
    assert other.similarity < 0.3 and flagged.panels[4].flag == f"ava {other.similarity:.2f} < 0.30"
    # the region is rex's look: CLIP-I of its region beats that of the whole panel (faces and grey included)
    whole = score_panels([images[1]], StoryRender("t", 640, 640, (panel(0, ["rex"]),)),
                         cast_identities(cast, ["rex"], clip), None, clip)
    assert expected.panels[1].characters[1].similarity > whole.panels[0].characters[0].similarity


def test_node_schema(comfy):
    node, _, _ = comfy
    info = node.GET_NODE_INFO_V1()
    assert info["name"] == "StoryMakerConsistencyScores" and info["display_name"] == "StoryMaker Consistency Scores"
    assert info["category"] == "StoryMaker/story" and info["output_node"]
    required, optional = info["input"]["required"], info["input"]["optional"]
    assert {k: v[0] for k, v in required.items()} == {"images": "IMAGE", "story": "STORYMAKER_STORY",
                                                      "cast": "STORYMAKER_CAST", "face_threshold": "FLOAT",
                                                      "clip_threshold": "FLOAT"}
    assert {k: v[0] for k, v in optional.items()} == {"insightface": "INSIGHTFACE", "clip_vision": "CLIP_VISION"}
    assert required["face_threshold"][1]["default"] == 0.3 and required["clip_threshold"][1]["default"] == 0.75
    assert info["output"] == ["STORYMAKER_STORY", "STRING", "STRING"]
    assert info["output_name"] == ["story", "table", "json"]


def test_errors_name_the_input(comfy, story):
    node, vision, analyzer = comfy
    cast, render, images = story
    batch = torch.from_numpy(np.stack(images).astype(np.float32)) / 255.0
    common = dict(story=render, cast=cast, face_threshold=0.3, clip_threshold=0.75)
    with pytest.raises(ValueError, match="connect Load InsightFace .* to insightface"):
        run_node(node, images=batch, clip_vision=vision, **common)
    with pytest.raises(ValueError, match="rex is scored by the appearance .* to clip_vision"):
        run_node(node, images=batch, insightface=analyzer, **common)
    with pytest.raises(ValueError, match="images has 4 image.* story 'tale' has 5 panel"):
        run_node(node, images=batch[:4], insightface=analyzer, clip_vision=vision, **common)
    with pytest.raises(ValueError, match=r"\['ava'\] on stage but the cast has only \['rex'\]"):
        run_node(node, images=batch, insightface=analyzer, clip_vision=vision,
                 **{**common, "cast": StandInCast(cast.character("rex"))})
