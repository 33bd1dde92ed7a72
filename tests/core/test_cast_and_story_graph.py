"""A story's cast and its expanded graph, offline: what makes a scene cost no re-encoding, merge the LoRA
once and be cached by its own line."""

import pytest
import torch

from storymaker_core.cast import CastError, make_cast, parse_descriptions
from storymaker_core.encode import character_tokens, embeds_for_slots, encode_characters
from storymaker_core.script import parse_script
from storymaker_core.story_graph import StoryLinks, StorySettings, build_story_graph

from support import measured, relative_error
from core.test_characters import appearance, encoded, resampler  # noqa: F401  (fixture)


@pytest.mark.parametrize("order", [[0], [1, 0], [2, 0, 1]])
def test_a_scene_from_cast_tokens_equals_encoding_its_characters_directly(resampler, order):
    cast = [encoded("ava", 1), encoded("ben", 2), appearance("rex", 3)]
    tokens = torch.stack([character_tokens(resampler, [c])[0] for c in cast])  # each member alone, as the story
    scene = embeds_for_slots(resampler, tokens[order], [cast[i].name for i in order], num_clip_tokens=9)
    direct = encode_characters(resampler, [cast[i] for i in order])  # the Encode node: all at once
    # float32, batch of one vs batch of N: the same math, rounded in another order
    measured("scene tokens from the cast vs direct encoding", relative_error(scene.cond, direct.cond), 1e-6)
    assert torch.equal(scene.uncond, direct.uncond)
    assert scene.names == direct.names


def test_a_scene_with_nobody_on_stage_gets_the_background_tokens_alone(resampler):
    empty = embeds_for_slots(resampler, torch.zeros(0), [])
    assert empty.num_characters == 0
    assert torch.equal(empty.cond, resampler.bg_embed.detach()) and torch.equal(empty.uncond, empty.cond)


def test_cast_names_must_be_usable_in_tags_and_unique():
    ava, ben = encoded("Ava", 1), encoded("ben", 2)
    cast = make_cast([ava, ben], ["character_1", "character_2"], "ava: a woman with red hair")
    assert cast.names == ("Ava", "ben") and cast.descriptions == {"Ava": "a woman with red hair"}
    assert cast.character("AVA") is ava
    with pytest.raises(CastError, match="character_1 and character_2 are both called 'ava'"):
        make_cast([ava, encoded("ava ", 3)], ["character_1", "character_2"])
    for bad, message in (("", "has no name"), ("a, b", r"contains \[ \]"), ("NC", "reserved")):
        with pytest.raises(CastError, match=message):
            make_cast([encoded(bad, 1)], ["character_1"])
    with pytest.raises(CastError, match="the cast is empty"):
        make_cast([], [])
    with pytest.raises(CastError, match="descriptions line 2: no character named 'eve'"):
        parse_descriptions("ava: red hair\neve: unknown", ["ava"])


SCRIPT = """[ava] in a kitchen
[ava, ben] in a park | seed=42
[NC] an empty street | candidates=2
"""


def graph_of(script, **settings):
    scenes = parse_script(script, ["ava", "ben"])
    links = StoryLinks(model=["1", 0], clip=["2", 0], vae=["3", 0], storymaker=["4", 0],
                       members={"ava": {"character": ["7", 0]}, "ben": {"character": ["8", 0]}})
    return build_story_graph(scenes, StorySettings(name="tale", **settings), links, prefix="9.0.0.")


def by_type(graph, class_type):
    return {k: v["inputs"] for k, v in graph.nodes.items() if v["class_type"] == class_type}


def test_every_scene_links_to_one_lora_node_and_only_its_own_members():
    graph = graph_of(SCRIPT)
    assert list(by_type(graph, "StoryMakerApplyLoRA")) == ["9.0.0.lora"]
    applies = by_type(graph, "StoryMakerApplyScene")
    assert all(inputs["model"] == ["9.0.0.lora", 0] for inputs in applies.values())
    members = {k: sorted(n for n in v if n.startswith("member_")) for k, v in applies.items()}
    assert members == {"9.0.0.scene1.apply": ["member_1"], "9.0.0.scene2.apply": ["member_1", "member_2"],
                       "9.0.0.scene3.apply": []}
    encoders = by_type(graph, "StoryMakerEncodeMember")
    assert [v["character"] for v in encoders.values()] == [["7", 0], ["8", 0]]
    assert applies["9.0.0.scene2.apply"]["layout"] == "left,right"
    samplers = by_type(graph, "KSampler")
    assert len(samplers) == 4 and [s["seed"] for k, s in samplers.items() if "scene2" in k] == [42]
    assert [p.file for p in graph.panels] == ["storymaker/tale/01-ava-in-a-kitchen.png",
                                              "storymaker/tale/02-ava-and-ben-in-a-park.png",
                                              "storymaker/tale/03-an-empty-street-1.png",
                                              "storymaker/tale/03-an-empty-street-2.png"]
    assert graph.images == ["9.0.0.scene3.2.join", 0]


def content(graph, node_id):
    """A node's inputs with links replaced by their source's content, recursively (what ComfyUI caches by)."""
    def value(v):
        return content(graph, v[0]) if isinstance(v, list) and len(v) == 2 and v[0] in graph.nodes else v
    node = graph.nodes[node_id]
    return (node["class_type"], tuple(sorted((k, repr(value(v))) for k, v in node["inputs"].items())))


def test_a_scene_depends_on_its_own_line_only():
    before = graph_of(SCRIPT)
    inserted = graph_of("[ben] a new first scene\n" + SCRIPT.replace("in a kitchen", "in a small kitchen"))
    samplers = lambda g: {content(g, k) for k, v in g.nodes.items() if v["class_type"] == "KSampler"}
    changed = samplers(inserted) - samplers(before)
    assert len(changed) == 2, "the edited and the new scene sample again; moved scenes do not"
    assert len(samplers(before) - samplers(inserted)) == 1


def test_shared_settings_reach_every_scene():
    one, other = graph_of(SCRIPT), graph_of(SCRIPT, steps=31)
    samplers = lambda g: {content(g, k) for k, v in g.nodes.items() if v["class_type"] == "KSampler"}
    assert not samplers(one) & samplers(other)
