"""Workflow templates and bindings: conventions on titles and graph, explicit bindings, characters."""

from __future__ import annotations

import copy
import json

import pytest
from story_support import WORKFLOW

from storymaker.story.errors import StoryFileError
from storymaker.story.plan import plan_story, prompt_fingerprint
from storymaker.story.schema import default_seed, load_story
from storymaker.story.workflow import Template


def write_workflow(story_dir, name: str, nodes: dict) -> str:
    (story_dir / "workflows" / name).write_text(json.dumps(nodes))
    return f"workflows/{name}"


def two_characters() -> dict:
    """WORKFLOW with a second character slot, a mask for slot 1, and a pose ControlNet."""
    wf = copy.deepcopy(WORKFLOW)
    wf["20"] = {"class_type": "LoadImage", "inputs": {"image": "x.png"}, "_meta": {"title": "Character : 2"}}
    wf["21"] = {"class_type": "TestCharacterApply", "inputs": {"model": ["3", 0], "image": ["20", 0], "weight": 0.8}}
    wf["22"] = {"class_type": "LoadImage", "inputs": {"image": "m.png"}, "_meta": {"title": "mask:1"}}
    wf["3"]["inputs"]["mask"] = ["22", 1]
    wf["7"]["inputs"]["model"] = ["21", 0]
    return wf


def with_pose(wf: dict) -> dict:
    wf = copy.deepcopy(wf)
    wf["30"] = {"class_type": "LoadImage", "inputs": {"image": "p.png"}, "_meta": {"title": "pose"}}
    wf["31"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "pose.safetensors"}}
    wf["32"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["4", 0], "negative": ["5", 0], "control_net": ["31", 0], "image": ["30", 0],
        "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
    wf["7"]["inputs"]["positive"] = ["32", 0]
    wf["7"]["inputs"]["negative"] = ["32", 1]
    return wf


def plan_problems(path) -> str:
    with pytest.raises(StoryFileError) as info:
        plan_story(load_story(path))
    return "\n".join(info.value.problems)


def test_conventions_fill_the_right_inputs(make_story):
    story = load_story(make_story(size=[640, 896], negative="lowres, blurry",
                                  sampling={"steps": 9, "cfg": 4.5, "sampler_name": "dpmpp_2m",
                                            "scheduler": "karras", "denoise": 0.9}))
    plans = plan_story(story)
    first = plans[0].prompt
    assert first["4"]["inputs"]["text"] == "alice drinks coffee in a sunny kitchen"  # sampler.positive -> text
    assert first["5"]["inputs"]["text"] == "lowres, blurry"  # sampler.negative -> text
    assert {k: first["7"]["inputs"][k] for k in ("seed", "steps", "cfg", "sampler_name", "scheduler", "denoise")} == {
        "seed": default_seed(100, "morning"), "steps": 9, "cfg": 4.5, "sampler_name": "dpmpp_2m",
        "scheduler": "karras", "denoise": 0.9}
    assert (first["6"]["inputs"]["width"], first["6"]["inputs"]["height"]) == (640, 896)
    assert first["9"]["inputs"]["filename_prefix"] == "storymaker/test-story/comfyui/morning"
    upload = plans[0].uploads[0]
    assert first["2"]["inputs"]["image"] == upload.name  # character:1 <- alice's reference
    assert upload.name.startswith("storymaker-alice-") and upload.name.endswith(".png")
    assert first["7"]["inputs"]["model"] == ["3", 0]  # links untouched
    assert [p.stem for p in plans] == ["01-morning", "02-street", "03-alice-reads-a-book-by-the"]
    assert plans[1].prompt["7"]["inputs"]["seed"] == 7
    assert WORKFLOW["4"]["inputs"]["text"] == "a photo"  # the template itself is never modified


def test_fingerprint_is_deterministic_and_tracks_every_input(make_story, story_dir):
    first = plan_story(load_story(make_story()))
    again = plan_story(load_story(make_story()))
    assert [p.fingerprint for p in first] == [p.fingerprint for p in again]
    assert len({p.fingerprint for p in first}) == 3
    # a new reference image changes the upload name, so every scene of that character is redone
    from PIL import Image
    Image.new("RGB", (24, 32), (1, 2, 3)).save(story_dir / "refs" / "alice.png")
    changed = plan_story(load_story(make_story()))
    assert all(a.fingerprint != b.fingerprint for a, b in zip(first, changed))
    assert prompt_fingerprint(first[0].prompt) == first[0].fingerprint


def test_titled_nodes_and_explicit_bindings(make_story, story_dir):
    wf = copy.deepcopy(WORKFLOW)
    wf["4"]["_meta"]["title"] = "Scene prompt"
    wf["7"]["_meta"]["title"] = "Sampler"
    wf["40"] = {"class_type": "KSampler", "inputs": dict(wf["7"]["inputs"]), "_meta": {"title": "Refiner"}}
    wf["9"]["inputs"]["images"] = ["8", 0]
    path = write_workflow(story_dir, "titled.json", wf)
    story = load_story(make_story(workflow=path, bindings={
        "prompt": {"title": "scene prompt"},  # titles match ignoring case; input defaults to `text`
        "seed": [{"title": "Sampler"}, {"node": "40", "input": "seed"}],
        "ip": {"title": "StoryMaker", "input": "weight"}}, values={"ip": 1.25}))
    prompt = plan_story(story)[1].prompt
    assert prompt["4"]["inputs"]["text"] == "alice walks down a rainy street"
    assert prompt["7"]["inputs"]["seed"] == prompt["40"]["inputs"]["seed"] == 7
    assert prompt["3"]["inputs"]["weight"] == 1.25


def test_two_samplers_without_a_title_is_a_clear_error(make_story, story_dir):
    wf = copy.deepcopy(WORKFLOW)
    wf["40"] = copy.deepcopy(wf["7"])
    text = plan_problems(make_story(workflow=write_workflow(story_dir, "two.json", wf)))
    assert "scenes[0].seed: two.json has several sampler nodes (7, 40); title the one to use 'sampler'" in text


def test_binding_to_missing_title_or_input_lists_what_exists(make_story):
    text = plan_problems(make_story(bindings={
        "prompt": {"title": "Prompt box"}, "seed": {"node": "7", "input": "sed"},
        "negative": {"node": "7", "input": "model"}}))
    assert "bindings.prompt.title: no node titled 'Prompt box' in one.json (titles: " in text
    assert "CLIP Text Encode (Prompt)" in text
    assert "bindings.seed: node 7 (KSampler) in one.json has no input 'sed' (its inputs: model, seed," in text
    assert "bindings.negative: node 7 (KSampler) input 'model' is connected to node 3" in text


def test_two_character_slots_need_two_characters(make_story, story_dir):
    path = write_workflow(story_dir, "duo.json", two_characters())
    cast = [{"name": "alice", "image": "refs/alice.png", "mask": "refs/alice-mask.png"},
            {"name": "bob", "image": "refs/bob.png", "mask": "refs/alice-mask.png"}]
    story = load_story(make_story(workflow=path, cast=cast, scenes=[
        {"prompt": "two friends", "characters": ["bob", "alice"]},
        {"prompt": "default cast order"}]))
    first, second = plan_story(story)
    names = {u.path.stem: u.name for u in first.uploads}
    assert first.prompt["2"]["inputs"]["image"] == names["bob"]  # slot 1 = first listed character
    assert first.prompt["20"]["inputs"]["image"] == names["alice"]
    assert second.prompt["2"]["inputs"]["image"] != first.prompt["2"]["inputs"]["image"]
    assert second.characters == ("alice", "bob")
    del cast[1]["mask"]
    scenes = [{"prompt": "alone", "characters": ["bob"]}, {"prompt": "ok", "characters": ["alice", "bob"]}]
    text = plan_problems(make_story(workflow=path, cast=cast, scenes=scenes))
    assert "scenes[0].characters: the scene has 1 character(s) (bob) but duo.json has 2 character slot(s)" in text
    assert "cast 'bob': duo.json has a mask node for this character" in text  # bob in slot 1, no mask
    assert "scenes[1]" not in text


def test_named_character_nodes_must_match_the_scene(make_story, story_dir):
    wf = copy.deepcopy(WORKFLOW)
    wf["2"]["_meta"]["title"] = "character:Alice"
    path = write_workflow(story_dir, "named.json", wf)
    cast = [{"name": "alice", "image": "refs/alice.png"}, {"name": "bob", "image": "refs/bob.png"}]
    plans = plan_story(load_story(make_story(workflow=path, cast=cast, scenes=[{"prompt": "just alice"}])))
    assert plans[0].characters == ("alice",)  # omitted: the characters the workflow names
    text = plan_problems(make_story(workflow=path, cast=cast, scenes=[{"prompt": "x", "characters": ["bob"]}]))
    assert "'bob' has no node in named.json" in text
    assert "named.json has nodes for 'alice', who is not in this scene" in text
    wf["2"]["_meta"]["title"] = "character:carol"
    write_workflow(story_dir, "named.json", wf)
    assert "names 'carol', who is not in the cast (alice, bob)" in plan_problems(make_story(workflow=path, cast=cast))


def test_pose_scene_needs_a_pose_node_and_per_scene_workflow(make_story, story_dir):
    pose_wf = write_workflow(story_dir, "pose.json", with_pose(WORKFLOW))
    story = load_story(make_story(scenes=[
        {"prompt": "standing", "id": "stand"},
        {"prompt": "sitting", "id": "sit", "pose": "poses/sitting.png", "workflow": pose_wf}]))
    plain, posed = plan_story(story)
    assert "30" not in plain.prompt
    assert posed.prompt["30"]["inputs"]["image"].startswith("storymaker-sitting-")
    assert posed.prompt["4"]["inputs"]["text"] == "sitting"  # found through ControlNetApplyAdvanced
    assert len(posed.uploads) == 2
    text = plan_problems(make_story(scenes=[{"prompt": "a", "pose": "poses/sitting.png"},
                                            {"prompt": "b", "workflow": pose_wf}]))
    assert "scenes[0].pose: no node titled 'pose' in one.json" in text
    assert "scenes[1]: its workflow pose.json has a pose node" in text


def test_ui_format_workflow_is_refused_with_instructions(make_story, story_dir):
    path = write_workflow(story_dir, "ui.json", {"nodes": [], "links": [], "version": 0.4})
    with pytest.raises(StoryFileError, match="editor's workflow format; save it with 'Export \\(API\\)'"):
        plan_story(load_story(make_story(workflow=path)))


def test_broken_links_and_nodes_are_reported(story_dir):
    wf = copy.deepcopy(WORKFLOW)
    wf["7"]["inputs"]["positive"] = ["99", 0]
    (story_dir / "bad.json").write_text(json.dumps(wf))
    with pytest.raises(StoryFileError, match=r"node 7 \(KSampler\) input 'positive' links to node 99"):
        Template.load(story_dir / "bad.json")
    (story_dir / "bad.json").write_text(json.dumps({"1": {"inputs": {}}}))
    with pytest.raises(StoryFileError, match="node 1: expected"):
        Template.load(story_dir / "bad.json")


def test_explicit_character_binding_and_noise_seed_samplers(make_story, story_dir):
    wf = copy.deepcopy(WORKFLOW)
    wf["2"]["_meta"]["title"] = "Reference photo"
    wf["7"]["inputs"]["noise_seed"] = wf["7"]["inputs"].pop("seed")  # KSamplerAdvanced names it so
    path = write_workflow(story_dir, "advanced.json", wf)
    characters = {"characters": {"Alice": {"image": {"title": "reference photo"}}}}
    plan = plan_story(load_story(make_story(workflow=path, bindings=characters)))[0]
    assert plan.prompt["7"]["inputs"]["noise_seed"] == default_seed(100, "morning")  # found by convention
    assert plan.prompt["2"]["inputs"]["image"] == plan.uploads[0].name
    plan = plan_story(load_story(make_story(workflow=path, bindings={**characters, "seed": {"node": "7"}})))[0]
    assert plan.prompt["7"]["inputs"]["noise_seed"] == default_seed(100, "morning")  # explicit, no `input:`


def test_per_workflow_bindings_and_image_values(make_story, story_dir):
    """Region masks of a two-character template: bound for that template only, uploaded like references,
    and given to the scenes that use it; a one-character scene in the same story is unaffected."""
    from story_support import write_png

    duo = two_characters()
    duo["23"] = {"class_type": "LoadImage", "inputs": {"image": "region_left.png"}, "_meta": {"title": "region 1"}}
    write_png(story_dir / "masks" / "left.png", (255, 255, 255))
    duo_spec = {"file": write_workflow(story_dir, "duo.json", duo),
                "bindings": {"region_1": {"title": "region 1", "input": "image"}}}
    cast = [{"name": "alice", "image": "refs/alice.png", "mask": "refs/alice-mask.png"},
            {"name": "bob", "image": "refs/bob.png", "mask": "refs/alice-mask.png"}]
    scenes = [{"prompt": "together"}, {"prompt": "alone", "characters": ["alice"], "workflow": "workflows/one.json"}]
    story = load_story(make_story(workflow=duo_spec, cast=cast, values={"region_1": {"image": "masks/left.png"}},
                                  scenes=scenes))
    together, alone = plan_story(story)
    region = next(u for u in together.uploads if u.path.name == "left.png")
    assert together.prompt["23"]["inputs"]["image"] == region.name and region.name.startswith("storymaker-left-")
    assert alone.scene.values == {} and all(u.path.name != "left.png" for u in alone.uploads)
    with pytest.raises(StoryFileError, match=r"scenes\[0\].values.region_1: no custom binding by this name"):
        load_story(make_story(workflow=duo_spec, cast=cast, scenes=[
            {"prompt": "alone", "characters": ["alice"], "workflow": "workflows/one.json",
             "values": {"region_1": {"image": "masks/left.png"}}}]))


def test_the_character_node_takes_the_cast_members_name(make_story, story_dir):
    """The template says `name: ava`; a scene with ben in slot 1 must not call him ava in its errors."""
    wf = copy.deepcopy(WORKFLOW)
    wf["40"] = {"class_type": "StoryMakerCharacterFromImage", "inputs": {"image": ["2", 0], "name": "ava", "face_index": 0}}
    wf["41"] = {"class_type": "StoryMakerCharacterFromImage", "inputs": {"image": ["9", 0], "name": "keep", "face_index": 0}}
    path = write_workflow(story_dir, "named.json", wf)
    cast = [{"name": "ava", "image": "refs/alice.png"}, {"name": "ben", "image": "refs/bob.png"}]
    ben, ava = plan_story(load_story(make_story(workflow=path, cast=cast, scenes=[
        {"prompt": "him", "characters": ["ben"]}, {"prompt": "her", "characters": ["ava"]}])))
    assert ben.prompt["40"]["inputs"]["name"] == "ben" and ava.prompt["40"]["inputs"]["name"] == "ava"
    assert ben.prompt["41"]["inputs"]["name"] == "keep"  # fed by another node: left alone
