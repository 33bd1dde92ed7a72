"""Characters from a reference photo, the saved-character file, and encoding to tokens."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from skimage import data

from storymaker_core.characters import (
    Character,
    CharacterError,
    blend_characters,
    character_from_reference,
    combine_references,
    load_character,
    save_character,
)
from storymaker_core.encode import character_tokens, encode_characters
from storymaker_core.preprocess import PreprocessError, face_crop
from storymaker_core.resampler import StoryMakerResampler, interpolate_character_tokens
from support import measured, relative_error, seeded_weights, tiny_resampler_config

# Where the astronaut's eyes, nose and mouth corners are (512x512 photo).
KPS = np.array([[185.0, 110.0], [235.0, 105.0], [212.0, 140.0], [190.0, 170.0], [232.0, 167.0]], np.float32)


@pytest.fixture(scope="module")
def photo():
    return data.astronaut()


@pytest.fixture(scope="module")
def person_mask(photo):
    mask = np.zeros(photo.shape[:2], np.float32)
    mask[40:512, 100:330] = 1.0  # the astronaut, head to chest
    return mask


def test_character_from_reference_makes_both_crops(photo, person_mask):
    embedding = np.random.default_rng(0).normal(size=512)
    character = character_from_reference(photo, person_mask, KPS, embedding, name="Ava")
    assert character.character_image.shape == character.face_image.shape == (1, 224, 224, 3)
    assert character.id_embedding.shape == (512,) and not character.is_encoded
    assert np.allclose(character.id_embedding.numpy(), embedding.astype(np.float32))


def test_face_outside_the_mask_is_a_clear_error(photo):
    mask = np.zeros(photo.shape[:2], np.float32)
    mask[300:, 350:] = 1.0
    with pytest.raises(CharacterError, match="outside mask_2.*face_index"):
        character_from_reference(photo, mask, KPS, np.ones(512), mask_name="mask_2")
    with pytest.raises(PreprocessError, match="must have the image's size"):
        character_from_reference(photo, mask[:100], KPS, np.ones(512))


def test_an_inverted_mask_is_named_as_such(photo, person_mask):
    with pytest.raises(CharacterError, match="looks inverted.*InvertMask"):
        character_from_reference(photo, 1 - person_mask, KPS, np.ones(512))


def test_clothing_replaces_the_character_crop_only(photo, person_mask):
    clothing = np.full((300, 200, 3), (200, 30, 30), np.uint8)
    swapped = character_from_reference(photo, person_mask, KPS, np.ones(512), clothing=clothing)
    normal = character_from_reference(photo, person_mask, KPS, np.ones(512))
    assert np.all(swapped.character_image[0] == (200, 30, 30))
    assert np.array_equal(swapped.face_image, normal.face_image)
    unmasked = character_from_reference(photo, None, KPS, np.ones(512), clothing=clothing)  # no mask needed
    assert np.array_equal(unmasked.character_image, swapped.character_image)
    with pytest.raises(CharacterError, match="needs a mask"):
        character_from_reference(photo, None, KPS, np.ones(512))


def test_face_crop_comes_from_the_original_photo_not_the_white_composite(photo):
    mask = np.zeros(photo.shape[:2], np.float32)
    mask[105:150, 195:230] = 1.0  # covers the eyes and nose only: the composite would whiten the rest of the face
    character = character_from_reference(photo, mask, KPS, np.ones(512))
    assert np.array_equal(character.face_image[0], face_crop(photo, KPS))
    assert (character.face_image == 255).all(axis=2).mean() < 0.05


def test_several_references_combine_into_one_character(photo, person_mask):
    g = np.random.default_rng(1)
    refs = [character_from_reference(photo, person_mask, KPS, g.normal(size=512)) for _ in range(3)]
    combined = combine_references(refs, "Ava")
    assert combined.character_image.shape == (3, 224, 224, 3) and combined.name == "Ava"
    mean = np.mean([r.id_embedding.numpy() for r in refs], axis=0)
    assert np.allclose(combined.id_embedding.numpy(), mean / np.linalg.norm(mean), atol=1e-6)
    assert combine_references(refs[:1], "Bo").name == "Bo"
    with pytest.raises(CharacterError, match="no reference"):
        combine_references([], "x")


def encoded(name, seed, clip_dim=24, tokens=9):
    g = torch.Generator().manual_seed(seed)
    return Character(name=name, id_embedding=torch.randn(16, generator=g),
                     character_image=np.zeros((1, 224, 224, 3), np.uint8), face_image=np.zeros((1, 224, 224, 3), np.uint8),
                     character_clip=torch.randn(tokens, clip_dim, generator=g), face_clip=torch.randn(tokens, clip_dim, generator=g))


def test_saved_character_round_trips(tmp_path):
    character = encoded("Ava", 1)
    path = tmp_path / "ava.safetensors"
    save_character(str(path), character, {"source": "test"})
    loaded = load_character(str(path))
    assert loaded.name == "Ava" and loaded.is_encoded
    assert torch.equal(loaded.id_embedding, character.id_embedding)
    measured("saved character CLIP features (stored fp16)", relative_error(loaded.character_clip, character.character_clip), 1e-3)
    assert np.array_equal(loaded.face_image, character.face_image)


def test_save_and_load_refuse_what_they_cannot_handle(tmp_path):
    bare = Character(name="raw", id_embedding=torch.zeros(512))
    with pytest.raises(CharacterError, match="no CLIP features yet"):
        save_character(str(tmp_path / "x.safetensors"), bare)
    with pytest.raises(CharacterError, match="is a blend"):
        save_character(str(tmp_path / "x.safetensors"), blend_characters(encoded("a", 1), encoded("b", 2), 0.5))
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(CharacterError, match="not a StoryMaker character file"):
        load_character(str(tmp_path / "other.safetensors"))
    (tmp_path / "garbage.safetensors").write_bytes(b"nope")
    with pytest.raises(CharacterError, match="cannot be read"):
        load_character(str(tmp_path / "garbage.safetensors"))
    with pytest.raises(CharacterError, match="within 0..1"):
        blend_characters(encoded("a", 1), encoded("b", 2), 1.5)


@pytest.fixture(scope="module")
def resampler():
    config = tiny_resampler_config()
    with torch.device("meta"):
        model = StoryMakerResampler(config)
    model.load_state_dict(seeded_weights({k: v.shape for k, v in model.state_dict().items()}, 3, scale=0.2),
                          assign=True)
    return model.eval()


@pytest.mark.parametrize("n", [1, 2, 3])
def test_encode_equals_the_resampler_on_stacked_inputs(resampler, n):
    cast = [encoded(f"c{i}", 10 + i) for i in range(n)]
    embeds = encode_characters(resampler, cast)
    with torch.no_grad():
        expected = resampler(torch.stack([c.id_embedding for c in cast]), torch.stack([c.character_clip for c in cast]),
                             torch.stack([c.face_clip for c in cast]))
        assert torch.equal(embeds.cond, expected)
        assert torch.equal(embeds.uncond, resampler.uncond_tokens(n, num_clip_tokens=9))
    assert embeds.num_characters == n and embeds.names == [c.name for c in cast]


def test_face_only_and_blend(resampler):
    a, b = encoded("a", 20), encoded("b", 21)
    with torch.no_grad():
        raw = resampler.character_tokens(torch.stack([a.id_embedding, b.id_embedding]),
                                         torch.stack([a.character_clip, b.character_clip]),
                                         torch.stack([a.face_clip, b.face_clip]))
        blended = encode_characters(resampler, [blend_characters(a, b, 0.3)]).cond
        assert torch.allclose(blended, resampler.assemble(interpolate_character_tokens(raw[:1], raw[1:], 0.3)), atol=1e-6)
    face_only = encode_characters(resampler, [a], face_only=True).cond
    normal = encode_characters(resampler, [a]).cond
    assert torch.equal(face_only[0], normal[0]) and not torch.allclose(face_only[1], normal[1])


def test_encode_errors_name_the_problem(resampler):
    with pytest.raises(CharacterError, match="1 to 3 characters; got 4"):
        encode_characters(resampler, [encoded(str(i), i) for i in range(4)])
    with pytest.raises(CharacterError, match="CLIP-ViT-H-14"):
        encode_characters(resampler, [encoded("bigG", 1, clip_dim=1664 // 64)])
    with pytest.raises(CharacterError, match="identity embedding has 512 values, this StoryMaker file needs 16"):
        encode_characters(resampler, [Character(name="x", id_embedding=torch.zeros(512))])
    with pytest.raises(CharacterError, match="no CLIP features"):
        encode_characters(resampler, [Character(name="raw", id_embedding=torch.zeros(16))])


def test_person_box_covers_the_face_and_stays_inside_the_image():
    from storymaker_core.characters import person_box_from_face

    box = person_box_from_face(np.array([200, 100, 260, 180]), (512, 400))
    assert box[0] <= 200 and box[1] <= 100 and box[2] >= 260 and box[3] == 511
    assert box[0] >= 0 and box[2] <= 399
    edge = person_box_from_face(np.array([0, 0, 100, 120]), (300, 300))
    assert edge[0] == 0 and edge[1] == 0 and edge[2] == 299


def test_nested_blends_keep_every_character(resampler):
    """(A~B)~C and C~(A~B): each side's tokens are its own blend, independently recomputed here."""
    a, b, c = encoded("a", 30), encoded("b", 31), encoded("c", 32)
    with torch.no_grad():
        raw = {x.name: resampler.character_tokens(x.id_embedding[None], x.character_clip[None], x.face_clip[None])[0]
               for x in (a, b, c)}
        lerp = lambda x, y, w: (1 - w) * x + w * y
        ab = lerp(raw["a"], raw["b"], 0.4)
        left = encode_characters(resampler, [blend_characters(blend_characters(a, b, 0.4), c, 0.25)]).cond
        right = encode_characters(resampler, [blend_characters(c, blend_characters(a, b, 0.4), 0.25)]).cond
        assert torch.allclose(left, resampler.assemble(lerp(ab, raw["c"], 0.25)[None]), atol=1e-5)
        assert torch.allclose(right, resampler.assemble(lerp(raw["c"], ab, 0.25)[None]), atol=1e-5)
        plain_ac = encode_characters(resampler, [blend_characters(a, c, 0.25)]).cond
        assert not torch.allclose(left, plain_ac, atol=1e-3)  # B is not dropped
    assert [m.name for m in blend_characters(c, blend_characters(a, b, 0.4), 0.25).members()] == ["c", "a", "b"]


# ---- appearance-only characters (no face) ----

def appearance(name, seed, clip_dim=24, tokens=9):
    g = torch.Generator().manual_seed(seed)
    return Character(name=name, id_embedding=torch.zeros(512), character_image=np.zeros((1, 224, 224, 3), np.uint8),
                     character_clip=torch.randn(tokens, clip_dim, generator=g), identity="appearance")


def test_appearance_character_keeps_the_crop_and_has_no_face(photo, person_mask):
    character = character_from_reference(photo, person_mask, None, None, name="Bunny")
    with_face = character_from_reference(photo, person_mask, KPS, np.ones(512))
    assert character.identity == "appearance" and not character.has_face and with_face.identity == "face"
    assert character.face_image is None and character.kps is None and not character.id_embedding.any()
    assert np.array_equal(character.character_image, with_face.character_image)
    mask = np.zeros(photo.shape[:2], np.float32)
    mask[300:, 350:] = 1.0  # nowhere near a face: fine without one
    assert character_from_reference(photo, mask, None, None).character_image.shape == (1, 224, 224, 3)
    with pytest.raises(CharacterError, match="both the face keypoints and the identity embedding, or neither"):
        character_from_reference(photo, person_mask, KPS, None)


def test_a_character_is_one_mode(photo, person_mask):
    drawn = [character_from_reference(photo, person_mask, None, None) for _ in range(2)]
    combined = combine_references(drawn, "Bunny")
    assert combined.identity == "appearance" and combined.character_image.shape == (2, 224, 224, 3)
    assert combined.face_image is None
    with pytest.raises(CharacterError, match="mix face and appearance-only"):
        combine_references([drawn[0], character_from_reference(photo, person_mask, KPS, np.ones(512))], "x")
    with pytest.raises(CharacterError, match="identity must be one of"):
        Character(name="x", id_embedding=torch.zeros(512), identity="anime")


# Independent float64 reference of the release's `faceid_plus.forward` (ip_adapter/ip_adapter_faceid.py),
# written from its equations (docs/method.md §2), with its training dropout of the face tokens (`out = out*0`
# after the face perceiver, before position and fusion; `is_training`, 10 % of steps) applied per character.

def _norm(p, key, x):  # nn.LayerNorm, eps 1e-5
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / ((x - mean).pow(2).mean(-1, keepdim=True) + 1e-5).sqrt() * p[key + ".weight"] + p[key + ".bias"]


def _gelu(x):  # exact (erf) GELU
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def _perceiver_attention(p, key, features, latents, heads, dim_head):
    """q from the normed latents, k and v from [normed features; normed latents], softmax(q k^T / sqrt(dh))."""
    features, latents = _norm(p, key + "norm1", features), _norm(p, key + "norm2", latents)
    q = latents @ p[key + "to_q.weight"].T
    k, v = (torch.cat([features, latents], dim=1) @ p[key + "to_kv.weight"].T).chunk(2, dim=-1)
    heads_of = lambda t: t.reshape(t.shape[0], t.shape[1], heads, dim_head).permute(0, 2, 1, 3)
    weights = torch.softmax(heads_of(q) @ heads_of(k).transpose(-1, -2) / math.sqrt(dim_head), dim=-1)
    return (weights @ heads_of(v)).permute(0, 2, 1, 3).reshape(q.shape) @ p[key + "to_out.weight"].T


def _perceiver(p, key, latents, features, depth, heads, dim_head):
    """proj_in -> depth x [attention + latents, feed-forward + latents] -> proj_out -> norm_out."""
    features = features @ p[key + "proj_in.weight"].T + p[key + "proj_in.bias"]
    for i in range(depth):
        layer = f"{key}layers.{i}."
        latents = latents + _perceiver_attention(p, layer + "0.", features, latents, heads, dim_head)
        hidden = _gelu(_norm(p, layer + "1.0", latents) @ p[layer + "1.1.weight"].T)
        latents = latents + hidden @ p[layer + "1.3.weight"].T
    return _norm(p, key + "norm_out", latents @ p[key + "proj_out.weight"].T + p[key + "proj_out.bias"])


def release_forward_float64(p, c, id_embeds, clip_embeds, face_embeds, face_dropped):
    """`faceid_plus.forward` in float64 for N characters; `face_dropped[i]`: character i's face tokens get the
    training dropout `out = out*0`. The background stays `bg_embed`, as the release returns it."""
    n, d = id_embeds.shape[0], c.cross_attention_dim
    x = _gelu(id_embeds @ p["proj.0.weight"].T + p["proj.0.bias"]) @ p["proj.2.weight"].T + p["proj.2.bias"]
    x = _norm(p, "norm", x.reshape(n, c.face_tokens, d))
    out = x + _perceiver(p, "perceiver_resampler.", x, face_embeds, c.face_depth, c.face_heads, c.dim_head)
    out = out * (1 - torch.tensor(face_dropped, dtype=out.dtype))[:, None, None]  # the release's `out = out*0`
    clip = _perceiver(p, "resample.", p["resample.latents"].expand(n, -1, -1), clip_embeds, c.character_depth,
                      c.character_heads, c.dim_head)
    cat = torch.cat([out, clip], dim=1) + p["pos_embed"][:n]
    res = _norm(p, "norm_out", cat @ p["proj_out.weight"].T + p["proj_out.bias"]) + cat
    return torch.cat([p["bg_embed"], res], dim=0)


def test_appearance_tokens_are_the_releases_forward_with_the_face_tokens_dropped(resampler):
    """An appearance-only character's 4 face tokens are zeroed after the face perceiver (the release's
    training dropout of the face), not computed from zero face inputs (the negative's face tokens).
    fp32 encode vs the float64 reference: relative error within 1e-5."""
    face, bunny = encoded("ava", 40), appearance("bunny", 41)
    bunny.id_embedding = torch.randn(512)  # whatever is stored, an appearance character's identity is not used
    embeds = encode_characters(resampler, [face, bunny])
    p = {k: v.double() for k, v in resampler.state_dict().items()}
    g = torch.Generator().manual_seed(99)  # the bunny's face inputs are dropped: any values give the same tokens
    reference = release_forward_float64(
        p, resampler.config, torch.stack([face.id_embedding, torch.randn(16, generator=g)]).double(),
        torch.stack([face.character_clip, bunny.character_clip]).double(),
        torch.stack([face.face_clip, torch.randn(9, 24, generator=g)]).double(), face_dropped=[0.0, 1.0])
    measured("appearance-only character tokens (face tokens dropped) vs float64 release forward with the dropout",
             relative_error(embeds.cond, reference), 1e-5)
    raw = character_tokens(resampler, [face, bunny])
    assert not raw[1, :4].any() and raw[1, 4:].abs().min() > 0 and raw[0, :4].abs().min() > 0
    assert torch.equal(embeds.cond[0], resampler.bg_embed[0].detach())  # the background stays bg_embed
    with torch.no_grad():
        assert torch.equal(embeds.uncond, resampler.uncond_tokens(2, num_clip_tokens=9))  # the negative is unchanged
    # no longer the negative's face tokens (what zero face inputs gave): the model never saw those with a real crop
    assert relative_error(embeds.cond[2, :4], embeds.uncond[2, :4]) > 0.1
    alone = encode_characters(resampler, [bunny]).cond
    measured("appearance-only character alone vs float64 release forward with the dropout",
             relative_error(alone, release_forward_float64(p, resampler.config, torch.zeros(1, 16).double(),
                                                           bunny.character_clip[None].double(),
                                                           torch.zeros(1, 9, 24).double(), [1.0])), 1e-5)


def test_blend_of_a_face_and_an_appearance_character_lerps_their_own_tokens(resampler):
    face, bunny = encoded("ava", 42), appearance("bunny", 43)
    with torch.no_grad():
        zero = torch.zeros(16), torch.zeros(9, 24)
        ids = torch.stack([face.id_embedding, zero[0]])
        bodies = torch.stack([face.character_clip, bunny.character_clip])
        faces = torch.stack([face.face_clip, zero[1]])
        raw = resampler.character_tokens(ids, bodies, faces, zero_face=[False, True])
        expected = resampler.assemble(((1 - 0.3) * raw[0] + 0.3 * raw[1])[None])
        # face_only: the face side drops its crop, the appearance side keeps it (its own mode)
        raw_face_only = resampler.character_tokens(ids, bodies, faces, zero_face=[False, True],
                                                   zero_character=[True, False])
        expected_face_only = resampler.assemble(((1 - 0.3) * raw_face_only[0] + 0.3 * raw_face_only[1])[None])
    blended = encode_characters(resampler, [blend_characters(face, bunny, 0.3)]).cond
    measured("face~appearance blend vs lerp of each side's own tokens", relative_error(blended, expected), 1e-6)
    blended = encode_characters(resampler, [blend_characters(face, bunny, 0.3)], face_only=True).cond
    measured("face~appearance blend, face_only, vs lerp of each side's own tokens",
             relative_error(blended, expected_face_only), 1e-6)


def test_face_only_applies_only_to_characters_with_a_face(resampler, caplog):
    """face_only on for the whole cast: a stylised photographed girl and her appearance-only rabbit."""
    ava, bunny = encoded("ava", 44), appearance("bunny", 45)
    with caplog.at_level("INFO", logger="storymaker_core.encode"):
        cast_wide = encode_characters(resampler, [ava, bunny], face_only=True)
    assert "'bunny' is appearance only: face_only does not apply to it" in caplog.text
    assert torch.equal(cast_wide.cond, encode_characters(resampler, [ava, bunny], face_only=[True, False]).cond)
    raw = character_tokens(resampler, [ava, bunny], face_only=True)
    assert not raw[0, 4:].any() and raw[1, 4:].abs().min() > 0  # ava's crop dropped, the rabbit's kept
    two_drawn = blend_characters(appearance("a", 46), appearance("b", 47), 0.5)
    assert torch.equal(encode_characters(resampler, [two_drawn], face_only=True).cond,
                       encode_characters(resampler, [two_drawn]).cond)


def test_a_characters_own_face_only_overrides_the_node_switch(resampler, caplog):
    ava, ben = replace(encoded("ava", 50), face_only=True), replace(encoded("ben", 51), face_only=False)
    cleo = encoded("cleo", 52)  # face_only None: follows the switch
    for switch in (False, True):
        raw = character_tokens(resampler, [ava, ben, cleo], face_only=switch)
        assert not raw[0, 4:].any() and raw[1, 4:].abs().min() > 0
        assert raw[2, 4:].any() != switch
    bunny = replace(appearance("bunny", 53), face_only=True)  # asked for, but it has no face: crop kept, warned
    with caplog.at_level("WARNING", logger="storymaker_core.encode"):
        assert character_tokens(resampler, [bunny])[0, 4:].abs().min() > 0
    assert "'bunny' is appearance only" in caplog.text
    dan = replace(encoded("dan", 54), face_only=False)
    mixed = blend_characters(ava, dan, 0.5)  # each side keeps its own setting
    sides = character_tokens(resampler, [ava, dan], face_only=True)
    measured("blend of characters with their own face_only vs lerp of each side's tokens",
             relative_error(character_tokens(resampler, [mixed], face_only=True)[0], 0.5 * sides[0] + 0.5 * sides[1]),
             1e-6)


def test_story_cast_with_face_only_accepts_an_appearance_member(caplog):
    from storymaker_core.cast import make_cast

    with caplog.at_level("INFO", logger="storymaker_core.cast"):
        cast = make_cast([encoded("ava", 55), appearance("bunny", 56)], ["character_1", "character_2"], face_only=True)
    assert cast.face_only and cast.names == ("ava", "bunny")
    assert "it does not apply to bunny (appearance only" in caplog.text


def test_saved_character_keeps_its_own_face_only(tmp_path):
    for setting in (True, False, None):
        path = tmp_path / f"ava-{setting}.safetensors"
        save_character(str(path), replace(encoded("ava", 57), face_only=setting))
        assert load_character(str(path)).face_only is setting
    from safetensors import safe_open
    with safe_open(str(tmp_path / "ava-None.safetensors"), "pt") as f:
        assert "face_only" not in f.metadata()  # unset: written as every file before it
        tensors, info = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    from safetensors.torch import save_file
    save_file(tensors, tmp_path / "newer.safetensors", metadata={**info, "face_only": "sometimes"})
    with pytest.raises(CharacterError, match="face_only 'sometimes' is not 'on' or 'off'"):
        load_character(str(tmp_path / "newer.safetensors"))


def test_saved_appearance_character_round_trips_its_mode(tmp_path, resampler):
    bunny = appearance("bunny", 48)
    save_character(str(tmp_path / "bunny.safetensors"), bunny)
    loaded = load_character(str(tmp_path / "bunny.safetensors"))
    assert loaded.identity == "appearance" and loaded.face_clip is None and loaded.is_encoded
    from safetensors import safe_open
    with safe_open(str(tmp_path / "bunny.safetensors"), "pt") as f:
        assert f.metadata()["identity"] == "appearance" and "face_clip" not in f.keys()
    measured("saved appearance character tokens (fp16 features) vs original",
             relative_error(encode_characters(resampler, [loaded]).cond, encode_characters(resampler, [bunny]).cond), 1e-3)
    save_character(str(tmp_path / "ava.safetensors"), encoded("ava", 49))
    assert load_character(str(tmp_path / "ava.safetensors")).identity == "face"


def test_files_saved_before_identity_load_as_face(tmp_path):
    from safetensors.torch import save_file

    from storymaker_core.characters import FORMAT

    original = encoded("old", 50)
    tensors = {"id_embedding": original.id_embedding, "character_clip": original.character_clip.half(),
               "face_clip": original.face_clip.half()}
    save_file(tensors, tmp_path / "old.safetensors", metadata={"format": FORMAT, "name": "old", "extra": "{}"})
    loaded = load_character(str(tmp_path / "old.safetensors"))
    assert loaded.identity == "face" and loaded.face_clip is not None and torch.equal(loaded.id_embedding, original.id_embedding)
    assert loaded.face_only is None  # follows the Encode/Cast node's switch, as before
    save_file(tensors, tmp_path / "new.safetensors", metadata={"format": FORMAT, "name": "x", "identity": "voice"})
    with pytest.raises(CharacterError, match="identity 'voice' is not one of"):
        load_character(str(tmp_path / "new.safetensors"))
    del tensors["face_clip"]  # a face character needs its face features
    save_file(tensors, tmp_path / "broken.safetensors", metadata={"format": FORMAT, "name": "x"})
    with pytest.raises(CharacterError, match="not a StoryMaker character file"):
        load_character(str(tmp_path / "broken.safetensors"))


class RecordingSegmenter:
    def __init__(self):
        self.boxes = []

    def segment(self, image, box):
        self.boxes.append(np.asarray(box))
        return np.ones(image.shape[:2], bool)


def test_reference_mask_without_mask(photo, caplog):
    from PIL import Image

    from storymaker_core.characters import reference_mask

    with caplog.at_level("WARNING", logger="storymaker_core.characters"):
        whole = reference_mask(photo, None, None, None, name="bunny", image_name="image #2")
    assert whole.shape == (512, 512) and (whole == 1).all()
    assert "bunny: no mask and no Segment Anything model: the whole image #2" in caplog.text
    crop = character_from_reference(photo, whole, None, None).character_image[0]
    assert np.array_equal(crop, np.asarray(Image.fromarray(photo).resize((224, 224), Image.BICUBIC)))
    with pytest.raises(CharacterError, match="connect a MASK of the character.*identity to 'appearance'"):
        reference_mask(photo, None, np.array([170, 80, 250, 190]), None)
    sam = RecordingSegmenter()
    reference_mask(photo[:300], None, None, sam)  # no face: SAM sees the whole image as its box
    reference_mask(photo, None, np.array([170, 80, 250, 190]), sam)
    assert np.array_equal(sam.boxes[0], [0, 0, 511, 299])
    assert sam.boxes[1][1] < 80 and sam.boxes[1][3] == 511 and sam.boxes[1][2] - sam.boxes[1][0] < 511
    given = np.zeros((512, 512), np.float32)
    assert reference_mask(photo, given, None, None) is not None and not reference_mask(photo, given, None, None).any()
