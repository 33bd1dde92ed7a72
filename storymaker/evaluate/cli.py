"""CLI: ``storymaker evaluate {score,story,prompts} ...`` (``score`` is the default).

score    read manifest(s) + images, write results.json / results.md / metrics.png
story    story consistency (identity across shots, face counts) of story runner or ViStoryBench stories
prompts  list FastComposer's prompts, or write a generation plan (a manifest skeleton)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from .aggregate import CIOptions, summarise
from .embedders import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED, ClipConfig, EmbedderError
from .manifest import FORMAT, ManifestError, check_files, comparability_problems, load_manifest
from .prompts import DEFAULT_SUBSET, PROMPTS_FILE, SUBSET_HELP, load_prompt_file, select_prompts
from .report import bar_chart, markdown_table, write_json
from .scoring import ReferenceEmbeddings, ScoringOptions, score_manifest

logger = logging.getLogger(__name__)
COMMANDS = ("score", "story", "prompts")
EXAMPLES = {
    None: """examples:
  {prog} score --manifest run/manifest.json --out results/ --insightface-root ComfyUI/models/insightface
  {prog} story --manifest story/ava-one-day --out results/story
  {prog} prompts --subset first5-per-group""",
    "score": """example:
  {prog} --manifest run/manifest.json --out results/ --insightface-root ComfyUI/models/insightface""",
    "story": """examples:
  {prog} --manifest story/ava-one-day --out results/story
  {prog} --vistorybench-outputs OUTPUTS/StoryMaker/base/en/20250101_120000 --dataset DATASET --out results/vsb""",
    "prompts": """example:
  {prog} --reference alice=refs/alice.png --class-token woman --out plan.json""",
}


def _pairs(values: Sequence[str] | None, what: str) -> dict[str, str]:
    out = {}
    for v in values or ():
        if "=" not in v:
            raise SystemExit(f"error: {what} must look like NAME=VALUE, got {v!r}")
        k, val = v.split("=", 1)
        out[k.strip()] = val.strip()
    return out


def _add_model_args(s: argparse.ArgumentParser) -> None:
    g = s.add_argument_group("face similarity (insightface)")
    g.add_argument("--insightface-root", default="~/.insightface",
                   help="folder containing models/<name>/*.onnx (ComfyUI: ComfyUI/models/insightface)")
    g.add_argument("--face-model", default="buffalo_l", choices=("buffalo_l", "antelopev2"))
    g.add_argument("--providers", default="CUDA,CPU", help="onnxruntime providers: CPU, CUDA, ROCM, CoreML")
    g.add_argument("--det-size", type=int, default=640, help="detector input size (multiple of 32)")
    g.add_argument("--extra-faces", type=int, default=0,
                   help="also match this many faces beyond the K largest for K characters (default 0)")
    g.add_argument("--no-face", action="store_true", help="skip face metrics")
    c = s.add_argument_group("CLIP-I / CLIP-T (open_clip)")
    c.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL)
    c.add_argument("--clip-pretrained", default=DEFAULT_CLIP_PRETRAINED,
                   help="open_clip tag or local checkpoint path; 'none' = random weights (tests)")
    c.add_argument("--clip-model-config", action="append", default=[],
                   help="extra open_clip model config JSON file/folder to register (open_clip.add_model_config)")
    c.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    c.add_argument("--clip-precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    c.add_argument("--clip-batch-size", type=int, default=8)
    c.add_argument("--no-clip", action="store_true", help="skip CLIP metrics")


def _add_stats_args(s: argparse.ArgumentParser) -> None:
    st = s.add_argument_group("statistics / output")
    st.add_argument("--ci", default="t", choices=("t", "bootstrap"), help="confidence interval method")
    st.add_argument("--confidence", type=float, default=0.95)
    st.add_argument("--n-boot", type=int, default=10_000)
    st.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    st.add_argument("--no-plot", action="store_true")
    st.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def build_parser(prog: str = "storymaker evaluate") -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog=prog, description="commands (score is the default):\n" + __doc__.split("\n", 1)[1].strip(),
                                formatter_class=raw,
                                epilog=EXAMPLES[None].format(prog=prog))
    sub = p.add_subparsers(dest="command")

    def example(command: str) -> str:
        return EXAMPLES[command].format(prog=f"{prog} {command}")

    s = sub.add_parser("score", help="score generated images (Face Sim, CLIP-I, CLIP-T, swaps)",
                       description="Score generated images with the paper's protocol (docs/evaluation.md).",
                       epilog=example("score"), formatter_class=raw)
    s.add_argument("--manifest", "-m", action="append", required=True,
                   help="manifest JSON (or folder with manifest.json); repeat once per method")
    s.add_argument("--out", "-o", required=True, help="output folder for results.json/.md and metrics.png")
    s.add_argument("--reference", action="append", metavar="NAME=PATH",
                   help="reference image for a character (adds to / overrides the manifests')")
    s.add_argument("--images-dir", help="folder the image 'file' entries are relative to (one manifest only)")
    _add_model_args(s)
    _add_stats_args(s)

    t = sub.add_parser("story", help="story consistency: reference<->shot and shot<->shot identity, face counts",
                       description="Score identity consistency across the shots of stories\n(docs/evaluation.md, "
                                   "'Story consistency').", epilog=example("story"), formatter_class=raw)
    src = t.add_argument_group("stories (one source)")
    src.add_argument("--manifest", "-m", action="append", default=[],
                     help="story runner output story/<name>/ (or its manifest.json); repeat for more stories")
    src.add_argument("--method", default="StoryMaker", help="label of the runner stories in the results")
    src.add_argument("--identity", action="append", metavar="NAME=MODE", default=[],
                     help="override a runner character's identity mode: auto, face or appearance")
    src.add_argument("--vistorybench-outputs", action="append", default=[], metavar="RUN",
                     help="ViStoryBench run folder OUTPUTS/<method>/<mode>/<language>/<timestamp>; repeat per method")
    src.add_argument("--vistorybench-converted", metavar="DIR", default=None,
                     help="the folder `vistorybench convert` wrote for that dataset: appearance-only characters are "
                          "then scored on their region of the shot")
    src.add_argument("--lenient-names", action="store_true",
                     help="match shot characters to the dataset's names loosely (case, spacing), as before; default: "
                          "their exact keys, as ViStoryBench's loader does")
    src.add_argument("--dataset", help="ViStoryBench dataset (folder of NN/story.json, or its parent)")
    src.add_argument("--stories", nargs="+", metavar="ID", help="ViStoryBench: only these story ids")
    t.add_argument("--out", "-o", required=True, help="output folder for results.json/.md and story_consistency.png")
    _add_model_args(t)
    _add_stats_args(t)

    pr = sub.add_parser("prompts", help="list FastComposer prompts or write a generation plan",
                        description="List FastComposer's prompts, or with --reference write a generation plan "
                                    "(a manifest skeleton).", epilog=example("prompts"), formatter_class=raw)
    pr.add_argument("--subset", default=DEFAULT_SUBSET, help=SUBSET_HELP)
    pr.add_argument("--reference", action="append", metavar="NAME=PATH",
                    help="character reference image; with it a plan manifest is written to --out")
    pr.add_argument("--class-token", action="append", metavar="NAME=WORD", default=[],
                    help="class word per character (man/woman/person...), or a bare WORD for all")
    pr.add_argument("--images-per-prompt", type=int, default=4)
    pr.add_argument("--seed", type=int, default=0, help="seed of the first image of each prompt")
    pr.add_argument("--method", default="StoryMaker")
    pr.add_argument("--out", help="plan manifest path (JSON)")
    return p


# --------------------------------------------------------------------------- score
def _device(name: str) -> str:
    if name != "auto":
        return name
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def _make_embedders(args: argparse.Namespace, meta: dict):
    """(face embedder or None, CLIP embedder or None) from the model options; describes them in ``meta``."""
    face_embedder = clip_embedder = None
    if not args.no_face:
        from .._core import faces
        from .embedders import FaceEmbedder

        face_embedder = FaceEmbedder(config=faces.FaceAnalyzerConfig(
            root=args.insightface_root, name=args.face_model, providers=args.providers, det_size=args.det_size))
        meta["face_model"] = face_embedder.description
        meta["face_providers"] = face_embedder.analyzer.providers_in_use
    if not args.no_clip:
        if args.clip_model_config:
            import open_clip

            for cfg in args.clip_model_config:
                open_clip.add_model_config(cfg)
        pretrained = None if str(args.clip_pretrained).lower() == "none" else args.clip_pretrained
        from .embedders import ClipEmbedder

        clip_cfg = ClipConfig(model=args.clip_model, pretrained=pretrained, device=_device(args.device),
                              precision=args.clip_precision, batch_size=args.clip_batch_size)
        clip_embedder = ClipEmbedder(clip_cfg)
        meta["clip_model"] = clip_embedder.description
        meta["clip"] = asdict(clip_cfg)
    return face_embedder, clip_embedder


def run_score(args: argparse.Namespace) -> int:
    refs = _pairs(args.reference, "--reference")
    if args.images_dir and len(args.manifest) > 1:
        print("error: --images-dir needs exactly one --manifest", file=sys.stderr)
        return 2
    manifests = [load_manifest(m, references=refs, images_dir=args.images_dir) for m in args.manifest]
    names = [m.method for m in manifests]
    if len(set(names)) != len(names):
        print(f"error: two manifests use the same method name {names}; set 'method' in each", file=sys.stderr)
        return 2
    problems = [msg for m in manifests for msg in check_files(m)]
    if problems:
        print("error: missing files:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    unlike = comparability_problems(manifests)
    for msg in unlike:
        print(f"warning: {msg}", file=sys.stderr)

    meta: dict = {"format": FORMAT, "manifests": [str(m.path) for m in manifests]}
    if unlike:
        meta["not_like_for_like"] = unlike
    skipped = {m.method: list(m.skipped) for m in manifests if m.skipped}
    if skipped:
        meta["not_scored_scenes_without_file"] = skipped
    face_embedder, clip_embedder = _make_embedders(args, meta)

    ci = CIOptions(method=args.ci, confidence=args.confidence, n_boot=args.n_boot, seed=args.seed)
    meta["ci"] = ci.describe()
    meta["units"] = "summary: 100 x cosine (CLIP-T = 100*cos(text, image), not clamped); images: raw cosine"
    meta["face_matching"] = (f"K characters <-> K+{args.extra_faces} largest faces, best assignment; "
                             "swap = matched face closer to another character")
    options = ScoringOptions(extra_faces=args.extra_faces, show_progress=not args.quiet)
    cache = ReferenceEmbeddings()
    records = []
    for m in manifests:
        records.extend(score_manifest(m, face_embedder, clip_embedder, options, cache))
    summary = summarise(records, ci)

    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    rows = [r.as_dict() for r in records]
    write_json(out / "results.json", summary, rows, meta)
    md = markdown_table(summary, meta, rows)
    (out / "results.md").write_text(md, encoding="utf-8")
    if not args.no_plot:
        bar_chart(out / "metrics.png", summary)
    print(md)
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


# --------------------------------------------------------------------------- story
def _load_stories(args: argparse.Namespace) -> list:
    from .story_input import StoryInputError, load_runner_stories

    if bool(args.manifest) == bool(args.vistorybench_outputs):
        raise StoryInputError("give story runner stories (--manifest) or ViStoryBench run folders "
                              "(--vistorybench-outputs with --dataset), not both and not neither")
    if args.manifest:
        if args.dataset or args.stories:
            raise StoryInputError("--dataset and --stories go with --vistorybench-outputs, not --manifest")
        return load_runner_stories(args.manifest, method=args.method, identities=_pairs(args.identity, "--identity"))
    if not args.dataset:
        raise StoryInputError("--vistorybench-outputs needs --dataset (the ViStoryBench dataset folder)")
    if args.identity:
        raise StoryInputError("--identity is for story runner manifests; ViStoryBench modes come from the tags")
    from .story_vistorybench import stories_from_vistorybench

    stories = [s for run in args.vistorybench_outputs
               for s in stories_from_vistorybench(run, args.dataset, args.stories,
                                                  converted=args.vistorybench_converted,
                                                  lenient_names=args.lenient_names)]
    keys = [(s.method, s.name) for s in stories]
    twice = sorted({m for m, n in keys if keys.count((m, n)) > 1})
    if twice:
        raise StoryInputError(f"several ViStoryBench runs of method(s) {twice}: score each run separately")
    return stories


def run_story(args: argparse.Namespace) -> int:
    from .story_metrics import summarise_stories
    from .story_report import story_chart, story_markdown, write_story_json
    from .story_scoring import StoryScore, StoryScoringOptions, score_story

    stories = _load_stories(args)
    meta: dict = {"sources": sorted({str(s.source) for s in stories}),
                  "stories": {s.method: [] for s in stories}}
    for s in stories:
        meta["stories"][s.method].append(s.name)
        if s.notes:
            meta.setdefault("notes", {})[f"{s.method}/{s.name}"] = list(s.notes)
    face_embedder, clip_embedder = _make_embedders(args, meta)
    ci = CIOptions(method=args.ci, confidence=args.confidence, n_boot=args.n_boot, seed=args.seed)
    meta["ci"] = (f"{ci.confidence:.0%} " + ("Student-t interval with a cluster-robust (CR1) standard error"
                  if ci.method == "t" else f"percentile cluster bootstrap ({ci.n_boot} resamples, seed {ci.seed})")
                  + " over stories: the stories are the independent samples")
    meta["units"] = "summary: 100 x cosine, count accuracy and swap rate in %; characters/shots: raw cosines"
    meta["identity"] = ("face: ArcFace (insightface) of matched faces; appearance: CLIP-I of the reference's "
                        "character crop (mask, else whole image) vs the character's region of the shot where "
                        "the shot says where it was placed, else the whole shot")
    meta["face_matching"] = (f"K on-stage face characters <-> K+{args.extra_faces} largest faces, best assignment; "
                             "swap = matched face closer to another on-stage character")
    meta["count"] = "count accuracy: detected faces == on-stage face characters (stories with a face character)"
    total = StoryScore()
    options = StoryScoringOptions(extra_faces=args.extra_faces, show_progress=not args.quiet)
    for story in stories:
        one = score_story(story, face_embedder, clip_embedder, options)
        total.characters += one.characters
        total.shots += one.shots
    summary = summarise_stories(total.characters, total.shots, ci)
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    write_story_json(out / "results.json", summary, total.characters, total.shots, meta)
    md = story_markdown(summary, total.characters, total.shots, meta)
    (out / "results.md").write_text(md, encoding="utf-8")
    if not args.no_plot:
        story_chart(out / "story_consistency.png", summary)
    print(md)
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


# --------------------------------------------------------------------------- prompts
def run_prompts(args: argparse.Namespace) -> int:
    chosen = select_prompts(args.subset)
    tokens = {}
    default_token = "person"
    for v in args.class_token:
        if "=" in v:
            tokens.update(_pairs([v], "--class-token"))
        else:
            default_token = v
    refs = _pairs(args.reference, "--reference")
    if not refs:
        source = load_prompt_file()["source"]
        print(f"# {len(chosen)} prompts ({args.subset}) from {source['repo']}/{source['path']}@{source['commit'][:8]}")
        for p in chosen:
            print(f"{p.id}\t{p.render(default_token)}")
        return 0
    if not args.out:
        print("error: --out is required when --reference is given (plan manifest path)", file=sys.stderr)
        return 2
    images = []
    for name in refs:
        for p in chosen:
            for k in range(args.images_per_prompt):
                images.append({
                    "file": f"{name}/{p.id.replace('/', '_')}_{k}.png",
                    "prompt": p.render(tokens.get(name, default_token)),
                    "characters": [name],
                    "seed": args.seed + k,
                    "prompt_id": p.id,
                })
    out = Path(args.out)
    # the manifest resolves reference paths against its own folder; they were given against the current one
    here = {name: os.path.relpath(Path(path).expanduser().resolve(), out.parent.resolve()) for name, path in refs.items()}
    plan = {
        "format": FORMAT,
        "method": args.method,
        "prompt_source": f"{PROMPTS_FILE.name} subset={args.subset}",
        "references": here,
        "images": images,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(plan, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}: {len(images)} images = {len(refs)} character(s) x {len(chosen)} prompts "
          f"x {args.images_per_prompt}")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "storymaker evaluate") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv.insert(0, "score")
    args = build_parser(prog).parse_args(argv)
    if args.command is None:
        build_parser(prog).print_help()
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run = {"score": run_score, "story": run_story, "prompts": run_prompts}[args.command]
        return run(args)
    except (ManifestError, EmbedderError, ValueError, FileNotFoundError, ImportError) as exc:
        # FaceAnalyzer errors subclass these; their messages say what to do
        print(f"error: {exc}", file=sys.stderr)
        return 2

