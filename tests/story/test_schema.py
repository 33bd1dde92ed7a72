"""Story file schema: what is accepted, and that every mistake is reported with its field and a fix."""

from __future__ import annotations

import json

import pytest
import yaml

from storymaker.story.errors import StoryFileError
from storymaker.story.schema import default_seed, load_story, slugify


def problems(path) -> list[str]:
    with pytest.raises(StoryFileError) as info:
        load_story(path)
    assert str(path.name) in str(info.value)
    return info.value.problems


def test_valid_story_is_loaded_with_defaults_resolved(make_story, story_dir):
    story = load_story(make_story(size=[960, 1280], sampling={"steps": 30, "cfg": 5.5, "sampler_name": "euler"},
                                  negative="lowres"))
    assert story.name == "test-story"
    assert list(story.cast) == ["alice"]
    assert story.cast["alice"].image == (story_dir / "refs" / "alice.png").resolve()
    assert [s.id for s in story.scenes] == ["morning", "street", "alice-reads-a-book-by-the"]
    assert [s.seed for s in story.scenes] == [default_seed(100, "morning"), 7,  # from the id, unless given
                                              default_seed(100, "alice-reads-a-book-by-the")]
    assert [s.index for s in story.scenes] == [1, 2, 3]
    first = story.scenes[0]
    assert first.size == {"width": 960, "height": 1280}
    assert first.sampling == {"steps": 30, "cfg": 5.5, "sampler_name": "euler"}
    assert first.negative == "lowres" and first.characters is None
    assert first.workflow.path == (story_dir / "workflows" / "one.json").resolve()


def test_scene_overrides_story_settings(make_story):
    story = load_story(make_story(sampling={"steps": 30, "cfg": 5.0}, negative="lowres", scenes=[
        {"prompt": "x", "sampling": {"steps": 12}, "negative": "ugly", "size": {"width": 512, "height": 768},
         "characters": "Alice"}]))
    scene = story.scenes[0]
    assert scene.sampling == {"steps": 12, "cfg": 5.0}
    assert scene.negative == "ugly"
    assert scene.size == {"width": 512, "height": 768}
    assert scene.characters == ("alice",)  # names match ignoring case; the cast's spelling is kept


def test_scene_size_may_override_one_key(make_story):
    story = load_story(make_story(size=[960, 1280], scenes=[
        {"prompt": "x", "size": {"width": 768}}, {"prompt": "y", "size": {"height": 512}}, {"prompt": "z"}]))
    assert [s.size for s in story.scenes] == [{"width": 768, "height": 1280}, {"width": 960, "height": 512},
                                              {"width": 960, "height": 1280}]
    assert problems(make_story(size={"width": 960})) == ["size.height: is required"]  # the story's: both
    assert problems(make_story(scenes=[{"prompt": "x", "size": {}}])) == [
        "scenes[0].size: give width, height or both"]


def test_json_story_and_cast_mapping_form(story_dir):
    path = story_dir / "story.json"
    path.write_text(json.dumps({"workflow": "workflows/one.json", "cast": {"alice": "refs/alice.png"},
                                "scenes": [{"prompt": "hello"}]}))
    story = load_story(path)
    assert story.name == "story" and list(story.cast) == ["alice"]


def test_all_problems_are_reported_at_once_with_field_paths(make_story):
    found = problems(make_story(
        cast=[{"name": "alice", "image": "refs/missing.png"}, {"name": "Alice", "image": "refs/bob.png"},
              {"name": "2", "image": "refs/bob.png"}],
        scenes=[{"promt": "typo"}, {"prompt": "x", "characters": ["carol"], "seed": -1},
                {"prompt": "y", "size": [1004, 1024], "sampling": {"steps": 0, "sampler": "euler"}}]))
    text = "\n".join(found)
    assert "cast[0].image: file not found" in text and "refs/missing.png" in text
    assert "cast[1].name: 'Alice' appears twice" in text
    assert "cast[2].name: '2' is a number" in text
    assert "scenes[0].promt: unknown field (did you mean 'prompt'?)" in text
    assert "scenes[0].prompt: is required" in text
    assert "scenes[1].characters[0]: 'carol' is not in the cast" in text
    assert "scenes[1].seed: expected a whole number from 0" in text
    assert "scenes[2].size.width: 1004 is not a multiple of 8" in text
    assert "scenes[2].sampling.steps: expected a whole number from 1" in text
    assert "scenes[2].sampling.sampler: unknown field (did you mean 'sampler_name'?)" in text


def test_duplicate_scene_ids_ask_for_explicit_ids(make_story):
    found = problems(make_story(scenes=[{"prompt": "the same words"}, {"prompt": "the same words"}]))
    assert found == ["scenes[1].id: 'the-same-words' is also the id of scenes[0]; give each scene its own `id:`"]


def test_non_latin_prompts_and_file_names_get_distinct_default_ids_and_names(make_story, story_dir):
    """Nothing ASCII is left of a Japanese or Russian prompt: the default id is a hash, not `scene` for all."""
    for prompts in (["アリスが台所でコーヒーを飲む", "アリスが雨の街を歩く"], ["Алиса пьёт кофе", "Алиса гуляет под дождём"]):
        story = load_story(make_story(scenes=[{"prompt": text} for text in prompts]))
        ids = [scene.id for scene in story.scenes]
        assert len(set(ids)) == 2 and all(i.startswith("scene-") for i in ids)
        assert ids == [scene.id for scene in load_story(make_story(scenes=[{"prompt": t} for t in prompts])).scenes]
    assert [s.id for s in load_story(make_story(scenes=[{"prompt": "Alice im Café"}])).scenes] == ["alice-im-cafe"]
    text = make_story().read_text().replace("name: test-story\n", "")
    names = []
    for filename in ("物語.yaml", "Рассказ.yaml"):
        (story_dir / filename).write_text(text, encoding="utf-8")
        names.append(load_story(story_dir / filename).name)
    assert names[0] != names[1] and all(n.startswith("story-") for n in names)


def test_yaml_syntax_error_names_line_and_column(story_dir):
    path = story_dir / "broken.yaml"
    path.write_text("workflow: workflows/one.json\nscenes:\n  - prompt: [unclosed\n")
    with pytest.raises(StoryFileError, match=r"broken.yaml: line \d+, column \d+: invalid YAML"):
        load_story(path)


def test_a_file_not_in_utf8_is_a_story_error_and_a_byte_order_mark_is_fine(make_story, story_dir):
    """Windows editors save cp1252 or UTF-8 with a BOM: the first is a clear error, the second just works."""
    path = story_dir / "cafe.yaml"
    path.write_bytes("workflow: workflows/one.json\nscenes:\n  - prompt: alice in a caf\u00e9\n".encode("cp1252"))
    with pytest.raises(StoryFileError, match=r"cafe.yaml: line 3: not UTF-8 text .*save the file as UTF-8"):
        load_story(path)
    workflow = story_dir / "workflows" / "one.json"
    workflow.write_bytes(b"\xef\xbb\xbf" + workflow.read_bytes())
    path = story_dir / "bom.json"
    doc = {"workflow": "workflows/one.json", "cast": {"alice": "refs/alice.png"},
           "scenes": [{"prompt": "alice in a caf\u00e9"}]}
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(doc).encode())
    from storymaker.story.plan import plan_story

    (plan,) = plan_story(load_story(path))
    assert plan.prompt["4"]["inputs"]["text"] == "alice in a caf\u00e9"
    workflow.write_bytes("{\"1\": {\"class_type\": \"caf\u00e9\"}}".encode("cp1252"))
    with pytest.raises(StoryFileError, match=r"one.json: line 1: not UTF-8 text"):
        plan_story(load_story(path))


def test_not_an_image_and_missing_workflow(make_story, story_dir):
    (story_dir / "refs" / "notes.png").write_text("not an image")
    found = problems(make_story(workflow="workflows/missing.json",
                                cast=[{"name": "alice", "image": "refs/notes.png"}]))
    assert any(p.startswith("cast[0].image: cannot read") for p in found)
    assert any(p.startswith("workflow: file not found") for p in found)


def test_values_need_a_declared_binding(make_story):
    found = problems(make_story(values={"ip_scale": 0.8}))
    assert any(p.startswith("values.ip_scale: no custom binding by this name") for p in found)
    story = load_story(make_story(bindings={"ip_scale": {"title": "StoryMaker", "input": "weight"}},
                                  values={"ip_scale": 0.8}, scenes=[{"prompt": "x", "values": {"ip_scale": 1.2}},
                                                                    {"prompt": "y"}]))
    assert [s.values for s in story.scenes] == [{"ip_scale": 1.2}, {"ip_scale": 0.8}]


def test_binding_targets_are_checked(make_story):
    found = problems(make_story(bindings={
        "prompt": {"title": "positive", "node": "4"}, "lora": {"title": "StoryMaker"},
        "bad-name": {"title": "x", "input": "y"}, "characters": {"zoe": {"image": {"title": "z"}}}}))
    text = "\n".join(found)
    assert "bindings.prompt: give exactly one of 'title'" in text
    assert "bindings.lora.input: is required" in text
    assert "bindings.bad-name: binding names are letters" in text
    assert "bindings.characters.zoe: 'zoe' is not in the cast" in text


def test_story_name_must_be_a_folder_name(make_story):
    assert any(p.startswith("name: '../up' must be") for p in problems(make_story(name="../up")))


def test_slugify():
    assert slugify("Alice at the Café!  (night)") == "alice-at-the-cafe-night"
    assert slugify("???") == "scene"
    assert len(slugify("word " * 40)) <= 40


@pytest.mark.parametrize("name", ["example-one-character.yaml", "example-two-characters.yaml"])
def test_example_stories_in_repo_are_valid(tmp_path, name):
    """The shipped examples parse and bind against the pack's workflow templates (given images)."""
    from pathlib import Path

    from PIL import Image

    from storymaker.story.plan import plan_story

    repo = Path(__file__).resolve().parents[2]
    doc = yaml.safe_load((repo / "stories" / name).read_text())
    story = tmp_path / "stories" / name
    story.parent.mkdir()
    story.write_text((repo / "stories" / name).read_text())
    specs = [doc["workflow"]] + [scene["workflow"] for scene in doc["scenes"] if "workflow" in scene]
    for spec in specs:
        relative = spec["file"] if isinstance(spec, dict) else spec
        target = story.parent / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((repo / "stories" / relative).read_bytes())
    images = [m[k] for m in doc["cast"] for k in ("image", "mask") if k in m]
    images += [v["image"] for v in (doc.get("values") or {}).values() if isinstance(v, dict)]
    for image in images:
        (story.parent / image).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(story.parent / image)
    plans = plan_story(load_story(story))
    assert [p.scene.id for p in plans] == [s["id"] for s in doc["scenes"]]
    assert all(plan.uploads for plan in plans)


def test_example_stories_keep_their_names_with_custom_values():
    """`values:` used to overwrite the story name (a loop variable shadowed it): story/<name>/ was wrong."""
    from pathlib import Path

    from storymaker.story.schema import load_story

    stories = Path(__file__).resolve().parents[2] / "stories"
    assert load_story(stories / "example-one-character.yaml").name == "ava-one-day"
    assert load_story(stories / "example-two-characters.yaml").name == "ava-and-ben-in-paris"


def test_a_cast_member_with_a_bad_file_is_reported_once_not_as_an_empty_cast(make_story):
    found = problems(make_story(cast=[{"name": "alice", "image": "refs/missing.png"}],
                                scenes=[{"prompt": "x", "characters": ["alice"]}, {"prompt": "y", "characters": ["bob"]}]))
    assert any(p.startswith("cast[0].image: file not found") for p in found)
    assert not any("scenes[0].characters" in p for p in found), found  # alice's own problem says it
    assert "scenes[1].characters[0]: 'bob' is not in the cast (alice's entry has a problem above)" in found
