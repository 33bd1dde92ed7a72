"""FastComposer prompt list + manifest parsing."""

from __future__ import annotations

import json

import pytest

from storymaker.evaluate import manifest as MF
from storymaker.evaluate import prompts as P


def test_prompt_file_has_source_and_four_groups_of_ten():
    doc = P.load_prompt_file()
    src = doc["source"]
    assert src["repo"] == "mit-han-lab/fastcomposer"
    assert src["path"] == "evaluation/single_object/data.py"
    assert len(src["commit"]) == 40
    assert list(doc["groups"]) == list(P.GROUPS)
    assert all(len(v) == 10 for v in doc["groups"].values())
    prompts = P.load_prompts()
    assert len(prompts) == 40 and len({p.template for p in prompts}) == 40
    assert prompts[0].id == "accessory/00" and prompts[-1].id == "context/09"
    assert all("{class_token}" in p.template and "{unique_token}" in p.template for p in prompts)


def test_render_matches_fastcomposer_text():
    first = P.load_prompts()[0]
    assert first.render("man") == "a man wearing a red hat"
    assert first.render("man", "img") == "a img man wearing a red hat"
    style = [p for p in P.load_prompts() if p.group == "style"][0]
    assert style.render("woman") == "a painting of a woman in the style of Banksy"


@pytest.mark.parametrize("spec,n", [
    ("all", 40), ("first5-per-group", 20), ("every-other", 20), ("accessory,action", 20),
    ("style", 10), ("0-4,10-14", 10), ("3", 1),
])
def test_subsets(spec, n):
    chosen = P.select_prompts(spec)
    assert len(chosen) == n


def test_default_subset_is_balanced():
    chosen = P.select_prompts()
    assert [p.group for p in chosen].count("context") == 5 and len(chosen) == 20
    assert P.DEFAULT_SUBSET == "first5-per-group"


@pytest.mark.parametrize("spec", ["40", "x", "5-2", ""])
def test_bad_subset(spec):
    with pytest.raises(ValueError):
        P.select_prompts(spec)


def test_generic_manifest(tmp_path):
    data = {
        "method": "StoryMaker",
        "references": {"alice": "refs/alice.png", "bob": str(tmp_path / "abs_bob.png")},
        "images": [
            {"file": "out/0.png", "prompt": "a woman in the snow", "characters": ["alice"], "seed": 3},
            {"file": "out/1.png", "prompt": "two people", "characters": ["alice", "bob"], "mood": "x"},
            {"file": "out/2.png", "prompt": "a landscape", "characters": []},
        ],
    }
    m = MF.parse_manifest(data, tmp_path / "run" / "manifest.json")
    assert m.method == "StoryMaker"
    assert m.references["alice"] == tmp_path / "run" / "refs" / "alice.png"
    assert m.references["bob"] == tmp_path / "abs_bob.png"
    assert m.images[0].file == tmp_path / "run" / "out" / "0.png" and m.images[0].seed == 3
    assert m.images[1].characters == ("alice", "bob") and m.images[1].extra == {"mood": "x"}
    problems = MF.check_files(m)
    assert any("alice" in p for p in problems) and any("0.png" in p for p in problems)


def test_story_runner_style_manifest(tmp_path):
    (tmp_path / "story").mkdir()
    (tmp_path / "story" / "manifest.json").write_text(json.dumps({
        "cast": {"hero": {"image": "hero.png", "description": "tall"}},
        "scenes": [{"file": "scene_000.png", "prompt": "hero at dawn", "characters": ["hero"], "seed": 42}],
    }))
    m = MF.load_manifest(tmp_path / "story")  # a folder works too
    assert m.method == "story"  # folder name when 'method' is absent
    assert m.references["hero"] == tmp_path / "story" / "hero.png"
    assert m.images[0].seed == 42


def test_story_runner_scene_mapping_and_cast_list(tmp_path, caplog):
    data = {
        "cast": [{"name": "hero", "image": "cast/hero.png", "mask": "cast/hero_mask.png"}],
        "scenes": {
            "dawn": {"state": "done", "file": "images/01-dawn.png", "prompt": "hero at dawn",
                     "characters": ["hero"], "seed": 5},
            "dusk": {"state": "failed", "prompt": "hero at dusk", "characters": ["hero"]},
            "cut": {"status": "removed", "prompt": "a scene taken out of the story", "characters": ["hero"],
                    "superseded": [{"file": "images/03-cut.png"}]},
        },
    }
    m = MF.parse_manifest(data, tmp_path / "manifest.json")
    assert m.references["hero"] == tmp_path / "cast" / "hero.png"
    assert [img.prompt_id for img in m.images] == ["dawn"] and m.images[0].seed == 5
    assert m.skipped == ("dusk",)
    assert "1 scene(s) have no output 'file'" in caplog.text


def test_single_reference_implies_character_and_overrides(tmp_path):
    data = {"references": {"a": "a.png"}, "images": [{"file": "x.png", "prompt": "p"}]}
    m = MF.parse_manifest(data, tmp_path / "m.json", references={"a": str(tmp_path / "other.png")},
                          images_dir=tmp_path / "imgs", method="Mine")
    assert m.images[0].characters == ("a",)
    assert m.references["a"] == tmp_path / "other.png"
    assert m.images[0].file == tmp_path / "imgs" / "x.png" and m.method == "Mine"


@pytest.mark.parametrize("data,match", [
    ({"references": {"a": "a.png", "b": "b.png"}, "images": [{"file": "x.png"}]}, r"x\.png.*ambiguous"),
    ({"references": {"a": "a.png"}, "images": [{"file": "x.png", "characters": ["zed"]}]},
     r"x\.png.*\['zed'\].*--reference"),
    ({"references": {"a": "a.png"}, "images": []}, "non-empty 'images'"),
    ({"references": {"a": "a.png"}, "images": [{"prompt": "no file"}]}, "needs a 'file'"),
    ({"references": {"a": 3}, "images": [{"file": "x.png"}]}, "reference for character 'a'"),
    ({"references": {"a": "a.png"}, "images": [{"file": "x.png", "characters": ["a", "a"]}]}, "twice"),
])
def test_manifest_errors_name_the_problem(tmp_path, data, match):
    with pytest.raises(MF.ManifestError, match=match) as err:
        MF.parse_manifest(data, tmp_path / "bad.json")
    assert "bad.json" in str(err.value)


def test_load_manifest_errors(tmp_path):
    with pytest.raises(MF.ManifestError, match="manifest not found"):
        MF.load_manifest(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(MF.ManifestError, match="not valid JSON"):
        MF.load_manifest(tmp_path / "broken.json")


def test_other_tools_runs_are_checked_for_like_for_like(tmp_path):
    (tmp_path / "ref.png").write_bytes(b"reference A")
    (tmp_path / "cropped.png").write_bytes(b"reference A, cropped")
    ours = MF.parse_manifest({"method": "StoryMaker", "references": {"ann": "ref.png"}, "images": [
        {"file": f"s{k}.png", "prompt": "a woman wearing a red hat", "prompt_id": "accessory/00", "seed": k}
        for k in range(4)]}, tmp_path / "ours.json")
    theirs = MF.parse_manifest({"method": "PhotoMaker", "references": {"ann": "cropped.png"}, "images": [
        {"file": f"p{k}.png", "prompt": "a woman img wearing a red hat", "score_prompt": "a woman wearing a red hat",
         "prompt_id": "accessory/00", "seed": k} for k in range(3)]}, tmp_path / "theirs.json")
    assert theirs.images[0].clip_t_text == "a woman wearing a red hat"  # scored without the trigger word
    assert ours.images[0].clip_t_text == ours.images[0].prompt
    problems = MF.comparability_problems([ours, theirs])
    assert any("'ann' has different reference images" in p for p in problems)
    assert any(p.startswith("StoryMaker has 1 (character, prompt, seed) cell") for p in problems)
    assert MF.comparability_problems([ours, MF.parse_manifest(
        {"method": "Same", "references": {"ann": "ref.png"}, "images": [
            {"file": f"x{k}.png", "prompt": "p", "prompt_id": "accessory/00", "seed": k} for k in range(4)]},
        tmp_path / "same.json")]) == []
