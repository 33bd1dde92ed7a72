"""Every UI-format workflow opened in ComfyUI's real editor (the frontend a `main.py` server serves).

Artists open `workflows/*.json` in the editor; a widget value in the wrong slot (the editor puts an image
picker's upload button after *all* other widgets, not after the picker) silently changes a setting. Here
headless Chromium loads each file and the editor itself
* turns it into the prompt it would queue: it must equal its twin in `workflows/api/`, and
* saves it again: our `ui_to_api` must read that save back to the same prompt (it is how the generator's
  UI files are checked offline, so it must read the editor's files as the editor does).

And a workflow saved by this editor when the pack's nodes were classic (INPUT_TYPES) ones, all nine of them
(tests/fixtures/classic_nodes/): opened with today's V3 nodes it must queue exactly the prompt the classic nodes
queued, every widget value in its place.

Needs COMFYUI_PATH, ComfyUI's requirements (its frontend package), the `playwright` Python package and a
Chromium (`apt install chromium`, or CHROMIUM_PATH); skipped, saying which is missing, otherwise.
"""

import json
import os
import shutil
import urllib.request

import pytest

from support.comfyui import REPO, comfyui_server
from storymaker.workflow_format import ui_to_api

pytestmark = pytest.mark.comfyui

WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
CLASSIC = REPO / "tests" / "fixtures" / "classic_nodes" / "classic-nodes-workflow.json"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]

LOAD_AND_SERIALIZE = """async (workflow) => {
    await window.app.loadGraphData(workflow, true, true, 'under-test');
    const missing = window.app.graph._nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type);
    const prompt = await window.app.graphToPrompt();
    return {missing, prompt: prompt.output, saved: window.app.graph.serialize()};
}"""


def _chromium_or_skip() -> str:
    path = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("no Chromium: `apt install chromium` or set CHROMIUM_PATH to run the editor tests")
    return path


def _api_twin(workflow):
    return workflow.parent / "api" / workflow.with_suffix(".api.json").name


def _graph(prompt: dict) -> dict:
    return {node_id: (node["class_type"], node["inputs"]) for node_id, node in prompt.items()}


@pytest.fixture(scope="module")
def editor(tmp_path_factory):
    """({workflow file name: what the editor made of it}, page errors, the server's /object_info); all files
    are loaded one after another in one browser page."""
    from support.comfyui import comfyui_path_or_skip

    comfyui = comfyui_path_or_skip()
    sync_api = pytest.importorskip("playwright.sync_api", reason="`pip install playwright` to run the editor tests")
    chromium = _chromium_or_skip()
    base = tmp_path_factory.mktemp("comfy-editor")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "ComfyUI-StoryMaker").symlink_to(REPO)
    results, page_errors = {}, []
    with comfyui_server(comfyui, base) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.goto(url, timeout=120_000)
            page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
            page.wait_for_function("() => LiteGraph.registered_node_types['StoryMakerApply'] !== undefined",
                                   timeout=60_000)
            for path in [*WORKFLOWS, CLASSIC]:
                results[path.name] = page.evaluate(LOAD_AND_SERIALIZE, json.loads(path.read_text()))
        finally:
            browser.close()
        with urllib.request.urlopen(f"{url}/object_info", timeout=30) as response:
            specs = json.load(response)
        with urllib.request.urlopen(f"{url}/workflow_templates", timeout=30) as response:
            results["/workflow_templates"] = json.load(response)
    return results, page_errors, specs


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_editor_queues_exactly_the_api_twin(editor, workflow):
    results, page_errors, _ = editor
    result = results[workflow.name]
    assert not result["missing"], f"the editor does not know {result['missing']}"
    api = json.loads(_api_twin(workflow).read_text())
    assert _graph(result["prompt"]) == _graph(api)
    assert not page_errors, page_errors


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_what_the_editor_saves_reads_back_to_the_same_prompt(editor, workflow):
    results, _, specs = editor
    saved = results[workflow.name]["saved"]
    api = json.loads(_api_twin(workflow).read_text())
    assert _graph(ui_to_api(saved, specs)) == _graph(api)


def test_templates_browser_lists_the_ui_workflows_only(editor):
    """The editor opens a pack's templates as UI workflows: API files listed there would fail to open."""
    listed = editor[0]["/workflow_templates"]["ComfyUI-StoryMaker"]
    assert sorted(listed) == sorted(p.stem for p in WORKFLOWS)


def test_a_workflow_saved_with_the_classic_nodes_queues_the_same_prompt(editor):
    """Saved (UI format) by ComfyUI's editor when the nine nodes were classic ones; the V3 nodes must give the
    same widgets in the same order: the editor queues exactly the prompt it queued then, titles included."""
    results, page_errors, _ = editor
    result = results[CLASSIC.name]
    assert not result["missing"], f"the editor does not know {result['missing']}"
    classic_prompt = json.loads(CLASSIC.with_name("classic-nodes-workflow.api.json").read_text())
    assert result["prompt"] == classic_prompt
    ours = {n["id"]: n["widgets_values"] for n in json.loads(CLASSIC.read_text())["nodes"]
            if n["type"].startswith("StoryMaker")}
    assert {n["id"]: n["widgets_values"] for n in result["saved"]["nodes"] if n["id"] in ours} == ours
    assert {node["class_type"] for node in classic_prompt.values() if node["class_type"].startswith("StoryMaker")} \
        == {"StoryMakerLoader", "StoryMakerInsightFaceLoader", "StoryMakerSAMLoader", "StoryMakerCharacterFromImage",
            "StoryMakerBlendCharacters", "StoryMakerSaveCharacter", "StoryMakerLoadCharacter",
            "StoryMakerEncodeCharacters", "StoryMakerApply"}
    assert not page_errors, page_errors
