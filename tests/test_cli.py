"""The one command: `storymaker VERB ...` = `python -m storymaker VERB ...`; `--help` lists every verb on one line,
and every verb's `--help` exits 0 with an example."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from storymaker.cli import CONVERT_DTYPES, VERBS, main, trainer_module

REPO = Path(__file__).resolve().parents[1]
EXPECTED = ("fetch", "check", "story", "vistorybench", "evaluate", "convert", "prepare", "train", "export")
SUBCOMMANDS = [("vistorybench", "convert"), ("vistorybench", "export"), ("evaluate", "score"), ("evaluate", "story"),
               ("evaluate", "prompts")]


def help_of(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0, argv
    return capsys.readouterr().out


def test_help_lists_every_verb_on_one_line(capsys):
    assert tuple(VERBS) == EXPECTED
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: storymaker VERB")
    lines = [line.split() for line in out.splitlines() if line.startswith("  ") and line.split()[0] in VERBS]
    assert [words[0] for words in lines] == list(EXPECTED)  # each verb once, in order, with its summary
    for verb, words in zip(EXPECTED, lines):
        assert " ".join(words[1:]) == VERBS[verb].summary and len(words) > 3


@pytest.mark.parametrize("verb", EXPECTED)
def test_each_verb_help_shows_an_example(verb, capsys):
    out = help_of(capsys, verb)
    assert out.startswith(f"usage: storymaker {verb}"), out[:200]
    assert "example" in out.lower(), out[-500:]
    assert f"storymaker {verb} " in out.split("example", 1)[1]  # the example runs this verb


@pytest.mark.parametrize("verb,sub", SUBCOMMANDS)
def test_each_subcommand_help_shows_an_example(verb, sub, capsys):
    out = help_of(capsys, verb, sub)
    assert out.startswith(f"usage: storymaker {verb} {sub}") and f"storymaker {verb} {sub} " in out.split("example")[1]


def test_no_verb_or_an_unknown_one_is_a_usage_error(capsys):
    assert main([]) == 2
    assert "verbs:" in capsys.readouterr().err
    assert main(["render"]) == 2
    assert "unknown verb 'render'" in capsys.readouterr().err


def test_check_is_the_story_runners_check(tmp_path, capsys):
    from storymaker.story.cli import build_parser

    assert build_parser(check=True).parse_args(["a.yaml"]).check
    assert not build_parser().parse_args(["a.yaml"]).check
    assert build_parser().parse_args(["a.yaml", "--check"]).check
    assert main(["check", str(tmp_path / "missing.yaml"), "--server", "http://127.0.0.1:9"]) == 2  # read first
    assert "missing.yaml" in capsys.readouterr().err


def test_python_dash_m_is_the_same_command():
    result = subprocess.run([sys.executable, "-m", "storymaker", "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("usage: python -m storymaker VERB"), result.stderr
    assert all(f"  {verb} " in result.stdout for verb in EXPECTED)
    result = subprocess.run([sys.executable, "-m", "storymaker", "convert", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "python -m storymaker convert models/" in result.stdout


def test_convert_offers_the_cores_dtypes():
    from storymaker_core.convert import DTYPES

    assert CONVERT_DTYPES == tuple(sorted(DTYPES))


def test_the_trainer_is_the_installed_one_else_the_repositorys():
    module = trainer_module("export")
    try:
        import storymaker_training  # noqa: F401  (pip-installed here)
        expected = "storymaker_training.export"
    except ModuleNotFoundError:
        expected = "training.export"
    assert module.__name__ == expected and callable(module.main)


def test_the_old_entry_points_are_gone():
    for old in ("storymaker_core/story", "storymaker_core/evaluate", "storymaker_core/models"):
        assert not (REPO / old).exists(), old
    assert not list((REPO / "storymaker").rglob("__main__.py"))[1:]  # only storymaker/__main__.py
    assert (REPO / "storymaker" / "__main__.py").is_file()
    assert "def main" not in (REPO / "storymaker_core" / "convert.py").read_text()
