"""Write the pack's subgraph blueprints, `subgraphs/*.json`, with ComfyUI's own editor.

    COMFYUI_PATH=/path/to/ComfyUI python scripts/build_blueprints.py [--screenshot docs/images/blueprint.png]

ComfyUI serves every `custom_nodes/<pack>/subgraphs/*.json` at `/global_subgraphs`, and its editor lists them
in the node library under *Subgraph Blueprints* (the file name is the node's name). The file must be what the
editor itself writes when it publishes a subgraph, so it is not written here by hand: this script starts
ComfyUI (`main.py --cpu`, a temporary base directory holding only this pack, without its `subgraphs/`), opens
the editor in Debian's Chromium through the `playwright` package (no browser download) and, for each
blueprint, does what an artist does:

1. loads the example workflow the blueprint comes from (`scripts/build_workflows.py`: same nodes, file
   names and defaults as `workflows/01-...`/`02-...`) and deletes what stays outside the blueprint;
2. selects the StoryMaker nodes and runs *Convert Selection to Subgraph* (`Comfy.Graph.ConvertToSubgraph`);
3. inside the subgraph, drags each input it needs onto the input node's empty slot and each output onto
   the output node's (in the order an artist reads them), renames those slots, sets the description and
   search aliases (`Comfy.Subgraph.SetDescription` / `SetSearchAliases`) and shows the strength widgets on
   the subgraph node (the editor's widget promotion, `properties.proxyWidgets`);
4. runs *Publish Subgraph* (`Comfy.PublishSubgraph`): the editor saves the blueprint as
   `user/default/subgraphs/<name>.json` through the server's userdata API; that file, re-indented, becomes
   `subgraphs/<name>.json` here.

The ids inside (the subgraph's UUID) are new on every run, as the editor makes them. `--screenshot` then
starts ComfyUI again with the finished pack and saves a picture of the two-character blueprint in use.
tests/comfyui/test_blueprints_in_comfyui.py checks the result in a real server and editor.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "scripts")]

import build_workflows as examples  # noqa: E402
from storymaker.workflow_format import api_to_ui  # noqa: E402

PACK = "ComfyUI-StoryMaker"
FOLDER = REPO / "subgraphs"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
# The nodes a blueprint holds; everything else of its example workflow is deleted before converting.
INSIDE = ("StoryMakerLoader", "StoryMakerInsightFaceLoader", "CLIPVisionLoader", "StoryMakerCharacterFromImage",
          "StoryMakerEncodeCharacters", "StoryMakerApply")
PROMOTED = ("ip_scale", "lora_scale")  # Apply StoryMaker's widgets shown on the blueprint node


@dataclass
class Blueprint:
    name: str  # the file name, which the editor shows as the node's name
    example: callable  # the API-format example workflow it is cut from
    # (node title in the example, its input, the label on the blueprint node), in the node's order
    inputs: list
    titles: dict  # example title -> title inside the blueprint
    description: str
    aliases: list = field(default_factory=list)
    outputs: list = field(default_factory=lambda: [("Apply StoryMaker", "MODEL", "model")])


BLUEPRINTS = [
    Blueprint(
        name="StoryMaker one character",
        example=lambda: examples.one_character(["a scene"]),
        inputs=[("Apply StoryMaker", "model", "model"),
                ("Character 1: ava", "image", "reference"),
                ("Character 1: ava", "mask", "mask"),
                ("Character 1: ava", "name", "name")],
        titles={"Character 1: ava": "Character"},
        description="One StoryMaker character on a MODEL: the reference image and its mask (white character on "
                    "black; optional) become the character, encoded and applied. Loads mask.bin, buffalo_l "
                    "InsightFace and CLIP-ViT-H-14 inside (edit the subgraph to change them).",
        aliases=["storymaker", "consistent character", "character reference", "identity"],
    ),
    Blueprint(
        name="StoryMaker two characters with regions",
        example=examples.two_characters_regions,
        inputs=[("Apply StoryMaker", "model", "model"),
                ("Character 1: ava", "image", "reference 1"),
                ("Character 1: ava", "mask", "mask 1"),
                ("Character 1: ava", "name", "name 1"),
                ("Character 2: ben", "image", "reference 2"),
                ("Character 2: ben", "mask", "mask 2"),
                ("Character 2: ben", "name", "name 2"),
                ("Apply StoryMaker", "mask_1", "region 1"),
                ("Apply StoryMaker", "mask_2", "region 2")],
        titles={"Character 1: ava": "Character 1", "Character 2: ben": "Character 2"},
        description="Two StoryMaker characters on a MODEL, each kept to its region mask (character 1 in region 1; "
                    "say who is where in the prompt too). Each reference's mask is white character on black "
                    "(optional). Loads mask.bin, buffalo_l InsightFace and CLIP-ViT-H-14 inside.",
        aliases=["storymaker", "two characters", "regional", "consistent characters"],
    ),
]

MAKE_BLUEPRINT = """async (b) => {
    const errors = [];
    const run = (id, metadata) => app.extensionManager.command.execute(id, {metadata,
        errorHandler: e => errors.push(`${id}: ${e}`)});
    const graph = app.graph, canvas = app.canvas;
    for (const node of [...graph._nodes]) if (!b.inside.includes(node.type)) graph.remove(node);
    const ids = Object.fromEntries(graph._nodes.map(n => [n.title, n.id]));
    if (Object.keys(ids).length !== graph._nodes.length) throw new Error('two StoryMaker nodes share a title');
    canvas.deselectAll();
    for (const node of graph._nodes) canvas.select(node);
    await run('Comfy.Graph.ConvertToSubgraph');
    const node = [...canvas.selectedItems][0];
    if (!node || !node.subgraph) throw new Error(`no subgraph node after converting: ${errors}`);
    const subgraph = node.subgraph;
    canvas.openSubgraph(subgraph, node);
    const inner = title => {
        if (!(title in ids)) throw new Error(`no node titled ${title} in the example workflow`);
        return subgraph.getNodeById(ids[title]);
    };
    for (const [title, name, label] of b.inputs) {
        const target = inner(title);
        const slot = target.inputs.find(i => i.name === name);
        subgraph.inputNode.emptySlot.connect(slot, target);
        subgraph.renameInput(subgraph.inputs.at(-1), label);
    }
    for (const [title, name, label] of b.outputs) {
        const source = inner(title);
        subgraph.outputNode.emptySlot.connect(source.outputs.find(o => o.name === name), source);
        subgraph.renameOutput(subgraph.outputs.at(-1), label);
    }
    for (const [title, newTitle] of Object.entries(b.titles)) inner(title).title = newTitle;
    await run('Comfy.Subgraph.SetDescription', {description: b.description});
    await run('Comfy.Subgraph.SetSearchAliases', {aliases: b.aliases});
    await run('Comfy.Graph.ExitSubgraph');
    const apply = String(ids['Apply StoryMaker']);
    node.properties.proxyWidgets = [...node.properties.proxyWidgets, ...b.promoted.map(w => [apply, w])];
    node.title = b.name;
    canvas.deselectAll();
    canvas.select(node);
    await run('Comfy.PublishSubgraph', {name: b.name});
    return errors;
}"""


def pack_without_blueprints(base: Path) -> Path:
    """custom_nodes/ComfyUI-StoryMaker in `base`: links to everything of the repository but `subgraphs/`, so the
    editor knows no blueprint of ours yet (publishing over one would ask before overwriting)."""
    pack = base / "custom_nodes" / PACK
    pack.mkdir(parents=True)
    for entry in REPO.iterdir():
        if entry.name not in ("subgraphs", ".git"):
            (pack / entry.name).symlink_to(entry)
    return pack


def open_editor(playwright, url: str, chromium: str, width: int = 1600, height: int = 1000):
    browser = playwright.chromium.launch(executable_path=chromium, args=FLAGS)
    page = browser.new_page(viewport={"width": width, "height": height})
    page.goto(url, timeout=120_000)
    page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph && "
                           "LiteGraph.registered_node_types['StoryMakerApply'] !== undefined", timeout=120_000)
    return browser, page


def build(comfyui: Path, chromium: str, out: Path = FOLDER) -> list:
    """Publish every blueprint in the editor; write them to `out`. Returns the paths written."""
    from playwright.sync_api import sync_playwright

    from support.comfyui import comfyui_server

    written = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        pack_without_blueprints(base)
        with comfyui_server(comfyui, base) as url, sync_playwright() as playwright:
            with urllib.request.urlopen(f"{url}/object_info", timeout=60) as response:
                specs = json.load(response)
            browser, page = open_editor(playwright, url, chromium)
            try:
                for blueprint in BLUEPRINTS:
                    page.evaluate("async (w) => { await window.app.loadGraphData(w, true, true, 'blueprint'); }",
                                  api_to_ui(blueprint.example(), specs))
                    errors = page.evaluate(MAKE_BLUEPRINT, {
                        "name": blueprint.name, "inside": list(INSIDE), "inputs": blueprint.inputs,
                        "outputs": blueprint.outputs, "titles": blueprint.titles, "promoted": list(PROMOTED),
                        "description": blueprint.description, "aliases": blueprint.aliases})
                    if errors:
                        raise RuntimeError(f"the editor failed on {blueprint.name!r}: {errors}")
                    # the editor saves it through the server's userdata API before the command returns
                    published = base / "user" / "default" / "subgraphs" / f"{blueprint.name}.json"
                    if not published.is_file():
                        raise RuntimeError(f"the editor did not save {published.name}:\n"
                                           f"{(base / 'server.log').read_text()[-3000:]}")
                    data = json.loads(published.read_text())
                    out.mkdir(parents=True, exist_ok=True)
                    target = out / f"{blueprint.name}.json"
                    target.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
                    written.append(target)
                    print(f"wrote {target.relative_to(REPO) if target.is_relative_to(REPO) else target}")
            finally:
                browser.close()
    return written


def around(blueprint: Blueprint) -> tuple:
    """(its example workflow without the nodes the blueprint holds, {input label: title of the example node
    that fed that input}): what the blueprint node is wired into, as the test does."""
    example = blueprint.example()
    titled = {node["_meta"]["title"]: node for node in example.values()}
    wiring = {}
    for title, name, label in blueprint.inputs:
        value = titled[title]["inputs"][name]
        if isinstance(value, list):
            wiring[label] = example[value[0]]["_meta"]["title"]
    kept = {k: v for k, v in example.items() if v["class_type"] not in INSIDE}
    for node in kept.values():
        node["inputs"] = {k: v for k, v in node["inputs"].items() if not (isinstance(v, list) and v[0] not in kept)}
    return kept, wiring


WIRE = """({name, wiring}) => {
    const graph = app.graph, byTitle = t => graph._nodes.find(n => n.title === t);
    const node = byTitle(name);
    for (const [label, title] of Object.entries(wiring))
        byTitle(title).connect(0, node, node.inputs.findIndex(i => (i.label ?? i.name) === label));
    for (const sampler of graph._nodes.filter(n => n.type === 'KSampler'))
        node.connect(0, sampler, sampler.inputs.findIndex(i => i.name === 'model'));
    node.size = [Math.max(node.size[0], 330), node.size[1]];  // its whole title
    // left to right by data flow, each column stacked (the blueprint node first in its column)
    const depth = new Map(), columns = [];
    const depthOf = n => {
        if (!depth.has(n.id)) {
            const sources = n.inputs.filter(i => i.link != null)
                .map(i => graph.getNodeById(graph.links[i.link].origin_id));
            depth.set(n.id, sources.length ? 1 + Math.max(...sources.map(depthOf)) : 0);
        }
        return depth.get(n.id);
    };
    for (const n of [node, ...graph._nodes.filter(n => n !== node)]) (columns[depthOf(n)] ??= []).push(n);
    let x = 0;
    for (const column of columns.filter(Boolean)) {
        let y = 0;
        for (const n of column) { n.pos = [x, y]; y += n.size[1] + 70; }
        x += Math.max(...column.map(n => n.size[0])) + 80;
    }
}"""

FIT_VIEW = """() => {
    const canvas = window.app.canvas, nodes = window.app.graph._nodes;
    const margin = 70, top_margin = 120;  // below the Run bar
    const left = Math.min(...nodes.map(n => n.pos[0])), top = Math.min(...nodes.map(n => n.pos[1] - 30));
    const right = Math.max(...nodes.map(n => n.pos[0] + n.size[0]));
    const bottom = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
    const width = canvas.canvas.width / window.devicePixelRatio;
    const height = canvas.canvas.height / window.devicePixelRatio;
    const scale = Math.min((width - 2 * margin) / (right - left), (height - margin - top_margin) / (bottom - top));
    canvas.ds.scale = scale;
    canvas.ds.offset = [margin / scale - left, top_margin / scale - top];
    canvas.deselectAll();
    canvas.setDirty(true, true);
}"""


def add_from_search_box(page, name: str) -> None:
    """Add the blueprint node as an artist does: double-click empty canvas, type in the node search box (it
    finds nothing past 32 characters), pick it. The editor fetches blueprints after it starts: retried."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(20):
        page.evaluate("() => { document.querySelectorAll('.p-dialog-mask').forEach(e => e.remove()); "
                      "app.canvas.ds.offset = [-20000, -20000]; app.canvas.setDirty(true, true); }")
        page.mouse.dblclick(800, 500)
        search = page.locator("input[id^='comfy-vue-node-search-box-input']")
        try:
            search.wait_for(state="visible", timeout=2_000)
            search.press_sequentially(" ".join(name.split()[:3]))  # the box finds nothing past 32 characters
            page.get_by_role("option").filter(has_text=name).first.click(timeout=2_000)
            return
        except PlaywrightTimeout:  # the box did not open, or the blueprints are not fetched yet
            page.keyboard.press("Escape")
            page.wait_for_timeout(500)
    raise RuntimeError(f"the editor's node search box does not offer {name!r}")


def screenshot(comfyui: Path, chromium: str, path: Path, blueprint: Blueprint) -> None:
    """`blueprint` added from the node search box and wired into its example workflow, drawn by the editor."""
    from playwright.sync_api import sync_playwright

    from support.comfyui import comfyui_server

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "custom_nodes").mkdir()
        (base / "custom_nodes" / PACK).symlink_to(REPO)
        with comfyui_server(comfyui, base) as url, sync_playwright() as playwright:
            with urllib.request.urlopen(f"{url}/object_info", timeout=60) as response:
                specs = json.load(response)
            browser, page = open_editor(playwright, url, chromium, 1800, 1300)
            try:
                # draw the nodes' text at any zoom (the editor's level-of-detail setting; this base directory's)
                page.evaluate("() => app.extensionManager.setting.set('LiteGraph.Canvas.MinFontSizeForLOD', 0)")
                workflow, wiring = around(blueprint)
                page.evaluate("async (w) => { await window.app.loadGraphData(w, true, true, 'blueprint'); }",
                              api_to_ui(workflow, specs))
                add_from_search_box(page, blueprint.name)
                page.evaluate(WIRE, {"name": blueprint.name, "wiring": wiring})
                page.evaluate(FIT_VIEW)
                page.wait_for_timeout(1000)
                path.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(path))
            finally:
                browser.close()
    print(f"wrote {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=FOLDER, help="folder to write the blueprints to")
    parser.add_argument("--screenshot", type=Path, help="also save a PNG of the two-character blueprint in use")
    args = parser.parse_args(argv)
    comfyui = os.environ.get("COMFYUI_PATH")
    if not comfyui:
        parser.error("set COMFYUI_PATH to a ComfyUI source tree (with its requirements in this Python)")
    chromium = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        parser.error("no Chromium: `apt install chromium` or set CHROMIUM_PATH")
    build(Path(comfyui), chromium, args.out)
    if args.screenshot:
        screenshot(Path(comfyui), chromium, args.screenshot, BLUEPRINTS[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
