"""``storymaker story STORY.yaml [--server URL ...]`` and ``storymaker check STORY.yaml`` (the story runner).

Exit codes: 0 every scene is done; 1 some scenes failed or were not rendered (run again to resume);
2 the story, a workflow or a server setup is wrong (nothing was queued); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import textwrap
from pathlib import Path

from .errors import StoryError
from .progress import TqdmHandler
from .runner import RunOptions, StoryRunner
from ..comfyui import ComfyUIError, ComfyUINotFound, comfyui_output_dir, find_comfyui, find_python
from .server import LocalComfyUI

RENDER_EXAMPLE = """examples:
  {prog} stories/example-one-character.yaml   # starts the ComfyUI around this pack
  {prog} stories/example-two-characters.yaml --server http://gpu1:8188 --server http://gpu2:8188
  {prog} stories/example-one-character.yaml --check   # = storymaker check: queues and writes nothing"""
CHECK_EXAMPLE = """example:
  {prog} stories/example-one-character.yaml   # scenes, nodes, model files; renders nothing
  {prog} stories/*.yaml --server http://127.0.0.1:8188"""


def build_parser(prog: str = "storymaker story", check: bool = False) -> argparse.ArgumentParser:
    """The story runner's options; ``check``: the ``storymaker check`` form (``--check`` implied)."""
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(CHECK_EXAMPLE if check else RENDER_EXAMPLE).format(prog=prog),
        description=textwrap.fill(
            "Check story files against ComfyUI without rendering: upload the references, validate every scene "
            "against the server's nodes and read the header of every model file it loads; queue nothing, write "
            "nothing. Exit code 2 on any problem. Schema: docs/story-runner.md." if check else
            "Render a story (same cast, many scenes) through ComfyUI's HTTP API. Schema: docs/story-runner.md. "
            "Rerun the same command to resume.", 100))

    def render_only(text: str) -> str:  # options that mean nothing to a check: accepted, not shown
        return argparse.SUPPRESS if check else text

    p.add_argument("story", type=Path, nargs="+", help=f"story file(s) (.yaml or .json), "
                   f"{'checked' if check else 'rendered'} one after the other on the same servers (one local "
                   f"ComfyUI for all)")
    p.add_argument("--server", action="append", default=[], metavar="URL",
                   help="ComfyUI server, e.g. http://127.0.0.1:8188; repeat (or comma-separate) for several. "
                        "Without one, a local ComfyUI is started and stopped")
    p.add_argument("--comfyui", metavar="PATH", help="ComfyUI folder to start (default: COMFYUI_PATH, "
                                                     "else the ComfyUI this pack is installed in)")
    p.add_argument("--python", metavar="EXE", help="Python to start ComfyUI with (default: COMFYUI_PYTHON, "
                                                   "its portable/venv Python, else this one)")
    p.add_argument("--cpu", action="store_true", help="start the local ComfyUI with --cpu")
    p.add_argument("--comfyui-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for the local ComfyUI's main.py (repeatable)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="output root; files go to DIR/<story name>/. Default: when the runner starts ComfyUI, that "
                        "ComfyUI's output/storymaker (beside the images ComfyUI saves); with --server, ./story")
    p.add_argument("--check", action="store_true", default=check,
                   help=argparse.SUPPRESS if check else
                   "upload references, validate every scene and read the headers of every model file it "
                   "loads, on the server(s); queue nothing, write nothing (exit code 2 on any problem, or "
                   "when a server does not answer or cannot inspect model files); the same as storymaker check")
    d = RunOptions()
    p.add_argument("--max-queue", type=int, default=d.max_queue, metavar="N",
                   help=render_only("give a server another scene only while its queue is shorter than N "
                                    "(default %(default)s)"))
    p.add_argument("--attempts", type=int, default=d.max_attempts, metavar="N",
                   help=render_only("servers a scene may be tried on before it counts as failed (default %(default)s)"))
    p.add_argument("--scene-timeout", type=float, default=d.scene_timeout, metavar="S",
                   help=render_only("seconds from queueing a scene to its image (default %(default)s)"))
    p.add_argument("--request-timeout", type=float, default=d.request_timeout, metavar="S",
                   help="seconds for one HTTP request (default %(default)s)")
    p.add_argument("--connect-timeout", type=float, default=d.connect_timeout, metavar="S",
                   help="seconds to connect to a server (default %(default)s)")
    p.add_argument("--startup-timeout", type=float, default=180.0, metavar="S",
                   help="seconds to wait for a local ComfyUI to start (default %(default)s)")
    p.add_argument("--poll-interval", type=float, default=d.poll_interval, metavar="S", help=argparse.SUPPRESS)
    p.add_argument("--no-contact-sheet", action="store_true", help=render_only("do not write contact-sheet.png"))
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings and errors only")
    return p


def _server_urls(args: argparse.Namespace) -> list[str]:
    return [u.strip() for arg in args.server for u in arg.split(",") if u.strip()]


def output_root(args: argparse.Namespace) -> Path:
    """``--out``; else, when the runner starts ComfyUI, that ComfyUI's ``output/storymaker`` (where its users
    look for images, and where its SaveImage nodes put this story's); else ``./story``."""
    if args.out is not None:
        return args.out
    if _server_urls(args):
        return Path("story")
    return comfyui_output_dir(find_comfyui(args.comfyui), args.comfyui_arg) / "storymaker"


@contextlib.asynccontextmanager
async def _servers(args: argparse.Namespace, log_path: Path):
    """The given servers, or a local ComfyUI started for the duration of the run (its log at `log_path`)."""
    servers = _server_urls(args)
    if servers:
        yield servers
        return
    root = find_comfyui(args.comfyui)
    async with LocalComfyUI(root, python=args.python or find_python(root), cpu=args.cpu,
                            extra_args=args.comfyui_arg, startup_timeout=args.startup_timeout,
                            log_path=log_path) as url:
        yield [url]


async def _run(args: argparse.Namespace) -> int:
    options = RunOptions(
        out_dir=output_root(args), connect_timeout=args.connect_timeout, request_timeout=args.request_timeout,
        scene_timeout=args.scene_timeout, poll_interval=args.poll_interval, max_queue=max(1, args.max_queue),
        max_attempts=max(1, args.attempts), contact_sheet=not args.no_contact_sheet, progress=not args.quiet)
    runners = [StoryRunner(path, options=options) for path in args.story]  # every story file read first
    # one story: its ComfyUI log beside it; several share one ComfyUI, whose log goes in their common root
    log_path = (runners[0].story_dir if len(runners) == 1 else options.out_dir) / "comfyui.log"
    if not args.check and not any(runner.needs_server() for runner in runners):
        return max([_print_report(runner, await runner.run()) for runner in runners])  # all verified done
    codes = []
    async with _servers(args, log_path) as servers:
        for runner in runners:
            runner.servers = servers
            codes.append(await _check(runner) if args.check else _print_report(runner, await runner.run()))
    return max(codes)


async def _check(runner: StoryRunner) -> int:
    fit, unchecked = await runner.check()
    if fit:
        print(f"{runner.story.name}: all {len(runner.plans)} scene(s) fit {', '.join(fit)}")
    for reason in unchecked.values():  # a server that was not fully checked: not a pass
        print(f"error: not checked: {reason}", file=sys.stderr)
    return 2 if unchecked or not fit else 0


def _print_report(runner: StoryRunner, report) -> int:
    print(f"{runner.story.name}: {len(report.rendered)} rendered, {len(report.skipped)} already done, "
          f"{len(report.refetched)} fetched again, {len(report.failed)} failed, "
          f"{len(report.not_rendered)} not rendered -> {report.story_dir}")
    for stem, error in report.failed.items():
        print(f"  {stem}: {error}", file=sys.stderr)
    if report.message:
        print(report.message, file=sys.stderr)
    return 0 if report.ok else 1


def main(argv: list[str] | None = None, prog: str = "storymaker story", check: bool = False) -> int:
    args = build_parser(prog, check).parse_args(argv)
    handler = TqdmHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger = logging.getLogger(__package__)  # storymaker.story: every module of the runner logs below it
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    logger.propagate = False
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        print("interrupted: the manifest is up to date; run the same command again to resume", file=sys.stderr)
        return 130
    except ComfyUINotFound as exc:
        print(f"error: {exc}; or give a running server with --server URL", file=sys.stderr)
        return 2
    except (StoryError, ComfyUIError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permissions: not the story's fault, but not a bug either
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        logger.removeHandler(handler)

