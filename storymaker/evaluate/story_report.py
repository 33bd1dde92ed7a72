"""Write story consistency results: results.json (summary, every character and shot), results.md, a chart.

Same conventions as ``report.py`` (100 x cosine, mean [CI], JSON without NaN); matplotlib is optional.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from .report import _clean, _fmt_interval, pyplot_or_none
from .story_metrics import CharacterStoryScore, ShotScore

logger = logging.getLogger(__name__)

SIMILARITIES = (("face", "ref_shot", "ArcFace ref↔shot"), ("face", "shot_shot", "ArcFace shot↔shot"),
                ("appearance", "ref_shot", "CLIP-I ref↔shot"), ("appearance", "shot_shot", "CLIP-I shot↔shot"))


def shot_dict(shot: ShotScore) -> dict[str, Any]:
    return {**asdict(shot), "count_correct": shot.count_correct}


def write_story_json(path: Path, summary: Mapping[str, Any], characters: Sequence[CharacterStoryScore],
                     shots: Sequence[ShotScore], meta: Mapping[str, Any]) -> Path:
    doc = {"meta": meta, "summary": summary, "characters": [asdict(c) for c in characters],
           "shots": [shot_dict(s) for s in shots]}
    path.write_text(json.dumps(_clean(doc), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _cos(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def story_markdown(summary: Mapping[str, Any], characters: Sequence[CharacterStoryScore],
                   shots: Sequence[ShotScore], meta: Mapping[str, Any], max_listed: int = 50) -> str:
    """Summary per method, then one row per (story, character), then the shots that need a look."""
    lines = ["# Story consistency", ""]
    for key in ("sources", "face_model", "clip_model", "ci", "units", "identity", "face_matching", "count"):
        if key in meta:
            lines.append(f"- **{key}**: {meta[key]}")
    lines += ["", "| method | stories | shots (missing) | " + " | ".join(label for *_, label in SIMILARITIES)
              + " | no face | count accuracy | swap rate |",
              "|---|---:|---:|" + "---|" * len(SIMILARITIES) + "---:|---|---|"]
    for method, s in summary.items():
        sims = " | ".join(_fmt_interval(s[mode][key]) for mode, key, _ in SIMILARITIES)
        face = s["face"]
        no_face = f"{face['no_face']}/{face['on_stage'] - face['missing_shots']}" if face["characters"] else "–"
        count = s["count"]
        acc = f"{_fmt_interval(s['count_accuracy'])} ({count['exact']}/{count['shots']})" if count["shots"] else "–"
        swap = s["swap"]
        swap_txt = f"{swap['rate']:.1f}% [{swap['low']:.1f}, {swap['high']:.1f}] ({swap['swaps']}/{swap['n']})" \
            if swap else "–"
        lines.append(f"| {method} | {s['stories']} | {s['shots']} ({s['shots_missing']}) | {sims} | {no_face} | "
                     f"{acc} | {swap_txt} |")
    lines += ["", "Similarities: mean over (story, character) of 100 × cosine [CI over stories]; count accuracy: "
              "% of shots whose detected-face count equals the face characters on stage.", "",
              "## Per story and character", "",
              "| method | story | character | mode | on stage | missing shots | no face | ref↔shot | shot↔shot "
              "(pairs) | swaps |", "|---|---|---|---|---:|---:|---:|---:|---:|---|"]
    for c in characters:
        no_face = str(c.no_face) if c.mode == "face" else "–"
        swaps = f"{c.swaps}/{c.swap_n}" if c.swap_n else "–"
        lines.append(f"| {c.method} | {c.story} | {c.character} | {c.mode} | {c.on_stage} | {c.missing_shots} | "
                     f"{no_face} | {_cos(c.ref_shot)} | {_cos(c.shot_shot)} ({c.pairs}) | {swaps} |")
    missing = [s for s in shots if s.problem is not None]
    if missing:
        lines += ["", "## Shots not scored", ""]
        lines += [f"- {s.method} / {s.story} / shot {s.shot}: {s.problem}" for s in missing[:max_listed]]
        if len(missing) > max_listed:
            lines.append(f"- … {len(missing) - max_listed} more in results.json")
    unscored = [(s, name, rec["problem"]) for s in shots for name, rec in (s.per_character or {}).items()
                if rec.get("problem")]
    if unscored:
        lines += ["", "## Characters not scored in a shot", ""]
        lines += [f"- {s.method} / {s.story} / shot {s.shot} / {name}: {problem}"
                  for s, name, problem in unscored[:max_listed]]
        if len(unscored) > max_listed:
            lines.append(f"- … {len(unscored) - max_listed} more in results.json")
    compared = Counter(rec.get("compared", "").split(" x")[0] for s in shots for rec in (s.per_character or {}).values()
                       if rec.get("compared"))
    if compared:
        lines += ["", "Appearance characters compared on: " + ", ".join(f"{k} {v}×" for k, v in sorted(compared.items()))
                  + " (region: the character's region of the shot, cropped as its references; whole shot: no region "
                  "known). Numbers of the two kinds are not comparable."]
    wrong = [s for s in shots if s.count_correct is False]
    if wrong:
        lines += ["", "## Shots with a wrong face count", ""]
        lines += [f"- {s.method} / {s.story} / shot {s.shot}: {s.faces_detected} face(s) found, "
                  f"{s.faces_expected} expected ({', '.join(s.characters) or 'nobody'} on stage)"
                  for s in wrong[:max_listed]]
        if len(wrong) > max_listed:
            lines.append(f"- … {len(wrong) - max_listed} more in results.json")
    return "\n".join(lines) + "\n"


def story_chart(path: Path, summary: Mapping[str, Any]) -> Path | None:
    """Left: the four similarities; right: count accuracy and swap rate; bars per method with CI whiskers."""
    plt = pyplot_or_none(path)
    if plt is None:
        return None
    methods = list(summary)
    width = 0.8 / max(len(methods), 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    for k, method in enumerate(methods):
        s = summary[method]
        shift = (k - (len(methods) - 1) / 2) * width
        left_ivs = [s[mode][key] for mode, key, _ in SIMILARITIES]
        swap = s["swap"] or {}
        right_ivs = [s["count_accuracy"], {"mean": swap.get("rate"), "low": swap.get("low"), "high": swap.get("high")}]
        for ax, ivs in ((left, left_ivs), (right, right_ivs)):
            xs, ys, lo, hi = [], [], [], []
            for m, iv in enumerate(ivs):
                if iv.get("mean") is None:
                    continue
                xs.append(m + shift)
                ys.append(iv["mean"])
                lo.append(iv["mean"] - iv["low"] if iv.get("low") is not None else 0.0)
                hi.append(iv["high"] - iv["mean"] if iv.get("high") is not None else 0.0)
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=method)
    left.set_xticks(range(len(SIMILARITIES)))
    left.set_xticklabels([label for *_, label in SIMILARITIES], fontsize="small")
    left.set_ylabel("100 × cosine (mean over characters, CI over stories)")
    right.set_xticks([0, 1])
    right.set_xticklabels(["count accuracy", "swap rate"], fontsize="small")
    right.set_ylabel("%")
    for ax in (left, right):
        ax.grid(axis="y", alpha=0.3)
    left.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
