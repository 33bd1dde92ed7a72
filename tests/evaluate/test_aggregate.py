"""Summaries: which groups the intervals rest on, and FastComposer's missing-face convention."""

from __future__ import annotations

import numpy as np
import pytest

from storymaker.evaluate import metrics as M
from storymaker.evaluate.aggregate import ALL, summarise
from storymaker.evaluate.scoring import CharacterScore, ImageScore


def records(characters=("ann", "bob", "cy"), prompts=4, seeds=3):
    rng = np.random.default_rng(0)
    out = []
    for c in characters:
        for p in range(prompts):
            for s in range(seeds):
                cos = float(rng.uniform(0.3, 0.7))
                out.append(ImageScore("m", f"{c}-{p}-{s}.png", f"prompt {p}", f"style/{p:02d}", [c], 1,
                                      float(rng.uniform(0.2, 0.3)),
                                      {c: CharacterScore(cos, True, float(rng.uniform(0.5, 0.9)))}))
    return out


def test_all_row_rests_on_characters_and_a_character_row_on_prompts():
    recs = records()
    table = summarise(recs)["m"]
    assert (table[ALL]["face_sim"]["clusters"], table[ALL]["face_sim"]["cluster_by"]) == (3, "character")
    assert (table["ann"]["clip_i"]["clusters"], table["ann"]["clip_i"]["cluster_by"]) == (4, "prompt")
    values = [r.per_character[r.characters[0]].face_cos for r in recs]
    expected = M.clustered_mean_ci(values, [r.characters[0] for r in recs]).scaled(100)
    assert table[ALL]["face_sim"]["low"] == pytest.approx(expected.low, rel=1e-12)
    one_character = summarise(records(characters=("ann",)))["m"][ALL]["clip_t"]
    assert (one_character["clusters"], one_character["cluster_by"]) == (4, "prompt")


def test_missing_faces_count_as_zero_and_negative_cosines_are_clamped_there():
    recs = records(characters=("ann",), prompts=2, seeds=1)
    recs[0].per_character["ann"] = CharacterScore(-0.2, True, 0.5)
    recs[1].per_character["ann"] = CharacterScore(None, False, 0.5)
    stats = summarise(recs)["m"]["ann"]
    assert stats["face_sim"]["mean"] == pytest.approx(-20.0)  # found faces as they are
    assert stats["face_sim_missing_as_0"]["mean"] == pytest.approx(0.0)  # max(-0.2, 0) and a missing 0
    assert (stats["face_found"], stats["face_missing"]) == (1, 1)


def test_images_are_read_upright_as_their_exif_says(tmp_path):
    from PIL import Image

    from storymaker.evaluate.embedders import load_rgb

    pixels = np.zeros((20, 30, 3), np.uint8)
    pixels[:, :10] = 255  # white on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    _, upright = load_rgb(tmp_path / "phone.jpg")
    assert upright.shape == (30, 20, 3)  # displayed portrait
    assert upright[:10].mean() > 200 and upright[-10:].mean() < 50  # the stored left edge is now the top
