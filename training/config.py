"""Training configuration: dataclasses loaded from YAML, with clear errors for unknown or mistyped keys.

Why dataclasses and not a free dict: a typo in a YAML key (`attenton_loss_weight`) must stop the run
before hours of GPU time are spent, not be silently ignored. Every section maps to one dataclass; the
defaults are the release's training settings (docs/method.md §5) unless noted.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml


class ConfigError(ValueError):
    """A configuration file or override that cannot be used, naming the key."""


@dataclass
class ModelConfig:
    """What to train and what it starts from."""

    # Base SDXL: a diffusers folder, a single-file checkpoint (.safetensors/.ckpt), or random SDXL-shaped
    # models: "tiny" (tests, laptops) / "random-sdxl" (full size, for throughput checks).
    pretrained: str = "tiny"
    # For a single-file checkpoint offline: a diffusers SDXL folder that supplies the configs/tokenizers.
    single_file_config: Optional[str] = None
    # CLIP ViT-H/14 image encoder (transformers folder), or "tiny" / "random-sdxl" (random CLIPVisionModel).
    image_encoder: str = "tiny"
    # Initialisation: "release" (StoryMaker mask.bin: fine-tune), "ip-adapter" (from scratch, as the
    # release), or "random" (tests).
    init: str = "random"
    init_weights: Optional[str] = None  # mask.bin / .safetensors when init == "release"
    faceid_plusv2: Optional[str] = None  # ip-adapter-faceid-plusv2_sdxl.bin when init == "ip-adapter"
    ip_adapter_plus: Optional[str] = None  # ip-adapter-plus_sdxl_vit-h.bin when init == "ip-adapter"
    lora_rank: int = 128
    lora_scale: float = 1.0  # the release trains at 1.0 (inference default 0.8)
    ip_scale: float = 1.0
    # Resampler widths; None = the release's SDXL values (ResamplerConfig defaults). Tiny runs set them.
    resampler: Optional[dict] = None
    dim_head: int = 64  # resampler head width (not stored in weight files)
    controlnet: Optional[str] = None  # frozen pose ControlNet (diffusers folder), or "tiny"
    gradient_checkpointing: bool = True
    # Dtype of the frozen UNet / text encoders / image encoder / ControlNet ("fp32", "bf16", "fp16"); the
    # trainable weights stay fp32 and mixed precision is autocast. "auto" = the mixed-precision dtype.
    frozen_dtype: str = "auto"
    vae_dtype: str = "fp32"  # the SDXL VAE overflows in fp16; bf16 works but fp32 is the safe default
    seed: int = 0  # random init seed (tiny models, "random" init)


@dataclass
class DataConfig:
    manifest: str = ""  # manifest.jsonl written by `python -m storymaker prepare`
    resolution: int = 1024  # bucket area = resolution^2 (release 960x1280, paper 1024^2)
    buckets: Optional[list] = None  # explicit [[height, width], ...]; None = derived from resolution
    bucket_step: int = 64  # bucket sides are multiples of this (64 keeps SDXL's 1/32 layers integral)
    max_aspect: float = 2.0
    batch_size: int = 1  # per process; batches group images of one bucket and one character count
    num_workers: int = 4
    mask_dilate: int = 7  # release: 7x7 dilation of each character mask before crop and loss mask
    reference_rotation: float = 10.0  # release: character crop rotated by U(-10, 10) degrees
    max_characters: int = 3


@dataclass
class DropConfig:
    """Null conditions (docs/method.md §5.2): per sample one uniform draw decides image/text/both."""

    image: float = 0.05
    text: float = 0.20  # release 0.2, paper 0.1
    both: float = 0.05
    face_tokens: float = 0.10  # inside the resampler, all characters of a sample at once
    character_tokens: float = 0.10
    # Null image condition: "zero_hidden" = resampler(0, 0, 0) on zero CLIP hidden states, exactly the
    # negative tokens used at inference (default: what is trained is what CFG uses); "zero_pixels" = CLIP
    # of a zeroed normalised pixel tensor and a zero ID (the release's training, for parity).
    null_image: str = "zero_hidden"


@dataclass
class LossConfig:
    noise_offset: float = 0.05
    attention_loss_weight: float = 0.1  # lambda (paper 0.1 = release --ip_loss 0.1); 0 turns it off
    # Which cross-attention layers feed the attention loss: "lowest" = every attn2 at the UNet's lowest
    # resolution (SDXL: down_blocks.2, mid_block, up_blocks.0 = 60 layers), or a list of name prefixes.
    attention_loss_layers: Any = "lowest"
    attention_loss_upsample: int = 2  # maps and masks compared at 2x the layers' resolution (SDXL 1/16)
    attention_loss_on_dropped: bool = True  # the release applies it on image/text-dropped steps too
    mask_loss_weight: float = 5.0  # release: MSE weighted (1 + 5*M) inside character masks; 0 = plain MSE


@dataclass
class OptimConfig:
    learning_rate: float = 1e-4
    lora_learning_rate: Optional[float] = None  # None = learning_rate (release --lr_lora)
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float = 1.0  # real clipping (the release's was a no-op); 0 turns it off
    lr_scheduler: str = "constant"  # any diffusers.optimization scheduler name
    warmup_steps: int = 0


@dataclass
class TrainConfig:
    output_dir: str = "runs/storymaker"
    seed: int = 0
    max_steps: int = 100_000  # optimiser steps
    gradient_accumulation_steps: int = 1
    # "no", "bf16", "fp16", or None = whatever `accelerate config` / `accelerate launch` says.
    mixed_precision: Optional[str] = "bf16"
    checkpoint_every: int = 1000  # optimiser steps; one checkpoint per optimiser step, never per micro-step
    keep_checkpoints: int = 3  # older ones are deleted (0 = keep all)
    resume: Optional[str] = "latest"  # "latest" (if any), a checkpoint folder, or None (start fresh)
    log_every: int = 10
    preview_every: int = 500  # attention-map PNGs (needs the attention loss); 0 = never
    tracker: Optional[str] = "tensorboard"  # any accelerate tracker name, or None
    export_dtype: str = "fp16"  # dtype of the exported StoryMaker file (release: fp32)
    allow_tf32: bool = True


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    drop: DropConfig = field(default_factory=DropConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_CHOICES = {
    ("model", "init"): ("release", "ip-adapter", "random"),
    ("model", "frozen_dtype"): ("auto", "fp32", "bf16", "fp16"),
    ("model", "vae_dtype"): ("fp32", "bf16", "fp16"),
    ("drop", "null_image"): ("zero_hidden", "zero_pixels"),
    ("train", "mixed_precision"): (None, "no", "bf16", "fp16"),
    ("train", "export_dtype"): ("fp32", "fp16", "bf16"),
}


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check a YAML value against a dataclass field's annotation (ints are accepted for floats)."""
    hint = annotation
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is Any:
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is tuple and isinstance(value, (list, tuple)):
        return tuple(value)
    is_bool_for_int = hint is int and isinstance(value, bool)
    if hint in (int, str, bool, list, dict) and isinstance(value, hint) and not is_bool_for_int:
        return value
    raise ConfigError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _build(cls, data: Any, section: str):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"section '{section}' must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) in section '{section}': {', '.join(unknown)}. Known keys: "
                          f"{', '.join(fields)}")
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in data.items()}
    for (sec, key), choices in _CHOICES.items():
        if sec == section and key in kwargs and kwargs[key] not in choices:
            raise ConfigError(f"{section}.{key} = {kwargs[key]!r}; choose one of {list(choices)}")
    return cls(**kwargs)


def config_from_dict(data: dict) -> Config:
    if not isinstance(data, dict):
        raise ConfigError("the configuration must be a mapping of sections (model, data, drop, loss, optim, train)")
    sections = {f.name: f.default_factory for f in dataclasses.fields(Config)}
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"unknown section(s): {', '.join(unknown)}. Known sections: {', '.join(sections)}")
    config = Config(**{name: _build(type(factory()), data.get(name), name) for name, factory in sections.items()})
    _check(config)
    return config


def _check(c: Config) -> None:
    d = c.drop
    if min(d.image, d.text, d.both, d.face_tokens, d.character_tokens) < 0 or d.image + d.text + d.both > 1:
        raise ConfigError("drop: probabilities must be >= 0 and image + text + both <= 1")
    if c.model.init == "release" and not c.model.init_weights:
        raise ConfigError("model.init = release needs model.init_weights (the StoryMaker mask.bin or .safetensors)")
    if c.model.init == "ip-adapter" and not (c.model.faceid_plusv2 and c.model.ip_adapter_plus):
        raise ConfigError("model.init = ip-adapter needs model.faceid_plusv2 (ip-adapter-faceid-plusv2_sdxl.bin) "
                          "and model.ip_adapter_plus (ip-adapter-plus_sdxl_vit-h.bin)")
    if c.model.lora_rank < 1 or c.train.gradient_accumulation_steps < 1 or c.data.batch_size < 1:
        raise ConfigError("lora_rank, gradient_accumulation_steps and batch_size must be >= 1")
    if c.data.bucket_step % 8:
        raise ConfigError("data.bucket_step must be a multiple of 8 (the VAE's downsampling)")
    if not 1 <= c.data.max_characters <= 3:
        raise ConfigError("data.max_characters must be 1..3 (the resampler has 3 position slots)")


def apply_override(data: dict, override: str) -> None:
    """`section.key=value` (value parsed as YAML) into a raw config dict."""
    if "=" not in override or "." not in override.split("=", 1)[0]:
        raise ConfigError(f"override {override!r} must look like section.key=value")
    path, raw = override.split("=", 1)
    section, key = path.split(".", 1)
    data.setdefault(section, {})
    if not isinstance(data[section], dict):
        raise ConfigError(f"cannot override {path}: section '{section}' is not a mapping")
    data[section][key] = yaml.safe_load(raw)


def load_config(path: str, overrides: tuple = ()) -> Config:
    """YAML file (+ `section.key=value` overrides) -> Config; relative paths stay relative to the CWD."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: no such configuration file (see training/configs/ for examples)")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    for override in overrides:
        apply_override(data, override)
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
