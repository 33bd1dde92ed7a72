"""Training throughput of StoryMaker: samples/s and peak memory of the real trainer at a resolution and batch.

    python benchmarks/train_throughput.py                                   # CPU, tiny SDXL-shaped models, 128^2
    python benchmarks/train_throughput.py --full-size --resolution 1024     # GPU: full-size SDXL shapes, bf16

Everything is the trainer's own code (`training.train.Trainer.train_step`: data loading, VAE, text and
CLIP encoders, resampler, UNet with the StoryMaker processors, diffusion + attention loss, backward, clip,
AdamW) on random weights: `--full-size` builds SDXL's exact UNet (2.6 B), both text encoders' widths and
depths, the SDXL VAE, a CLIP ViT-H/14 tower and the released resampler (rank-128 LoRA on 140 layers,
0.83 B trainable), directly on the GPU. Data is a toy dataset written at the requested resolution. The
first `--warmup` optimiser steps are not timed; the timed steps alternate with diffusion-only steps (the
baseline: the attention loss's cost). Prints one summary line last
(`train_throughput: X samples/s (peak Y GiB; step Zx diffusion loss only, interleaved)`) and writes JSON to
benchmarks/out/.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_config(args, manifest: Path, output: Path):
    from training.config import config_from_dict

    full = args.full_size
    return config_from_dict({
        "model": {"pretrained": "random-sdxl" if full else "tiny", "image_encoder": "random-sdxl" if full else "tiny",
                  "init": "random", "lora_rank": args.rank or (128 if full else 8),
                  "gradient_checkpointing": not args.no_checkpointing, "frozen_dtype": "auto"},
        "data": {"manifest": str(manifest), "resolution": args.resolution, "batch_size": args.batch_size,
                 "num_workers": args.workers, "buckets": [[args.resolution, args.resolution]]},
        "loss": {"attention_loss_weight": 0.0 if args.no_attention_loss else 0.1},
        "train": {"output_dir": str(output), "max_steps": args.warmup + args.steps, "mixed_precision": args.precision,
                  "tracker": None, "preview_every": 0, "checkpoint_every": 10 ** 9, "resume": None},
    })


def timed_variants(trainer, args) -> dict:
    """{name: attention-loss weight}: the configured step first, then its baseline (diffusion loss only,
    the same trainer and data), unless there is nothing to compare or --no-baseline."""
    weight = trainer.config.loss.attention_loss_weight
    main = {"with attention loss" if weight > 0 else "diffusion loss only": weight}
    return main if weight == 0 or args.no_baseline else {**main, "diffusion loss only": 0.0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full-size", action="store_true", help="SDXL's real shapes (needs a GPU with >= 40 GB)")
    p.add_argument("--resolution", type=int, default=None, help="square side in px (default 128 tiny, 1024 full)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--characters", type=int, default=2, choices=(1, 2, 3))
    p.add_argument("--steps", type=int, default=None, help="timed optimiser steps (default 10 tiny, 20 full)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--precision", choices=("bf16", "fp16", "no"), default=None,
                   help="mixed precision (default bf16 on CUDA, no on CPU)")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank (default 128 full size, 8 tiny)")
    p.add_argument("--no-checkpointing", action="store_true", help="turn gradient checkpointing off")
    p.add_argument("--no-attention-loss", action="store_true", help="diffusion loss only (no attention maps)")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the interleaved diffusion-only steps that the attention loss's cost is measured against")
    p.add_argument("--workers", type=int, default=None,
                   help="data-loader processes (default 2 on CUDA; 0 on the CPU, where they would take the cores "
                        "the timed steps run on)")
    p.add_argument("--json", default=None, help="output JSON (default benchmarks/out/train_throughput*.json)")
    args = p.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    args.resolution = args.resolution or (1024 if args.full_size else 128)
    args.steps = args.steps or (20 if args.full_size else 10)
    args.precision = args.precision or ("bf16" if cuda else "no")
    args.workers = (2 if cuda else 0) if args.workers is None else args.workers
    if args.full_size and not cuda:
        print("warning: --full-size on CPU needs > 30 GB of RAM and takes minutes per step", file=sys.stderr)

    from training.toy import build_toy_dataset
    from training.train import Trainer

    with tempfile.TemporaryDirectory(prefix="storymaker-bench-") as tmp:
        count = max(4, args.batch_size * 2)
        manifest = build_toy_dataset(str(Path(tmp) / "toy"), count=count, size=args.resolution,
                                     characters=args.characters)
        built = time.perf_counter()
        trainer = Trainer(build_config(args, manifest, Path(tmp) / "run"))
        build_s = time.perf_counter() - built
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        variants = timed_variants(trainer, args)
        times, done = {name: [] for name in variants}, 0
        total = args.warmup + args.steps * len(variants)
        while done < total:
            for batch in trainer._loader():
                name = list(variants)[done % len(variants)]  # interleaved: drift hits both alike
                trainer.config.loss.attention_loss_weight = variants[name]
                start = time.perf_counter()
                trainer.train_step(batch)
                if cuda:
                    torch.cuda.synchronize()
                if trainer.accelerator.sync_gradients:
                    done += 1
                    if done > args.warmup:
                        times[name].append(time.perf_counter() - start)
                if done >= total:
                    break
            trainer.progress.epoch += 1
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else \
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB (Linux)
        trainable = sum(p.numel() for p in trainer.raw_model.parameters() if p.requires_grad)
        unet = sum(p.numel() for p in trainer.components.unet.parameters() if not p.requires_grad)
    main_name, *baseline = list(times)
    step = statistics.median(times[main_name])
    ratio = step / statistics.median(times[baseline[0]]) if baseline else None
    result = {
        "samples_per_s": args.batch_size / step, "median_step_s": step, "mean_step_s": statistics.fmean(times[main_name]),
        "variant": main_name, "baseline": baseline[0] if baseline else None,
        "baseline_median_step_s": statistics.median(times[baseline[0]]) if baseline else None,
        "step_ratio_vs_baseline": ratio,
        "peak_gib": peak, "peak_kind": "torch.cuda.max_memory_allocated" if cuda else "process max RSS",
        "resolution": args.resolution, "batch_size": args.batch_size, "characters": args.characters,
        "steps_timed": len(times[main_name]), "warmup": args.warmup, "precision": args.precision, "full_size": args.full_size,
        "gradient_checkpointing": not args.no_checkpointing, "attention_loss": not args.no_attention_loss,
        "trainable_params": trainable, "frozen_unet_params": unet, "build_s": build_s,
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "torch": torch.__version__, "step_times_s": times,
    }
    out = Path(args.json) if args.json else REPO / "benchmarks" / "out" / (
        f"train_throughput{'_full' if args.full_size else ''}_{args.resolution}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    against = f"; step {ratio:.3f}x {baseline[0]}, interleaved" if baseline else ""
    print(f"train_throughput: {result['samples_per_s']:.3f} samples/s (peak {peak:.2f} GiB{against})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
