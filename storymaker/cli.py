"""`storymaker VERB ...` (the console script) and `python -m storymaker VERB ...`: every command of the pack.

Each verb runs one application's own command line with the arguments after it; `storymaker VERB --help`
shows that verb's options and an example. A verb imports its application only when it runs, so
`storymaker --help` and the story runner load no model library.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

CONVERT_DTYPES = ("bf16", "fp16", "fp32")  # storymaker_core.convert.DTYPES (not imported: it imports torch)


@dataclass(frozen=True)
class Verb:
    summary: str  # the one line `storymaker --help` shows
    run: Callable[[list, str], int]  # (arguments after the verb, the prog name for its help) -> exit code


def _fetch(argv: list, prog: str) -> int:
    from .models.cli import main

    return main(argv, prog)


def _check(argv: list, prog: str) -> int:
    from .story.cli import main

    return main(argv, prog, check=True)


def _story(argv: list, prog: str) -> int:
    from .story.cli import main

    return main(argv, prog)


def _vistorybench(argv: list, prog: str) -> int:
    from .story.vistorybench.cli import main

    return main(argv, prog)


def _evaluate(argv: list, prog: str) -> int:
    from .evaluate.cli import main

    return main(argv, prog)


def _convert(argv: list, prog: str) -> int:
    """The release pickle -> a memory-mappable safetensors (fp16: half the download's size)."""
    parser = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert StoryMaker weights (the released mask.bin) to a .safetensors file that loads\n"
                    "without unpickling and memory-maps; its metadata records where it came from.",
        epilog=f"example:\n  {prog} models/storymaker/mask.bin models/storymaker/storymaker.safetensors   # fp16")
    parser.add_argument("source", help="StoryMaker weights: the released mask.bin (or a .safetensors)")
    parser.add_argument("target", help="output .safetensors path")
    parser.add_argument("--dtype", choices=CONVERT_DTYPES, default="fp16", help="tensor dtype to store (default fp16)")
    parser.add_argument("--dim-head", type=int, default=None,
                        help="perceiver head width (default: the source's metadata, else the release's 64)")
    args = parser.parse_args(argv)
    if not args.target.endswith(".safetensors"):
        parser.error("target must end with .safetensors")
    from ._core import convert, weights  # import torch

    try:
        metadata = convert.convert(args.source, args.target, args.dtype, args.dim_head)
    except weights.StoryMakerWeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.target}: {metadata['summary']}")
    return 0


def trainer_module(name: str):
    """``storymaker_training.<name>`` when the package is installed (``pip install .``), else the repository's
    ``training.<name>`` (run from the repository root)."""
    for package in ("storymaker_training", "training"):
        try:
            return importlib.import_module(f"{package}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != package:  # the trainer is there but one of its requirements is not: say which
                raise
    raise ModuleNotFoundError("the trainer is not installed: `pip install .[train]` in the repository, or run "
                              "`python -m storymaker` from the repository root (it holds training/)",
                              name="storymaker_training")


def _trainer(name: str) -> Callable[[list, str], int]:
    def run(argv: list, prog: str) -> int:
        return trainer_module(name).main(argv, prog=prog)

    return run


VERBS: dict[str, Verb] = {
    "fetch": Verb("download the models into the ComfyUI's model folders (docs/models.md)", _fetch),
    "check": Verb("check story files against ComfyUI: scenes, nodes, model files; renders nothing", _check),
    "story": Verb("render story files (one cast, many scenes) through ComfyUI (docs/story-runner.md)", _story),
    "vistorybench": Verb("ViStoryBench: `convert` its dataset to story files, `export` stories to its layout",
                         _vistorybench),
    "evaluate": Verb("score images (`score`: Face Sim, CLIP-I/T) or stories (`story`: consistency)", _evaluate),
    "convert": Verb("convert StoryMaker weights (mask.bin) to a half-size .safetensors", _convert),
    "prepare": Verb("build a training set from a folder of images (docs/training.md)", _trainer("prepare")),
    "train": Verb("train or fine-tune StoryMaker from a YAML config", _trainer("train")),
    "export": Verb("write a training checkpoint as a file Load StoryMaker reads", _trainer("export")),
}


def help_text(prog: str) -> str:
    width = max(map(len, VERBS))
    return "\n".join([
        f"usage: {prog} VERB [options]",
        "",
        "StoryMaker's commands (`storymaker` and `python -m storymaker` are the same command).",
        "",
        "verbs:",
        *(f"  {name:<{width}}  {verb.summary}" for name, verb in VERBS.items()),
        "",
        f"`{prog} VERB --help` shows a verb's options and an example, e.g.:",
        f"  {prog} fetch --accept-insightface-license --trust-unpinned",
        f"  {prog} story stories/example-one-character.yaml",
    ])


def main(argv: Sequence[str] | None = None, prog: str = "storymaker") -> int:
    """The console script ``storymaker``; ``python -m storymaker`` passes its own name as ``prog``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(help_text(prog), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"{prog}: error: unknown verb {verb!r} (choose from {', '.join(VERBS)}; {prog} --help lists them)",
              file=sys.stderr)
        return 2
    return VERBS[verb].run(rest, f"{prog} {verb}")
