"""The example stories' header comments tell the truth: the command is the README's command 1, the files
they say ship do ship, and the output folder they name is where the runner writes."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from storymaker.story.cli import build_parser, output_root
from storymaker.story.schema import load_story

REPO = Path(__file__).resolve().parents[2]
STORIES = REPO / "stories"


def header(path: Path) -> str:
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").rstrip())
    return "\n".join(lines)


def commands(path: Path) -> list[str]:
    return [re.sub(r"\s+#.*$", "", line).strip() for line in header(path).splitlines()
            if line.startswith(("python -m storymaker story ", "python -m storymaker check "))]


def readme_command_1() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    line = next(text.splitlines()[i + 1] for i, line in enumerate(text.splitlines()) if line.startswith("# 1."))
    return line.split("&&")[-1].strip()


def test_the_one_character_header_runs_readme_command_1():
    assert commands(STORIES / "example-one-character.yaml")[0] == readme_command_1()


@pytest.mark.parametrize("name", ["example-one-character.yaml", "example-two-characters.yaml"])
def test_header_commands_parse_and_the_files_they_say_ship_exist(name):
    path = STORIES / name
    for command in commands(path):
        verb, arguments = command.split()[3], command.split()[4:]  # after `python -m storymaker`
        args = build_parser(check=verb == "check").parse_args(arguments)
        assert [REPO / story for story in args.story] == [path]
        assert args.check == (verb == "check" or "--check" in arguments)
    text = header(path)
    assert "ship in stories/refs/" in text
    for character in load_story(path).cast.values():  # what the header says ships is what the story reads
        assert character.image.is_file() and character.image.parent == STORIES / "refs"
        assert character.name in text and character.mask is not None and character.mask.is_file()


@pytest.mark.parametrize("name", ["example-one-character.yaml", "example-two-characters.yaml"])
def test_header_names_the_folders_the_runner_writes(name, tmp_path):
    story = load_story(STORIES / name)
    text = header(STORIES / name)
    comfyui = tmp_path / "ComfyUI"
    comfyui.mkdir()
    (comfyui / "main.py").write_text("")
    local = output_root(argparse.Namespace(out=None, server=[], comfyui=str(comfyui), comfyui_arg=[]))
    assert local / story.name == comfyui.resolve() / "output" / "storymaker" / story.name
    assert f"ComfyUI/output/storymaker/{story.name}/" in text
    remote = output_root(argparse.Namespace(out=None, server=["http://x:8188"], comfyui=None, comfyui_arg=[]))
    assert remote / story.name == Path("story") / story.name and f"./story/{story.name}/" in text
