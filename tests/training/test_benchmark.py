"""benchmarks/train_throughput.py runs in one command and ends with its summary line."""

import importlib.util
import json
import re
import statistics
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "train_throughput.py"


def test_throughput_benchmark_tiny(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("train_throughput", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    out = tmp_path / "bench.json"
    assert bench.main(["--steps", "2", "--warmup", "1", "--workers", "0", "--batch-size", "2", "--json", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("train_throughput: ") and "samples/s (peak " in last
    assert last.endswith("x diffusion loss only, interleaved)"), last
    result = json.loads(out.read_text())
    times = result["step_times_s"]  # the raw timings: both variants timed, interleaved, 2 steps each
    assert set(times) == {"with attention loss", "diffusion loss only"}
    assert all(len(t) == 2 and min(t) > 0 for t in times.values()), times
    main, baseline = (statistics.median(times[k]) for k in ("with attention loss", "diffusion loss only"))
    printed = re.match(r"train_throughput: ([0-9.]+) samples/s \(peak [0-9.]+ GiB; step ([0-9.]+)x", last)
    assert float(printed[1]) == pytest.approx(2 / main, abs=1e-3)  # batch 2 / median step
    assert float(printed[2]) == pytest.approx(main / baseline, abs=1e-3)
    assert result["trainable_params"] > 0 and result["attention_loss"]
