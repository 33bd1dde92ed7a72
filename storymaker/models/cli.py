"""``storymaker fetch`` (``python -m storymaker fetch``): put the README's model files in their ComfyUI folders.

Run by the user, never by a node: downloads are explicit. See docs/models.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..comfyui import ComfyPaths, ComfyUIError, ComfyUINotFound, model_paths
from ..comfyui import find_comfyui as find
from . import catalog
from .catalog import KEYS, HubSource, ModelItem, select
from .errors import FetchError
from .fetch import FAILED, REFUSED, Fetcher, FetchOptions, Outcome, human_size

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


EXAMPLES = """examples:
  {prog} --accept-insightface-license --trust-unpinned   # every model, into the ComfyUI around this pack
  {prog} --comfyui ~/ComfyUI --only storymaker,clip_vision --dry-run
  {prog} --list   # sources and folders, to download by hand"""


def _parser(prog: str = "storymaker fetch") -> argparse.ArgumentParser:
    fetch = argparse.ArgumentParser(prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
                                    epilog=EXAMPLES.format(prog=prog),
                                    description="Download each model of the README's table into its ComfyUI folder,\n"
                                                "under the name the workflows use. Present, valid files are skipped.\n"
                                                "See docs/models.md.")
    fetch.add_argument("--comfyui", metavar="DIR",
                       help="the ComfyUI folder (default: COMFYUI_PATH, else the ComfyUI this pack is installed in)")
    fetch.add_argument("--only", metavar="NAMES", type=lambda s: [k.strip() for k in s.split(",") if k.strip()],
                       help=f"comma-separated subset of: {','.join(KEYS)} (default: all)")
    fetch.add_argument("--list", action="store_true",
                       help="print each model's source and target folder (for downloading by hand) and exit")
    fetch.add_argument("--dry-run", action="store_true", help="check what is present and what would be downloaded")
    fetch.add_argument("--verify", action="store_true",
                       help="hash every present file again instead of trusting the record of an earlier check")
    fetch.add_argument("--accept-insightface-license", action="store_true",
                       help="accept InsightFace's non-commercial licence for buffalo_l (shown before the download)")
    fetch.add_argument("--convert", action="store_true",
                       help="also write models/storymaker/storymaker.safetensors (fp16, half size) from mask.bin")
    fetch.add_argument("--url", metavar="NAME=URL", action="append", default=[],
                       help="download NAME (insightface or sam) from another URL, e.g. a mirror (held to the "
                            "same size and sha256 as the original)")
    fetch.add_argument("--trust-unpinned", action="store_true",
                       help="also place files the catalog has no pinned size + sha256 for, checked only against "
                            "what their own host publishes")
    comfy = fetch.add_argument_group("ComfyUI's own options (give the ones you start ComfyUI with)")
    comfy.add_argument("--base-directory", metavar="DIR",
                       help="ComfyUI's --base-directory: its models folder is DIR/models")
    comfy.add_argument("--extra-model-paths-config", metavar="PATH", nargs="+", action="append", default=[],
                       help="ComfyUI's --extra-model-paths-config: more extra_model_paths.yaml files to read "
                            "(the one beside ComfyUI's main.py is always read)")
    comfy.add_argument("--output-directory", metavar="DIR",
                       help="ComfyUI's --output-directory (ComfyUI also loads checkpoints from its checkpoints folder)")
    return fetch


def list_models(items: list[ModelItem], paths: ComfyPaths | None) -> str:
    """The sources, pins and folders, for users who download by hand."""
    lines = []
    for item in items:
        if paths is not None:
            dirs = paths.dirs(item.folder_name) or [paths.models_dir / item.folder_name]
            where = dirs[0] / item.subfolder / item.name if item.subfolder else dirs[0] / item.name
        else:
            where = f"ComfyUI/{item.relative_target}"
        lines.append(f"{item.key}{' (optional)' if item.optional else ''}: {item.title}")
        if isinstance(item.source, HubSource):
            lines.append(f"    source: {item.source.describe()}")
        lines.append(f"    url:    {item.source.browser_url()}")
        if item.pin.known:
            lines.append(f"    file:   {item.pin.size} bytes ({human_size(item.pin.size)}), sha256 {item.pin.sha256}")
        else:
            lines.append("    file:   size + sha256 unknown (not pinned; fetch places it only with --trust-unpinned)")
        lines.append(f"    save:   {where}" + (f"  (unzip: {', '.join(item.unzip_members)} directly in it)"
                                               if item.unzip_members else ""))
        if item.licence_gate:
            lines.append("    licence: non-commercial research use only (InsightFace); fetch needs "
                         f"--accept-{item.key}-license")
    return "\n".join(lines)


def summary(outcomes: list[Outcome]) -> tuple[str, int]:
    """Final lines and exit code: what is missing, and how to get it by hand."""
    failed = [o for o in outcomes if o.status in (FAILED, REFUSED)]
    if not failed:
        return f"all {len(outcomes)} model(s) in place.", EXIT_OK
    lines = [f"{len(failed)} of {len(outcomes)} model(s) not fetched: {', '.join(o.item.key for o in failed)}."]
    if any(o.unreachable for o in failed):
        lines.append("No network (or the source is blocked). Fetch these by hand, then run this command again "
                     "to check them:")
    else:
        lines.append("To fetch them by hand instead:")
    lines += [f"  {o.item.key}: {o.item.manual_instructions()}" for o in failed]
    return "\n".join(lines), EXIT_INCOMPLETE


def find_comfyui(explicit: str | None) -> Path:
    """``--comfyui``, else ``COMFYUI_PATH``, else the ComfyUI this pack is installed in (``storymaker.comfyui``,
    as for the story runner).

    Raises:
        FetchError: no ComfyUI there.
    """
    try:
        return find(explicit)
    except ComfyUINotFound as e:
        raise FetchError(f"no ComfyUI at {e.root}: not a ComfyUI folder (no main.py). Point --comfyui (or "
                         f"COMFYUI_PATH) at your ComfyUI folder; the default is the ComfyUI this pack sits in "
                         f"(ComfyUI/custom_nodes/...)") from e


def main(argv: list[str] | None = None, prog: str = "storymaker fetch") -> int:
    args = _parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    urls = {}
    for spec in args.url:
        key, sep, url = spec.partition("=")
        if not sep or not url:
            print(f"error: --url {spec!r}: expected NAME=URL", file=sys.stderr)
            return EXIT_USAGE
        urls[key.strip()] = url.strip()
    try:
        items = select(args.only, urls, catalog.ITEMS)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    paths = None
    try:
        comfyui = find_comfyui(args.comfyui)
        paths = model_paths(comfyui, args.base_directory,
                            [c for group in args.extra_model_paths_config for c in group], args.output_directory)
    except (FetchError, ComfyUIError) as e:
        if args.list:  # the list is useful without a ComfyUI: folders relative to one
            paths = None
        else:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USAGE
    if args.list:
        print(list_models(items, paths))
        return EXIT_OK
    print(f"ComfyUI: {comfyui}" + ("  (dry run: nothing is written)" if args.dry_run else ""))
    if paths.base != comfyui.resolve() or paths.configs:
        print(f"models: {paths.models_dir}" + (f"; extra model paths from {', '.join(map(str, paths.configs))}"
                                               if paths.configs else ""))
    options = FetchOptions(accept_insightface_license=args.accept_insightface_license, verify=args.verify,
                           dry_run=args.dry_run, convert=args.convert, trust_unpinned=args.trust_unpinned)
    try:
        outcomes = Fetcher(comfyui, options, paths=paths).run(items)
    except KeyboardInterrupt:
        print("\ninterrupted: no partial file was placed under a model's name. Run the command again to "
              "continue (release-host downloads resume from their .part file).", file=sys.stderr)
        return EXIT_INTERRUPTED
    text, code = summary(outcomes)
    print(text, file=sys.stdout if code == EXIT_OK else sys.stderr)
    return code
