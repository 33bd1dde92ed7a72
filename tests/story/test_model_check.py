"""The runner judges every model file a story loads before queueing anything (the server reads the headers
on ``/storymaker/inspect``), writes no manifest and draws no bar when a story cannot run, and puts its
output where a user looks for it."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
from story_support import fake_comfyui

from storymaker.comfyui import comfyui_output_dir
from storymaker.story.cli import main
from storymaker.story.client import ComfyClient
from storymaker.story.errors import CannotInspectModels, ModelFilesUnusable
from storymaker.story.model_check import check_model_files, model_files
from support.model_headers import SD15_KEYS, SDXL_KEYS, clip_vision_keys, write_safetensors

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "workflows" / "api" / "story-template-one-character.api.json"
FAST = ["--poll-interval", "0.05", "--connect-timeout", "2", "--request-timeout", "5"]


def cli(story, *args) -> int:
    return main([str(story), *FAST, *args])


def test_the_template_loads_four_model_files_with_storymakers_requirements():
    files = model_files([("01-a", json.loads(TEMPLATE.read_text()))])
    assert {(f.folder, f.name, f.kind) for f in files} == {
        ("checkpoints", "sd_xl_base_1.0.safetensors", "sdxl_checkpoint"),
        ("clip_vision", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "clip_vision_vit_h"),
        ("storymaker", "mask.bin", "storymaker"),
        ("insightface", "buffalo_l", "insightface_pack")}


def test_built_in_vae_names_are_not_files():
    prompt = {"1": {"class_type": "VAELoader", "inputs": {"vae_name": "taesdxl"}},
              "2": {"class_type": "VAELoader", "inputs": {"vae_name": "sdxl_vae.safetensors"}}}
    assert [f.name for f in model_files([("01-a", prompt)])] == ["sdxl_vae.safetensors"]


def placeholder_install(root: Path) -> Path:
    """The fresh install of the bug report: zero-byte files under the right names, no InsightFace pack."""
    for folder, name in (("checkpoints", "sd_xl_base_1.0.safetensors"), ("storymaker", "mask.bin"),
                         ("clip_vision", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / name).write_bytes(b"")
    return root


def test_placeholder_files_and_no_insightface_are_each_named_with_a_fix(comfy, tmp_path):
    server = comfy.start(models_root=str(placeholder_install(tmp_path / "models")))
    prompt = json.loads(TEMPLATE.read_text())

    async def go():
        async with ComfyClient(server.url) as client:
            await check_model_files(client, [("01-a", prompt), ("02-b", prompt)])
    with pytest.raises(ModelFilesUnusable) as info:
        asyncio.run(go())
    problems = info.value.problems
    assert len(problems) == 4, problems
    by_name = {name: next(p for p in problems if f"'{name}'" in p) for name in (
        "sd_xl_base_1.0.safetensors", "mask.bin", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", "buffalo_l")}
    for name in ("sd_xl_base_1.0.safetensors", "mask.bin", "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"):
        assert by_name[name].startswith("scenes 01-a, 02-b: node ") and "is empty (0 bytes)" in by_name[name]
        assert " -> download it again" in by_name[name]
    assert "StoryMakerInsightFaceLoader" in by_name["buffalo_l"] and "buffalo_l.zip" in by_name["buffalo_l"]


def test_wrong_architectures_are_named(comfy, tmp_path):
    root = tmp_path / "models"
    write_safetensors(root / "checkpoints" / "sd_xl_base_1.0.safetensors", SD15_KEYS)
    write_safetensors(root / "clip_vision" / "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors", clip_vision_keys(1024, 24))
    server = comfy.start(models_root=str(root))
    prompt = {k: v for k, v in json.loads(TEMPLATE.read_text()).items()
              if v["class_type"] not in ("StoryMakerLoader", "StoryMakerInsightFaceLoader")}

    async def go():
        async with ComfyClient(server.url) as client:
            await check_model_files(client, [("01-a", prompt)])
    with pytest.raises(ModelFilesUnusable) as info:
        asyncio.run(go())
    text = str(info.value)
    assert "is an SD1.5 checkpoint, but StoryMaker needs SDXL" in text
    assert "is a CLIP vision ViT-L/14 (24 layers), but StoryMaker reads CLIP ViT-H/14" in text


def test_good_files_pass(comfy, tmp_path):
    root = tmp_path / "models"
    write_safetensors(root / "checkpoints" / "sdxl-test.safetensors", SDXL_KEYS)
    server = comfy.start(models_root=str(root))

    async def go():
        async with ComfyClient(server.url) as client:
            return await check_model_files(client, [("01-a", {"1": {"class_type": "CheckpointLoaderSimple",
                                                                     "inputs": {"ckpt_name": "sdxl-test.safetensors"}}})])
    assert asyncio.run(go()) == 1


def test_a_server_without_the_route_cannot_inspect(comfy):
    server = comfy.start(inspect_route=False)

    async def go():
        async with ComfyClient(server.url) as client:
            await check_model_files(client, [("01-a", json.loads(TEMPLATE.read_text()))])
    with pytest.raises(CannotInspectModels, match="cannot inspect model files"):
        asyncio.run(go())


# -- the command line -------------------------------------------------------------------------------

def test_check_fails_on_an_empty_checkpoint_and_writes_nothing(comfy, make_story, tmp_path, capsys):
    root = tmp_path / "models"
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "sdxl-test.safetensors").write_bytes(b"")
    server = comfy.start(models_root=str(root))
    out = tmp_path / "out"
    assert cli(make_story(), "--out", str(out), "--server", server.url, "--check") == 2
    captured = capsys.readouterr()
    assert "fit" not in captured.out
    assert f"error: model files on {server.url} cannot be used: scenes 01-morning, 02-street" in captured.err
    assert "'sdxl-test.safetensors'" in captured.err and "is empty (0 bytes)" in captured.err
    assert server.requests["POST /prompt"] == 0 and not out.exists()


def test_check_without_the_route_is_never_a_pass(comfy, make_story, tmp_path, capsys):
    server = comfy.start(inspect_route=False)
    assert cli(make_story(), "--out", str(tmp_path / "out"), "--server", server.url, "--check", "--quiet") == 2
    captured = capsys.readouterr()
    assert "fit" not in captured.out
    assert f"error: not checked: {server.url} cannot inspect model files" in captured.err


def test_check_passes_with_good_files(comfy, make_story, tmp_path, capsys):
    root = tmp_path / "models"
    write_safetensors(root / "checkpoints" / "sdxl-test.safetensors", SDXL_KEYS)
    server = comfy.start(models_root=str(root))
    assert cli(make_story(), "--out", str(tmp_path / "out"), "--server", server.url, "--check", "--quiet") == 0
    assert f"test-story: all 3 scene(s) fit {server.url}" in capsys.readouterr().out
    assert server.inspected == [{"folder": "checkpoints", "name": "sdxl-test.safetensors", "kind": "checkpoint"}]


def test_a_run_with_a_bad_model_file_queues_nothing_and_leaves_no_manifest_or_bar(comfy, make_story, tmp_path,
                                                                                  capsys):
    root = tmp_path / "models"
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "sdxl-test.safetensors").write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    server = comfy.start(models_root=str(root))
    out = tmp_path / "out"
    assert cli(make_story(), "--out", str(out), "--server", server.url) == 2
    err = capsys.readouterr().err
    assert "Git LFS pointer" in err and "story:" not in err  # no progress bar was drawn
    assert not (out / "test-story" / "manifest.json").exists()
    assert server.requests["POST /prompt"] == 0


def test_a_story_that_does_not_fit_the_server_leaves_no_manifest(comfy, make_story, tmp_path, capsys):
    server = comfy.start()
    out = tmp_path / "out"
    assert cli(make_story(sampling={"scheduler": "karas"}), "--out", str(out), "--server", server.url) == 2
    err = capsys.readouterr().err
    assert "'karas', not offered by this server" in err and "story:" not in err
    assert not (out / "test-story" / "manifest.json").exists()


def test_a_run_on_a_server_without_the_route_warns_and_renders(comfy, make_story, tmp_path, capsys):
    server = comfy.start(inspect_route=False)
    assert cli(make_story(), "--out", str(tmp_path / "out"), "--server", server.url) == 0
    captured = capsys.readouterr()
    assert "3 rendered" in captured.out and "cannot inspect model files" in captured.err


# -- where the output goes --------------------------------------------------------------------------

def test_default_output_is_comfyuis_output_folder_when_the_runner_starts_comfyui(make_story, tmp_path, capsys):
    root = fake_comfyui(tmp_path / "ComfyUI")
    assert cli(make_story(), "--comfyui", str(root), "--python", sys.executable, "--quiet") == 0
    story_dir = root / "output" / "storymaker" / "test-story"
    assert f"-> {story_dir}" in capsys.readouterr().out
    assert (story_dir / "manifest.json").is_file() and (story_dir / "01-morning.png").is_file()
    assert (story_dir / "comfyui.log").is_file()  # its log beside it


def test_default_output_is_story_folder_with_a_server(comfy, make_story, tmp_path, monkeypatch, capsys):
    server = comfy.start()
    monkeypatch.chdir(tmp_path)
    assert cli(make_story(), "--server", server.url, "--quiet") == 0
    assert (tmp_path / "story" / "test-story" / "manifest.json").is_file()


def test_out_wins_over_the_default(make_story, tmp_path, capsys):
    root = fake_comfyui(tmp_path / "ComfyUI")
    out = tmp_path / "elsewhere"
    assert cli(make_story(), "--out", str(out), "--comfyui", str(root), "--python", sys.executable, "--quiet") == 0
    assert (out / "test-story" / "manifest.json").is_file() and (out / "test-story" / "comfyui.log").is_file()
    assert not (root / "output").exists()


def test_comfyui_output_dir_follows_its_arguments(tmp_path):
    root = tmp_path / "ComfyUI"
    assert comfyui_output_dir(root) == (root / "output").resolve()
    assert comfyui_output_dir(root, ["--base-directory", str(tmp_path / "b")]) == (tmp_path / "b" / "output").resolve()
    assert comfyui_output_dir(root, [f"--output-directory={tmp_path / 'o'}", "--base-directory", "x"]) == \
        (tmp_path / "o").resolve()
    assert comfyui_output_dir(root, ["--output-directory", "rel"]) == (root / "rel").resolve()  # ComfyUI's cwd
