"""Consistency per panel (the editor's consistency node, core side): the numbers of `evaluate story` for the same
images, references and embedders (tiny real insightface and OpenCLIP models), appearance characters scored on
their region, thresholds, flags, and panels where a face is missing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from storymaker_core.characters import APPEARANCE, Character, blend_characters, character_from_reference
from storymaker.evaluate.panels import (CharacterPanelScore, PanelScoringError, cast_identities, region_crop,
                                             score_panels)
from storymaker.evaluate.story_input import CastMember, Shot, Story
from storymaker.evaluate.story_scoring import CharacterIdentity, StoryScoringOptions, resolve_identity, score_story
from storymaker_core.story_render import RenderedPanel, StoryRender

RED, BLUE = (200, 30, 30), (30, 60, 200)


class StandInCast:
    """The interface of storymaker_core.cast.Cast that the scoring uses: names, characters, character(name)."""

    def __init__(self, *characters):
        self.names = tuple(c.name for c in characters)
        self.characters = tuple(characters)

    def character(self, name):
        for known, character in zip(self.names, self.characters):
            if known.lower() == name.lower():
                return character
        raise KeyError(f"no character named {name!r}; known: {', '.join(self.names)}")


def panel(index: int, cast, file: str = "", regions=()) -> RenderedPanel:
    return RenderedPanel(scene=index + 1, candidate=1, candidates=1, seed=index, text="t", source="s",
                         cast=tuple(cast), layout=tuple("full" for _ in cast), file=file or f"p{index}.png",
                         regions=tuple(regions))


def story_of(*panels, size=(64, 64)) -> StoryRender:
    return StoryRender("tale", size[1], size[0], tuple(panels))


def unit_at(cos: float, dim: int = 8) -> tuple:
    """(reference e1, a vector whose cosine to it is exactly `cos`)."""
    e1, e2 = np.eye(dim)[0], np.eye(dim)[1]
    return e1, cos * e1 + np.sqrt(1 - cos * cos) * e2


# --------------------------------------------------------------------------- equal to evaluate story
@pytest.fixture(scope="module")
def tiny_models(insightface_root, tiny_clip_config):
    from storymaker.evaluate.embedders import ClipConfig, ClipEmbedder, FaceEmbedder
    from storymaker_core.faces import FaceAnalyzerConfig

    return (FaceEmbedder(config=FaceAnalyzerConfig(root=str(insightface_root), providers="CPU")),
            ClipEmbedder(ClipConfig(model="TinyCLIP-storymaker-test", pretrained=None)))


@pytest.mark.parametrize("extra_faces", [0, 1])
def test_full_panels_give_the_numbers_of_evaluate_story(tiny_models, image_tools, tmp_path, extra_faces):
    """Same images, same references, same tiny insightface and OpenCLIP: every similarity, swap and face count
    of score_panels is the one score_story computes (exactly), and a cast built from the same reference
    photos gives the same reference embeddings."""
    scene, save_png = image_tools
    faces, clip = tiny_models
    rng = np.random.default_rng(3)
    cat_ref = rng.integers(0, 256, (640, 640, 3), dtype=np.uint8)
    cat_mask = np.zeros((640, 640), np.uint8)
    cat_mask[100:500, 150:450] = 255
    refs = {"alice": scene("alice", "filler"), "bob": scene("bob", "filler"), "cat": cat_ref}
    ref_files = {n: save_png(tmp_path / "refs" / f"{n}.png", rgb) for n, rgb in refs.items()}
    mask_file = save_png(tmp_path / "refs" / "cat-mask.png", np.repeat(cat_mask[..., None], 3, axis=2))
    members = {"alice": CastMember("alice", (ref_files["alice"],), "face"),
               "bob": CastMember("bob", (ref_files["bob"],), "face"),
               "cat": CastMember("cat", (ref_files["cat"],), "appearance", (mask_file,))}
    shots = [("solo", ["alice"], scene("alice", "filler")),
             ("pair", ["alice", "bob"], scene("alice", "bob")),
             ("moved", ["alice", "bob"], scene("bob", "alice", value=90)),  # places exchanged: no swap
             ("leak", ["alice", "bob"], scene("alice", "alice")),  # identity leak: a swap
             ("dark", ["alice"], np.zeros((640, 640, 3), np.uint8)),  # no face detected
             ("pet", ["cat"], rng.integers(0, 256, (640, 640, 3), dtype=np.uint8)),
             ("walk", ["alice", "cat"], scene("alice", None, value=60))]
    files = {sid: save_png(tmp_path / "shots" / f"{sid}.png", rgb) for sid, _, rgb in shots}
    story = Story("tale", "M", tmp_path / "manifest.json", members,
                  tuple(Shot(sid, files[sid], tuple(chars)) for sid, chars, _ in shots))
    expected = score_story(story, faces, clip, StoryScoringOptions(extra_faces=extra_faces, show_progress=False))

    idents = {n: resolve_identity(m, faces, clip) for n, m in members.items()}
    assert {n: i.mode for n, i in idents.items()} == {"alice": "face", "bob": "face", "cat": "appearance"}
    render = story_of(*[panel(i, chars, file=f"{sid}.png") for i, (sid, chars, _) in enumerate(shots)],
                      size=(640, 640))
    images = [rgb for _, _, rgb in shots]
    ticks = []
    got = score_panels(images, render, idents, faces, clip, extra_faces=extra_faces, progress=lambda: ticks.append(1))
    assert len(ticks) == len(shots)

    # a cast built from the same reference photos (as the Character node builds it) has the same references
    analyzer = faces.analyzer
    cast = StandInCast(*[character_from_reference(refs[n], np.ones((640, 640), np.float32),
                                                  analyzer.largest_face(refs[n]).kps,
                                                  analyzer.largest_face(refs[n]).embedding, name=n)
                         for n in ("alice", "bob")],
                       character_from_reference(cat_ref, cat_mask, None, None, name="cat"))
    from_cast = cast_identities(cast, ["alice", "bob", "cat"], clip)
    for n in ("alice", "bob"):
        np.testing.assert_array_equal(from_cast[n].face, idents[n].face)
    np.testing.assert_array_equal(from_cast["cat"].clip, idents["cat"].clip)
    got_cast = score_panels(images, render, from_cast, faces, clip, extra_faces=extra_faces)

    compared = 0
    for shot, mine, theirs in zip(expected.shots, got.panels, got_cast.panels):
        assert mine.faces_detected == (shot.faces_detected if mine.faces_expected else None), shot.shot
        for c in mine.characters:
            ref = shot.per_character[c.name]
            assert c.mode == ref["mode"]
            assert c.similarity == ref["ref_cos"], (shot.shot, c.name)  # exactly: the same code on the same data
            assert c.swapped == ref.get("swapped"), (shot.shot, c.name)
            compared += c.similarity is not None
        assert [c.similarity for c in theirs.characters] == [c.similarity for c in mine.characters]
    assert compared == 10  # every on-stage character but the dark shot's
    by_shot = {s.shot: p for s, p in zip(expected.shots, got.panels)}
    assert by_shot["solo"].characters[0].similarity > 0.99  # the reference's own face
    assert by_shot["leak"].characters[1].swapped and not by_shot["moved"].characters[0].swapped
    dark = by_shot["dark"].characters[0]
    assert dark.similarity is None and dark.reason == "no face detected" and dark.below
    assert by_shot["dark"].flag == "alice: no face detected"


# --------------------------------------------------------------------------- regions
def halves(left, right, height=64, width=128) -> np.ndarray:
    image = np.empty((height, width, 3), np.uint8)
    image[:, : width // 2], image[:, width // 2:] = left, right
    return image


def half_masks(height=64, width=128) -> tuple:
    left = np.zeros((height, width), np.float32)
    left[:, : width // 2] = 1
    return left, 1 - left


def appearance(name: str, colour) -> Character:
    return Character(name=name, id_embedding=torch.zeros(512), identity=APPEARANCE,
                     character_image=np.full((1, 224, 224, 3), colour, np.uint8))


def test_appearance_characters_are_scored_on_their_region(story_fakes):
    """Left half = red's reference, right half = something else: red scores 1 on its region (mean-colour
    embedder), not the whole panel's mix; blue likewise on the right; without regions both get the whole panel."""
    _, FakeClip = story_fakes
    cast = StandInCast(appearance("red", RED), appearance("blue", BLUE))
    image = halves(RED, BLUE)
    left, right = half_masks()
    placed = story_of(panel(0, ["red", "blue"], regions=(left, right)),
                      panel(1, ["red", "blue"]),  # layout "full": no regions
                      panel(2, ["red"], regions=(left[::2, ::2],)),  # a region at half size (batch upscaled)
                      size=(64, 128))
    refs = cast_identities(cast, ["red", "blue"], FakeClip())
    scores = score_panels([image] * 3, placed, refs, None, FakeClip(), clip_threshold=0.9)
    on_region, whole, small = scores.panels
    assert [c.similarity for c in on_region.characters] == pytest.approx([1.0, 1.0], abs=1e-12)
    assert on_region.characters[0].compared == "region x0-64, y0-64" and on_region.flag is None
    mix = np.array(RED, np.float64) / 2 + np.array(BLUE, np.float64) / 2 - 127.5  # the whole panel's vector
    cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))  # noqa: E731
    assert whole.characters[0].similarity == pytest.approx(cos(mix, np.array(RED) - 127.5), abs=1e-12)
    assert whole.characters[1].similarity == pytest.approx(cos(mix, np.array(BLUE) - 127.5), abs=1e-12)
    assert all(c.compared == "whole panel" for c in whole.characters)
    assert whole.flag == (f"red {whole.characters[0].similarity:.2f} < 0.90; "
                          f"blue {whole.characters[1].similarity:.2f} < 0.90")
    assert small.characters[0].similarity == pytest.approx(1.0, abs=1e-3)  # resized: a soft edge, a little white

    crop, what = region_crop(image, left)  # the crop itself: the region's box, squashed like the reference crops
    assert np.asarray(crop).shape == (224, 224, 3) and (np.asarray(crop) == RED).all()
    soft = left.copy()
    soft[:, 32:64] = 0.5  # half-painted: mixed with white, as a soft reference mask is
    crop, _ = region_crop(image, soft)
    assert np.asarray(crop)[:, -10:].mean(axis=(0, 1)) == pytest.approx((227, 142, 142), abs=1.5)


def test_empty_region_is_reported_and_flagged(story_fakes):
    _, FakeClip = story_fakes
    cast = StandInCast(appearance("red", RED))
    scores = score_panels([halves(RED, BLUE)], story_of(panel(0, ["red"], regions=(np.zeros((64, 128)),)),
                                                        size=(64, 128)),
                          cast_identities(cast, ["red"], FakeClip()), None, FakeClip())
    (c,) = scores.panels[0].characters
    assert c.similarity is None and c.reason == "its region is empty" and c.below
    assert scores.panels[0].flag == "red: its region is empty"


# --------------------------------------------------------------------------- thresholds and flags
def test_thresholds_flags_table_and_json(story_fakes):
    FakeFace, FakeClip = story_fakes
    ref, at_021 = unit_at(0.21)
    _, at_035 = unit_at(0.35)
    _, at_090 = unit_at(0.90)
    refs = {"ava": CharacterIdentity("face", "face: test", face=ref[None]),
            "red": CharacterIdentity("appearance", "appearance: test", clip=(np.array(RED, np.float64) - 127.5)[None])}
    faces = FakeFace({"low.png": [(at_021, 0.9, 100)], "edge.png": [(at_035, 0.9, 100)],
                      "high.png": [(at_090, 0.9, 100), (at_021, 0.9, 50)]})
    render = story_of(panel(0, ["ava"], "low.png"), panel(1, ["ava"], "edge.png"), panel(2, ["ava", "red"], "high.png"),
                      panel(3, []), size=(64, 128))
    image = halves(RED, BLUE)
    scores = score_panels([image] * 4, render, refs, faces, FakeClip(), face_threshold=0.3, clip_threshold=0.75)
    low, edge, high, nobody = scores.panels
    assert low.characters[0].similarity == pytest.approx(0.21, abs=1e-6)
    assert low.flag == "ava 0.21 < 0.30"
    assert edge.characters[0].similarity == pytest.approx(0.35, abs=1e-6) and edge.flag is None
    assert high.characters[0].similarity == pytest.approx(0.90, abs=1e-6) and high.faces_detected == 2
    # the whole panel (no regions) is half red: cos(mix, red) < 0.75 -> flagged on the appearance character only
    assert high.flag.startswith("red ") and "ava" not in high.flag
    assert nobody.characters == () and nobody.flag is None
    assert scores.flags() == [low.flag, edge.flag, high.flag, None]

    flagged = render.with_flags(scores.flags())
    assert [p.flag for p in flagged.panels] == scores.flags() and flagged.panels[0].cast == ("ava",)
    data = json.loads(scores.to_json())
    assert data["format"] == "storymaker-panel-scores/1" and data["thresholds"] == {"face": 0.3, "appearance": 0.75}
    assert data["panels"][0]["characters"][0]["similarity"] == pytest.approx(0.21, abs=1e-6)
    assert data["panels"][0]["characters"][0]["below"] is True and data["panels"][0]["flag"] == "ava 0.21 < 0.30"
    assert data["panels_flagged"] == scores.flagged == sum(f is not None for f in scores.flags())
    table = scores.markdown()
    assert "| 1 | 1 | ava | face | 0.210 | 0.3 | **below** |" in table
    assert "| 4 | 4 | (nobody on stage) |" in table and f"{scores.flagged} of 4 panels" in table

    assert CharacterPanelScore("ava", 0, "face", 0.2996, 0.3).flag == "ava 0.2996 < 0.3000"  # never "0.30 < 0.30"
    assert CharacterPanelScore("ava", 0, "face", 0.30, 0.3).flag is None  # at the threshold: not below


def test_missing_faces_count_as_below(story_fakes):
    FakeFace, _ = story_fakes
    a, b = np.eye(8)[0], np.eye(8)[1]
    refs = {"ava": CharacterIdentity("face", "", face=a[None]), "bob": CharacterIdentity("face", "", face=b[None])}
    faces = FakeFace({"one.png": [(b + 0.1 * a, 0.9, 100)]})  # one face for two face characters: bob's
    render = story_of(panel(0, ["ava", "bob"], "one.png"), panel(1, ["ava"], "none.png"))
    scores = score_panels([np.zeros((64, 64, 3), np.uint8)] * 2, render, refs, faces, None)
    both, none = scores.panels
    assert both.characters[0].similarity is None and both.characters[1].similarity > 0.99
    assert both.characters[0].reason == "no face left for it (1 detected, 2 face characters on stage)"
    assert both.flag == "ava: no face left for it (1 detected, 2 face characters on stage)"
    assert none.faces_detected == 0 and none.flag == "ava: no face detected"
    assert "**no face detected**" in scores.markdown()


# --------------------------------------------------------------------------- references from a cast
def test_cast_identities_use_the_id_embedding_crops_and_blends(story_fakes):
    _, FakeClip = story_fakes
    crop = np.full((1, 224, 224, 3), 128, np.uint8)
    ava = Character(name="ava", id_embedding=torch.tensor([3.0, 4.0] + [0.0] * 510), character_image=crop)
    bob = Character(name="bob", id_embedding=torch.tensor([0.0, 0.0, 1.0] + [0.0] * 509), character_image=crop)
    two_crops = Character(name="pet", id_embedding=torch.zeros(512), identity=APPEARANCE,
                          character_image=np.stack([np.full((224, 224, 3), RED, np.uint8),
                                                    np.full((224, 224, 3), BLUE, np.uint8)]))
    cast = StandInCast(ava, bob, two_crops, blend_characters(ava, bob, 0.5), blend_characters(ava, two_crops, 0.5))
    names = ["ava", "pet", cast.names[3], cast.names[4]]
    idents = cast_identities(cast, names, FakeClip())
    np.testing.assert_array_equal(idents["ava"].face, [[3.0, 4.0] + [0.0] * 510])
    assert idents["ava"].mode == "face" and "id_embedding" in idents["ava"].reason
    assert idents["pet"].mode == "appearance" and idents["pet"].clip.shape == (2, 3)
    np.testing.assert_allclose(idents["pet"].clip, [np.array(RED) - 127.5, np.array(BLUE) - 127.5])
    assert idents[names[2]].mode == "face" and idents[names[2]].face.shape == (2, 512)
    assert "blended" in idents[names[2]].reason
    # a blend of a face and an appearance character: appearance, on all its crops (ava's one + pet's two)
    assert idents[names[3]].mode == "appearance" and idents[names[3]].clip.shape == (3, 3)


def test_errors_name_what_is_wrong(story_fakes):
    FakeFace, FakeClip = story_fakes
    cast = StandInCast(Character(name="ava", id_embedding=torch.ones(512)), appearance("red", RED))
    with pytest.raises(PanelScoringError, match="'rex' is on stage but not in the cast"):
        cast_identities(cast, ["ava", "rex"])
    refs = cast_identities(cast, ["ava", "red"], FakeClip())
    render = story_of(panel(0, ["ava", "red"]))
    with pytest.raises(PanelScoringError, match="2 images for the 1 panels"):
        score_panels([np.zeros((64, 64, 3), np.uint8)] * 2, render, refs, FakeFace({}), FakeClip())
    with pytest.raises(PanelScoringError, match="'ava' is scored by its face"):
        score_panels([np.zeros((64, 64, 3), np.uint8)], render, refs, None, FakeClip())
    with pytest.raises(PanelScoringError, match="'red' is scored by its appearance"):
        score_panels([np.zeros((64, 64, 3), np.uint8)], render, refs, FakeFace({}), None)
    with pytest.raises(PanelScoringError, match="no references for"):
        score_panels([np.zeros((64, 64, 3), np.uint8)], story_of(panel(0, ["zed"])), refs, FakeFace({}), FakeClip())
