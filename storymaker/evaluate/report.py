"""Write the results: markdown table, JSON (summary + every image), bar chart PNG.

matplotlib is optional: without it the chart is skipped with a warning, the tables
are still written.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from .aggregate import ALL

logger = logging.getLogger(__name__)

METRICS = (("face_sim", "Face Sim"), ("clip_i", "CLIP-I"), ("clip_t", "CLIP-T"))


def _fmt_interval(iv: Mapping[str, Any] | None) -> str:
    if not iv or iv.get("mean") is None:
        return "–"
    if iv.get("low") is None:
        return f"{iv['mean']:.2f} (n={iv['n']})"
    return f"{iv['mean']:.2f} [{iv['low']:.2f}, {iv['high']:.2f}]"


def _confidence_label(summary: Mapping[str, Mapping[str, Any]]) -> str:
    for table in summary.values():
        for stats in table.values():
            for key, _ in METRICS:
                conf = (stats.get(key) or {}).get("confidence")
                if conf:
                    return f"{conf:.0%}"
    return "95%"


def markdown_table(summary: Mapping[str, Mapping[str, Any]], meta: Mapping[str, Any] | None = None,
                   records: Sequence[Mapping[str, Any]] | None = None, max_listed: int = 50) -> str:
    """One table: a row per (method, character) plus the method's pooled ``ALL`` row.

    With ``records`` (per-image dicts) the images where a character got no face are
    listed too (up to ``max_listed`` per method), so failures can be inspected.
    """
    lines = []
    if meta:
        lines.append("# StoryMaker evaluation")
        lines.append("")
        for key in ("face_model", "clip_model", "ci", "units", "face_matching", "not_scored_scenes_without_file"):
            if key in meta:
                lines.append(f"- **{key}**: {meta[key]}")
        lines.append("")
    lines.append("| method | character | images | Face Sim | no face | CLIP-I | CLIP-T | swap rate |")
    lines.append("|---|---|---:|---|---:|---|---|---|")
    for method, table in summary.items():
        for character, s in table.items():
            no_face = f"{s['face_missing']}/{s['face_found'] + s['face_missing']}" if (
                s["face_found"] + s["face_missing"]) else "–"
            swap = s.get("swap")
            swap_txt = f"{swap['rate']:.1f}% [{swap['low']:.1f}, {swap['high']:.1f}] ({swap['swaps']}/{swap['n']})" \
                if swap else "–"
            name = f"**{character}**" if character == ALL else character
            lines.append(
                f"| {method} | {name} | {s['n_images']} | {_fmt_interval(s['face_sim'])} | {no_face} | "
                f"{_fmt_interval(s['clip_i'])} | {_fmt_interval(s['clip_t'])} | {swap_txt} |"
            )
    lines.append("")
    lines.append(f"Values: mean [{_confidence_label(summary)} CI] of 100 × cosine. "
                 "Face Sim averages detected faces only; 'no face' counts (image, character) pairs "
                 "without a matched face (results.json also has face_sim_missing_as_0).")
    if records:
        missing = [
            (r["method"], r["file"], [c for c, cs in r["per_character"].items() if not cs["face_found"]])
            for r in records if r.get("n_faces_detected") is not None
        ]
        missing = [m for m in missing if m[2]]
        if missing:
            lines += ["", "## Images without a matched face", ""]
            for method in summary:
                rows = [m for m in missing if m[0] == method]
                for _, file, chars in rows[:max_listed]:
                    lines.append(f"- {method}: `{file}` — {', '.join(chars)}")
                if len(rows) > max_listed:
                    lines.append(f"- {method}: … {len(rows) - max_listed} more in results.json")
    return "\n".join(lines) + "\n"


def _clean(obj: Any) -> Any:
    """JSON-safe copy (NaN -> None, Paths -> str)."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: Path, summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]],
               meta: Mapping[str, Any]) -> Path:
    doc = {"meta": meta, "summary": summary, "images": list(records)}
    path.write_text(json.dumps(_clean(doc), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def pyplot_or_none(path: Path):
    """matplotlib's pyplot on the Agg backend, or None (logged) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib not installed: skipping %s (pip install matplotlib)", path)
        return None
    return plt


def bar_chart(path: Path, summary: Mapping[str, Mapping[str, Any]]) -> Path | None:
    """Grouped bars (metric x method, pooled ``ALL`` rows) with CI error bars; None if no matplotlib."""
    plt = pyplot_or_none(path)
    if plt is None:
        return None
    methods = list(summary)
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(METRICS) + 0.3 * len(methods), 4))
    for k, method in enumerate(methods):
        xs, ys, lo, hi = [], [], [], []
        for m, (key, _label) in enumerate(METRICS):
            iv = summary[method][ALL][key]
            if iv.get("mean") is None:
                continue
            xs.append(m + (k - (len(methods) - 1) / 2) * width)
            ys.append(iv["mean"])
            lo.append(iv["mean"] - iv["low"] if iv.get("low") is not None else 0.0)
            hi.append(iv["high"] - iv["mean"] if iv.get("high") is not None else 0.0)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=method)
    ax.set_xticks(range(len(METRICS)))
    ax.set_xticklabels([label for _, label in METRICS])
    ax.set_ylabel(f"100 × cosine (mean, {_confidence_label(summary)} CI)")
    ax.set_title("pooled over characters; Face Sim over detected faces", fontsize="small")
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
