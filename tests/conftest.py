"""Fixtures, and the summary of measured errors (see `support.measured`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support import DATA, MEASURED, release_layout


def pytest_terminal_summary(terminalreporter):
    if MEASURED:
        terminalreporter.section("measured errors (relative unless noted)")
        for name, value, tolerance in MEASURED:
            terminalreporter.write_line(f"{name:<72} {value:.2e}  (tolerance {tolerance:.0e})")


@pytest.fixture(scope="session")
def layout():
    return release_layout()


@pytest.fixture(scope="session")
def golden():
    from safetensors.torch import load_file

    return {name: load_file(DATA / f"{name}.safetensors") for name in ("resampler", "attention_layer")}


@pytest.fixture
def comfyui_path():
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        pytest.skip("COMFYUI_PATH is not set: point it at a ComfyUI v0.14.1 source tree to run the ComfyUI tests")
    return Path(path)
