"""The benchmark scripts run and end with a well-formed summary line (their speed is not tested here)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SUMMARY = re.compile(r"^(?P<name>[a-z_]+): (?P<value>[0-9.]+) ?(?P<unit>[^ (]*).*\((?P<ratio>[^)]*)\)$")


def skip_without_comfyui_requirements(result):
    """A ComfyUI benchmark that could not import one of ComfyUI's requirements in this Python is skipped."""
    missing = re.search(r"ModuleNotFoundError: No module named '([^']+)'", result.stderr)
    if result.returncode != 0 and missing:
        pytest.skip(f"ComfyUI cannot be imported by {sys.executable}: no module named '{missing[1]}'; run pytest "
                    f"under ComfyUI's Python (the one its requirements.txt was installed into)")


def run(script, *args, env=None, comfyui=False):
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=REPO, capture_output=True,
                            text=True, timeout=900, env={**os.environ, **(env or {})})
    if comfyui:
        skip_without_comfyui_requirements(result)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()


@pytest.mark.slow  # full-size CLIP, SAM and resampler on CPU: ~1-2 min
def test_prepare_cost_runs_and_prints_a_summary(tmp_path):
    pytest.importorskip("open_clip")
    pytest.importorskip("segment_anything")
    out = tmp_path / "prepare.json"
    lines = run("prepare_cost.py", "--repeats", "1", "--clip-model", "ViT-B-32", "--out", str(out))
    match = SUMMARY.match(lines[-1])
    assert match and match["name"] == "prepare_cost" and match["unit"] == "ms", lines[-1]
    result = json.loads(out.read_text())
    stages = result["per_character_s"]
    assert set(stages) == {"face analysis", "segmentation", "crops", "CLIP ViT-B-32 encode x2",
                           "resampler (+ negative tokens)"}
    assert all(seconds > 0 for seconds in stages.values()), stages
    assert float(match["value"]) == pytest.approx(sum(stages.values()) * 1000, abs=0.5)  # the summary is the JSON's
    for stage, seconds in stages.items():  # every stage is printed with the JSON's figure
        assert any(line.strip().startswith(stage) and f"{seconds * 1000:.1f} ms" in line for line in lines), stage
    assert result["attn2_first_call_s"] > 0 and result["attn2_cached_call_s"] > 0


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="reads Linux's /proc/self/smaps_rollup")
def test_dataset_memory_runs_and_packed_records_stay_shared():
    lines = run("dataset_memory.py", "--records", "20000", "--workers", "1", "--rounds", "1")
    match = SUMMARY.match(lines[-1])
    assert match and match["name"] == "dataset_memory" and match["unit"] == "MiB", lines[-1]
    copied_list = float(re.search(r"vs ([0-9.]+) MiB", lines[-1])[1])
    assert float(match["value"]) < 0.5 * copied_list  # the worker copied the list, not the packed records


def comfyui_path():
    from support.comfyui import comfyui_path_or_skip

    return str(comfyui_path_or_skip())


@pytest.mark.comfyui
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])  # fp16 is what the GPU run uses
def test_step_overhead_runs_and_prints_a_summary(tmp_path, dtype):
    out = tmp_path / "step.json"
    lines = run("step_overhead.py", "--comfyui", comfyui_path(), "--rounds", "2", "--res", "64", "--dtype", dtype,
                "--out", str(out), comfyui=True)
    assert lines[-1].startswith("step_overhead: ") and "x (1 character)" in lines[-1], lines[-1]
    eager = json.loads(out.read_text())["eager_s"]
    assert len(eager) == 6 and all(seconds > 0 for seconds in eager.values()), eager
    printed = float(re.search(r"step_overhead: ([0-9.]+)x", lines[-1])[1])  # on the CPU the eager figure
    assert printed == pytest.approx(eager["1 char"] / eager["baseline"], abs=1e-3)


@pytest.mark.comfyui
def test_gpu_checks_script_runs_every_benchmark(tmp_path):
    """The one-call GPU script, in its small dry-run form: three benchmarks, three summaries, their JSON."""
    pytest.importorskip("diffusers")
    pytest.importorskip("accelerate")
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_checks.sh"), comfyui_path(), str(tmp_path)],
                            capture_output=True, text=True, timeout=900,
                            env={**os.environ, "GPU_CHECKS_QUICK": "1", "PYTHON": sys.executable})
    skip_without_comfyui_requirements(result)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [line for line in result.stdout.splitlines()[-3:]]
    assert [s.split(":")[0] for s in summaries] == ["step_overhead", "train_throughput", "train_throughput"], summaries
    for name in ("step_overhead", "train_throughput_b1", "train_throughput_b8"):
        assert json.loads((tmp_path / f"{name}.json").read_text())
    assert "torch" in (tmp_path / "environment.txt").read_text()


@pytest.mark.comfyui
@pytest.mark.slow  # a real ComfyUI server with random-weight models: about 2 minutes on 2 cores
def test_story_in_editor_runs_and_prints_a_summary(tmp_path):
    pytest.importorskip("insightface")
    out = tmp_path / "story.json"
    lines = run("story_in_editor.py", "--comfyui", comfyui_path(), "--quick", "--out", str(out), comfyui=True)
    match = SUMMARY.match(lines[-1])
    assert match and match["name"] == "story_in_editor" and match["unit"] == "s/scene", lines[-1]
    result = json.loads(out.read_text())
    assert float(match["value"]) == pytest.approx(result["median_s_per_scene"]["story"], abs=1e-3)
    assert f"{result['ratio']:.3f}x" in match["ratio"]
    assert result["max_png_diff_story_vs_classic"] <= 2  # the story's panels are the classic graph's images
    short, long_ = result["memory"]
    assert (short["scenes"], long_["scenes"]) == (2, 4)
    assert 0 < long_["peak_kv_bytes"] <= 1.5 * short["peak_kv_bytes"], result["memory"]  # one scene's K/V at a time
    assert long_["live_kv_bytes_after"] == 0 and long_["peak_rss_mib"] > 0
    assert any(line.startswith("| wall time, median | ") for line in lines)  # the RESULTS.md rows
    assert any(line.startswith("| 4 scenes | ") for line in lines)
