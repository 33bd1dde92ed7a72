"""Fixtures for the model-fetch tests: the loopback hosts serving small stand-ins of every model file,
the catalog pinned to those stand-ins, a ComfyUI folder, and an environment that points huggingface_hub
at the loopback hub and at temporary caches (never at the real Hub, never at the user's cache)."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the helper module beside this file
from models_fake_hosts import FakeHosts  # noqa: E402
from models_support import ONNX_NAMES, payload, zip_of  # noqa: E402

from storymaker.models import catalog, http_download  # noqa: E402
from storymaker.models.catalog import ITEMS, UNKNOWN, HubSource, Pin  # noqa: E402


@pytest.fixture
def onnx_files() -> dict[str, bytes]:
    return {name: payload(name, 20_000 + 1000 * i) for i, name in enumerate(ONNX_NAMES)}


@pytest.fixture
def hosts(onnx_files):
    """Every item of the catalog served: Hub files under their real repo/filename, the rest as releases."""
    with FakeHosts() as fake:
        for i, item in enumerate(ITEMS):
            if item.unzip_members:
                fake.releases["buffalo_l.zip"] = zip_of(onnx_files, "buffalo_l/")
            elif isinstance(item.source, HubSource):
                fake.hub[f"{item.source.repo_id}/{item.source.filename}"] = payload(item.key, 150_000 + 7 * i)
            else:
                fake.releases[item.name] = payload(item.key, 120_000)
        yield fake


@pytest.fixture
def comfyui(tmp_path) -> Path:
    root = tmp_path / "ComfyUI"
    (root / "models").mkdir(parents=True)
    (root / "main.py").write_text("# stand-in: find_comfyui only checks that main.py exists\n")
    return root


def served_bytes(hosts, item) -> bytes:
    """What the loopback hosts serve for ``item`` (for the pack: the zip)."""
    if item.unzip_members:
        return hosts.releases["buffalo_l.zip"]
    if isinstance(item.source, HubSource):
        return hosts.hub[f"{item.source.repo_id}/{item.source.filename}"]
    return hosts.releases[item.name]


@pytest.fixture
def repin(hosts, onnx_files, monkeypatch):
    """Pin the catalog to what the hosts serve now (call again after changing a served file). A file the
    real catalog leaves unpinned (StoryMaker's mask.bin) stays unpinned, as it is for users."""

    def pin(**overrides: Pin):
        items = []
        for item in ITEMS:
            data = served_bytes(hosts, item)
            new = Pin(len(data), hashlib.sha256(data).hexdigest(), "loopback stand-in") if item.pin.known else UNKNOWN
            members = tuple((name, hashlib.sha256(onnx_files[name]).hexdigest()) for name in item.unzip_members)
            items.append(replace(item, pin=overrides.get(item.key, new), member_sha256=members))
        monkeypatch.setattr(catalog, "ITEMS", tuple(items))
        return tuple(items)

    return pin


@pytest.fixture(autouse=True)
def hub_environment(tmp_path, monkeypatch, hosts, repin):
    monkeypatch.setenv("HF_ENDPOINT", hosts.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    monkeypatch.setattr(http_download, "RETRY_WAIT_S", 0.0)
    repin()

