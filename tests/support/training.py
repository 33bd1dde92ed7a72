"""Helpers for the training tests: a toy dataset, the tiny config, a trainer, a fixed batch.

Everything is built from `training.toy` / `training.synthetic` (random tiny SDXL-shaped models), so the
tests exercise what `configs/tiny-cpu.yaml` runs.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = ROOT / "training" / "configs" / "tiny-cpu.yaml"


def toy_manifest(folder: Path, count: int = 8, size: int = 128, seed: int = 0) -> Path:
    from training.toy import build_toy_dataset

    return build_toy_dataset(str(folder), count=count, size=size, seed=seed)


def tiny_config_dict(manifest: Path, output_dir: Path, **sections) -> dict:
    """The shipped tiny-cpu config pointed at `manifest`/`output_dir`, with section overrides merged in."""
    data = yaml.safe_load(TINY_CONFIG.read_text())
    data["data"]["manifest"] = str(manifest)
    data["train"].update(output_dir=str(output_dir), tracker=None, preview_every=0)
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return data


def tiny_config(manifest: Path, output_dir: Path, **sections):
    from training.config import config_from_dict

    return config_from_dict(tiny_config_dict(manifest, output_dir, **sections))


def no_drops() -> dict:
    return dict(image=0.0, text=0.0, both=0.0, face_tokens=0.0, character_tokens=0.0)


def make_trainer(config):
    """A Trainer in this process (accelerate state is reset so several can run in one test session)."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
    from training.train import Trainer

    return Trainer(copy.deepcopy(config))


def first_batch(trainer) -> dict:
    return next(iter(trainer._loader()))


def frozen_base_parameters(trainer) -> list:
    """(name, parameter) of every frozen module's own weights (processors excluded)."""
    trainable = {id(p) for p in trainer.raw_model.parameters()}
    out = []
    for module in trainer.components.frozen_modules:
        out += [(n, p) for n, p in module.named_parameters() if id(p) not in trainable]
    return out


def seeded_step(trainer, batch: dict, seed: int = 0):
    """One micro-step with the noise/timestep draws pinned, so only the weights change between calls."""
    torch.manual_seed(seed)
    return trainer.step_fn(trainer.model, batch)
