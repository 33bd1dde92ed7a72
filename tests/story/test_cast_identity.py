"""The cast's ``identity`` field: validated in the story file, written to the character node's ``identity``
input, and a clear error when the template cannot take it (never silently ignored)."""

from __future__ import annotations

import copy
import json

import pytest
from story_support import WORKFLOW

from storymaker.story.errors import StoryFileError
from storymaker.story.plan import plan_story
from storymaker.story.schema import load_story


def character_workflow(with_identity: bool = True) -> dict:
    wf = copy.deepcopy(WORKFLOW)
    inputs = {"image": ["2", 0], "name": "ava", "face_index": 0}
    if with_identity:
        inputs["identity"] = "auto"
    wf["40"] = {"class_type": "StoryMakerCharacterFromImage", "inputs": inputs, "_meta": {"title": "Character 1"}}
    return wf


def write(story_dir, name, nodes) -> str:
    (story_dir / "workflows" / name).write_text(json.dumps(nodes))
    return f"workflows/{name}"


def problems(path) -> str:
    with pytest.raises(StoryFileError) as info:
        plan_story(load_story(path))
    return "\n".join(info.value.problems)


def test_identity_goes_to_the_character_node_of_the_slot(make_story, story_dir):
    path = write(story_dir, "char.json", character_workflow())
    cast = [{"name": "rabbit", "image": "refs/alice.png", "identity": "appearance"},
            {"name": "bob", "image": "refs/bob.png"}]
    rabbit, bob = plan_story(load_story(make_story(workflow=path, cast=cast, scenes=[
        {"prompt": "a rabbit", "characters": ["rabbit"]}, {"prompt": "a man", "characters": ["bob"]}])))
    assert rabbit.prompt["40"]["inputs"]["identity"] == "appearance"
    assert bob.prompt["40"]["inputs"]["identity"] == "auto"  # not set: the template's own value stays
    assert rabbit.fingerprint != plan_story(load_story(make_story(workflow=path, cast=[
        {"name": "rabbit", "image": "refs/alice.png", "identity": "face"}], scenes=[{"prompt": "a rabbit"}])))[0].fingerprint


def test_unknown_identity_is_refused_with_the_choices(make_story):
    with pytest.raises(StoryFileError, match=r"cast\[0\].identity: expected one of auto, face, appearance; got 'anime'"):
        load_story(make_story(cast=[{"name": "alice", "image": "refs/alice.png", "identity": "anime"}]))


def test_template_without_the_identity_input_is_an_error_not_ignored(make_story, story_dir):
    old = write(story_dir, "old.json", character_workflow(with_identity=False))
    text = problems(make_story(workflow=old, cast=[{"name": "alice", "image": "refs/alice.png", "identity": "face"}]))
    assert "cast 'alice' sets `identity:`" in text and "has no 'identity' input" in text
    assert "bindings.characters.1.identity" in text
    # without `identity:` the old template still plans (the node's default applies on the server)
    assert plan_story(load_story(make_story(workflow=old)))[0].prompt["40"]["inputs"].get("identity") is None
    # a template whose character image feeds no character node cannot take it either
    plain = write(story_dir, "plain.json", WORKFLOW)
    text = problems(make_story(workflow=plain, cast=[{"name": "alice", "image": "refs/alice.png", "identity": "face"}]))
    assert "no StoryMakerCharacterFromImage node" in text and "fed by its 'character:1' image" in text


def test_explicit_identity_binding(make_story, story_dir):
    wf = character_workflow()
    wf["40"]["_meta"]["title"] = "Alice node"
    path = write(story_dir, "bound.json", wf)
    bindings = {"characters": {"1": {"identity": {"title": "Alice node"}}}}  # slot 1, as titled
    cast = [{"name": "alice", "image": "refs/alice.png", "identity": "appearance"}]
    plan = plan_story(load_story(make_story(workflow=path, cast=cast, bindings=bindings)))[0]
    assert plan.prompt["40"]["inputs"]["identity"] == "appearance"
    # bound to a node that has no such input: the problem names the node and lists its inputs
    bad = {"characters": {"1": {"identity": {"title": "KSampler"}}}}
    text = problems(make_story(workflow=path, cast=cast, bindings=bad))
    assert "has no input 'identity'" in text and "its inputs:" in text


def test_the_runner_records_each_members_identity_for_evaluate_story(comfy, make_story, story_dir, options):
    """`evaluate story` scores a member by its identity mode: the manifest's cast carries it."""
    import asyncio

    from storymaker.story.runner import StoryRunner

    path = write(story_dir, "char.json", character_workflow())
    story = make_story(workflow=path, cast=[{"name": "rabbit", "image": "refs/alice.png", "identity": "appearance"}])
    runner = StoryRunner(story, [comfy.start().url], options)
    assert asyncio.run(runner.run()).ok
    cast = json.loads((runner.story_dir / "manifest.json").read_text())["cast"]
    assert cast["rabbit"]["identity"] == "appearance"
