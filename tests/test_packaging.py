"""`pip install .` gives the one console script, `storymaker`, and never a top-level `nodes` or `training`; the
Comfy Registry metadata is complete; pyproject's dependencies are requirements.txt's (ComfyUI-Manager installs from
that)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {"storymaker": "storymaker.cli:main"}  # one command; its verbs: storymaker.cli.VERBS
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "requirements.txt", "storymaker_core", "storymaker", "training")


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def requirements(lines) -> list:
    """Requirement specifiers without comments or spaces, names normalised (`open_clip_torch` = `open-clip-torch`)."""
    specs = [line.split("#")[0].replace(" ", "") for line in lines]
    return [re.sub(r"^[A-Za-z0-9._-]+", lambda m: m[0].lower().replace("_", "-"), spec) for spec in specs if spec]


def test_dependencies_are_the_ones_comfyui_manager_installs():
    declared = requirements(pyproject()["project"]["dependencies"])
    assert declared == requirements((REPO / "requirements.txt").read_text().splitlines())


def test_comfy_registry_metadata_is_complete():
    config = pyproject()
    comfy, project = config["tool"]["comfy"], config["project"]
    assert comfy["PublisherId"] and comfy["DisplayName"] and isinstance(comfy["includes"], list)
    assert re.fullmatch(r"https://\S+\.(svg|png|jpg|gif)", comfy["Icon"])
    assert project["urls"]["Repository"].startswith("https://")
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])  # the registry takes semantic versions
    assert project["scripts"] == SCRIPTS


def _parent_site_packages() -> str:
    import sysconfig

    return sysconfig.get_paths()["purelib"]


@pytest.mark.slow  # builds a wheel and a virtual environment: ~30 s
def test_pip_install_gives_the_command_and_no_generic_top_level_modules(tmp_path):
    pytest.importorskip("setuptools", minversion="77")  # the build backend; no network, no `wheel` package
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the repository
    for name in BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "--quiet", "-w", str(tmp_path / "dist"), str(source)], check=True, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("*.whl"))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / ("Scripts" if sys.platform == "win32" else "bin")
    python = bin_dir / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel)],
                   check=True, cwd=tmp_path)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    top_level = {p.name.removesuffix(".py") for p in site.iterdir() if not p.name.endswith((".dist-info", ".pth"))}
    installed = top_level - {"pip", "setuptools", "_distutils_hack", "pkg_resources", "__pycache__"}
    assert installed == {"storymaker_core", "storymaker", "storymaker_training"}, installed
    assert (site / "storymaker" / "evaluate" / "prompts_fastcomposer.json").is_file()  # package data
    assert (site / "storymaker_training" / "configs" / "tiny-cpu.yaml").is_file()

    # the dependencies (torch, ...) come from the environment running the tests, after the venv's own packages
    (site / "test-dependencies.pth").write_text(_parent_site_packages() + "\n")
    from storymaker.cli import VERBS

    for command in [[], *([verb] for verb in VERBS)]:  # the trainer's verbs run the installed storymaker_training
        result = subprocess.run([str(bin_dir / "storymaker"), *command, "--help"], capture_output=True, text=True,
                                cwd=tmp_path, timeout=300)
        assert result.returncode == 0, f"storymaker {command}: {result.stderr[-2000:]}"
        assert result.stdout.startswith("usage: storymaker"), (command, result.stdout[:200])
        assert "example" in result.stdout, (command, result.stdout[-500:])
    where = subprocess.run([str(python), "-c", "import storymaker_core, storymaker, storymaker_training; "
                                               "print(storymaker_core.__file__); print(storymaker.__file__); "
                                               "print(storymaker_training.__file__)"],
                           check=True, capture_output=True, text=True, cwd=tmp_path).stdout.split()
    assert all(Path(f).is_relative_to(site) for f in where), where  # the installed copy, not the repository


def test_training_imports_itself_relatively():
    """Installed, `training/` is `storymaker_training`: an absolute `training.` import would fail there."""
    absolute = [f"{path.name}:{n}: {line.strip()}" for path in sorted((REPO / "training").rglob("*.py"))
                for n, line in enumerate(path.read_text().splitlines(), 1)
                if re.match(r"\s*(from|import)\s+training\b", line)]
    assert not absolute, absolute
