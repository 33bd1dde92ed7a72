"""`evaluate story` on ViStoryBench outputs: read as their read_outputs.py reads other methods' folders, and
appearance characters scored on their own regions (the scene's region masks), one number each."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from storymaker.evaluate.story_input import Region, story_from_runner_manifest
from storymaker.evaluate.story_scoring import resolve_identity, score_story
from storymaker.evaluate.story_vistorybench import split_run_folder, stories_from_vistorybench

STORIES = {"01": ({"Lily": "non_human", "Bunny": "unrealistic_human"},
                  [(1, ["Lily"]), (2, ["Lily", "Bunny"]), (3, ["Bunny"])]),
           "02": ({"Tom": "unrealistic_human"}, [(1, ["Tom"]), (2, ["Tom"])])}
RED, BLUE, GREY = (200, 30, 30), (30, 40, 200), (128, 128, 128)
SIZE = 64


def _save(path: Path, rgb) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(rgb, np.uint8)).save(path)
    return path


def _flat(colour, size=SIZE) -> np.ndarray:
    return np.full((size, size, 3), colour, np.uint8)


def _halves(left, right, size=SIZE) -> np.ndarray:
    img = _flat(left, size)
    img[:, size // 2:] = right
    return img


def test_other_methods_folders_are_read_as_read_outputs_reads_them(tmp_path, story_builders):
    """read_outputs._collect_story_images: timestamp sub-folders inside a story folder (bench_run reads them
    all, return_latest=False), any entry named *shot / *shots, the number after the last '_' of a file name."""
    dataset, _ = story_builders[1](tmp_path, STORIES, {})
    run = tmp_path / "outputs" / "OtherMethod" / "base" / "en" / "20250301-101500"
    one = run / "01"
    _save(one / "20250301_100000" / "story01_shots" / "shot_1.png", _flat(RED))
    _save(one / "20250301_100000" / "story01_shots" / "shot_2.png", _flat(RED))
    _save(one / "20250302_100000" / "Shots" / "frame_2.PNG", _flat(BLUE))  # later run of the story: wins
    _save(one / "20250302_100000" / "Shots" / "cover.png", _flat(GREY))  # no number: their reader stops on it
    _save(one / "loose_3.png", _flat(GREY))  # beside timestamp folders: not read
    _save(run / "02" / "tom_01.jpg", _flat(GREY))  # no shots folder: the story folder itself
    _save(run / "02" / "tom_2.bmp", _flat(GREY))
    (run / "02" / "chars").mkdir()
    _save(run / "7" / "1.png", _flat(GREY))  # an integer, but no dataset story id
    stories = {s.name: s for s in stories_from_vistorybench(run, dataset)}
    assert sorted(stories) == ["01", "02"] and stories["01"].method == "OtherMethod"
    files = {s.id: s.file for s in stories["01"].shots}
    assert files["1"] == one / "20250301_100000" / "story01_shots" / "shot_1.png"
    assert files["2"] == one / "20250302_100000" / "Shots" / "frame_2.PNG"
    assert files["3"] is None and stories["01"].shots[2].problem == "no image in the run folder"
    assert [s.file.name for s in stories["02"].shots] == ["tom_01.jpg", "tom_2.bmp"]
    notes = "\n".join(stories["01"].notes)
    assert "2 timestamp folders" in notes and "shot(s) [2] have several images" in notes
    assert "cover.png has no shot number" in notes and "loose_3.png" in notes
    assert "story folder '7' is not a story id of the dataset" in notes


def test_language_first_layout_and_strict_character_keys(tmp_path, story_builders):
    dataset, _ = story_builders[1](tmp_path, STORIES, {})
    run = tmp_path / "outputs" / "M" / "en" / "base" / "20250101_120000"  # <method>/<language>/<mode>/<timestamp>
    _save(run / "01" / "shots" / "1.png", _flat(GREY))
    assert split_run_folder(run)[1:] == ("M", "base", "en", "20250101_120000")
    doc = json.loads((dataset / "01" / "story.json").read_text(encoding="utf-8"))
    doc["Shots"][1]["Characters Appearing"]["en"] = ["lily ", "Bunny"]  # not a key: CIDS would stop on it
    (dataset / "01" / "story.json").write_text(json.dumps(doc), encoding="utf-8")
    story = stories_from_vistorybench(run, dataset)[0]
    assert story.shots[1].characters == ("Bunny",)
    assert any("'lily ' is not a key of Characters" in n for n in story.notes)
    lenient = stories_from_vistorybench(run, dataset, lenient_names=True)[0]
    assert lenient.shots[1].characters == ("Lily", "Bunny")


def _converted(tmp_path, story_builders):
    """Dataset, its conversion (64x64 renders: shot 2 gets left/right region masks) and a run folder whose
    shot 2 has Lily's colour on the left and Bunny's on the right."""
    from storymaker.story.vistorybench.convert import ConvertOptions, convert_dataset

    images = {("01", "Lily"): _flat(RED), ("01", "Bunny"): _flat(BLUE), ("01", 1): _flat(RED),
              ("01", 2): _halves(RED, BLUE), ("01", 3): _flat(BLUE)}
    dataset, run = story_builders[1](tmp_path, {"01": STORIES["01"]}, {"01": [1, 2, 3]}, images)
    converted = tmp_path / "vsb"
    convert_dataset(dataset, converted, ConvertOptions(width=SIZE, height=SIZE))
    return dataset, converted, run


def test_two_appearance_characters_in_one_shot_are_scored_on_their_own_regions(tmp_path, story_builders,
                                                                              story_fakes):
    _, FakeClip = story_fakes
    dataset, converted, run = _converted(tmp_path, story_builders)
    story = stories_from_vistorybench(run, dataset, converted=converted)[0]
    two = story.shots[1]
    assert two.characters == ("Lily", "Bunny")
    assert {n: (r.path.name, r.channel) for n, r in two.regions.items()} == {
        "Lily": ("left-half.png", "red"), "Bunny": ("right-half.png", "red")}
    assert story.shots[0].regions == {}  # one character: no region, the whole shot
    result = score_story(story, None, FakeClip())
    per = {s.shot: s.per_character for s in result.shots}["2"]
    # FakeClip: mean colour - 127.5; each half is one colour, the same as the character's reference
    assert per["Lily"]["ref_cos"] == pytest.approx(1.0) and per["Bunny"]["ref_cos"] == pytest.approx(1.0)
    assert per["Lily"]["compared"].startswith("region x0-") and per["Bunny"]["compared"] != per["Lily"]["compared"]
    whole = np.mean([RED, BLUE], axis=0) - 127.5  # what the whole shot would have given both
    red = np.asarray(RED) - 127.5
    assert float(red @ whole / np.linalg.norm(red) / np.linalg.norm(whole)) < 0.9
    # without regions (another method's run): both compared on the whole shot, one embedding for the two
    plain = score_story(stories_from_vistorybench(run, dataset)[0], None, FakeClip())
    per = {s.shot: s.per_character for s in plain.shots}["2"]
    assert per["Lily"]["compared"] == per["Bunny"]["compared"] == "whole shot"
    assert per["Lily"]["ref_cos"] == pytest.approx(float(red @ whole / np.linalg.norm(red) / np.linalg.norm(whole)))


def test_runner_stories_use_the_regions_their_scenes_were_rendered_with(tmp_path, story_builders, story_fakes):
    from storymaker.story import load_story, plan_story
    from storymaker.story.manifest import DONE, Manifest

    _, FakeClip = story_fakes
    _, converted, run = _converted(tmp_path, story_builders)
    story_file = converted / "01" / "story.yaml"
    plans = plan_story(load_story(story_file))
    folder = tmp_path / "story" / "vistorybench-en-01"
    folder.mkdir(parents=True)
    m = Manifest.open(folder / "manifest.json", {"name": folder.name, "file": str(story_file), "sha256": "0" * 64})
    m.set("cast", {n: {"image": str(converted / "01" / "refs" / f"{n.lower()}.png"), "identity": "appearance"}
                   for n in ("Lily", "Bunny")})
    for plan in plans:
        name = f"{plan.stem}.png"
        (folder / name).write_bytes((run / "01" / "shots" / f"{plan.id}.png").read_bytes())
        m.update(plan.id, index=plan.scene.index, stem=plan.stem, characters=list(plan.characters), status=DONE,
                 file=name, fingerprint=plan.fingerprint,
                 sha256=hashlib.sha256((folder / name).read_bytes()).hexdigest())
    story = story_from_runner_manifest(folder)
    assert {n: r.path.name for n, r in story.shots[1].regions.items()} == {"Lily": "left-half.png",
                                                                           "Bunny": "right-half.png"}
    per = {s.shot: s.per_character for s in score_story(story, None, FakeClip()).shots}["2"]
    assert per["Lily"]["ref_cos"] == pytest.approx(1.0) and per["Bunny"]["ref_cos"] == pytest.approx(1.0)
    # the story file changed since the render: its regions are not trusted
    m.update("2", fingerprint="f" * 64)
    story = story_from_runner_manifest(folder)
    assert story.shots[1].regions == {} and any("changed since it was rendered" in n for n in story.notes)


def test_a_users_mask_with_alpha_and_an_empty_region(tmp_path, story_fakes):
    """A region read as ComfyUI's loader reads it (alpha: 1 - alpha); an empty one leaves that character
    unscored, with the reason, not scored on something else."""
    from storymaker.evaluate.story_input import CastMember, Shot, Story

    _, FakeClip = story_fakes
    shot = _save(tmp_path / "shot.png", _halves(RED, BLUE))
    alpha = np.zeros((SIZE, SIZE, 4), np.uint8)
    alpha[:, : SIZE // 2, 3] = 255  # opaque left, transparent right: the right half is the region
    Image.fromarray(alpha, "RGBA").save(tmp_path / "right-by-alpha.png")
    _save(tmp_path / "black.png", _flat((0, 0, 0)))
    cast = {"cat": CastMember("cat", (_save(tmp_path / "cat.png", _flat(BLUE)),), "appearance"),
            "dog": CastMember("dog", (_save(tmp_path / "dog.png", _flat(RED)),), "appearance")}
    regions = {"cat": Region(tmp_path / "right-by-alpha.png", "alpha"), "dog": Region(tmp_path / "black.png")}
    story = Story("s", "M", tmp_path, cast, (Shot("1", shot, ("cat", "dog"), regions=regions),))
    result = score_story(story, None, FakeClip())
    per = result.shots[0].per_character
    assert per["cat"]["ref_cos"] == pytest.approx(1.0) and per["cat"]["compared"].startswith(f"region x{SIZE // 2}-")
    assert per["dog"]["ref_cos"] is None and "empty" in per["dog"]["problem"]
    from storymaker.evaluate.aggregate import CIOptions
    from storymaker.evaluate.story_metrics import summarise_stories
    from storymaker.evaluate.story_report import story_markdown

    md = story_markdown(summarise_stories(result.characters, result.shots, CIOptions()), result.characters,
                        result.shots, {})
    assert "## Characters not scored in a shot" in md and "M / s / shot 1 / dog: region black.png" in md
    assert "Appearance characters compared on: region 1×" in md


def test_a_multi_page_reference_is_every_reference(tmp_path, story_fakes):
    """The converter's batch of references (one TIFF, one page per reference) is embedded page by page, as
    ComfyUI's LoadImage hands it to the Character from Image node."""
    from storymaker.evaluate.story_input import CastMember
    from storymaker.story.vistorybench.convert import reference_batch

    _, FakeClip = story_fakes
    pages = [_save(tmp_path / "a.png", _flat(RED)), _save(tmp_path / "b.png", _flat(BLUE))]
    batch = reference_batch(pages, tmp_path / "both.tif")
    ident = resolve_identity(CastMember("kit", (batch,), "appearance"), None, FakeClip())
    assert ident.clip.shape == (2, 3)
    assert np.allclose(ident.clip, [np.asarray(RED) - 127.5, np.asarray(BLUE) - 127.5], atol=1)
