"""The two story adapters: a story runner manifest written by the runner's own Manifest class, and a
ViStoryBench run folder + dataset laid out as the benchmark has them."""

from __future__ import annotations

import json

import pytest

from storymaker.evaluate.story_input import (StoryInputError, load_runner_stories,
                                                  story_from_runner_manifest)


def test_runner_manifest_reads_cast_and_shots_in_story_order(tmp_path, story_builders):
    write_runner_story = story_builders[0]
    story = story_from_runner_manifest(write_runner_story(tmp_path, cast_identity="face"), method="SM")
    assert (story.name, story.method) == ("tale", "SM")
    assert [s.id for s in story.shots] == ["coffee", "walk", "storm", "night", "lost"]  # by index, removed left out
    shots = {s.id: s for s in story.shots}
    assert shots["walk"].characters == ("ava", "rex") and shots["walk"].problem is None
    assert shots["walk"].file == tmp_path / "tale" / "02-walk.png"
    assert "failed" in shots["storm"].problem and "out of memory" in shots["storm"].problem
    assert "pending" in shots["night"].problem and shots["night"].file is None
    assert "not found" in shots["lost"].problem
    assert story.cast["ava"].identity == "face" and story.cast["rex"].identity == "auto"
    assert story.cast["rex"].masks == (tmp_path / "refs" / "rex-mask.png",)


def test_runner_identity_override_and_errors(tmp_path, story_builders):
    folder = story_builders[0](tmp_path)
    story = load_runner_stories([folder], identities={"rex": "appearance"})[0]
    assert story.cast["rex"].identity == "appearance"
    with pytest.raises(StoryInputError, match="in no story's cast"):
        load_runner_stories([folder], identities={"bob": "face"})
    with pytest.raises(StoryInputError, match="identity must be one of"):
        load_runner_stories([folder], identities={"rex": "furry"})
    with pytest.raises(StoryInputError, match="more than once"):
        load_runner_stories([folder, folder / "manifest.json"])
    with pytest.raises(StoryInputError, match="story manifest not found"):
        story_from_runner_manifest(tmp_path / "nowhere")
    (tmp_path / "eval.json").write_text(json.dumps({"format": "storymaker-eval/1", "images": []}))
    with pytest.raises(StoryInputError, match="evaluate score"):
        story_from_runner_manifest(tmp_path / "eval.json")
    (tmp_path / "refs" / "ava.png").unlink()
    with pytest.raises(StoryInputError, match="reference image of 'ava' not found"):
        story_from_runner_manifest(folder)


# --------------------------------------------------------------------------- ViStoryBench
STORIES = {"01": ({"Lily": "realistic_human", "Bunny": "non_human"}, [(1, ["Lily"]), (2, ["Lily", "Bunny"]),
                                                                       (3, ["Bunny"])]),
           "02": ({"Tom": "unrealistic_human"}, [(1, ["Tom"]), (2, ["Tom"])])}


def test_vistorybench_run_folder_with_dataset(tmp_path, story_builders):
    from storymaker.evaluate.story_vistorybench import stories_from_vistorybench

    dataset, run = story_builders[1](tmp_path, STORIES, {"01": [1, 2, 9], "02": [1, 2]})
    stories = {s.name: s for s in stories_from_vistorybench(run, dataset.parent)}
    assert sorted(stories) == ["01", "02"] and stories["01"].method == "StoryMaker"
    one = stories["01"]
    assert {n: m.identity for n, m in one.cast.items()} == {"Lily": "auto", "Bunny": "appearance"}
    assert stories["02"].cast["Tom"].identity == "appearance"
    assert [(s.id, s.characters, s.problem) for s in one.shots] == [
        ("1", ("Lily",), None), ("2", ("Lily", "Bunny"), None), ("3", ("Bunny",), "no image in the run folder")]
    assert one.shots[0].file == run / "01" / "shots" / "1.png"
    assert any("[9]" in n for n in one.notes)  # an image with no dataset shot is noted, not scored
    only = stories_from_vistorybench(run, dataset, story_ids=["2"])
    assert [s.name for s in only] == ["02"]


def test_vistorybench_bad_folders_are_clear_errors(tmp_path, story_builders):
    from storymaker.evaluate.story_vistorybench import stories_from_vistorybench

    dataset, run = story_builders[1](tmp_path, STORIES, {"01": [1]})
    with pytest.raises(StoryInputError, match="no such folder"):
        stories_from_vistorybench(tmp_path / "outputs" / "nope", dataset)
    with pytest.raises(StoryInputError, match="timestamp like"):
        stories_from_vistorybench(run.parent, dataset)
    empty = run.parent / "20250102_120000"
    empty.mkdir()
    with pytest.raises(StoryInputError, match="no story folders"):
        stories_from_vistorybench(empty, dataset)
    with pytest.raises(StoryInputError, match="story id"):
        stories_from_vistorybench(run, dataset, story_ids=["07"])
    with pytest.raises(StoryInputError, match="--dataset"):
        stories_from_vistorybench(run, tmp_path / "no-dataset")
