"""A small dataset in ViStoryBench's layout (``ViStory/<NN>/story.json`` + ``image/<key>/*``), built by tests.

Story 01 holds every case the converter must handle: two real people (the shipped photos; one with two
references, one key with spaces), an anime-style drawing, an animal photo, shots with 0/1/2/3/4
characters, a shot with Chinese text only, a character named in a shot but missing from ``Characters``,
parentheses in the text, and a story.json that starts with a BOM. Stories 02 (not in the lite split)
and 08 (lite) are minimal. ``write_strict_story`` adds a story where ViStoryBench's loader is stricter than
a lenient reader (a name that is a key only ignoring case and spaces, a field in Chinese only, an empty text).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[2]

CHARACTERS_01 = {
    "Ava Stone": {"name_en": "Ava Stone", "name_ch": "艾娃", "prompt_en": "a young woman with long brown hair",
                  "prompt_ch": "一位棕色长发的年轻女子", "tag": "realistic_human", "num_of_appearances": 5},
    "Ben": {"name_en": "Ben", "name_ch": "本", "prompt_en": "a tall man with short black hair",
            "prompt_ch": "一位黑色短发的高个男子", "tag": "realistic_human", "num_of_appearances": 3},
    "Miko": {"name_en": "Miko", "name_ch": "美子", "prompt_en": "an anime girl with pink twin tails (drawn)",
             "prompt_ch": "粉色双马尾的动漫女孩", "tag": "unrealistic_human", "num_of_appearances": 2},
    "Big Brown Rabbit": {"name_en": "Big Brown Rabbit", "name_ch": "大棕兔", "prompt_en": "a big brown rabbit",
                         "prompt_ch": "一只大棕兔", "tag": "non_human", "num_of_appearances": 3},
}


def _fields(setting, plot, characters_en, characters_ch, script, camera) -> dict:
    return {
        "Setting Description": {"en": setting[0], "ch": setting[1]},
        "Plot Correspondence": {"en": plot[0], "ch": plot[1]},
        "Characters Appearing": {"en": characters_en, "ch": characters_ch},
        "Static Shot Description": {"en": script[0], "ch": script[1]},
        "Shot Perspective Design": {"en": camera[0], "ch": camera[1]},
    }


def _shot(index: int, names: list[str], en: str) -> dict:
    ch_names = [CHARACTERS_01[n]["name_ch"] if n in CHARACTERS_01 else n for n in names]
    return {"index": index, **_fields((f"a meadow, shot {index}", f"草地{index}"), (f"plot {index}", f"情节{index}"),
                                      names, ch_names, (en, f"动作{index}"), ("medium shot", "中景"))}


#: shot index -> on-stage names as listed (Characters Appearing.en)
SHOTS_01 = {
    1: [],
    2: ["Ava Stone"],
    3: ["Ben", "Miko"],
    4: ["Ava Stone", "Ben", "Big Brown Rabbit"],
    5: ["Miko", "Ava Stone", "Ben", "Big Brown Rabbit"],
    # 6: Chinese only, the rabbit (named only in Chinese)
    7: ["Ava Stone", "Ghost"],  # Ghost is not in Characters
}
CHINESE_ONLY_SHOT = 6
MISSING_CHARACTER = "Ghost"


def story_01() -> dict:
    shots = [_shot(i, names, f"they stand (smiling) in shot {i}") for i, names in SHOTS_01.items() if i < 6]
    shots.append({"index": CHINESE_ONLY_SHOT,
                  "Setting Description": {"ch": "雨中的森林"}, "Plot Correspondence": {"ch": "兔子躲雨"},
                  "Characters Appearing": {"ch": ["大棕兔"]}, "Static Shot Description": {"ch": "兔子在树下"},
                  "Shot Perspective Design": {"ch": "特写"}})
    shots.append(_shot(7, SHOTS_01[7], "she waves at a ghost"))
    return {"Story_type": {"en": "Picture book", "ch": "绘本"}, "Characters": CHARACTERS_01, "Shots": shots}


def _drawing(seed: int, size=(96, 128)) -> Image.Image:
    """An anime-style drawing: flat colours, outlines, big eyes; no photo face."""
    im = Image.new("RGB", size, (250, 245, 240))
    d = ImageDraw.Draw(im)
    w, h = size
    d.ellipse((w * .2, h * .1, w * .8, h * .55), fill=(255, 220, 200), outline=(0, 0, 0), width=2)
    for x in (w * .35, w * .6):
        d.ellipse((x - 6, h * .3 - 8, x + 6, h * .3 + 8), fill=(40, 40, 160), outline=(0, 0, 0))
    d.rectangle((w * .3, h * .55, w * .7, h * .95), fill=(240, 120, 170 + seed % 60), outline=(0, 0, 0), width=2)
    return im


def _animal_photo(seed: int, size=(128, 96)) -> Image.Image:
    """An animal 'photo': a brown furry body on grass, with noise like a photograph."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.float32) + (70, 140, 60)
    body = ((xx - w * .5) / (w * .3)) ** 2 + ((yy - h * .6) / (h * .25)) ** 2 < 1
    head = ((xx - w * .75) / (w * .12)) ** 2 + ((yy - h * .35) / (h * .15)) ** 2 < 1
    img[body | head] = (120, 80, 45)
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _write_story(folder: Path, doc: dict, bom: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, ensure_ascii=False, indent=1)
    (folder / "story.json").write_bytes(("\ufeff" if bom else "").encode("utf-8") + text.encode("utf-8"))


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def build_dataset(root: Path, human_photo: Path | None = None) -> Path:
    """Write the dataset under ``root/ViStory`` and return that folder.

    ``human_photo`` replaces the shipped photo of Ava (the end-to-end test uses the image its tiny face
    detector was made for)."""
    base = root / "ViStory"
    story = base / "01"
    _write_story(story, story_01(), bom=True)
    ava = Image.open(human_photo or REPO / "stories" / "refs" / "ava.png").convert("RGB")
    _save(ava, story / "image" / "Ava Stone" / "00.png")
    _save(ava.transpose(Image.Transpose.FLIP_LEFT_RIGHT), story / "image" / "Ava Stone" / "01.jpg")
    _save(Image.open(REPO / "stories" / "refs" / "ben.png").convert("RGB"), story / "image" / "Ben" / "00.jpg")
    _save(_drawing(1), story / "image" / "Miko" / "00.png")
    _save(_animal_photo(2), story / "image" / "Big Brown Rabbit" / "00.jpg")
    _save(_animal_photo(3), story / "image" / "Big Brown Rabbit" / "side" / "01.jpg")  # nested folder
    for story_id, bom in (("02", False), ("08", True)):
        doc = {"Characters": {"Miko": CHARACTERS_01["Miko"]},
               "Shots": [_shot(1, ["Miko"], "she reads"), _shot(2, [], "an empty room")]}
        _write_story(base / story_id, doc, bom)
        _save(_drawing(int(story_id)), base / story_id / "image" / "Miko" / "00.png")
    return base


def build_short_story(root: Path, human_photo: Path) -> Path:
    """One story ("01") of three shots, for rendering through a real ComfyUI: nobody, a person, and the
    person with an animal (two regions). Returns ``root/ViStory``."""
    base = root / "ViStory"
    characters = {k: CHARACTERS_01[k] for k in ("Ava Stone", "Big Brown Rabbit")}
    doc = {"Characters": characters,
           "Shots": [_shot(1, [], "an empty meadow"), _shot(2, ["Ava Stone"], "she smiles"),
                     _shot(3, ["Ava Stone", "Big Brown Rabbit"], "she feeds the rabbit")]}
    _write_story(base / "01", doc, bom=True)
    _save(Image.open(human_photo).convert("RGB"), base / "01" / "image" / "Ava Stone" / "00.png")
    _save(_animal_photo(2), base / "01" / "image" / "Big Brown Rabbit" / "00.jpg")
    return base


def write_strict_story(root: Path) -> Path:
    """Story ``root/03`` where ViStoryBench's loader is stricter than a lenient reader: shot 1 lists
    " ava stone" (not a Characters key: "Ava Stone") and Ben; shot 2's Setting Description is Chinese only;
    shot 3's English Static Shot Description is empty. Both characters are drawings. Returns the story folder."""
    story = root / "03"
    characters = {k: {**CHARACTERS_01["Miko"], "name_en": k, "name_ch": CHARACTERS_01[k]["name_ch"]}
                  for k in ("Ava Stone", "Ben")}
    shots = [_shot(1, [" ava stone", "Ben"], "they talk"), _shot(2, ["Ben"], "he waits"), _shot(3, ["Ben"], "")]
    shots[1]["Setting Description"] = {"ch": "雨中的车站"}
    _write_story(story, {"Characters": characters, "Shots": shots}, bom=False)
    for i, key in enumerate(characters):
        _save(_drawing(10 + i), story / "image" / key / "00.png")
    return story
