"""Configuration files: the shipped ones load, mistakes are named."""

from pathlib import Path

import pytest
import yaml

from training.config import ConfigError, config_from_dict, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"


@pytest.mark.parametrize("name", ["tiny-cpu.yaml", "sdxl-1gpu.yaml", "sdxl-8gpu.yaml"])
def test_shipped_configs_load(name):
    c = load_config(str(CONFIGS / name))
    assert c.loss.attention_loss_weight == 0.1 and c.loss.attention_loss_layers == "lowest"
    if name.startswith("sdxl"):
        assert c.model.lora_rank == 128 and c.train.mixed_precision == "bf16" and c.model.gradient_checkpointing
    if name == "sdxl-8gpu.yaml":  # the release's run: effective batch 64 on 8 GPUs, lr 1e-4, wd 0.01
        assert c.data.batch_size * c.train.gradient_accumulation_steps * 8 == 64
        assert (c.optim.learning_rate, c.optim.weight_decay) == (1e-4, 0.01)
        assert (c.drop.text, c.loss.noise_offset) == (0.2, 0.05)
        assert c.model.init == "ip-adapter"


@pytest.mark.parametrize("name", ["accelerate-8gpu.yaml", "accelerate-2node.yaml", "accelerate-fsdp.yaml"])
def test_accelerate_configs_are_valid_yaml(name):
    data = yaml.safe_load((CONFIGS / name).read_text())
    assert data["mixed_precision"] == "bf16" and data["num_processes"] >= 8


def test_mistakes_are_named(tmp_path):
    with pytest.raises(ConfigError, match="attenton_loss_weight"):
        config_from_dict({"loss": {"attenton_loss_weight": 0.1}})
    with pytest.raises(ConfigError, match="unknown section"):
        config_from_dict({"trainer": {}})
    with pytest.raises(ConfigError, match=r"train.max_steps: expected int"):
        config_from_dict({"train": {"max_steps": "many"}})
    with pytest.raises(ConfigError, match="null_image"):
        config_from_dict({"drop": {"null_image": "black"}})
    with pytest.raises(ConfigError, match="init_weights"):
        config_from_dict({"model": {"init": "release"}})
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(str(tmp_path / "missing.yaml"))
    c = load_config(str(CONFIGS / "tiny-cpu.yaml"), ("train.max_steps=7", "optim.betas=[0.8, 0.9]"))
    assert c.train.max_steps == 7 and c.optim.betas == (0.8, 0.9)
    assert config_from_dict({"optim": {"learning_rate": 1}}).optim.learning_rate == 1.0
