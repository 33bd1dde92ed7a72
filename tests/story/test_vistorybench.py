"""ViStoryBench: reading its dataset layout, converting it to story files the runner plans unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from storymaker.story import load_story, plan_story
from storymaker.story.errors import StoryFileError
from storymaker.story.vistorybench.cli import main
from storymaker.story.vistorybench.convert import ConvertOptions, convert_dataset
from storymaker.story.vistorybench.dataset import LITE_STORY_IDS, DatasetError, load_dataset, load_story as load_vistory
from storymaker.story.vistorybench.prompts import shot_prompt
from storymaker.story.vistorybench.regions import region_bands
from storymaker.story.vistorybench.templates import TemplateError
from support.vistorybench_data import (CHARACTERS_01, CHINESE_ONLY_SHOT, MISSING_CHARACTER, REPO, SHOTS_01,
                                       build_dataset, story_01, write_strict_story)

API = REPO / "workflows" / "api"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_dataset(tmp_path_factory.mktemp("vistorybench"))


@pytest.fixture(scope="module")
def converted(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted")
    return out, convert_dataset(dataset.parent, out)


def test_story_json_with_bom_keys_with_spaces_and_sorted_references(dataset):
    assert (dataset / "01" / "story.json").read_bytes().startswith(b"\xef\xbb\xbf")
    story = load_vistory(dataset / "01", "en")
    assert list(story.characters) == list(CHARACTERS_01)
    ava = story.characters["Ava Stone"]
    assert [p.name for p in ava.images] == ["00.png", "01.jpg"]
    rabbit = story.characters["Big Brown Rabbit"]
    assert [p.relative_to(dataset / "01" / "image" / "Big Brown Rabbit").as_posix() for p in rabbit.images] == \
        ["00.jpg", "side/01.jpg"]  # every image under the key's folder, sorted
    assert rabbit.tag == "non_human" and rabbit.name("ch") == "大棕兔"
    by_index = {s.index: s for s in story.shots}
    for index, names in SHOTS_01.items():
        assert by_index[index].character_keys == tuple(n for n in names if n in CHARACTERS_01)
    assert by_index[7].unknown_characters == (MISSING_CHARACTER,)
    assert any(MISSING_CHARACTER in w and "not in Characters" in w for w in story.warnings)


def test_a_shot_with_chinese_text_only_gets_vistorybench_placeholders_or_falls_back(dataset):
    source = next(s for s in story_01()["Shots"] if s["index"] == CHINESE_ONLY_SHOT)
    # as ViStoryBench's StoryDataset.load_shots: a field without the language is "(en data missing) " + str(field),
    # and with no field in the language the shot gets no character_key (their prompt merger and CIDS stop on it)
    story = load_vistory(dataset / "01", "en")
    shot = next(s for s in story.shots if s.index == CHINESE_ONLY_SHOT)
    assert shot.text["scene"] == "(en data missing) " + str(source["Setting Description"])
    assert shot.text["camera"] == "(en data missing) {'ch': '特写'}"
    assert shot.character_keys == () and len(shot.fallbacks) == 5
    assert any(f"shot {CHINESE_ONLY_SHOT}:" in w and "no character_key" in w for w in story.warnings)
    # --language-fallback --lenient-names: the Chinese text, the rabbit found by name_ch; each field reported
    lenient = load_vistory(dataset / "01", "en", lenient_names=True, language_fallback=True)
    shot = next(s for s in lenient.shots if s.index == CHINESE_ONLY_SHOT)
    assert shot.text["scene"] == source["Setting Description"]["ch"]
    assert shot.text["camera"] == source["Shot Perspective Design"]["ch"]
    assert shot.character_keys == ("Big Brown Rabbit",)
    assert len(shot.fallbacks) == 5
    assert sum(f"shot {CHINESE_ONLY_SHOT}:" in w and "no en text" in w and "differs from ViStoryBench" in w
               for w in lenient.warnings) == 5
    chinese = load_vistory(dataset / "01", "ch")  # Chinese text everywhere, but no en list of keys:
    assert [w.split(": ", 1)[1][:59] for w in chinese.warnings if f"shot {CHINESE_ONLY_SHOT}:" in w] == [
        "'Characters Appearing' has no en list (the Characters keys)"]  # their loader stops on it (KeyError)


def test_names_match_characters_keys_exactly_unless_lenient(tmp_path):
    """ViStoryBench's prompt merger keeps a name only if it is a key of Characters (``key in characters``) and
    its CIDS indexes ``Characters[key]``: ' ava stone' is not 'Ava Stone' there."""
    story = write_strict_story(tmp_path)
    strict = load_vistory(story, "en")
    shots = {s.index: s for s in strict.shots}
    assert shots[1].character_keys == ("Ben",)
    assert shots[1].unknown_characters == (" ava stone",)
    assert any("' ava stone' is not a key of Characters" in w and "--lenient-names would take it for 'Ava Stone'" in w
               for w in strict.warnings)
    lenient = load_vistory(story, "en", lenient_names=True)
    assert {s.index: s for s in lenient.shots}[1].character_keys == ("Ava Stone", "Ben")
    out = tmp_path / "out"
    summary = convert_dataset(tmp_path, out)
    scene = next(s for s in load_story(out / "03" / "story.yaml").scenes if s.id == "1")
    assert scene.characters == ("Ben",) and any("' ava stone' is not a key" in p for p in summary.problems)
    assert main(["convert", str(tmp_path), str(tmp_path / "lenient"), "--lenient-names"]) == 0
    scene = next(s for s in load_story(tmp_path / "lenient" / "03" / "story.yaml").scenes if s.id == "1")
    assert scene.characters == ("Ava Stone", "Ben")


def test_a_field_without_the_language_is_their_placeholder_per_field(tmp_path):
    story = write_strict_story(tmp_path)
    raw = {s["index"]: s for s in json.loads((story / "story.json").read_text(encoding="utf-8"))["Shots"]}
    shots = {s.index: s for s in load_vistory(story, "en").shots}
    # shot 2: Setting Description in Chinese only; the other fields and the characters are read as usual
    assert shots[2].text["scene"] == "(en data missing) " + str(raw[2]["Setting Description"])
    assert shots[2].text["plot"] == raw[2]["Plot Correspondence"]["en"] and shots[2].character_keys == ("Ben",)
    assert shots[2].fallbacks == ("Setting Description",)
    # shot 3: an empty en text is taken as it is (their loader does not fall back)
    assert shots[3].text["script"] == "" and shots[3].fallbacks == ()
    out = tmp_path / "out"
    summary = convert_dataset(tmp_path, out)
    prompt = next(s for s in load_story(out / "03" / "story.yaml").scenes if s.id == "2").prompt
    assert "\\(en data missing\\) {'ch': '" in prompt  # their text, parentheses escaped for ComfyUI
    assert any("shot 2: Setting Description without en text; given ViStoryBench's placeholder" in p
               for p in summary.problems)
    # --language-fallback: the Chinese text, reported per shot as a difference from ViStoryBench
    summary = convert_dataset(tmp_path, tmp_path / "fb", ConvertOptions(language_fallback=True))
    scenes = {s.id: s for s in load_story(tmp_path / "fb" / "03" / "story.yaml").scenes}
    assert raw[2]["Setting Description"]["ch"] in scenes["2"].prompt and "data missing" not in scenes["2"].prompt
    assert raw[3]["Static Shot Description"]["ch"] in scenes["3"].prompt
    differences = [p for p in summary.problems if "differs from ViStoryBench" in p]
    assert [p.split(":")[0] for p in differences] == ["story 03 shot 2", "story 03 shot 3"]


def test_every_reference_image_is_used_as_one_image_batch(converted, dataset):
    """Ava has two references (00.png, 01.jpg): both go into one multi-page file, which ComfyUI's LoadImage
    reads as a two-image batch for the Character from Image node (pages of one size, upright)."""
    from PIL import ImageSequence

    out, summary = converted
    story = load_story(out / "01" / "story.yaml")
    ava = story.cast["Ava Stone"]
    assert ava.image.suffix == ".tif"
    with Image.open(ava.image) as im:
        pages = [np.asarray(p.convert("RGB")) for p in ImageSequence.Iterator(im)]
    sources = [np.asarray(Image.open(dataset / "01/image/Ava Stone" / n).convert("RGB")) for n in ("00.png", "01.jpg")]
    assert len(pages) == 2 and all(p.shape == sources[0].shape for p in pages)
    assert np.array_equal(pages[0], sources[0])  # same size: the reference as it is, losslessly
    assert np.abs(pages[1].astype(int) - sources[1]).mean() < 1  # lossless page of the decoded JPEG
    rabbit = story.cast["Big Brown Rabbit"]  # 00.jpg and side/01.jpg, another size each? same here
    with Image.open(rabbit.image) as im:
        assert im.n_frames == 2
    assert story.cast["Ben"].image.read_bytes() == (dataset / "01/image/Ben/00.jpg").read_bytes()  # one: a copy
    sidecar = json.loads((out / "01" / "vistorybench.json").read_text(encoding="utf-8"))
    assert [Path(p).name for p in sidecar["references"]["Ava Stone"]] == ["00.png", "01.jpg"]
    assert summary.references == {1: 2 + 2, 2: 2}  # Ben, Miko (+ Miko of 02 and 08); Ava, the rabbit
    plans = {p.id: p for p in plan_story(story)}
    assert any(u.path == ava.image for u in plans["2"].uploads)


def test_references_of_different_sizes_are_letterboxed_onto_one_canvas(tmp_path):
    from PIL import ImageSequence

    from storymaker.story.vistorybench.convert import reference_batch

    wide = tmp_path / "wide.png"
    Image.new("RGB", (60, 20), (200, 0, 0)).save(wide)
    tall = tmp_path / "tall.jpg"
    Image.new("RGB", (10, 40), (0, 0, 200)).save(tall, quality=100)
    target = reference_batch([wide, tall], tmp_path / "batch.tif")
    with Image.open(target) as im:
        pages = [np.asarray(p.convert("RGB")) for p in ImageSequence.Iterator(im)]
    assert [p.shape for p in pages] == [(40, 60, 3)] * 2  # largest width x largest height
    first, second = pages
    assert (first[10:30, :, 0] > 190).all() and (first[:9] == 255).all()  # centred, white around
    assert (second[:, 25:35, 2] > 180).all() and (second[:, :20] == 255).all()  # one scale: 10x40 stays 10x40


def test_splits_and_story_selection(dataset):
    assert [s.story_id for s in load_dataset(dataset)] == ["01", "02", "08"]
    assert [s.story_id for s in load_dataset(dataset, "lite")] == [i for i in ("01", "02", "08") if i in LITE_STORY_IDS]
    assert "02" not in LITE_STORY_IDS and {"01", "08"} <= set(LITE_STORY_IDS) and len(LITE_STORY_IDS) == 20
    assert [s.story_id for s in load_dataset(dataset.parent, stories=["8", "01"])] == ["01", "08"]  # parent/ViStory
    with pytest.raises(DatasetError, match="story '05' is not in .*stories there: 01, 02, 08"):
        load_dataset(dataset, stories=["05"])
    with pytest.raises(DatasetError, match="not in the lite split"):
        load_dataset(dataset, "lite", stories=["02"])


def test_bad_dataset_paths_and_files_get_clear_errors(dataset, tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no story folder"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="language 'fr'"):
        load_dataset(dataset, language="fr")
    broken = tmp_path / "broken" / "03"
    broken.mkdir(parents=True)
    (broken / "story.json").write_text('{"Characters": {', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"story.json is not valid JSON \(line 1"):
        load_dataset(tmp_path / "broken")
    with pytest.raises(DatasetError, match="story.json does not exist"):
        load_vistory(tmp_path / "empty")
    assert main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_a_shot_missing_a_field_is_skipped_like_vistorybench_does(tmp_path):
    doc = story_01()
    del doc["Shots"][1]["Plot Correspondence"]
    doc["Shots"].append(dict(doc["Shots"][0]))  # the same index twice: the file name would clash
    (tmp_path / "04").mkdir()
    (tmp_path / "04" / "story.json").write_text(json.dumps(doc), encoding="utf-8")
    story = load_vistory(tmp_path / "04")
    assert [s.index for s in story.shots] == [1, 3, 4, 5, 6, 7]
    assert any("shot 2: missing Plot Correspondence; skipped" in w for w in story.warnings)
    assert any("index 1 is used by an earlier shot" in w for w in story.warnings)
    assert any("no reference image" in w for w in story.warnings)  # no image/ folder at all


def test_prompt_keeps_vistorybench_order_and_escapes_weights(dataset):
    story = load_vistory(dataset / "01", "en")
    shot = next(s for s in story.shots if s.index == 3)
    source = next(s for s in story_01()["Shots"] if s["index"] == 3)
    prompt = shot_prompt(shot, story.characters, "en")
    script = source["Static Shot Description"]["en"].replace("(", "\\(").replace(")", "\\)")
    pieces = [source["Shot Perspective Design"]["en"], source["Plot Correspondence"]["en"], script,
              f"Ben is {CHARACTERS_01['Ben']['prompt_en']}", "Miko is an anime girl",
              source["Setting Description"]["en"]]
    positions = [prompt.index(p) for p in pieces]
    assert positions == sorted(positions), prompt
    assert "(" not in prompt.replace("\\(", "") and ")" not in prompt.replace("\\)", "")
    chinese = shot_prompt(shot, load_vistory(dataset / "01", "ch").characters, "ch")
    assert f"本 is {CHARACTERS_01['Ben']['prompt_ch']}" in chinese


def test_converted_stories_plan_with_the_right_template_cast_and_regions(converted, dataset):
    out, summary = converted
    story = load_story(out / "01" / "story.yaml")
    assert story.name == "vistorybench-en-01"
    assert {n: m.identity for n, m in story.cast.items()} == {
        n: ("auto" if c["tag"] == "realistic_human" else "appearance") for n, c in CHARACTERS_01.items()}
    # a character with one reference: copied beside the story (several: test_every_reference_image_is_used...)
    assert story.cast["Ben"].image.read_bytes() == (dataset / "01/image/Ben/00.jpg").read_bytes()
    assert all(m.mask is None for m in story.cast.values())  # Segment Anything templates: no masks
    plans = {p.id: p for p in plan_story(story)}
    expected_ids = [str(i) for i in sorted([*SHOTS_01, CHINESE_ONLY_SHOT])]
    assert sorted(plans, key=int) == expected_ids
    templates = {sid: Path(p.scene.workflow.path).name for sid, p in plans.items()}
    assert templates["1"] == templates["6"] == "story-template-no-character.api.json"  # 6: no en names (strict)
    assert templates["2"] == templates["7"] == "story-template-one-character-sam.api.json"
    assert templates["3"] == "story-template-two-characters-sam.api.json"
    assert templates["4"] == templates["5"] == "story-template-three-characters-sam.api.json"
    assert plans["5"].characters == ("Miko", "Ava Stone", "Ben")  # the first three, listed order
    assert plans["7"].characters == ("Ava Stone",)
    for sid in ("3", "5"):  # each slot's character node gets the cast member's image, name and identity
        plan = plans[sid]
        nodes = plan.prompt
        for slot, name in enumerate(plan.characters, 1):
            image_node = next(k for k, n in nodes.items() if n["_meta"]["title"] == f"character:{slot}")
            node = next(n for n in nodes.values() if n["class_type"] == "StoryMakerCharacterFromImage"
                        and n["inputs"]["image"] == [image_node, 0])
            assert node["inputs"]["name"] == name and node["inputs"]["identity"] == story.cast[name].identity
    # region masks: the image nodes feeding StoryMaker Apply's mask_N get left-to-right bands
    plan = plans["4"]
    apply = next(n for n in plan.prompt.values() if n["class_type"] == "StoryMakerApply")
    uploads = {u.name: u.path for u in plan.uploads}
    centers = []
    for slot in (1, 2, 3):
        source = plan.prompt[apply["inputs"][f"mask_{slot}"][0]]
        mask = np.asarray(Image.open(uploads[source["inputs"]["image"]]).convert("L")) > 127
        assert mask.shape == (1024, 1024) and (mask == mask[:1]).all()  # vertical bands
        columns = np.flatnonzero(mask[0])
        assert columns.size in (341, 342) and (np.diff(columns) == 1).all()
        centers.append(columns.mean())
    assert centers == sorted(centers)


def test_summary_counts(converted):
    out, summary = converted
    written = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert written["stories"] == summary.stories == 3
    assert summary.shots == len(SHOTS_01) + 1 + 2 + 2
    assert summary.no_character == 2 + 1 + 1  # shots 01/1 and 01/6 (no en field), shot 2 of stories 02 and 08
    assert len(summary.truncated) == 1 and summary.truncated[0].startswith("01/5: 4 characters")
    assert "Big Brown Rabbit" in summary.truncated[0].split("left out of the slots:")[1]
    counts = {(c["tag"], c["identity"]): c["count"] for c in written["characters"]}
    assert counts == {("realistic_human", "auto"): 2, ("unrealistic_human", "appearance"): 3,
                      ("non_human", "appearance"): 1}
    assert any(MISSING_CHARACTER in p for p in summary.problems)
    text = summary.format()
    assert "shots with no character (plain SDXL): 4" in text and "first 3 rendered): 1" in text


def test_region_bands_partition_the_width():
    for width, count in ((1024, 2), (1000, 3), (17, 3)):
        bands = region_bands(width, 4, count)
        total = sum(b.astype(int) // 255 for b in bands)
        assert (total == 1).all()
        firsts = [np.flatnonzero(b[0])[0] for b in bands]
        assert firsts == sorted(firsts) and firsts[0] == 0


def test_templates_with_mask_nodes_get_whole_image_masks(dataset, tmp_path):
    options = ConvertOptions(stories=["02"], templates={1: API / "story-template-one-character.api.json"})
    convert_dataset(dataset, tmp_path, options)
    story = load_story(tmp_path / "02" / "story.yaml")
    miko = story.cast["Miko"]
    mask = np.asarray(Image.open(miko.mask))
    assert mask.min() == 255 and Image.open(miko.mask).size == Image.open(miko.image).size
    plans = plan_story(story)
    assert plans[0].characters == ("Miko",)


def test_unusable_templates_are_refused_before_writing(dataset, tmp_path):
    with pytest.raises(TemplateError, match="shots with 1 character"):
        convert_dataset(dataset, tmp_path / "a", ConvertOptions(templates={1: API / "story-template-two-characters-sam.api.json"}))
    old = json.loads((API / "story-template-one-character-sam.api.json").read_text())
    del next(n for n in old.values() if n["class_type"] == "StoryMakerCharacterFromImage")["inputs"]["identity"]
    (tmp_path / "old.api.json").write_text(json.dumps(old))
    with pytest.raises(TemplateError, match="no `identity` input"):
        convert_dataset(dataset, tmp_path / "c", ConvertOptions(templates={1: tmp_path / "old.api.json"}))
    assert not any((tmp_path / d).exists() for d in "ac")


def test_templates_without_sam_or_masks_convert_and_flag_faces(dataset, tmp_path):
    """No mask and no Segment Anything: the character node uses the whole reference for a character
    without a face and refuses one with a face, so the people (identity auto) in such slots are reported."""
    bare = json.loads((API / "story-template-one-character.api.json").read_text())
    mask_link = next(n for n in bare.values() if n["class_type"] == "StoryMakerCharacterFromImage")["inputs"].pop("mask")
    del bare[mask_link[0]]
    (tmp_path / "bare.api.json").write_text(json.dumps(bare))
    summary = convert_dataset(dataset, tmp_path / "out", ConvertOptions(stories=["01"], templates={1: tmp_path / "bare.api.json"}))
    flagged = [p for p in summary.problems if "neither Segment Anything nor a mask node" in p]
    assert [p.split(":")[0] for p in flagged] == ["shot 01/2", "shot 01/7"]  # Ava
    story = load_story(tmp_path / "out" / "01" / "story.yaml")
    assert all(m.mask is None for m in story.cast.values())
    assert len(plan_story(story)) == 7


def test_cli_convert_chinese_lite(dataset, tmp_path, capsys):
    assert main(["convert", str(dataset), str(tmp_path), "--language", "ch", "--split", "lite",
                 "--size", "768x512", "--steps", "4"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["01", "08"]
    doc = yaml.safe_load((tmp_path / "01" / "story.yaml").read_text(encoding="utf-8"))
    assert doc["name"] == "vistorybench-ch-01" and doc["size"] == [768, 512] and doc["sampling"] == {"steps": 4}
    shot6 = next(s for s in doc["scenes"] if s["id"] == str(CHINESE_ONLY_SHOT))
    assert shot6["prompt"].startswith("特写")
    assert Image.open(tmp_path / "masks" / "left-half.png").size == (768, 512)
    assert "stories: 2" in capsys.readouterr().out
    for bad in (["--size", "100x7"], ["--stories", "one"], ["--template", "4=x.json"]):
        with pytest.raises(SystemExit):
            main(["convert", str(dataset), str(tmp_path / "x"), *bad])
    assert not (tmp_path / "x").exists()


def test_keys_that_clash_as_cast_names_or_file_names_stay_apart(tmp_path):
    from support.vistorybench_data import _drawing, _shot

    story = tmp_path / "ViStory" / "03"
    chars = {key: {**CHARACTERS_01["Miko"], "name_en": key} for key in ("Ben", "BEN", "7")}
    doc = {"Characters": chars, "Shots": [_shot(1, ["Ben", "BEN", "7"], "three of them")]}
    story.mkdir(parents=True)
    (story / "story.json").write_text(json.dumps(doc), encoding="utf-8")
    for i, key in enumerate(chars):
        (story / "image" / key).mkdir(parents=True)
        _drawing(i * 40).save(story / "image" / key / "00.png")
    convert_dataset(tmp_path, tmp_path / "out")
    converted = load_story(tmp_path / "out" / "03" / "story.yaml")
    assert list(converted.cast) == ["Ben", "BEN #2", "character 7"]  # unique ignoring case, never a slot number
    images = [m.image for m in converted.cast.values()]
    assert len(set(images)) == 3
    for member, key in zip(converted.cast.values(), chars):
        assert member.image.read_bytes() == (story / "image" / key / "00.png").read_bytes()
    assert plan_story(converted)[0].characters == ("Ben", "BEN #2", "character 7")


def test_a_character_without_references_is_described_but_gets_no_slot(tmp_path):
    from support.vistorybench_data import _drawing, _shot

    story = tmp_path / "05"
    doc = {"Characters": {k: CHARACTERS_01[k] for k in ("Miko", "Ben")}, "Shots": [_shot(1, ["Ben", "Miko"], "hi")]}
    (story / "image" / "Miko").mkdir(parents=True)
    (story / "story.json").write_text(json.dumps(doc), encoding="utf-8")
    _drawing(0).save(story / "image" / "Miko" / "00.png")  # Ben has no image folder
    summary = convert_dataset(tmp_path, tmp_path / "out")
    converted = load_story(tmp_path / "out" / "05" / "story.yaml")
    assert list(converted.cast) == ["Miko"]
    scene = converted.scenes[0]
    assert scene.characters == ("Miko",) and Path(scene.workflow.path).name == "story-template-one-character-sam.api.json"
    assert f"Ben is {CHARACTERS_01['Ben']['prompt_en']}" in scene.prompt
    assert any("'Ben' has no reference image in image/Ben/" in p for p in summary.problems)
    assert any("shot 05/1: 'Ben' has no reference image" in p for p in summary.problems)


def _with_torch_compile(template: Path, out: Path) -> Path:
    """The API template with ComfyUI's TorchCompileModel between the checkpoint loader and every model input."""
    prompt = json.loads(template.read_text())
    loader = next(k for k, n in prompt.items() if n["class_type"] == "CheckpointLoaderSimple")
    for node in prompt.values():
        for name, value in node["inputs"].items():
            if value == [loader, 0]:
                node["inputs"][name] = ["compile", 0]
    prompt["compile"] = {"class_type": "TorchCompileModel", "inputs": {"model": [loader, 0], "backend": "inductor"},
                         "_meta": {"title": "TorchCompileModel"}}
    out.write_text(json.dumps(prompt))
    return out


def test_no_character_shots_on_a_compiled_storymaker_model_are_refused_before_sampling(dataset, tmp_path):
    """A compiled UNet that ran StoryMaker's scenes cannot run plain (KeyError 'patches_replace' mid-story under
    TorchCompileModel): such a story is refused when it is planned, naming the scenes and the template."""
    plain = _with_torch_compile(API / "story-template-no-character.api.json", tmp_path / "plain-compiled.api.json")
    one = _with_torch_compile(API / "story-template-one-character-sam.api.json", tmp_path / "one-compiled.api.json")
    convert_dataset(dataset, tmp_path / "both", ConvertOptions(stories=["01"], templates={0: plain, 1: one}))
    with pytest.raises(StoryFileError) as error:
        plan_story(load_story(tmp_path / "both" / "01" / "story.yaml"))
    problem = next(p for p in error.value.problems if "TorchCompileModel" in p)
    assert "scenes 1, 6 run" in problem and "KeyError 'patches_replace'" in problem
    assert "Remove TorchCompileModel from plain-compiled.api.json" in problem
    # the StoryMaker scenes compiled and the plain ones not: nothing is shared, the story plans
    convert_dataset(dataset, tmp_path / "one", ConvertOptions(stories=["01"], templates={1: one}))
    assert len(plan_story(load_story(tmp_path / "one" / "01" / "story.yaml"))) == 7
