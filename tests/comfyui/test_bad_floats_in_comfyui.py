"""NaN, infinity and out-of-range FLOAT inputs queued through ComfyUI's HTTP API: refused at validation with
the input's name, before anything runs (the JSON literal NaN passes ComfyUI's own min/max check)."""

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from support.comfyui import REPO

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    from support.comfyui import comfyui_path_or_skip, comfyui_server

    comfyui = comfyui_path_or_skip()
    base = tmp_path_factory.mktemp("comfy-floats")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "ComfyUI-StoryMaker").symlink_to(REPO)
    with comfyui_server(Path(comfyui), base) as server_url:
        yield server_url


def queue(url: str, prompt: dict) -> dict:
    body = json.dumps({"prompt": prompt}).encode()  # json.dumps writes NaN / Infinity literals, as a client may
    request = urllib.request.Request(f"{url}/prompt", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return {"status": response.status, **json.load(response)}
    except urllib.error.HTTPError as error:
        return {"status": error.code, **json.load(error)}


def workflow(name: str) -> dict:
    return json.loads((REPO / "workflows" / "api" / f"{name}.api.json").read_text())


CASES = [("01-one-character-story", "StoryMakerApply", "ip_scale", float("nan")),
         ("01-one-character-story", "StoryMakerApply", "start_at", float("nan")),
         ("01-one-character-story", "StoryMakerApply", "lora_scale", float("inf")),
         ("01-one-character-story", "StoryMakerApply", "end_at", 7.0),
         ("06-character-blend", "StoryMakerBlendCharacters", "weight", float("-inf")),
         ("10-story-in-one-node", "StoryMakerStory", "ip_scale", float("nan")),
         ("10-story-in-one-node", "StoryMakerStory", "cfg", float("inf")),
         ("10-story-in-one-node", "StoryMakerConsistencyScores", "face_threshold", float("nan"))]


@pytest.mark.parametrize("name, class_type, input_name, value", CASES, ids=lambda v: str(v))
def test_a_bad_float_is_refused_naming_its_input(url, name, class_type, input_name, value):
    prompt = workflow(name)
    node_id = next(k for k, v in prompt.items() if v["class_type"] == class_type)
    prompt[node_id]["inputs"][input_name] = value
    answer = queue(url, prompt)
    assert answer["status"] == 400
    errors = answer["node_errors"][node_id]["errors"]
    assert any(input_name in e["details"] and ("NaN" in e["details"] or "give a number" in e["details"])
               for e in errors), errors
