"""``fetch`` looks where ComfyUI looks: ``extra_model_paths.yaml`` (beside main.py and --extra-model-paths-config)
and --base-directory. A file ComfyUI already finds is reported and skipped (no second copy); a missing one
goes to the folder ComfyUI searches first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from models_support import ONNX_NAMES, release_args

from storymaker.models.catalog import ITEMS
from storymaker.models.cli import main
from storymaker.comfyui import ComfyUIError, model_paths

REPO = Path(__file__).resolve().parents[2]
_CONTAINING = REPO.parents[1] if REPO.parent.name == "custom_nodes" and (REPO.parents[1] / "main.py").is_file() \
    else None  # the ComfyUI whose custom_nodes/ holds the pack (as tests/support/comfyui.py finds it)
COMFYUI_SOURCE = os.environ.get("COMFYUI_PATH") or (str(_CONTAINING) if _CONTAINING else None)  # before fixtures
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON")


def item(key):
    return next(i for i in ITEMS if i.key == key)


def fetch(comfyui, hosts, *extra):
    return main(["--comfyui", str(comfyui), *release_args(hosts), *extra])


def write_yaml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# -- the search folders --------------------------------------------------------------------------------------
def test_without_a_yaml_comfyui_looks_in_its_own_models_folder(comfyui):
    paths = model_paths(comfyui)
    models = Path(os.path.realpath(comfyui)) / "models"
    assert paths.dirs("checkpoints") == [models / "checkpoints", models.parent / "output" / "checkpoints"]
    assert paths.dirs("controlnet") == [models / "controlnet", models / "t2i_adapter"]
    assert paths.dirs("sams") == [models / "sams"] and paths.dirs("insightface") == [models / "insightface"]


def test_the_yaml_beside_main_py_adds_folders_in_comfyuis_order(comfyui, tmp_path, monkeypatch):
    monkeypatch.setenv("MODELS_DISK", str(tmp_path / "disk"))
    write_yaml(comfyui / "extra_model_paths.yaml", """\
        other_ui:
            base_path: $MODELS_DISK/a1111
            checkpoints: models/Stable-diffusion
            controlnet: |
                models/ControlNet
                extensions/cn/models
        first:
            base_path: ../other-disk
            is_default: true
            checkpoints: ckpts
            sams: sam_models
        empty:
        """)
    paths = model_paths(comfyui)
    models = comfyui / "models"
    disk, other_disk = tmp_path / "disk" / "a1111", tmp_path / "other-disk"
    assert paths.dirs("checkpoints") == [other_disk / "ckpts", models / "checkpoints", disk / "models/Stable-diffusion",
                                         comfyui / "output" / "checkpoints"]
    assert paths.dirs("controlnet") == [models / "controlnet", models / "t2i_adapter", disk / "models/ControlNet",
                                        disk / "extensions/cn/models"]
    assert paths.dirs("sams") == [other_disk / "sam_models", models / "sams"]  # this pack adds its folder after
    assert paths.configs == [comfyui / "extra_model_paths.yaml"]


def test_base_directory_and_extra_configs(comfyui, tmp_path):
    extra = write_yaml(tmp_path / "conf" / "more.yaml", """\
        disk:
            insightface: faces
        """)
    paths = model_paths(comfyui, base_directory=tmp_path / "base", extra_configs=[extra])
    assert paths.models_dir == tmp_path / "base" / "models"
    assert paths.dirs("insightface") == [tmp_path / "conf" / "faces", tmp_path / "base" / "models" / "insightface"]
    assert paths.dirs("checkpoints")[0] == tmp_path / "base" / "models" / "checkpoints"


def test_a_yaml_comfyui_could_not_read_is_a_usage_error(comfyui, hosts, capsys):
    write_yaml(comfyui / "extra_model_paths.yaml", """\
        disk:
            checkpoints: [a, b]
        """)
    with pytest.raises(ComfyUIError, match="one path per line"):
        model_paths(comfyui)
    assert fetch(comfyui, hosts, "--only", "sdxl") == 2
    assert "extra_model_paths.yaml" in capsys.readouterr().err


@pytest.mark.skipif(not COMFYUI_SOURCE, reason="COMFYUI_PATH (a ComfyUI source tree) is not set and the pack is "
                                                "not inside a ComfyUI's custom_nodes/")
def test_the_folders_are_the_ones_comfyui_itself_computes(comfyui, tmp_path, monkeypatch):
    """ComfyUI's own folder_paths and extra_config, run in a subprocess with the same options."""
    monkeypatch.setenv("MODELS_DISK", str(tmp_path / "disk"))
    extra = write_yaml(tmp_path / "conf" / "extra.yaml", """\
        a:
            base_path: ~/../$MODELS_DISK/x
            checkpoints: |
                ckpt
                /abs/ckpt
            sams: sams
        b:
            is_default: true
            checkpoints: ../rel/ckpt
            storymaker: sm
            insightface: /abs/faces
            controlnet: cn
        """)
    base = tmp_path / "base"
    script = textwrap.dedent(f"""\
        import json, os, sys
        sys.argv = ["main.py", "--base-directory", {str(base)!r}, "--extra-model-paths-config", {str(extra)!r}]
        import comfy.options
        comfy.options.enable_args_parsing()
        import folder_paths, utils.extra_config
        utils.extra_config.load_extra_path_config({str(extra)!r})  # as main.apply_custom_paths, in order
        folder_paths.add_model_folder_path("checkpoints", os.path.join(folder_paths.get_output_directory(),
                                                                       "checkpoints"))
        for name in ("storymaker", "storymaker_characters", "insightface", "sams"):  # as the pack's __init__
            folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))
        names = ("checkpoints", "clip_vision", "controlnet", "storymaker", "insightface", "sams")
        print(json.dumps({{n: folder_paths.get_folder_paths(n) for n in names}}))
        """)
    python = COMFYUI_PYTHON or next((str(p) for p in (Path(COMFYUI_SOURCE) / "venv/bin/python",)
                                     if p.is_file()), sys.executable)
    done = subprocess.run([python, "-c", script], cwd=COMFYUI_SOURCE, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    ours = model_paths(comfyui, base_directory=base, extra_configs=[extra])
    assert {name: [str(p) for p in ours.dirs(name)] for name in theirs} == theirs


# -- fetch with those folders --------------------------------------------------------------------------------
def test_a_file_comfyui_finds_on_another_disk_is_reported_and_not_downloaded_again(comfyui, hosts, tmp_path, capsys):
    sdxl = item("sdxl")
    disk = tmp_path / "other-disk" / "checkpoints"
    disk.mkdir(parents=True)
    (disk / sdxl.name).write_bytes(hosts.hub[f"{sdxl.source.repo_id}/{sdxl.source.filename}"])
    write_yaml(comfyui / "extra_model_paths.yaml", f"""\
        other:
            checkpoints: {disk}
        """)
    assert fetch(comfyui, hosts, "--only", "sdxl") == 0
    out = capsys.readouterr().out
    assert f"[sdxl] present: {disk / sdxl.name} (checked against the pin; found elsewhere in ComfyUI's search " \
           f"path" in out
    assert "extra_model_paths.yaml" in out
    assert hosts.log == []  # checked against the pin: no second 7 GB copy, not even a request
    assert not (comfyui / "models" / "checkpoints").exists()
    assert fetch(comfyui, hosts, "--only", "sdxl") == 0  # its record (keyed by its absolute path) vouches for it
    records = json.loads((comfyui / "models" / ".storymaker-models.json").read_text())
    assert (disk / sdxl.name).as_posix() in records


def test_a_missing_file_goes_where_comfyui_looks_first(comfyui, hosts, tmp_path):
    sdxl, sam = item("sdxl"), item("sam")
    disk = tmp_path / "fast-disk"
    write_yaml(comfyui / "extra_model_paths.yaml", f"""\
        fast:
            base_path: {disk}
            is_default: true
            checkpoints: checkpoints
        slow:
            base_path: {tmp_path / 'slow'}
            sams: sams
        """)
    assert fetch(comfyui, hosts, "--only", "sdxl,sam") == 0
    assert (disk / "checkpoints" / sdxl.name).is_file()  # is_default: searched before ComfyUI's own folder
    assert (tmp_path / "slow" / "sams" / sam.name).is_file()  # a pack folder: the yaml's comes first
    assert not (comfyui / "models" / "checkpoints").exists() and not (comfyui / "models" / "sams").exists()


def test_a_damaged_file_is_replaced_where_comfyui_loads_it(comfyui, hosts, tmp_path):
    sam = item("sam")
    disk = tmp_path / "disk" / "sams"
    disk.mkdir(parents=True)
    (disk / sam.name).write_bytes(b"\0" * len(hosts.releases[sam.name]))
    write_yaml(comfyui / "extra_model_paths.yaml", f"""\
        d:
            sams: {disk}
        """)
    assert fetch(comfyui, hosts, "--only", "sam") == 0
    assert (disk / sam.name).read_bytes() == hosts.releases[sam.name]
    assert not (comfyui / "models" / "sams").exists()


def test_base_directory_puts_files_and_records_under_that_base(comfyui, hosts, tmp_path):
    base = tmp_path / "data"
    assert fetch(comfyui, hosts, "--only", "clip_vision,insightface", "--accept-insightface-license",
                 "--base-directory", str(base)) == 0
    clip = item("clip_vision")
    assert (base / clip.folder / clip.name).is_file()
    assert sorted(p.name for p in (base / "models/insightface/models/buffalo_l").iterdir()) == sorted(ONNX_NAMES)
    records = json.loads((base / "models" / ".storymaker-models.json").read_text())
    assert f"{clip.folder}/{clip.name}" in records
    assert list((comfyui / "models").iterdir()) == []


def test_extra_model_paths_config_and_an_insightface_pack_found_there(comfyui, hosts, tmp_path, capsys):
    config = write_yaml(tmp_path / "desktop" / "extra_models_config.yaml", """\
        desktop:
            base_path: models
            insightface: insightface
        """)
    assert fetch(comfyui, hosts, "--only", "insightface", "--accept-insightface-license",
                 "--extra-model-paths-config", str(config)) == 0
    pack = tmp_path / "desktop" / "models" / "insightface" / "models" / "buffalo_l"
    assert sorted(p.name for p in pack.iterdir()) == sorted(ONNX_NAMES)
    hosts.log.clear()
    capsys.readouterr()
    assert fetch(comfyui, hosts, "--only", "insightface", "--extra-model-paths-config", str(config)) == 0
    assert f"[insightface] present: {pack}" in capsys.readouterr().out and hosts.log == []
