"""Two processes through `accelerate launch -m storymaker train` (DDP on gloo, CPU): one consistent checkpoint and
export."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from storymaker_core.weights import load_storymaker_weights
from support.training import ROOT, tiny_config_dict, toy_manifest


@pytest.mark.slow
def test_two_processes_train_one_consistent_checkpoint(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("the accelerate CLI is not installed")
    manifest = toy_manifest(tmp_path / "toy", count=8)
    run = tmp_path / "run"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(manifest, run, train={"max_steps": 3, "checkpoint_every": 3})))
    # accelerate 1.x: `--cpu` alone uses the single-process launcher; multi-process CPU (gloo) is the
    # torchrun launcher (--multi_gpu) with ACCELERATE_USE_CPU=1.
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                             "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
                             "-m", "storymaker", "train", "--config", str(config)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 3
    assert summary["replicas_consistent"], summary["fingerprints"]  # DDP kept both replicas identical
    checkpoints = list((run / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["step-000003"]  # one checkpoint, no leftover .tmp
    files = sorted(p.name for p in checkpoints[0].iterdir())
    assert files.count("model.safetensors") == 1 and {"random_states_0.pkl", "random_states_1.pkl"} <= set(files)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3  # logged once, by the main process
    weights = load_storymaker_weights(str(run / "storymaker.safetensors"))  # head width from its metadata
    assert weights.info.resampler.dim_head == 16
    assert weights.info.num_processors == 34 and weights.info.lora_rank == 8
