"""The pack's subgraph blueprints (`subgraphs/*.json`) in a real ComfyUI server and its real editor.

ComfyUI lists a pack's `subgraphs/*.json` at `/global_subgraphs` and its editor offers them as nodes under
*Subgraph Blueprints*. Here a `main.py` server with the pack linked in as `custom_nodes/ComfyUI-StoryMaker`
* lists both blueprints for that pack and serves their data, and
* in headless Chromium each blueprint is added the way an artist adds it (the node search box: double-click
  the canvas, type, pick it), wired into its example workflow (`workflows/api/01-...`/`02-...`) in
  place of the StoryMaker nodes it holds, and `app.graphToPrompt()` must give that example's prompt again:
  the same nodes, defaults and links (node ids and inner titles aside), valid against the server's
  `/object_info` (model and image file names aside: the test server has none).

Needs COMFYUI_PATH, ComfyUI's requirements (its frontend package), the `playwright` Python package and a
Chromium (`apt install chromium`, or CHROMIUM_PATH); skipped, saying which is missing, otherwise.
`python scripts/build_blueprints.py` writes the blueprints (with the editor's own *Publish Subgraph*).
"""

import copy
import json
import os
import shutil
import urllib.request
from collections import Counter

import pytest

from support.comfyui import REPO, comfyui_server
from storymaker.story.validate import FILE_FOLDERS, check_prompt
from storymaker.workflow_format import api_to_ui

pytestmark = pytest.mark.comfyui

PACK = "ComfyUI-StoryMaker"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]
INSIDE = {"StoryMakerLoader", "StoryMakerInsightFaceLoader", "CLIPVisionLoader", "StoryMakerCharacterFromImage",
          "StoryMakerEncodeCharacters", "StoryMakerApply"}

# blueprint -> (its example workflow, {input label on the blueprint node: title of the example node feeding it
# (None: a widget on the node)}, in the node's order)
BLUEPRINTS = {
    "StoryMaker one character": ("01-one-character-story", {
        "model": "Load Checkpoint", "reference": "character:1", "mask": "mask:1", "name": None}),
    "StoryMaker two characters with regions": ("02-two-characters-regions", {
        "model": "Load Checkpoint", "reference 1": "character:1", "mask 1": "mask:1", "name 1": None,
        "reference 2": "character:2", "mask 2": "mask:2", "name 2": None,
        "region 1": "region 1 (left)", "region 2": "region 2 (right)"}),
}

WIRE_AND_QUEUE = """async ({name, wiring}) => {
    const graph = app.graph;
    const placed = graph._nodes.filter(n => n.title === name);
    if (placed.length !== 1) throw new Error(`${placed.length} nodes titled ${name} after placing it`);
    const node = placed[0];
    const byTitle = t => graph._nodes.find(n => n.title === t);
    const node_info = {type: node.type, isSubgraph: !!node.subgraph,
                       inputs: node.inputs.map(i => i.label ?? i.name),
                       outputs: node.outputs.map(o => o.label ?? o.name),
                       widgets: node.widgets.map(w => w.label ?? w.name)};
    for (const [label, title] of Object.entries(wiring).filter(([, title]) => title)) {
        const slot = node.inputs.findIndex(i => (i.label ?? i.name) === label);
        if (slot < 0) throw new Error(`no input labelled ${label}`);
        byTitle(title).connect(0, node, slot);
    }
    for (const sampler of graph._nodes.filter(n => n.type === 'KSampler'))
        node.connect(0, sampler, sampler.inputs.findIndex(i => i.name === 'model'));
    const prompt = (await app.graphToPrompt()).output;
    // an artist's edits on the blueprint node: the character's name and the promoted strength
    const widget = label => node.widgets.find(w => (w.label ?? w.name) === label);
    widget(node_info.widgets.find(w => w.startsWith('name'))).value = 'zoe';
    widget('ip_scale').value = 0.5;
    const edited = (await app.graphToPrompt()).output;
    return {node: node_info, prompt, edited};
}"""


def _chromium_or_skip() -> str:
    path = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("no Chromium: `apt install chromium` or set CHROMIUM_PATH to run the editor tests")
    return path


def _add_from_search_box(page, name: str, screenshot, timeout_error: type) -> None:
    """Add a node as an artist does: double-click empty canvas, type in the search box, pick it. The editor
    fetches the blueprints after it starts, so an empty search is tried again for a while."""
    for _ in range(20):
        # a fresh editor opens its Templates dialog; and the graph moves out of the way of the double-click
        page.evaluate("() => { document.querySelectorAll('.p-dialog-mask').forEach(e => e.remove()); "
                      "app.canvas.ds.offset = [-20000, -20000]; app.canvas.setDirty(true, true); }")
        page.mouse.dblclick(800, 500)
        search = page.locator("input[id^='comfy-vue-node-search-box-input']")
        try:
            search.wait_for(state="visible", timeout=2_000)
            search.press_sequentially(" ".join(name.split()[:3]))  # the box finds nothing past 32 characters
            page.get_by_role("option").filter(has_text=name).first.click(timeout=2_000)
            return
        except timeout_error:  # the box did not open, or the blueprints are not fetched yet
            page.keyboard.press("Escape")
            page.wait_for_timeout(500)
    page.screenshot(path=str(screenshot))
    pytest.fail(f"the editor's node search box does not offer {name!r} (screenshot: {screenshot})")


def _example(name: str) -> dict:
    return json.loads((REPO / "workflows" / "api" / f"{name}.api.json").read_text())


def _around_blueprint(example: dict) -> dict:
    """The example without the nodes the blueprint holds (their links cut): what the blueprint is wired into."""
    kept = {k: copy.deepcopy(v) for k, v in example.items() if v["class_type"] not in INSIDE}
    for node in kept.values():
        node["inputs"] = {name: value for name, value in node["inputs"].items()
                          if not (isinstance(value, list) and value[0] not in kept)}
    return kept


def _get(url: str):
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def comfyui(tmp_path_factory):
    """What the server lists and serves, /object_info, and for each blueprint what the editor made of it."""
    from support.comfyui import comfyui_path_or_skip

    comfyui_path = comfyui_path_or_skip()
    sync_api = pytest.importorskip("playwright.sync_api", reason="`pip install playwright` to run the editor tests")
    chromium = _chromium_or_skip()
    base = tmp_path_factory.mktemp("comfy-blueprints")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK).symlink_to(REPO)
    result = {"page_errors": [], "editor": {}}
    with comfyui_server(comfyui_path, base) as url, sync_api.sync_playwright() as playwright:
        result["listed"] = _get(f"{url}/global_subgraphs")
        result["served"] = {entry["name"]: _get(f"{url}/global_subgraphs/{entry_id}")
                            for entry_id, entry in result["listed"].items()}
        result["specs"] = specs = _get(f"{url}/object_info")
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.on("pageerror", lambda error: result["page_errors"].append(str(error)))
            page.goto(url, timeout=120_000)
            page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph && "
                                   "LiteGraph.registered_node_types['StoryMakerApply'] !== undefined", timeout=120_000)
            for name, (example, wiring) in BLUEPRINTS.items():
                if name not in result["served"]:
                    continue
                page.evaluate("async (w) => { await window.app.loadGraphData(w, true, true, 'blueprint-test'); }",
                              api_to_ui(_around_blueprint(_example(example)), specs))
                _add_from_search_box(page, name, base / f"search-{name}.png", sync_api.TimeoutError)
                page.wait_for_function("(name) => app.graph._nodes.some(n => n.title === name)", arg=name,
                                       timeout=10_000)
                result["editor"][name] = page.evaluate(WIRE_AND_QUEUE, {"name": name, "wiring": wiring})
        finally:
            browser.close()
    return result


def _signatures(prompt: dict) -> Counter:
    """Each node as (class, its values, the signatures of what feeds it): equal for two prompts that are the
    same graph whatever their node ids and titles."""
    memo = {}

    def signature(node_id):
        if node_id not in memo:
            node = prompt[node_id]
            inputs = []
            for name, value in sorted(node["inputs"].items()):
                if isinstance(value, list) and len(value) == 2 and str(value[0]) in prompt:
                    inputs.append((name, signature(str(value[0])), value[1]))
                else:
                    plain = json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value
                    inputs.append((name, plain))  # 1 and 1.0 alike: the editor writes whole floats as ints
            memo[node_id] = (node["class_type"], tuple(inputs))
        return memo[node_id]

    return Counter(signature(node_id) for node_id in prompt)


def _with_the_files(specs: dict, prompt: dict) -> dict:
    """/object_info as if the server had the model and image files the prompt names (the test server has none)."""
    specs = copy.deepcopy(specs)
    for node in prompt.values():
        for name, value in node["inputs"].items():
            if (node["class_type"], name) in FILE_FOLDERS and isinstance(value, str):
                section = specs[node["class_type"]]["input"]
                entry = section.get("required", {}).get(name) or section["optional"][name]
                choices = entry[0] if isinstance(entry[0], list) else entry[1].setdefault("options", [])
                choices.append(value)
    return specs


def test_the_server_lists_both_blueprints_for_the_pack(comfyui):
    ours = {entry["name"]: entry for entry in comfyui["listed"].values()
            if entry["info"]["node_pack"] == f"custom_nodes.{PACK}"}
    assert sorted(ours) == sorted(BLUEPRINTS)
    assert all(entry["source"] == "custom_node" for entry in ours.values())


@pytest.mark.parametrize("name", BLUEPRINTS)
def test_the_server_serves_the_blueprint_file(comfyui, name):
    served = comfyui["served"][name]
    assert served["info"]["node_pack"] == f"custom_nodes.{PACK}"
    data = json.loads(served["data"])
    assert data == json.loads((REPO / "subgraphs" / f"{name}.json").read_text())
    # what the editor's Publish Subgraph writes: one subgraph node, its subgraph among the definitions
    assert len(data["nodes"]) == 1 and data["links"] == []
    (definition,) = data["definitions"]["subgraphs"]
    assert data["nodes"][0]["type"] == definition["id"]
    assert {node["type"] for node in definition["nodes"]} == INSIDE
    assert data["extra"]["BlueprintDescription"]


@pytest.mark.parametrize("name", BLUEPRINTS)
def test_the_placed_blueprint_has_the_named_inputs_and_outputs(comfyui, name):
    node = comfyui["editor"][name]["node"]
    assert node["isSubgraph"]
    wiring = BLUEPRINTS[name][1]
    assert node["inputs"] == list(wiring)
    assert node["outputs"] == ["model"]
    # the names typed on the node, and Apply StoryMaker's strengths shown on it
    assert node["widgets"] == [label for label, source in wiring.items() if source is None] + ["ip_scale", "lora_scale"]


@pytest.mark.parametrize("name", BLUEPRINTS)
def test_the_blueprint_queues_its_example_workflow(comfyui, name):
    """The blueprint in place of its StoryMaker nodes gives the example's prompt: nodes, defaults, links."""
    prompt = comfyui["editor"][name]["prompt"]
    example = _example(BLUEPRINTS[name][0])
    assert _signatures(prompt) == _signatures(example)
    assert not comfyui["page_errors"], comfyui["page_errors"]


@pytest.mark.parametrize("name", BLUEPRINTS)
def test_the_prompt_is_valid_against_the_server(comfyui, name):
    for prompt in (comfyui["editor"][name]["prompt"], comfyui["editor"][name]["edited"]):
        assert {node["class_type"] for node in prompt.values()} <= set(comfyui["specs"])
        assert check_prompt(prompt, _with_the_files(comfyui["specs"], prompt)) == []


@pytest.mark.parametrize("name", BLUEPRINTS)
def test_the_name_and_strength_set_on_the_blueprint_node_reach_the_prompt(comfyui, name):
    edited = comfyui["editor"][name]["edited"]
    (apply,) = [n for n in edited.values() if n["class_type"] == "StoryMakerApply"]
    assert apply["inputs"]["ip_scale"] == 0.5
    names = sorted(n["inputs"]["name"] for n in edited.values() if n["class_type"] == "StoryMakerCharacterFromImage")
    assert "zoe" in names
