"""``/object_info`` validation and the plain-word rendering of ComfyUI's HTTP 400 node_errors."""

from __future__ import annotations

import copy

import pytest
from story_support import WORKFLOW
from story_fake_comfy import catalog

from storymaker.story.errors import PromptRejected, ValidationFailed, format_rejection
from storymaker.story.validate import check_prompt, combo_choices, validate_prompts

INFO = catalog(["alice.png"])


def prompt(**changes) -> dict:
    p = copy.deepcopy(WORKFLOW)
    p["2"]["inputs"]["image"] = "alice.png"
    for path, value in changes.items():
        node, name = path.split("__")
        if value is None:
            del p[node]["inputs"][name]
        else:
            p[node]["inputs"][name] = value
    return p


def test_a_good_prompt_has_no_problems():
    assert check_prompt(prompt(), INFO) == []


def test_combo_in_both_formats():
    assert combo_choices([["a", "b"], {}]) == ["a", "b"]
    assert combo_choices(["COMBO", {"options": ["x"]}]) == ["x"]
    assert combo_choices(["INT", {}]) is None
    problems = check_prompt(prompt(**{"7__sampler_name": "eulr", "7__scheduler": "karas"}), INFO)
    assert problems == [
        "node 7 (KSampler): input 'sampler_name' is 'eulr', not offered by this server; choices: 'euler', "
        "'euler_ancestral', 'dpmpp_2m'; did you mean 'euler'?",
        "node 7 (KSampler): input 'scheduler' is 'karas', not offered by this server; choices: 'normal', "
        "'karras'; did you mean 'karras'?"]


@pytest.mark.parametrize("change, expected", [
    ({"7__steps": 0}, "node 7 (KSampler): input 'steps' is 0, below the minimum 1"),
    ({"7__cfg": 150.0}, "node 7 (KSampler): input 'cfg' is 150.0, above the maximum 100.0"),
    ({"7__seed": 1.5}, "node 7 (KSampler): input 'seed' expects a whole number; got 1.5"),
    ({"7__seed": True}, "node 7 (KSampler): input 'seed' expects a whole number; got True"),
    ({"7__cfg": "7"}, "node 7 (KSampler): input 'cfg' expects a number; got '7'"),
    ({"4__text": 3}, "node 4 (CLIPTextEncode \"CLIP Text Encode (Prompt)\"): input 'text' expects text; got 3"),
    ({"7__denoise": None}, "node 7 (KSampler): required input 'denoise' is missing"),
    ({"7__model": "a model"},
     "node 7 (KSampler): input 'model' expects a link from a MODEL output, not the value 'a model'"),
    ({"7__positive": ["1", 0]}, "node 7 (KSampler): input 'positive' expects CONDITIONING but is linked to "
                                "node 1 (CheckpointLoaderSimple \"Load Checkpoint\") output 0 (MODEL)"),
    ({"7__positive": ["4", 3]}, "node 7 (KSampler): input 'positive' links to output 3 of node 4"),
    ({"2__image": "bob.png"}, "node 2 (LoadImage \"character:1\"): input 'image' is 'bob.png', not offered"),
])
def test_value_problems_are_named_by_node_and_input(change, expected):
    problems = check_prompt(prompt(**change), INFO)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_unknown_node_type_and_missing_output_node():
    p = prompt()
    p["3"]["class_type"] = "StoryMakerApply"
    del p["9"]
    problems = check_prompt(p, INFO)
    assert problems[0] == ("node 3 (StoryMakerApply \"StoryMaker\"): node type 'StoryMakerApply' is not installed "
                           "on this server (install the custom node pack that provides it, or update ComfyUI)")
    assert problems[-1].startswith("the workflow has no output node (such as SaveImage)")


def test_empty_choice_list_hints_at_missing_models():
    info = copy.deepcopy(INFO)
    info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"] = [[], {}]
    (problem,) = check_prompt(prompt(), info)
    assert "the server offers no choices for it -> put 'sdxl-test.safetensors' in ComfyUI/models/checkpoints/" in problem
    info["OtherPackLoader"] = info.pop("CheckpointLoaderSimple")  # a loader whose folder we do not know
    p = prompt()
    p["1"]["class_type"] = "OtherPackLoader"
    (problem,) = check_prompt(p, info)
    assert "the server offers no choices for it (is the model/file installed in the right models/ folder?)" in problem


def test_validate_prompts_groups_scenes_and_names_the_server():
    with pytest.raises(ValidationFailed) as info:
        validate_prompts([(f"0{i}-s", prompt(**{"7__steps": 0})) for i in range(1, 6)]
                         + [("06-t", prompt(**{"7__cfg": -1}))], INFO, "http://gpu:8188")
    message = str(info.value)
    assert message.startswith("the workflow does not fit the server http://gpu:8188: 2 problems:")
    assert "scenes 01-s, 02-s, 03-s and 2 more: node 7 (KSampler): input 'steps' is 0" in message
    assert "scene 06-t: node 7 (KSampler): input 'cfg' is -1" in message


def test_node_errors_in_plain_words():
    body = {
        "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                  "details": "", "extra_info": {}},
        "node_errors": {
            "7": {"errors": [{"type": "value_not_in_list", "message": "Value not in list",
                              "details": "sampler_name: 'eulr' not in ['euler']",
                              "extra_info": {"input_name": "sampler_name"}},
                             {"type": "required_input_missing", "message": "Required input is missing",
                              "details": "model", "extra_info": {"input_name": "model"}}],
                  "dependent_outputs": ["9"], "class_type": "KSampler"},
            "12": {"errors": [{"type": "exception_during_validation", "message": "Exception when validating node",
                               "details": "bad", "extra_info": {}}], "class_type": "StoryMakerApply"}}}
    text = format_rejection(body, prompt(), "ComfyUI rejected scene 01-a")
    assert text.splitlines() == [
        "ComfyUI rejected scene 01-a: Prompt outputs failed validation",
        "  - node 7 (KSampler): Value not in list: sampler_name: 'eulr' not in ['euler']",
        "  - node 7 (KSampler): input 'model' is required but missing",
        "  - node 12 (StoryMakerApply): Exception when validating node: bad"]
    missing = {"error": {"type": "missing_node_type", "message": "Node 'X' not found", "details": "", "extra_info": {}},
               "node_errors": {}}
    assert "install the custom node pack" in str(PromptRejected("http://h", missing))
    assert "not json" in str(PromptRejected("http://h", "not json"))


def test_a_missing_model_file_names_comfyuis_folder_for_it():
    problems = check_prompt(prompt(**{"1__ckpt_name": "sd_xl_base_1.0.safetensors"}), INFO)
    assert len(problems) == 1 and problems[0].startswith(
        "node 1 (CheckpointLoaderSimple \"Load Checkpoint\"): input 'ckpt_name' is 'sd_xl_base_1.0.safetensors', "
        "not offered by this server"), problems
    assert problems[0].endswith("-> put 'sd_xl_base_1.0.safetensors' in ComfyUI/models/checkpoints/ (the README's "
                                "\"Models: which file goes where\" says where to download it), then run again")
    image = check_prompt(prompt(**{"2__image": "bob.png"}), INFO)[0]
    assert "put 'bob.png' in ComfyUI/input/, or give that node an image in the story file" in image
    sampler = check_prompt(prompt(**{"7__sampler_name": "eulr"}), INFO)[0]
    assert "-> put" not in sampler  # not a file
