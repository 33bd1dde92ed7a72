"""Train or fine-tune StoryMaker: `python -m training.train --config CONFIG.yaml [--set section.key=value ...]`.

Multi-GPU / multi-node: `accelerate launch [--config_file training/configs/accelerate-8gpu.yaml] -m
training.train --config ...`; accelerate provides DDP (or FSDP/DeepSpeed from its config), mixed
precision and the tracker. What the release got wrong and this loop does not (docs/method.md §7):
gradients really are clipped; a failing step stops the run with its error instead of being skipped;
a checkpoint is written once per optimiser step that asks for it, never per micro-step; any batch size
works; the loop stops exactly at `max_steps`; resume restores weights, optimiser, LR schedule, every
RNG and the position in the data, so the next step's loss is the one an uninterrupted run would get.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from storymaker_core.resampler import ResamplerConfig

from .components import Components, DTYPES, load_components, place_components
from .config import Config, ConfigError, load_config
from .dataset import BucketBatchSampler, StoryMakerDataset, collate, read_manifest
from .export import export_model
from .initialise import initialise
from .model import StoryMakerTrainingModel
from .previews import save_attention_preview
from .step import TrainingStep

logger = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"


class Progress:
    """Where the run is: saved in every checkpoint (accelerate custom state)."""

    def __init__(self):
        self.global_step, self.epoch, self.batch_in_epoch = 0, 0, 0

    def state_dict(self) -> dict:
        return {"global_step": self.global_step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.global_step, self.epoch, self.batch_in_epoch = (int(state[k]) for k in
                                                             ("global_step", "epoch", "batch_in_epoch"))


def resampler_config(cfg: Config) -> ResamplerConfig:
    """model.resampler widths, or the tiny ones for the tiny model, or the release's SDXL resampler."""
    if cfg.model.resampler is not None:
        try:
            return ResamplerConfig(**{"dim_head": cfg.model.dim_head, **cfg.model.resampler})
        except TypeError as e:
            raise ConfigError(f"model.resampler: {e} (keys are ResamplerConfig's fields)") from e
    if cfg.model.pretrained == "tiny":
        from .synthetic import TINY_RESAMPLER

        return ResamplerConfig(**TINY_RESAMPLER)
    return ResamplerConfig(dim_head=cfg.model.dim_head)


def checkpoint_dirs(output_dir: str) -> list:
    """Complete checkpoints (renamed into place after every process wrote), oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    found = [p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


class Trainer:
    def __init__(self, config: Config, components: Optional[Components] = None, records: Optional[list] = None):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed

        self.config = c = config
        self.output_dir = Path(c.train.output_dir)
        self.accelerator = acc = Accelerator(
            gradient_accumulation_steps=c.train.gradient_accumulation_steps,
            mixed_precision=c.train.mixed_precision, log_with=c.train.tracker,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir),
                                                logging_dir=str(self.output_dir / "logs")),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])
        logging.basicConfig(level=logging.INFO if acc.is_main_process else logging.WARNING,
                            format="%(asctime)s %(name)s: %(message)s")
        if c.train.allow_tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        mixed = acc.mixed_precision if acc.mixed_precision in ("bf16", "fp16") else "fp32"
        frozen_dtype = DTYPES[mixed if c.model.frozen_dtype == "auto" else c.model.frozen_dtype]
        if mixed == "fp32" and frozen_dtype != torch.float32:
            raise ConfigError(f"model.frozen_dtype = {c.model.frozen_dtype} needs mixed precision (bf16/fp16 "
                              f"autocast); this run has none. Use frozen_dtype: auto or fp32, or "
                              f"train.mixed_precision: bf16.")

        records = records if records is not None else read_manifest(c.data.manifest)  # fail before loading models
        self.components = components or load_components(c.model, device=acc.device)
        place_components(self.components, acc.device, frozen_dtype, DTYPES[c.model.vae_dtype])
        torch.manual_seed(c.model.seed)  # identical random init in every process
        model = StoryMakerTrainingModel(self.components.unet, resampler_config(c), c.model.lora_rank,
                                        c.model.lora_scale, c.model.ip_scale, c.loss.attention_loss_layers,
                                        self.components.controlnet)
        initialise(model, c.model)
        if c.model.gradient_checkpointing:
            self.components.unet.enable_gradient_checkpointing()
            self.components.unet.train()  # older diffusers only checkpoint in train mode (SDXL has no dropout)
        model.to(acc.device)
        self.raw_model = model

        o = c.optim
        groups = [{"params": list(model.resampler.parameters()), "lr": o.learning_rate},
                  {"params": list(model.adapter_modules.parameters()), "lr": o.lora_learning_rate or o.learning_rate}]
        optimizer = torch.optim.AdamW(groups, lr=o.learning_rate, betas=tuple(o.betas), eps=o.eps,
                                      weight_decay=o.weight_decay)
        from diffusers.optimization import get_scheduler

        scheduler = get_scheduler(o.lr_scheduler, optimizer, num_warmup_steps=o.warmup_steps * acc.num_processes,
                                  num_training_steps=c.train.max_steps * acc.num_processes)
        self.model, self.optimizer, self.lr_scheduler = acc.prepare(model, optimizer, scheduler)
        self.progress = Progress()
        acc.register_for_checkpointing(self.progress)
        set_seed(c.train.seed, device_specific=True)  # noise/timesteps differ per process, reproducibly

        if self.components.controlnet is not None:
            missing = sum(1 for r in records if not r.get("pose"))
            if missing == len(records):
                raise ConfigError("model.controlnet is set but no manifest record has a pose map (run "
                                  "training.prepare with --poses or --openpose)")
            if missing:
                logger.warning("%d of %d records have no pose map: the ControlNet gets an all-black map for them",
                               missing, len(records))
        self.dataset = StoryMakerDataset(records, c.data, c.drop, seed=c.train.seed)
        self.sampler = BucketBatchSampler(self.dataset.groups(), c.data.batch_size, c.train.seed,
                                          acc.num_processes, acc.process_index)
        self.step_fn = TrainingStep(self.components, model, c, acc.device)

    # -- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """All processes write into `step-N.tmp`; the main process renames it once complete."""
        acc = self.accelerator
        final = self.output_dir / CHECKPOINTS / f"step-{self.progress.global_step:06d}"
        tmp = final.with_name(final.name + ".tmp")
        if acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        state = acc.get_state_dict(self.model)  # a collective under FSDP / ZeRO-3: every process calls it
        acc.wait_for_everyone()
        if acc.is_main_process:
            export_model(self.raw_model, str(tmp / "storymaker.safetensors"), self.config.train.export_dtype,
                         self.raw_model.resampler.config.dim_head, state=state)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            keep = self.config.train.keep_checkpoints
            for old in checkpoint_dirs(str(self.output_dir))[:-keep] if keep else []:
                shutil.rmtree(old)
            logger.info("saved checkpoint %s", final)
        acc.wait_for_everyone()
        return final

    def resume(self) -> Optional[Path]:
        spec = self.config.train.resume
        if not spec:
            return None
        if spec == "latest":
            dirs = checkpoint_dirs(str(self.output_dir))
            if not dirs:
                return None
            path = dirs[-1]
        else:
            path = Path(spec)
            if not path.is_dir():
                raise FileNotFoundError(f"train.resume = {spec}: no such checkpoint folder")
        self.accelerator.load_state(str(path))
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.progress.global_step,
                    self.progress.epoch, self.progress.batch_in_epoch)
        return path

    # -- loop ----------------------------------------------------------------------------------------
    def _loader(self):
        self.sampler.set_epoch(self.progress.epoch, self.progress.batch_in_epoch)
        workers = self.config.data.num_workers
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=self.sampler, collate_fn=collate,
                                           num_workers=workers, pin_memory=torch.cuda.is_available(),
                                           generator=torch.Generator().manual_seed(0),  # keeps global RNG untouched
                                           persistent_workers=False)

    def _log(self, metrics: dict) -> None:
        acc = self.accelerator
        if self.config.train.tracker and self.progress.global_step % self.config.train.log_every == 0:
            acc.log(metrics, step=self.progress.global_step)
        if acc.is_main_process:
            with open(self.output_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": self.progress.global_step, **metrics}) + "\n")

    def train_step(self, batch: dict, preview: bool = False) -> tuple:
        """One micro-step (forward, backward, and at accumulation boundaries clip + optimiser step).

        Returns (StepOutput, gradient norm before clipping or None). A non-finite loss stops the run.
        """
        c, acc = self.config, self.accelerator
        grad_norm = None
        with acc.accumulate(self.model):
            out = self.step_fn(self.model, batch, preview=preview)
            if not torch.isfinite(out.loss):
                raise FloatingPointError(f"non-finite loss {out.loss.item()} at step {self.progress.global_step + 1} "
                                         f"(records {batch['ids']})")
            acc.backward(out.loss)
            if acc.sync_gradients and c.optim.max_grad_norm:
                grad_norm = acc.clip_grad_norm_(self.model.parameters(), c.optim.max_grad_norm)
                # fp16's scaler skips such a step itself; in bf16/fp32 it would write NaN into the weights
                if not torch.isfinite(grad_norm) and acc.mixed_precision != "fp16":
                    raise FloatingPointError(
                        f"non-finite gradient norm {float(grad_norm)} at step {self.progress.global_step + 1} "
                        f"(records {batch['ids']}, loss {out.loss.item():.4g}): the weights were not updated. "
                        f"Lower optim.learning_rate or check those records.")
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return out, grad_norm

    def train(self) -> dict:
        from tqdm.auto import tqdm

        c, acc = self.config, self.accelerator
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if acc.is_main_process:
            (self.output_dir / "config.json").write_text(json.dumps(c.to_dict(), indent=2, default=str))
        resumed = self.resume()
        if c.train.tracker:
            acc.init_trackers("storymaker", config={f"{s}.{k}": str(v) for s, sec in c.to_dict().items()
                                                    for k, v in sec.items()})
        bar = tqdm(total=c.train.max_steps, initial=self.progress.global_step, disable=not acc.is_main_process,
                   desc="training", unit="step")
        accum = {"total": 0.0, "diffusion": 0.0, "attention": 0.0}
        micro, started = 0, time.time()
        last_saved = resumed
        while self.progress.global_step < c.train.max_steps:
            for batch in self._loader():
                want_preview = bool(c.train.preview_every) and acc.is_main_process and \
                    (self.progress.global_step + 1) % c.train.preview_every == 0
                out, grad_norm = self.train_step(batch, preview=want_preview)
                self.progress.batch_in_epoch += 1
                micro += 1
                terms = torch.stack([out.loss, out.diffusion, out.attention]).detach().float()
                for k, v in zip(accum, acc.reduce(terms, reduction="mean").tolist()):  # one collective
                    accum[k] += v
                if out.preview is not None:
                    save_attention_preview(out.preview, str(self.output_dir / "previews" /
                                                            f"step-{self.progress.global_step + 1:06d}.png"))
                if not acc.sync_gradients:
                    continue
                self.progress.global_step += 1
                metrics = {f"loss/{k}": v / micro for k, v in accum.items()}
                metrics["lr"] = self.lr_scheduler.get_last_lr()[0]
                if grad_norm is not None:
                    metrics["grad_norm"] = float(grad_norm)
                self._log(metrics)
                accum, micro = dict.fromkeys(accum, 0.0), 0
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss/total']:.4f}")
                if self.progress.global_step % c.train.checkpoint_every == 0:
                    last_saved = self.save_checkpoint()
                if self.progress.global_step >= c.train.max_steps:
                    break
            else:
                self.progress.epoch += 1
                self.progress.batch_in_epoch = 0
        bar.close()
        if last_saved is None or not last_saved.name.endswith(f"{self.progress.global_step:06d}"):
            last_saved = self.save_checkpoint()
        summary = self.finish(last_saved, time.time() - started)
        self.release_process_group()
        return summary

    def release_process_group(self) -> None:
        """Drop the DDP wrapper, optimizer and scheduler, then destroy the process group. DDP keeps its own
        reference to the group, so with the wrapper alive `destroy_process_group` only unregisters it and the
        group is torn down during interpreter exit, where gloo's threads can abort a finished run
        ("terminate called without an active exception", exit -6)."""
        self.model = self.optimizer = self.lr_scheduler = None
        self.accelerator.free_memory()  # its own references to them, then gc
        self.accelerator.end_training()

    def finish(self, checkpoint: Path, seconds: float) -> dict:
        """Export the final file and check that every process holds the same weights."""
        acc = self.accelerator
        summary = {"steps": self.progress.global_step, "processes": acc.num_processes,
                   "checkpoint": str(checkpoint), "seconds": seconds}
        if acc.distributed_type.name in ("NO", "MULTI_GPU", "MULTI_CPU", "MULTI_XPU", "MULTI_NPU", "MULTI_MLU"):
            # replicated weights (DDP): every process must hold exactly the same values
            flat = torch.cat([p.detach().double().flatten() for p in self.raw_model.parameters()])
            fingerprint = torch.stack([flat.sum(), (flat * flat).sum(), flat.abs().max()]).to(acc.device)
            everyone = acc.gather(fingerprint[None]).cpu()  # [processes, 3]
            summary.update(replicas_consistent=bool((everyone == everyone[0]).all()), fingerprints=everyone.tolist())
        if acc.is_main_process:
            target = self.output_dir / "storymaker.safetensors"
            shutil.copyfile(checkpoint / "storymaker.safetensors", target)
            summary["export"] = str(target)
            (self.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            logger.info("done: %d steps, exported %s", self.progress.global_step, target)
        acc.wait_for_everyone()
        return summary


def main(argv: Optional[list] = None, prog: str = "python -m training.train") -> int:
    """``python -m storymaker train`` (``prog``: that name), or ``python -m training.train``."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"examples:\n  {prog} --config training/configs/tiny-cpu.yaml --set train.max_steps=10\n"
               f"  accelerate launch --config_file training/configs/accelerate-8gpu.yaml -m storymaker train "
               f"--config training/configs/sdxl-8gpu.yaml")
    parser.add_argument("--config", required=True, help="YAML file (see training/configs/)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (YAML syntax), e.g. --set train.max_steps=10")
    args = parser.parse_args(argv)
    from storymaker_core.weights import StoryMakerWeightsError

    from .dataset import DatasetError
    from .initialise import InitialisationError

    try:  # the errors a user can fix get one clear line; anything else keeps its traceback
        Trainer(load_config(args.config, tuple(args.set))).train()
    except (ConfigError, DatasetError, InitialisationError, StoryMakerWeightsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
