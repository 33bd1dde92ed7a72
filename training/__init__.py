"""Training and fine-tuning StoryMaker: dataset builder, trainer, export in the release layout.

Entry points (see docs/training.md), verbs of the pack's one command:
  python -m storymaker prepare IMAGES OUT [--masks DIR] [--sam CKPT]   build a dataset (manifest.jsonl)
  python -m storymaker train --config training/configs/tiny-cpu.yaml   train (accelerate launch for many GPUs)
  python -m storymaker export --checkpoint RUN/checkpoints/step-N --output storymaker.safetensors
  python -m training.toy OUT                                           a toy dataset (no photos, no models)
(`python -m training.prepare|train|export` runs the same mains from the repository.) Installed with
`pip install .[train]`, this package is `storymaker_training` (never a top-level `training`), which the
`storymaker` command then runs; hence relative imports inside it.

Modules, one job each: `config` (YAML -> dataclasses), `synthetic` (random SDXL-shaped models),
`components` (frozen base models and encoders), `processors` (LoRA + image-branch attention processors),
`model` (the trainable module), `initialise` (release / IP-Adapter starting points), `dataset` (samples,
buckets, sampler), `losses`, `step` (one micro-step), `train` (the accelerate loop), `previews`,
`export`, `prepare`, `toy`.
"""
