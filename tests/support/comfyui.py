"""Running the pack inside a real ComfyUI (a source tree in COMFYUI_PATH): in library mode, in this
Python, or as a `main.py` server, started with COMFYUI_PYTHON when set (else this Python).

Both need ComfyUI's requirements in the Python that runs ComfyUI; where one is missing the test is
skipped with the module's name, not failed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
PACK_MODULE = "ComfyUI_StoryMaker_under_test"


# The ComfyUI modules the tests use in library mode: imported up front, so a missing requirement is found here.
LIBRARY_MODULES = ("comfy.model_management", "comfy.utils", "comfy.model_patcher", "comfy.supported_models",
                   "comfy.samplers", "comfy.clip_vision")
COMFYUI_PYTHON_HINT = "ComfyUI's Python (the one its requirements.txt was installed into)"


def containing_comfyui(repo: Path = None) -> Path | None:
    """The ComfyUI whose custom_nodes/ holds this pack (README command 1 clones it there), if any."""
    repo = REPO if repo is None else repo
    root = repo.resolve().parents[1]
    return root if repo.resolve().parent.name == "custom_nodes" and (root / "main.py").is_file() else None


def comfyui_path_or_skip() -> Path:
    """The ComfyUI source tree the ComfyUI tests run against: COMFYUI_PATH, else the ComfyUI that contains
    the pack; the test is skipped without either."""
    import pytest

    path = os.environ.get("COMFYUI_PATH") or containing_comfyui()
    if not path:
        pytest.skip("COMFYUI_PATH is not set and the pack is not inside a ComfyUI's custom_nodes/: point it at a "
                    "ComfyUI v0.14.1 source tree to run the ComfyUI tests")
    if not (Path(path) / "main.py").is_file():
        pytest.fail(f"COMFYUI_PATH={path} is not a ComfyUI source tree (no main.py there)", pytrace=False)
    return Path(path)


def skip_or_raise(message: str, error: type = RuntimeError):
    """Skip the running test (under pytest), or raise `error` (a benchmark script run on its own)."""
    if "pytest" in sys.modules:
        import pytest

        pytest.skip(message)
    raise error(message)


def import_comfyui(path: Path, cpu: bool = True):
    """Import ComfyUI from its source tree, on the CPU unless told otherwise (a CUDA build of torch on a
    GPU-less machine needs the flag, and it must be set before model_management is imported).

    A requirement of ComfyUI missing from this Python skips the test, naming the module.
    """
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    try:
        import comfy.cli_args

        comfy.cli_args.args.cpu = cpu
        for module in LIBRARY_MODULES:
            importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] in ("comfy", "comfy_extras"):
            raise  # the tree itself is incomplete: not a missing requirement
        skip_or_raise(f"ComfyUI at {path} cannot be imported by {sys.executable}: no module named '{e.name}'; "
                      f"run pytest under {COMFYUI_PYTHON_HINT}", ModuleNotFoundError)
    return sys.modules["comfy"]


def comfyui_python() -> str:
    """The Python that runs test servers: COMFYUI_PYTHON, else the one running the tests."""
    return os.environ.get("COMFYUI_PYTHON") or sys.executable


def load_pack():
    """Import this repository the way ComfyUI imports a custom node folder."""
    if PACK_MODULE in sys.modules:
        return sys.modules[PACK_MODULE]
    spec = importlib.util.spec_from_file_location(PACK_MODULE, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_MODULE] = module
    spec.loader.exec_module(module)
    return module


SMALL_SDXL = {
    "use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 64,
    "num_res_blocks": [2, 2, 2], "channel_mult": [1, 1, 1], "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_middle": 10, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "num_head_channels": 64, "context_dim": 2048, "adm_in_channels": 2816, "num_classes": "sequential",
    "use_spatial_transformer": True, "legacy": False, "use_linear_in_transformer": True,
    "use_temporal_attention": False, "use_temporal_resblock": False,
}


def small_sdxl(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
    """An SDXL-shaped model (SDXL's 70 transformer blocks, narrow channels) in a ModelPatcher, initialised.

    Models built in code have uninitialised weights: every parameter is set explicitly here. `dtype` is
    given at construction: ComfyUI's UNet casts its input to the dtype it was built with, so a model moved
    to another dtype afterwards would get inputs of the wrong one.
    """
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SDXL({**SMALL_SDXL, **overrides})
    config.set_inference_dtype(dtype, None)
    model = config.get_model({})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.01)
            elif "norm" in name and p.dim() == 1:
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.01)
            else:
                fan_in = max(p[0].numel(), 1) if p.dim() > 1 else p.numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
        for b in model.buffers():
            assert torch.isfinite(b).all()
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


class ComfyUIServerError(RuntimeError):
    """ComfyUI did not come up; the message holds the end of its log."""


def server_command(python: str, port: int, base: Path) -> list:
    """`main.py --cpu` with every folder it writes under `base`: models, input, output, user, and the
    database (ComfyUI keeps it in its own tree by default)."""
    return [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
            "--base-directory", str(base), "--database-url", f"sqlite:///{base / 'comfyui.db'}"]


@contextlib.contextmanager
def comfyui_server(comfyui: Path, base: Path, timeout: float = 120.0):
    """`main.py --cpu` on a free port with `--base-directory base`; yields its URL, stops it afterwards.

    The server's output goes to `base/server.log`. It runs under `comfyui_python()`; a ComfyUI requirement
    missing there skips the test, naming the module.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    python = comfyui_python()
    with open(base / "server.log", "w") as log:
        process = subprocess.Popen(server_command(python, port, base), cwd=comfyui, stdout=log,
                                   stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + timeout
            while True:
                try:
                    urllib.request.urlopen(f"{url}/object_info", timeout=5).read()
                    break
                except OSError:
                    if process.poll() is not None or time.time() > deadline:
                        text = (base / "server.log").read_text()
                        missing = re.search(r"ModuleNotFoundError: No module named '([^']+)'", text)
                        if process.poll() is not None and missing:
                            skip_or_raise(f"ComfyUI at {comfyui} does not start under {python}: no module named "
                                          f"'{missing[1]}'; set COMFYUI_PYTHON to {COMFYUI_PYTHON_HINT}",
                                          ComfyUIServerError)
                        raise ComfyUIServerError(f"ComfyUI did not start:\n{text[-3000:]}")
                    time.sleep(0.5)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def guider(kind: str, patcher, positive, negative, middle):
    """ComfyUI's CFG, DualCFG or PerpNeg guider over `patcher`, with the conds and scales the tests use
    (DualCFG's middle cond and PerpNeg's empty cond are `middle`)."""
    import comfy.samplers
    from comfy_extras import nodes_custom_sampler, nodes_perpneg

    if kind == "CFGGuider":
        g = comfy.samplers.CFGGuider(patcher)
        g.set_conds(positive, negative)
        g.set_cfg(5.0)
    elif kind == "DualCFGGuider":
        g = nodes_custom_sampler.Guider_DualCFG(patcher)
        g.set_conds(positive, middle, negative)
        g.set_cfg(5.0, 3.0)
    elif kind == "PerpNegGuider":
        g = nodes_perpneg.Guider_PerpNeg(patcher)
        g.set_conds(positive, negative, middle)
        g.set_cfg(5.0, 1.0)
    else:
        raise ValueError(f"unknown guider {kind!r}")
    return g


def seeded_adapter(model) -> tuple:
    """(attention layers, StoryMakerAdapter, its state dict) with seeded weights of the release's key layout,
    sized for `model` (a ModelPatcher of an SDXL-shaped UNet) and a small resampler."""
    from storymaker_core.adapter import StoryMakerAdapter
    from storymaker_core.layout import unet_attention_layers_from_state_dict
    from storymaker_core.weights import (expected_image_proj_shapes, expected_ip_adapter_shapes,
                                         storymaker_weights_from_state_dict)
    from support import seeded_weights, tiny_resampler_config

    layers = unet_attention_layers_from_state_dict({k: tuple(v.shape) for k, v in
                                                    model.model.diffusion_model.state_dict().items()})
    config = tiny_resampler_config(cross_attention_dim=2048, dim_head=64, face_heads=1, character_heads=1,
                                   character_dim=64, ff_mult=1)
    state = {"image_proj_model": seeded_weights(expected_image_proj_shapes(config), 1, scale=0.05),
             "ip_adapter": seeded_weights(expected_ip_adapter_shapes(layers, 8), 2, scale=0.05)}
    return layers, StoryMakerAdapter(storymaker_weights_from_state_dict(state, "test.safetensors")), state
