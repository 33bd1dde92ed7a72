"""Rendered stories -> ViStoryBench's output layout (``outputs.py``), ready for its ``bench_run.py``.

Reads each story run folder the runner wrote (``story/<name>/manifest.json``) and copies (or hard-links)
every finished scene to ``<outputs>/<method>/<mode>/<language>/<timestamp>/<NN>/shots/<shot index>.png``.
Only scenes the manifest records as done, whose file is there with the recorded sha256, are exported;
every other expected shot is listed as missing with the reason. Nothing is filled in: ViStoryBench skips
a shot without an image, which would score a method on fewer shots than its rivals, so the caller gets a
failing exit status until every shot is there.

``bench_run.py`` without ``--timestamp`` scores every run folder it finds beside this one, each separately
(``discover_timestamps``), and reads only the language-first layout when ``<method>/<language>`` exists
(``load_outputs``); :func:`other_runs` turns both into warnings on the report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..manifest import DONE, FORMAT
from .convert import SIDECAR
from .outputs import check_timestamp, new_timestamp, output_shot_path

logger = logging.getLogger(__name__)

__all__ = ["ExportError", "ExportReport", "export_stories", "find_runs", "other_runs"]
_NAME = re.compile(r"^vistorybench-(en|ch)-(\d+)$")


class ExportError(ValueError):
    """A run folder cannot be exported at all (no manifest, not a converted story, clashing story ids)."""


@dataclass
class ExportReport:
    outputs: Path  # the run folder written: <outputs>/<method>/<mode>/<language>/<timestamp>
    timestamp: str
    exported: dict[str, list[int]] = field(default_factory=dict)  # story id -> shot indices written
    missing: list[str] = field(default_factory=list)  # "01/3: failed: <error>"
    warnings: list[str] = field(default_factory=list)  # other run folders bench_run.py would also score

    def format(self) -> str:
        count = sum(len(v) for v in self.exported.values())
        lines = [f"exported {count} shot image(s) of {len(self.exported)} story(ies) to {self.outputs}"]
        lines += [f"WARNING: {w}" for w in self.warnings]
        if self.missing:
            lines += [f"MISSING {len(self.missing)} shot(s) (not filled in; render them and export again):"]
            lines += [f"  {m}" for m in self.missing]
        return "\n".join(lines)


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run folders (holding manifest.json): each path itself, or the folders inside it that hold one."""
    runs: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if (path / "manifest.json").is_file():
            runs.append(path)
        elif path.is_dir() and (found := sorted(p.parent for p in path.glob("*/manifest.json"))):
            runs += found
        else:
            raise ExportError(f"{path}: no manifest.json here or in its sub-folders; give the folder the story "
                              "runner wrote (story/<name>/, set by its --out)")
    return list(dict.fromkeys(runs))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _identify(run: Path, manifest: dict) -> tuple[str, str, list[str] | None]:
    """(story id, language, expected scene ids or None) from the converter's sidecar, else the name."""
    story_file = Path((manifest.get("story") or {}).get("file") or "")
    sidecar = story_file.parent / SIDECAR if story_file.name else None
    if sidecar and sidecar.is_file():
        data = json.loads(sidecar.read_text(encoding="utf-8"))
        return str(data["story_id"]), str(data["language"]), [str(s) for s in data.get("shots", [])]
    match = _NAME.match(str((manifest.get("story") or {}).get("name") or run.name))
    if not match:
        raise ExportError(f"{run}: not a converted ViStoryBench story (no {SIDECAR} beside its story file and "
                          "its name is not vistorybench-<language>-<NN>)")
    return match.group(2), match.group(1), None


def _place(source: Path, target: Path, link: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and target.read_bytes() == source.read_bytes():
        return
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.unlink(missing_ok=True)
    if link:
        try:
            os.link(source, temporary)
        except OSError as exc:  # another file system, or links not allowed: copy instead
            logger.warning("cannot hard-link %s (%s); copying", source, exc)
            shutil.copyfile(source, temporary)
    else:
        shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def export_stories(runs: list[str | Path], outputs: str | Path, method: str, mode: str = "base",
                   language: str = "en", timestamp: str | None = None, link: bool = False) -> ExportReport:
    """Export every finished scene of ``runs``; missing ones go to ``report.missing`` (never filled).

    Raises ``ExportError`` for a run that is not a converted ViStoryBench story, is in another language,
    or has the same story id as another run.
    """
    timestamp = check_timestamp(timestamp) if timestamp else new_timestamp()
    report = ExportReport(output_shot_path(outputs, method, mode, language, timestamp, "00", 0).parents[2], timestamp)
    report.warnings = other_runs(outputs, method, mode, language, timestamp)
    for warning in report.warnings:
        logger.warning(warning)
    seen: dict[str, Path] = {}
    for run in find_runs(list(runs)):
        try:
            manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ExportError(f"{run / 'manifest.json'}: cannot be read ({exc})") from exc
        if manifest.get("format") != FORMAT:
            raise ExportError(f"{run / 'manifest.json'}: not a story runner manifest")
        story_id, story_language, expected = _identify(run, manifest)
        if story_language != language:
            raise ExportError(f"{run}: story {story_id} was converted with --language {story_language}, "
                              f"not {language}; export it with --language {story_language}")
        if story_id in seen:
            raise ExportError(f"{run} and {seen[story_id]} are both story {story_id}; export one of them")
        seen[story_id] = run
        scenes = manifest.get("scenes") or {}
        expected = expected if expected is not None else [s for s, r in scenes.items() if r.get("status") != "removed"]
        written = report.exported.setdefault(story_id, [])
        for scene_id in sorted(expected, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s)):
            record = scenes.get(scene_id) or {}
            reason = _problem(run, scene_id, record)
            if reason:
                report.missing.append(f"{story_id}/{scene_id}: {reason}")
                continue
            source = run / record["file"]
            _place(source, output_shot_path(outputs, method, mode, language, timestamp, story_id, int(scene_id),
                                            source.suffix.lower()), link)
            written.append(int(scene_id))
    return report


def _subdirs(path: Path) -> list[str]:
    """bench_run.list_subdirs: the folders in ``path`` whose names do not start with '.', sorted."""
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")) if path.is_dir() else []


def other_runs(outputs: str | Path, method: str, mode: str, language: str, timestamp: str) -> list[str]:
    """What else ``bench_run.py --method M --mode X --language L`` would read beside ``timestamp``.

    Without ``--timestamp`` it scores every folder ``discover_timestamps`` lists (any sub-folder of
    ``<M>/<L>/<X>`` and ``<M>/<X>/<L>``, timestamp-like or not), each as a separate run with its own result
    folder; and when ``<M>/<L>`` exists, ``load_outputs`` reads the language-first layout
    ``<M>/<L>/<X>/<timestamp>`` only, so this export (mode first) would not be read at all.
    """
    root = Path(outputs) / method
    found = sorted((set(_subdirs(root / mode / language)) | set(_subdirs(root / language / mode))) - {timestamp})
    warnings = []
    if found:
        warnings.append(f"{root / mode / language} already holds other run folder(s): {', '.join(found)}. "
                        f"bench_run.py without --timestamp scores every one of them, each separately "
                        f"(discover_timestamps); run it with --timestamp {timestamp} to score this export")
    if (root / language).is_dir():
        warnings.append(f"{root / language} exists: ViStoryBench's load_outputs then reads only the "
                        f"language-first layout {method}/{language}/<mode>/<timestamp>, not this export "
                        f"({method}/{mode}/{language}/{timestamp}); move one of the two layouts away")
    return warnings


def _problem(run: Path, scene_id: str, record: dict) -> str | None:
    if not scene_id.isdigit():
        return "scene id is not a shot index"
    if not record:
        return "not rendered yet (no record in the manifest)"
    if record.get("status") != DONE:
        error = f": {record['error']}" if record.get("error") else ""
        return f"{record.get('status', 'pending')}{error}"
    path = run / str(record.get("file") or "")
    if not record.get("file") or not path.is_file():
        return f"its file {path.name or '(none)'} is gone; run the story again to fetch it"
    if record.get("sha256") and _sha256(path) != record["sha256"]:
        return f"{path.name} differs from what was rendered (sha256); run the story again"
    return None
