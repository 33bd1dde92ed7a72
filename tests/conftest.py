"""Fixtures, and the summary of measured errors (see `support.measured`; `scripts/correctness_table.py` reads it)."""

from __future__ import annotations

import pytest

from support import DATA, MEASURED, release_layout


def pytest_terminal_summary(terminalreporter):
    if MEASURED:
        terminalreporter.section("measured errors (relative unless noted)")
        for name, value, tolerance in MEASURED:
            terminalreporter.write_line(f"{name:<72} {value:.2e}  (tolerance {tolerance:.3g})")


@pytest.fixture(scope="session")
def layout():
    return release_layout()


@pytest.fixture(scope="session")
def golden():
    from safetensors.torch import load_file

    return {name: load_file(DATA / f"{name}.safetensors") for name in ("resampler", "attention_layer")}


@pytest.fixture
def comfyui_path():
    from support.comfyui import comfyui_path_or_skip

    return comfyui_path_or_skip()
