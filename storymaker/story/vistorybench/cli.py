"""``storymaker vistorybench convert|export`` (``python -m storymaker vistorybench ...``): see docs/vistorybench.md."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import StoryError
from .convert import ConvertOptions, convert_dataset
from .dataset import LANGUAGES, DatasetError
from .export import ExportError, export_stories


def _stories(text: str) -> list[str]:
    ids = [s.strip() for s in text.split(",") if s.strip()]
    if not ids or not all(s.isdigit() for s in ids):
        raise argparse.ArgumentTypeError(f"expected story ids like 01,05; got {text!r}")
    return ids


def _template(text: str) -> tuple[int, Path]:
    count, _, path = text.partition("=")
    if count not in ("0", "1", "2", "3") or not path:
        raise argparse.ArgumentTypeError(f"expected COUNT=FILE with COUNT 0-3 (characters in the shot); got {text!r}")
    return int(count), Path(path)


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT like 1024x1024; got {text!r}") from None
    if width % 8 or height % 8 or min(width, height) < 64:
        raise argparse.ArgumentTypeError(f"{text}: width and height must be multiples of 8, at least 64")
    return width, height


EXAMPLES = {  # after `storymaker vistorybench VERB`
    "convert": "DATASET vsb --language en --split lite   # then render: storymaker story vsb/*/story.yaml",
    "export": "story --to OUTPUTS --method StoryMaker --mode base --language en   # story/: the rendered stories",
}


def parser(prog: str = "storymaker vistorybench") -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog=prog, formatter_class=raw,
                                description="ViStoryBench: dataset -> story files; rendered stories -> its outputs.",
                                epilog="examples:\n" + "\n".join(f"  {prog} {c} {e}" for c, e in EXAMPLES.items()))
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="one story file per ViStoryBench story", formatter_class=raw,
                       description="Write one story file per ViStoryBench story (one scene per shot).",
                       epilog=f"example:\n  {prog} convert {EXAMPLES['convert']}")
    c.add_argument("dataset", help="the dataset folder (holding 01/, 02/, ... or ViStory/)")
    c.add_argument("out", help="folder for <NN>/story.yaml, templates/, masks/, summary.json")
    c.add_argument("--language", choices=LANGUAGES, default="en")
    c.add_argument("--split", choices=("full", "lite"), default="full")
    c.add_argument("--stories", type=_stories, help="only these story ids, e.g. 01,05")
    c.add_argument("--template", type=_template, action="append", default=[], metavar="COUNT=FILE",
                   help="API template for shots with COUNT (0-3) characters (default: workflows/api/story-template-*)")
    c.add_argument("--size", type=_size, default=(1024, 1024), help="render size WIDTHxHEIGHT (default 1024x1024)")
    c.add_argument("--steps", type=int, help="sampler steps (default: the template's)")
    c.add_argument("--cfg", type=float, help="guidance scale (default: the template's)")
    c.add_argument("--base-seed", type=int, default=0, help="story base_seed (scene seeds derive from it and the shot)")
    c.add_argument("--lenient-names", action="store_true",
                   help="match a shot's names to Characters keys also ignoring spaces and case, and by name_en/"
                        "name_ch (ViStoryBench matches keys exactly; every difference is reported)")
    c.add_argument("--language-fallback", action="store_true",
                   help="a field without text in --language takes the other language's text (ViStoryBench gives "
                        "the placeholder '(<language> data missing) ...'; every difference is reported)")
    e = sub.add_parser("export", help="copy rendered scenes into ViStoryBench's output layout", formatter_class=raw,
                       description="Copy rendered scenes into the output layout ViStoryBench's bench_run.py scores.",
                       epilog=f"example:\n  {prog} export {EXAMPLES['export']}")
    e.add_argument("runs", nargs="+", help="story run folders (story/<name>/), or a folder holding them")
    e.add_argument("--to", required=True, help="ViStoryBench's outputs folder (its --outputs_path)")
    e.add_argument("--method", required=True, help="the method name bench_run.py is given (--method)")
    e.add_argument("--mode", default="base")
    e.add_argument("--language", choices=LANGUAGES, default="en")
    e.add_argument("--timestamp", help="run folder name YYYYMMDD_HHMMSS (default: now, UTC); give the same one "
                                       "again to add shots to an export (a warning lists other run folders, which "
                                       "bench_run.py without --timestamp scores too)")
    e.add_argument("--link", action="store_true", help="hard-link instead of copying (same file system)")
    return p


def main(argv: list[str] | None = None, prog: str = "storymaker vistorybench") -> int:
    args = parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.command == "convert":
            options = ConvertOptions(language=args.language, split=args.split, stories=args.stories,
                                     templates=dict(args.template), width=args.size[0], height=args.size[1],
                                     steps=args.steps, cfg=args.cfg, base_seed=args.base_seed,
                                     lenient_names=args.lenient_names, language_fallback=args.language_fallback)
            summary = convert_dataset(args.dataset, args.out, options)
            print(summary.format())
            print(f"story files in {Path(args.out)}/<NN>/story.yaml; summary in {Path(args.out) / 'summary.json'}")
            return 0
        report = export_stories(args.runs, args.to, args.method, args.mode, args.language, args.timestamp, args.link)
        print(report.format())
        print(f"score: python bench_run.py --method {args.method} --mode {args.mode} --language {args.language} "
              f"--timestamp {report.timestamp} --outputs_path {Path(args.to).resolve()}")
        return 1 if report.missing else 0
    except (DatasetError, ExportError, StoryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

