"""Test data shared by the story tests: an API workflow the fake server accepts, scenes, images."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

from PIL import Image

HERE = Path(__file__).parent

#: One character, core nodes plus a stand-in for the pack's apply node. Titles follow the conventions
#: only where a convention cannot be inferred from the graph (character:1); the prompt node is found
#: by following the sampler's `positive` link.
WORKFLOW = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl-test.safetensors"},
          "_meta": {"title": "Load Checkpoint"}},
    "2": {"class_type": "LoadImage", "inputs": {"image": "example.png"}, "_meta": {"title": "character:1"}},
    "3": {"class_type": "TestCharacterApply", "inputs": {"model": ["1", 0], "image": ["2", 0], "weight": 0.8},
          "_meta": {"title": "StoryMaker"}},
    "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["1", 1]},
          "_meta": {"title": "CLIP Text Encode (Prompt)"}},
    "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]},
          "_meta": {"title": "CLIP Text Encode (Prompt)"}},
    "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024, "batch_size": 1},
          "_meta": {"title": "Empty Latent Image"}},
    "7": {"class_type": "KSampler", "inputs": {
        "model": ["3", 0], "seed": 0, "steps": 20, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
        "positive": ["4", 0], "negative": ["5", 0], "latent_image": ["6", 0], "denoise": 1.0},
        "_meta": {"title": "KSampler"}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]},
          "_meta": {"title": "VAE Decode"}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ComfyUI"},
          "_meta": {"title": "Save Image"}},
}

SCENES = [
    {"id": "morning", "prompt": "alice drinks coffee in a sunny kitchen"},
    {"id": "street", "prompt": "alice walks down a rainy street", "seed": 7},
    {"prompt": "alice reads a book by the fire"},
]


def write_png(path: Path, color, size=(24, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def fake_comfyui(root: Path, body: str | None = None) -> Path:
    """A folder with a main.py: the fake ComfyUI server by default, or ``body``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "custom_nodes").mkdir(exist_ok=True)
    default = (f"import sys\nsys.path.insert(0, {str(HERE)!r})\n"
               "import story_fake_comfy\nstory_fake_comfy.serve_forever()\n")
    (root / "main.py").write_text(textwrap.dedent(body) if body else default)
    return root


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
