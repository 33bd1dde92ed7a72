"""benchmarks/train_throughput.py runs in one command and ends with its summary line."""

import importlib.util
import json
from pathlib import Path

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
    assert result["steps_timed"] == 2 and result["samples_per_s"] > 0 and result["batch_size"] == 2
    assert result["trainable_params"] > 0 and result["attention_loss"]
    assert result["variant"] == "with attention loss" and result["baseline"] == "diffusion loss only"
    assert result["step_ratio_vs_baseline"] == result["median_step_s"] / result["baseline_median_step_s"]
