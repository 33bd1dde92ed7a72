"""The story script parser holds to docs/story-script.md: grammar, text, options, layouts, seeds, names,
and every error reported at once with its line and its fix."""

import re
import zlib

import pytest

from storymaker_core.script import (
    MAX_SEED,
    Scene,
    ScriptError,
    parse_script,
    scene_prompt,
    scene_seeds,
    scene_stem,
    slug,
)

CAST = ["Ava", "Ben", "Rex", "Dan"]


def one(line, cast=CAST, **kwargs):
    scenes = parse_script(line, cast, **kwargs)
    assert len(scenes) == 1
    return scenes[0]


def problems(script, cast=CAST, **kwargs):
    with pytest.raises(ScriptError) as caught:
        parse_script(script, cast, **kwargs)
    message = str(caught.value)
    assert message.splitlines() == list(caught.value.problems)
    for entry in caught.value.problems:  # every entry: where; what is wrong; what to write instead
        assert re.match(r"(line \d+|cast): .+; .+", entry), entry
    return caught.value.problems


def only_problem(script, line, *fragments, **kwargs):
    found = problems(script, **kwargs)
    assert len(found) == 1, found
    assert found[0].startswith(f"line {line}: "), found
    for fragment in fragments:
        assert fragment in found[0], (fragment, found[0])
    return found[0]


# -- lines ----------------------------------------------------------------------------------------------


def test_lines_comments_and_blank_lines():
    script = "# title\n\n   # indented comment\n[ava] reads # a hash inside is text\n\t\nrain on a roof\r\n"
    scenes = parse_script(script, CAST)
    assert [(s.number, s.line) for s in scenes] == [(1, 4), (2, 6)]
    assert scenes[0].source == "[ava] reads # a hash inside is text"
    assert scenes[0].text == "Ava reads # a hash inside is text"
    assert scenes[1].text == "rain on a roof" and scenes[1].cast == () and scenes[1].layout == ()


def test_defaults_of_a_plain_scene():
    scene = one("  a lighthouse on a cliff  ")
    assert scene == Scene(number=1, line=1, source="a lighthouse on a cliff", text="a lighthouse on a cliff",
                          cast=(), seed=None, candidates=1, layout=(), ip_scale=None)


# -- tags -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("line, cast, text", [
    ("[ava] reading a book", ("Ava",), "Ava reading a book"),
    ("[ava, ben] on a bench", ("Ava", "Ben"), "Ava and Ben on a bench"),
    ("[ava][ben] on a bench", ("Ava", "Ben"), "Ava and Ben on a bench"),
    ("[ava]  [ben] on a bench", ("Ava", "Ben"), "Ava and Ben on a bench"),
    ("[ben, ava] [rex] at a picnic", ("Ben", "Ava", "Rex"), "Ben, Ava and Rex at a picnic"),
    ("a cafe where [ava] meets [ben]", ("Ava", "Ben"), "a cafe where Ava meets Ben"),
    ("[ava], [ben] and a dog", ("Ava", "Ben"), "Ava, Ben and a dog"),
    ("at dusk [ REX ]", ("Rex",), "at dusk Rex"),
    ("a harbour at night", (), "a harbour at night"),
    ("a harbour at night, [NC]", (), "a harbour at night"),
    ("[nc], an empty beach", (), "an empty beach"),
    ("a park [NC] , at night", (), "a park, at night"),
    ("a park [NC], at night", (), "a park, at night"),
    ("[NC][nc] fog", (), "fog"),
])
def test_tags_anywhere_grouped_and_replaced(line, cast, text):
    scene = one(line)
    assert scene.cast == cast and scene.text == text


def test_names_match_case_insensitively_and_take_the_cast_spelling():
    scene = one("[aVA] and [  big   RABBIT ] dance", cast=["Ava", "Big Rabbit"])
    assert scene.cast == ("Ava", "Big Rabbit")
    assert scene.text == "Ava and Big Rabbit dance"


def test_descriptions_replace_names_and_empty_ones_fall_back():
    descriptions = {"Ben": "a tall man in a grey coat", "Ava": "  ", "Rex": "a small   terrier"}
    scene = one("[ava][ben] [rex] in the rain", descriptions=descriptions)
    assert scene.text == "Ava, a tall man in a grey coat and a small terrier in the rain"
    assert scene.cast == ("Ava", "Ben", "Rex")  # the cast keeps names, whatever the text says


def test_default_layouts_by_number_on_stage():
    assert one("[ava] x").layout == ("full",)
    assert one("[ava, ben] x").layout == ("left", "right")
    assert one("[ava, ben, rex] x").layout == ("left-third", "middle-third", "right-third")
    assert one("x [NC]").layout == ()


def test_fewer_allowed_on_stage():
    assert one("[ava, ben] x", max_on_stage=2).cast == ("Ava", "Ben")
    only_problem("[ava, ben, rex] x", 1, "at most 2", "one with [ava, ben] and one with [rex]", max_on_stage=2)


# -- tag errors -----------------------------------------------------------------------------------------


def test_unknown_name_lists_the_cast_nc_and_a_close_match():
    entry = only_problem("x\n[bne] walks", 2, "'bne'", "[bne]", "did you mean [Ben]?", "Ava, Ben, Rex, Dan",
                         "[NC]")
    assert "not in the cast" in entry
    entry = only_problem("[zzz] walks", 1, "'zzz'", "Ava, Ben, Rex, Dan", "[NC]")
    assert "did you mean" not in entry


def test_unknown_name_with_an_empty_cast_says_connect_the_cast():
    only_problem("a street\n[ava] walks", 2, "'ava'", "cast is empty", "connect the characters to the cast node",
                 cast=[])
    assert one("a street [NC]", cast=[]).cast == ()


def test_more_than_three_on_stage():
    only_problem("[ava, ben][rex, dan] a crowd", 1, "4 character(s) on stage", "StoryMaker places at most 3",
                 "split the scene into two lines", "[ava, ben, rex]", "[dan]")


def test_the_same_name_twice():
    only_problem("[ava] greets [AVA]", 1, "tagged twice", "'[ava]'", "'[AVA]'", "tag each character once")
    only_problem("[ava, ava] x", 1, "tagged twice")


def test_nc_with_a_name():
    only_problem("[NC, ava] sea", 1, "[NC]", "together with ava", "write either [NC]")
    only_problem("[ava] [nc] sea", 1, "[NC]", "together with ava")


def test_empty_tags_and_names():
    only_problem("[] sea", 1, "'[]' is an empty tag", "write a name inside, e.g. [ava]")
    only_problem("[  ] sea", 1, "empty tag")
    only_problem("[ava,,ben] sea", 1, "'[ava,,ben]' has an empty name", "[ava, ben]")
    only_problem("[ava,] sea", 1, "empty name", "[ava]")


def test_unbalanced_brackets():
    only_problem("[ava reading", 1, "'[' at column 1 is never closed", "'[ava reading'", "close the tag with ']'")
    only_problem("ava] reading", 1, "']' at column 4 closes no tag", "'ava]'", "open the tag with '['")
    found = problems("[[ava]] x")
    assert len(found) == 2 and "'[' at column 1" in found[0] and "']' at column 7" in found[1]
    only_problem("x | seed=1 [ava]", 1, "'[ava]' stands after the '|'", "move the tag before the first '|'")


def test_a_line_with_only_tags_or_options():
    only_problem("[ava]", 1, "no prompt text", "write what happens in the scene")
    only_problem("[ava][ben] | seed=3", 1, "no prompt text")
    only_problem("| seed=3", 1, "no prompt text")
    only_problem("[ava] , | seed=3", 1, "no prompt text")
    # a description is not prompt text the artist wrote
    only_problem("[ava]", 1, "no prompt text", descriptions={"Ava": "a woman"})


def test_empty_script_says_so_with_an_example():
    only_problem("", 1, "no scene", "e.g. [Ava] reading a newspaper on a bench")
    only_problem("# just a comment\n\n  \n", 1, "no scene", "one scene per line")
    entry = only_problem("", 1, "no scene", cast=[])
    assert "[" not in entry.split("e.g.")[1]  # no tag in the example when there is no cast to tag


def test_bad_cast_names_are_reported():
    found = problems("x", cast=["Ava", "ava", "NC", "a,b", " "])
    assert len(found) == 4 and all(entry.startswith("cast: ") for entry in found)
    assert "differ" in found[0] or "same name" in found[0]


# -- options --------------------------------------------------------------------------------------------


def test_options_and_their_separators():
    scene = one("[ava] x | Seed=7 CANDIDATES = 3 | ip_scale=0.5|layout=full")
    assert (scene.seed, scene.candidates, scene.ip_scale, scene.layout) == (7, 3, 0.5, ("full",))
    assert one("x |").seed is None  # a bar with nothing after it
    assert one(f"x | seed={MAX_SEED}").seed == MAX_SEED
    assert one("x | seed=0 candidates=16 ip_scale=2").ip_scale == 2.0
    assert one("x | ip_scale=0").ip_scale == 0.0
    assert one("x | ip_scale=.25").ip_scale == 0.25
    assert str(one("x | ip_scale=-0").ip_scale) == "0.0"
    assert one("x | seed =7 candidates= 2").candidates == 2  # blanks around '=' are forgiven


def test_blanks_around_equals_never_glue_two_pairs():
    only_problem("x | seed= candidates=4", 1, "'seed=' has no value", "seed=12345")


@pytest.mark.parametrize("value, fragment", [
    ("seed=-1", "0 to 18446744073709551615"),
    (f"seed={MAX_SEED + 1}", "out of range"),
    ("seed=1.5", "whole number"),
    ("seed=abc", "whole number"),
    ("candidates=0", "from 1 to 16"),
    ("candidates=17", "from 1 to 16"),
    ("candidates=two", "whole number"),
    ("ip_scale=2.01", "from 0 to 2"),
    ("ip_scale=-0.1", "from 0 to 2"),
    ("ip_scale=strong", "takes a number"),
    ("ip_scale=1_0", "takes a number"),
])
def test_bad_option_values(value, fragment):
    only_problem(f"x\n[ava] x | {value}", 2, f"'{value}'", fragment, "e.g.")


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", "+inf"])
def test_nan_and_inf_refused(value):
    only_problem(f"[ava] x | ip_scale={value}", 1, "finite", "from 0 to 2")


def test_option_syntax_errors():
    entry = only_problem("x | sed=4", 1, "unknown option 'sed'", "did you mean seed=?",
                         "seed=, candidates=, ip_scale=, layout=")
    entry = only_problem("x | colour=red", 1, "unknown option 'colour'", "seed=, candidates=, ip_scale=, layout=")
    assert "did you mean" not in entry
    only_problem("x | candidate=4", 1, "did you mean candidates=?")
    only_problem("x | seed=1 seed=2", 1, "given twice", "'seed=1'", "'seed=2'", "keep one seed=")
    only_problem("x | SEED=1 | seed=1", 1, "given twice")
    only_problem("x | seed", 1, "no '='", "seed=<value>")
    only_problem("x | lovely", 1, "not a key=value option", "prompt text goes before the first '|'")
    only_problem("x | seed=", 1, "has no value", "seed=12345")
    only_problem("x | =5", 1, "no key", "seed=")


# -- layouts --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("line, layout", [
    ("[ava] x | layout=full", ("full",)),
    ("[ava, ben] x | layout=full", ("full", "full")),
    ("[ava, ben] x | layout=halves", ("left", "right")),
    ("[ava, ben, rex] x | layout=THIRDS", ("left-third", "middle-third", "right-third")),
    ("[ava, ben] x | layout=right,left", ("right", "left")),
    ("[ava, ben] x | layout=full,Right", ("full", "right")),
    ("[ava, ben] x | layout=0-.60,0.4-1.0", ("0-0.6", "0.4-1")),
    ("[ava, ben] x | layout=top,bottom", ("top", "bottom")),
    ("[ava] x | layout=middle-third", ("middle-third",)),
    ("[ava, ben] x | layout=MASK01,mask2", ("mask1", "mask2")),
    ("[ava, ben] x | layout=left,left", ("left", "left")),
])
def test_layouts_are_normalised_to_one_region_per_character(line, layout):
    assert one(line, user_masks=2).layout == layout


@pytest.mark.parametrize("line, fragments", [
    ("x | layout=full", ("nobody on stage", "remove layout=")),
    ("x [NC] | layout=left", ("nobody on stage",)),
    ("[ava] x | layout=halves", ("needs exactly 2", "has 1", "layout=full")),
    ("[ava, ben] x | layout=thirds", ("needs exactly 3", "has 2", "layout=left,right")),
    ("[ava, ben] x | layout=left", ("1 region(s) for 2", "one region per character in tag order",
                                     "layout=left,right")),
    ("[ava] x | layout=left,right", ("2 region(s) for 1",)),
    ("[ava, ben] x | layout=lft,right", ("'lft' is not a region", "did you mean left?", "0-0.6", "maskN")),
    ("[ava, ben] x | layout=0.6-0.2,right", ("0 <= A < B <= 1",)),
    ("[ava, ben] x | layout=0-1.5,right", ("0 <= A < B <= 1",)),
    ("[ava, ben] x | layout=left,,right", ("empty region",)),
    ("[ava, ben] x | layout=halves,left", ("whole layout", "layout=halves alone")),
    ("[ava, ben] x | layout=mask0,right", ("numbered from 1", "mask1")),
])
def test_layout_errors(line, fragments):
    only_problem(line, 1, *fragments)


def test_user_masks_beyond_those_connected():
    only_problem("[ava] x | layout=mask1", 1, "no MASK is connected", "connect the MASK")
    only_problem("[ava, ben] x | layout=mask1,mask3", 1, "MASK 3", "only 2 MASKs are connected", "mask1..mask2",
                 user_masks=2)
    assert one("[ava] x | layout=mask3", user_masks=3).layout == ("mask3",)


def test_a_name_error_does_not_also_report_the_layout_count():
    found = problems("[ava, ava] x | layout=halves")
    assert len(found) == 1 and "tagged twice" in found[0]


# -- every mistake at once ------------------------------------------------------------------------------


def test_every_mistake_of_every_line_is_reported_at_once():
    script = "\n".join([
        "# a story",
        "[ava] reading a newspaper",  # fine
        "[bne] walks | sed=4",  # unknown name + unknown key
        "",
        "[ava, ben, rex, dan] a crowd | candidates=99",  # too many + range
        "[ava] x | ip_scale=inf layout=halves",  # not finite + layout count
        "[NC]",  # no text
    ])
    found = problems(script)
    assert [entry.split(":")[0] for entry in found] == ["line 3"] * 2 + ["line 5"] * 2 + ["line 6"] * 2 + ["line 7"]
    assert "did you mean [Ben]?" in found[0] and "did you mean seed=?" in found[1]
    assert "at most 3" in found[2] and "from 1 to 16" in found[3]
    assert "finite" in found[4] and "needs exactly 2" in found[5] and "no prompt text" in found[6]


def test_argument_checks():
    with pytest.raises(ValueError):
        parse_script("x", CAST, max_on_stage=4)
    with pytest.raises(ValueError):
        parse_script("x", CAST, user_masks=-1)


# -- prompt, seeds, names -------------------------------------------------------------------------------


def test_scene_prompt_joins_the_non_empty_parts():
    scene = one("[ava] reading")
    assert scene_prompt(scene) == "Ava reading"
    assert scene_prompt(scene, "masterpiece, photo", "35mm") == "masterpiece, photo, Ava reading, 35mm"
    assert scene_prompt(scene, "masterpiece, ", "  ") == "masterpiece, Ava reading"


def test_default_seed_is_the_documented_formula():
    scene = one("  [ava]   reading\ta   book  | candidates=2 ip_scale=0.5")
    expected = (5 + zlib.crc32("[ava] reading a book".encode("utf-8"))) % 2**64
    assert scene_seeds(scene, 5) == [expected, expected + 1]
    unicode_scene = one("café [NC] 夜")
    assert scene_seeds(unicode_scene, 0) == [zlib.crc32("café [NC] 夜".encode("utf-8"))]


def test_seeds_do_not_depend_on_position():
    before = parse_script("[ava] a\n[ben] b\nc", CAST)
    after = parse_script("# new\n[rex] new scene\n[ava] a\n\n[ben]   b | ip_scale=1\nc\nd", CAST)
    seeds_before = {s.text: scene_seeds(s, 42) for s in before}
    seeds_after = {s.text: scene_seeds(s, 42) for s in after}
    for text, seeds in seeds_before.items():
        assert seeds_after[text] == seeds
    moved = parse_script("c\n[ben] b\n[ava] a", CAST)
    assert {s.text: scene_seeds(s, 42) for s in moved} == seeds_before
    assert scene_seeds(before[0], 43) != scene_seeds(before[0], 42)  # the story seed re-rolls


def test_seed_option_and_candidate_seeds():
    scene = one("[ava] x | seed=100 candidates=3")
    assert scene_seeds(scene, 12345) == [100, 101, 102]
    wrapped = one(f"[ava] x | seed={MAX_SEED} candidates=2")
    assert scene_seeds(wrapped, 0) == [MAX_SEED, 0]
    # keeping a candidate: its seed as seed=, candidates= removed, gives that image's seed again
    explore = one("[ava] feeding ducks | candidates=4")
    third = scene_seeds(explore, 9)[2]
    kept = one(f"[ava] feeding ducks | seed={third}")
    assert scene_seeds(kept, 9) == [third]
    assert scene_seeds(one("[ava] feeding ducks | candidates=1"), 9) == scene_seeds(explore, 9)[:1]


def test_slug():
    assert slug("Reading a newspaper on a bench") == "reading-a-newspaper-on-a-bench"
    assert slug("Ava's café, at night!") == "avas-cafe-at-night"
    assert slug("  Ünïcödé   Straße ") == "unicode-strae"
    assert slug("夜の街") == "scene" and slug("") == "scene" and slug("!!!") == "scene"
    long = "one two three four five six seven eight nine ten eleven"
    assert slug(long) == "one-two-three-four-five-six-seven-eight"
    assert len(slug(long)) <= 40 and slug(long, 9) == "one-two"
    assert slug("a" * 50, 10) == "a" * 10  # one over-long word is cut inside
    assert slug("abc def", 7) == "abc-def"
    with pytest.raises(ValueError):
        slug("x", 0)


def test_scene_stem():
    scenes = parse_script("# c\n[ava] reading a newspaper on a bench\nx\ny\n[ben] Reading a paper | candidates=3",
                          CAST, descriptions={"Ben": "Ben Tall"})
    assert scene_stem(scenes[0]) == "01-ava-reading-a-newspaper-on-a-bench"
    assert scene_stem(scenes[0], 1) == "01-ava-reading-a-newspaper-on-a-bench"  # one candidate: no suffix
    assert scene_stem(scenes[3]) == "04-ben-tall-reading-a-paper"
    assert scene_stem(scenes[3], 2) == "04-ben-tall-reading-a-paper-2"
    with pytest.raises(ValueError):
        scene_stem(scenes[3], 4)
    with pytest.raises(ValueError):
        scene_stem(scenes[3], 0)
    many = parse_script("\n".join(f"scene {i}" for i in range(1, 101)), [])
    assert scene_stem(many[99]) == "100-scene-100"
    assert scene_stem(one("夜")) == "01-scene"


def test_docs_examples_parse_as_documented():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "story-script.md").read_text(encoding="utf-8")
    first_block = docs.split("```\n", 2)[1]
    scenes = parse_script(first_block, ["Ava", "Ben", "Rex"], {"Ben": "a tall man in a grey coat"})
    assert [s.cast for s in scenes] == [("Ava",), ("Ava", "Ben"), (), ("Ben", "Ava"), ("Ava", "Ben", "Rex")]
    assert scenes[3].text == "a tall man in a grey coat buys flowers; Ava waits outside"
    assert scenes[3].layout == ("0-0.6", "0.5-1") and scenes[3].ip_scale == 0.7


def test_docs_error_examples_are_what_the_parser_says():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "story-script.md").read_text(encoding="utf-8")
    shown = [line for line in docs.split("## Errors", 1)[1].splitlines() if re.match(r"line \d+: ", line)]
    found = problems("x\n[bne] walks\n[ava] x | candidates=17\ny\n[ava, ben, rex, dan] a crowd")
    assert list(found) == shown
