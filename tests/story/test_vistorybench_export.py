"""ViStoryBench export: finished scenes land where its bench_run.py reads them; missing ones are listed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from storymaker.story.manifest import DONE, FAILED, Manifest
from storymaker.story.vistorybench.cli import main
from storymaker.story.vistorybench.convert import ConvertOptions, convert_dataset
from storymaker.story.vistorybench.export import ExportError, export_stories
from support.vistorybench_data import build_dataset

TS = "20250101_120000"


def vistorybench_layout(outputs: Path, method: str, mode: str, language: str, timestamp: str) -> dict:
    """{story id: {shot index: image}} of one export, checked against ViStoryBench's own rules, restated here
    from their README ("3.1 Output Structure", "Example of your method") and code
    (``dataset_loader/read_outputs.py``, ``bench_run.py``) -- not with this pack's reader."""
    import os
    import re
    from datetime import datetime

    # README: <method>/<mode>/<language>/<timestamp>/<story_id>/shots/<image>; timestamp YYYYMMDD_HHMMSS
    assert re.fullmatch(r"\d{8}[_-]\d{6}", timestamp)  # read_outputs.TIMESTAMP_PATTERN
    datetime.strptime(timestamp.replace("_", "-"), "%Y%m%d-%H%M%S")  # read_outputs._latest_timestamp
    method_dir = outputs / method
    # load_outputs reads the language-first layout <method>/<language>/... whenever that folder exists
    assert not (method_dir / language).is_dir()
    run = method_dir / mode / language / timestamp
    found = {}
    story_dirs = [d for d in os.listdir(run) if (run / d).is_dir()]
    for sid in sorted(story_dirs, key=int):  # natsorted(..., key=int): every folder name is an integer
        assert re.fullmatch(r"\d+", sid) and len(sid) >= 2, sid  # README: story_id "01", "02", ... (dataset names)
        entries = os.listdir(run / sid)
        # _collect_story_images: timestamp sub-folders would be read instead of the story folder itself
        assert not [e for e in entries if re.fullmatch(r"\d{8}[_-]\d{6}", e)]
        shots = [e for e in entries if e.lower() in {"shots", "shot"} or e.endswith("shot") or e.endswith("shots")]
        assert shots == ["shots"] and (run / sid / "shots").is_dir()  # README: <story_id>/shots/
        images = {}
        for name in os.listdir(run / sid / "shots"):
            assert name.lower().endswith((".png", ".jpg", ".jpeg", ".gif", ".bmp")), name  # IMAGE_EXTS
            index = int(name.split("_")[-1].split(".")[0])  # their shot key; a ValueError stops their reader
            assert index not in images, name
            images[index] = run / sid / "shots" / name
        found[sid] = images
    return found


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture
def converted(dataset, tmp_path) -> Path:
    out = tmp_path / "stories"
    convert_dataset(dataset, out, ConvertOptions(stories=["02", "08"]))
    return out


def render(run_root: Path, converted: Path, story_id: str, done: dict[str, tuple], failed: dict[str, str] = {}) -> Path:
    """A run folder as the runner leaves it: images + manifest (written by the runner's Manifest)."""
    run = run_root / f"vistorybench-en-{story_id}"
    run.mkdir(parents=True)
    manifest = Manifest.open(run / "manifest.json", {"name": run.name, "file": str(converted / story_id / "story.yaml")})
    for scene_id, color in done.items():
        name = f"{int(scene_id):02d}-{scene_id}.png"
        Image.new("RGB", (8, 8), color).save(run / name)
        manifest.update(scene_id, status=DONE, file=name, sha256=hashlib.sha256((run / name).read_bytes()).hexdigest())
    for scene_id, error in failed.items():
        manifest.update(scene_id, status=FAILED, error=error)
    return run


def test_export_writes_vistorybench_layout_and_lists_what_is_missing(converted, tmp_path):
    runs = tmp_path / "runs"
    render(runs, converted, "02", {"1": (255, 0, 0)}, {"2": "node 7 raised: no face"})
    render(runs, converted, "08", {"1": (0, 255, 0), "2": (0, 0, 255)})
    outputs = tmp_path / "outputs"
    report = export_stories([runs], outputs, "storymaker", "base", "en", TS)
    shot = outputs / "storymaker" / "base" / "en" / TS / "08" / "shots" / "2.png"
    assert shot.read_bytes() == (runs / "vistorybench-en-08" / "02-2.png").read_bytes()
    assert report.exported == {"02": [1], "08": [1, 2]}
    assert report.missing == ["02/2: failed: node 7 raised: no face"]
    found = vistorybench_layout(outputs, "storymaker", "base", "en", TS)
    assert {sid: sorted(shots) for sid, shots in found.items()} == {"02": [1], "08": [1, 2]}
    assert found["08"][2].read_bytes() == shot.read_bytes()
    assert "MISSING 1 shot(s)" in report.format() and report.warnings == []


def test_export_warns_about_other_run_folders_bench_run_would_score_too(converted, tmp_path, capsys):
    """bench_run.py without --timestamp scores every folder discover_timestamps lists, each separately; and
    with <method>/<language> present, load_outputs reads only that language-first layout."""
    runs = tmp_path / "runs"
    render(runs, converted, "08", {"1": (1, 1, 1), "2": (2, 2, 2)})
    outputs = tmp_path / "outputs"
    assert export_stories([runs], outputs, "sm", timestamp=TS).warnings == []
    again = export_stories([runs], outputs, "sm", timestamp=TS)  # the same run again: nothing to warn about
    assert again.warnings == [] and again.exported == {"08": [1, 2]}
    later = export_stories([runs], outputs, "sm", timestamp="20250102_090000")
    assert len(later.warnings) == 1 and TS in later.warnings[0] and "--timestamp 20250102_090000" in later.warnings[0]
    (outputs / "sm" / "en" / "base" / "old").mkdir(parents=True)  # language-first, any name
    args = ["export", str(runs), "--to", str(outputs), "--method", "sm", "--timestamp", "20250103_090000"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("WARNING: ") == 2 and "20250102_090000, old" in out and "language-first" in out
    (outputs / "sm" / "en").rename(tmp_path / "language-first")  # moved away, as the warning says
    for ts in (TS, "20250102_090000", "20250103_090000"):  # each export is a complete run by their rules
        assert sorted(vistorybench_layout(outputs, "sm", "base", "en", ts)["08"]) == [1, 2]


def test_cli_exit_status_damaged_files_and_links(converted, tmp_path, capsys):
    runs = tmp_path / "runs"
    run = render(runs, converted, "08", {"1": (1, 2, 3), "2": (4, 5, 6)})
    outputs = tmp_path / "outputs"
    args = ["export", str(run), "--to", str(outputs), "--method", "sm", "--timestamp", TS, "--link"]
    assert main(args) == 0
    assert f"--method sm --mode base --language en --timestamp {TS}" in capsys.readouterr().out
    target = outputs / "sm" / "base" / "en" / TS / "08" / "shots" / "1.png"
    assert target.stat().st_ino == (run / "01-1.png").stat().st_ino  # hard link
    Image.new("RGB", (8, 8), (9, 9, 9)).save(run / "02-2.png")  # changed after rendering
    (run / "01-1.png").unlink()
    assert main(args[:-3] + ["--timestamp", "20250101_130000"]) == 1
    out = capsys.readouterr().out
    assert "08/1: its file 01-1.png is gone" in out and "08/2: 02-2.png differs from what was rendered" in out
    assert not (outputs / "sm" / "base" / "en" / "20250101_130000" / "08" / "shots").exists()


def test_unrendered_shots_are_missing_and_the_sidecar_or_name_identifies_the_story(converted, tmp_path):
    runs = tmp_path / "runs"
    render(runs, converted, "08", {"2": (1, 1, 1)})  # shot 1 never ran
    report = export_stories([runs / "vistorybench-en-08"], tmp_path / "o", "m", timestamp=TS)
    assert report.missing == ["08/1: not rendered yet (no record in the manifest)"]
    # story file gone: the name still says which story; expected shots are then the manifest's scenes
    (converted / "08" / "vistorybench.json").unlink()
    report = export_stories([runs / "vistorybench-en-08"], tmp_path / "o2", "m", timestamp=TS)
    assert report.exported == {"08": [2]} and report.missing == []


def test_export_refuses_what_it_cannot_place(converted, tmp_path):
    runs = tmp_path / "runs"
    render(runs, converted, "08", {"1": (1, 1, 1)})
    with pytest.raises(ExportError, match="converted with --language en, not ch"):
        export_stories([runs], tmp_path / "o", "m", language="ch", timestamp=TS)
    copy = tmp_path / "again"
    render(copy, converted, "08", {"1": (1, 1, 1)})
    with pytest.raises(ExportError, match="are both story 08"):
        export_stories([runs, copy], tmp_path / "o", "m", timestamp=TS)
    other = tmp_path / "other" / "holiday"
    other.mkdir(parents=True)
    Manifest.open(other / "manifest.json", {"name": "holiday", "file": str(tmp_path / "holiday.yaml")})
    with pytest.raises(ExportError, match="not a converted ViStoryBench story"):
        export_stories([other], tmp_path / "o", "m", timestamp=TS)
    with pytest.raises(ExportError, match="no manifest.json here"):
        export_stories([tmp_path / "nothing"], tmp_path / "o", "m", timestamp=TS)
    with pytest.raises(ValueError, match="must look like 20250101_120000"):
        export_stories([runs], tmp_path / "o", "m", timestamp="latest")
    assert main(["export", str(runs), "--to", str(tmp_path / "o"), "--method", "m", "--timestamp", "x"]) == 2
