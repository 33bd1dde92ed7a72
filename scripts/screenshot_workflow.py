"""Screenshot a workflow as ComfyUI's own editor draws it (for the docs).

    COMFYUI_PATH=/path/to/ComfyUI python scripts/screenshot_workflow.py workflows/10-story-in-one-node.json \
        docs/images/story-in-one-node.png [--storyboard PAGE.png]

Starts ComfyUI (`main.py --cpu`, a temporary base directory holding only this pack), opens the editor in
Debian's Chromium through the `playwright` package (no browser download), loads the workflow, fits it to
the window and saves a PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]

FIT_VIEW = """() => {
    const canvas = window.app.canvas, nodes = window.app.graph._nodes, margin = 70;
    const left = Math.min(...nodes.map(n => n.pos[0])), top = Math.min(...nodes.map(n => n.pos[1] - 30));
    const right = Math.max(...nodes.map(n => n.pos[0] + n.size[0])), bottom = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
    const width = canvas.canvas.width / window.devicePixelRatio, height = canvas.canvas.height / window.devicePixelRatio;
    const scale = Math.min((width - 2 * margin) / (right - left), (height - 2 * margin) / (bottom - top));
    canvas.ds.scale = scale;
    canvas.ds.offset = [margin / scale - left, margin / scale - top];
    canvas.setDirty(true, true);
}"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflow", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--width", type=int, default=2200)
    parser.add_argument("--height", type=int, default=1300)
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    from support.comfyui import comfyui_server

    comfyui = Path(os.environ["COMFYUI_PATH"])
    chromium = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "custom_nodes").mkdir()
        (base / "custom_nodes" / "ComfyUI-StoryMaker").symlink_to(REPO)
        with comfyui_server(comfyui, base) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=FLAGS)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(url, timeout=120_000)
            page.wait_for_function("() => window.app && window.app.graph && LiteGraph.registered_node_types"
                                   "['StoryMakerStory'] !== undefined", timeout=120_000)
            page.evaluate("async (w) => { await window.app.loadGraphData(w, true, true, 'docs'); }",
                          json.loads(args.workflow.read_text()))
            page.wait_for_timeout(3000)
            # a fresh editor opens its Templates dialog: remove it (and any other dialog) from the page
            page.evaluate("() => document.querySelectorAll('.p-dialog-mask').forEach(e => e.remove())")
            page.evaluate(FIT_VIEW)
            page.wait_for_timeout(1000)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
            browser.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
