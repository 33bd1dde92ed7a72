"""Every example workflow validates offline, its UI and API files are one graph, and it names its models."""

import copy
import json
import sys
from pathlib import Path

import pytest

from storymaker.story.validate import check_prompt
from storymaker.workflow_format import SEED_CONTROL, UPLOAD_BUTTON, ui_to_api, widget_slots
from support.node_specs import node_specs

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows" / "api").glob("*.api.json"))
LOADER_INPUTS = {"ckpt_name", "storymaker_file", "clip_name", "control_net_name", "lora_name", "sam_file",
                 "unet_name", "character_file"}


@pytest.fixture(scope="module")
def specs():
    return node_specs()


def test_there_is_an_example_per_feature():
    names = {p.name.removesuffix(".api.json") for p in WORKFLOWS}
    for feature in ("one-character-story", "two-characters-regions", "pose-guided", "clothing-swap",
                    "face-only-style-lora", "character-blend", "reuse-saved-character", "automatic-mask-sam"):
        assert any(feature in n for n in names), feature
    assert all((REPO / "workflows" / f"{n}.json").exists() for n in names)  # a UI file for every API file


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_api_workflow_validates_against_node_specs(path, specs):
    api = json.loads(path.read_text())
    assert check_prompt(api, specs) == []
    assert {n["class_type"] for n in api.values()} <= specs.keys()


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_ui_and_api_files_describe_the_same_graph(path, specs):
    api = json.loads(path.read_text())
    ui = json.loads((REPO / "workflows" / path.name.replace(".api.json", ".json")).read_text())
    assert ui_to_api(ui, specs) == api
    assert len(ui["links"]) == sum(isinstance(v, list) for n in api.values() for v in n["inputs"].values())


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_model_files_named_by_workflows_are_in_the_readme_table(path):
    readme = (REPO / "README.md").read_text()
    for node in json.loads(path.read_text()).values():
        for name, value in node["inputs"].items():
            if name in LOADER_INPUTS:
                assert f"`{value}`" in readme, f"{path.name}: {value} is not in the README's model table"


def test_files_are_what_the_generator_writes(specs):
    sys.path.insert(0, str(REPO / "scripts"))
    import build_workflows

    for name, build in build_workflows.WORKFLOWS.items():
        api = build()
        assert json.loads((REPO / "workflows" / "api" / f"{name}.api.json").read_text()) == api, \
            f"{name}: run python scripts/build_workflows.py"
        ui = json.loads((REPO / "workflows" / f"{name}.json").read_text())
        assert ui == json.loads(json.dumps(build_workflows.ui_workflow(name, api, specs)))
        note = next(n for n in ui["nodes"] if n["type"] == "MarkdownNote")["widgets_values"][0]
        for node in api.values():  # the note names every file the workflow reads
            for value in node["inputs"].values():
                if isinstance(value, str) and value.endswith((".safetensors", ".bin", ".pth", ".png")):
                    assert f"{value}`" in note, (name, value)


def test_validator_reports_broken_workflows(specs):
    api = json.loads((REPO / "workflows" / "api" / "02-two-characters-regions.api.json").read_text())
    broken = copy.deepcopy(api)
    apply_id = next(k for k, n in broken.items() if n["class_type"] == "StoryMakerApply")
    sampler_id = next(k for k, n in broken.items() if n["class_type"] == "KSampler")
    del broken[apply_id]["inputs"]["embeds"]
    broken[apply_id]["inputs"]["ip_scale"] = 5.0
    broken[sampler_id]["inputs"]["model"] = [apply_id, 3]
    broken[sampler_id]["inputs"]["positive"] = [apply_id, 0]
    broken["99"] = {"class_type": "IPAdapterAdvanced", "inputs": {}}
    problems = "\n".join(check_prompt(broken, specs))
    assert "required input 'embeds' is missing" in problems
    assert "input 'ip_scale' is 5.0, above the maximum 2.0" in problems
    assert "links to output 3 of" in problems
    assert "input 'positive' expects CONDITIONING but is linked to" in problems and "(MODEL)" in problems
    assert "node type 'IPAdapterAdvanced' is not installed" in problems


def test_widget_order_is_the_editors(specs):
    """The editor adds a seed's control widget right after the seed and an image picker's upload button after
    every other widget (read off ComfyUI's editor by tests/comfyui/test_workflows_in_editor.py)."""
    assert widget_slots(specs["LoadImageMask"]) == ["image", "channel", UPLOAD_BUTTON]
    assert widget_slots(specs["LoadImage"]) == ["image", UPLOAD_BUTTON]
    assert widget_slots(specs["KSampler"])[:3] == ["seed", SEED_CONTROL, "steps"]
    spec = {"input": {"required": {"video": [["a.mp4"], {"video_upload": True}], "seed": ["INT", {"control_after_generate": False}]},
                      "optional": {"frames": ["INT", {}], "noise_seed": ["INT", {}]}}}
    assert widget_slots(spec) == ["video", "seed", UPLOAD_BUTTON, "frames", "noise_seed", SEED_CONTROL]


def test_a_mask_node_saved_by_the_editor_keeps_its_channel(specs):
    saved = {"nodes": [{"id": 3, "type": "LoadImageMask", "inputs": [], "outputs": [],
                        "widgets_values": ["hero_mask.png", "alpha", "image"]}], "links": []}
    assert ui_to_api(saved, specs)["3"]["inputs"] == {"image": "hero_mask.png", "channel": "alpha"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_ui_layout_flows_left_to_right_without_overlaps(path):
    """What an artist sees on opening the file: every link runs rightwards, no node covers another."""
    from storymaker.workflow_layout import TITLE_HEIGHT

    ui = json.loads((REPO / "workflows" / path.name.replace(".api.json", ".json")).read_text())
    nodes = {n["id"]: n for n in ui["nodes"]}
    for _, source, _, target, _, _ in ui["links"]:
        assert nodes[source]["pos"][0] + nodes[source]["size"][0] < nodes[target]["pos"][0], (source, target)
    boxes = [(n["pos"][0], n["pos"][1] - TITLE_HEIGHT, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in ui["nodes"]]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)


def test_layout_pulls_a_node_right_to_its_first_consumer():
    from storymaker.workflow_layout import columns

    link = lambda node: [node, 0]  # noqa: E731
    api = {"1": {"inputs": {}}, "2": {"inputs": {"a": link("1")}}, "3": {"inputs": {"a": link("2")}},
           "4": {"inputs": {}}, "5": {"inputs": {"a": link("3"), "b": link("4"), "c": link("1")}}}
    assert columns(api) == {"1": 0, "2": 1, "3": 2, "4": 2, "5": 3}
    api["1"]["inputs"]["loop"] = link("5")
    with pytest.raises(ValueError, match="cycle"):
        columns(api)


def test_a_workflow_saved_with_the_classic_nodes_reads_the_same_with_the_v3_specs(specs):
    """tests/fixtures/classic_nodes/: saved by ComfyUI's editor when the nine nodes were classic ones. Read with
    today's (V3) specs, its widgets give the prompt the classic nodes queued, and that prompt validates
    (tests/comfyui/test_workflows_in_editor.py opens it in the real editor)."""
    folder = REPO / "tests" / "fixtures" / "classic_nodes"
    ui = json.loads((folder / "classic-nodes-workflow.json").read_text())
    api = json.loads((folder / "classic-nodes-workflow.api.json").read_text())
    graph = lambda prompt: {k: (n["class_type"], n["inputs"]) for k, n in prompt.items()}  # noqa: E731
    assert graph(ui_to_api(ui, specs)) == graph(api)
    assert check_prompt(api, specs) == []
