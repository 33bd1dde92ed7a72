"""The trainer on tiny random SDXL-shaped models: learning, gradients, resume, export, ControlNet."""

import json

import pytest
import torch

from storymaker_core.weights import load_storymaker_weights
from support import measured, relative_error
from support.training import (first_batch, frozen_base_parameters, make_trainer, no_drops, seeded_step, tiny_config,
                              toy_manifest)
from training.export import main as export_main, release_layout

TINY_DIM_HEAD = 16


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return toy_manifest(tmp_path_factory.mktemp("toy"), count=8)


def _metrics(run) -> dict:
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def test_loss_decreases_on_a_fixed_batch(manifest, tmp_path):
    cfg = tiny_config(manifest, tmp_path / "run", drop=no_drops(), optim={"learning_rate": 3e-3})
    trainer = make_trainer(cfg)
    batch = first_batch(trainer)
    assert len(batch["captions"]) == 2
    total, attention = [], []
    for _ in range(20):
        out = seeded_step(trainer, batch)  # same noise and timesteps every time: only the weights change
        trainer.accelerator.backward(out.loss)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
        total.append(out.loss.item())
        attention.append(out.attention.item())
    measured("fixed batch: total loss after 20 steps / first (ratio)", total[-1] / total[0], 0.85)
    measured("fixed batch: attention loss after 20 steps / first (ratio)", attention[-1] / attention[0], 0.85)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_attention_loss_gradient_reaches_trainables_and_not_the_base(manifest, tmp_path, checkpointing):
    cfg = tiny_config(manifest, tmp_path / "run", drop=no_drops(), model={"gradient_checkpointing": checkpointing})
    trainer = make_trainer(cfg)
    model = trainer.raw_model
    with torch.no_grad():  # LoRA "up" starts at zero; make it non-zero so LoRA gradients are visible too
        for name, p in model.adapter_modules.named_parameters():
            if name.endswith("up.weight"):
                p.normal_(std=0.01)
    out = seeded_step(trainer, first_batch(trainer))
    named = dict(model.named_parameters())
    grads = dict(zip(named, torch.autograd.grad(out.attention, list(named.values()), allow_unused=True,
                                               retain_graph=True)))
    nonzero = lambda n: grads[n] is not None and bool(grads[n].abs().sum() > 0)
    for key in ("resampler.bg_embed", "resampler.pos_embed", "resampler.resample.latents", "resampler.proj.0.weight",
                "resampler.perceiver_resampler.proj_in.weight"):
        assert nonzero(key), key
    index = {p.name: i for i, p in enumerate(model.adapter_modules)}
    loss_idx = [index[n] for n in model.loss_layer_names]
    assert all(nonzero(f"adapter_modules.{i}.to_k_ip.weight") for i in loss_idx)  # keys shape the maps
    assert nonzero(f"adapter_modules.{loss_idx[0]}.to_v_ip.weight")  # values feed later loss layers' queries
    assert nonzero(f"adapter_modules.{loss_idx[0]}.to_q_lora.up.weight")
    after = [i for i, p in enumerate(model.adapter_modules) if p.name.startswith("up_blocks.1") and p.is_cross]
    assert after and not any(nonzero(f"adapter_modules.{i}.to_k_ip.weight") for i in after)  # runs after the maps
    frozen = frozen_base_parameters(trainer)
    assert frozen and all(not p.requires_grad and p.grad is None for _, p in frozen)
    out.loss.backward()
    assert all(p.grad is None for _, p in frozen)
    if checkpointing:
        reference = make_trainer(tiny_config(manifest, tmp_path / "ref", drop=no_drops()))
        with torch.no_grad():
            for (_, p), (_, q) in zip(reference.raw_model.named_parameters(), model.named_parameters()):
                p.copy_(q)
        ref_out = seeded_step(reference, first_batch(reference))
        ref_named = dict(reference.raw_model.named_parameters())
        ref_grad = torch.autograd.grad(ref_out.attention, [ref_named["resampler.bg_embed"]])[0]
        measured("attention-loss gradient with vs without gradient checkpointing",
                 relative_error(grads["resampler.bg_embed"], ref_grad), 1e-5)


def test_resume_reproduces_the_next_steps_and_export_loads(manifest, tmp_path, capsys):
    common = dict(train={"checkpoint_every": 2, "keep_checkpoints": 0, "gradient_accumulation_steps": 2},
                  data={"batch_size": 2})
    a = tmp_path / "a"
    cfg_a = tiny_config(manifest, a, **{**common, "train": {**common["train"], "max_steps": 5}})
    trainer_a = make_trainer(cfg_a)
    summary = trainer_a.train()  # 10 micro-batches over 4-batch epochs: crosses two epoch boundaries
    assert summary["steps"] == 5 and summary["replicas_consistent"]
    assert sorted(p.name for p in (a / "checkpoints").iterdir()) == ["step-000002", "step-000004", "step-000005"]
    b = tmp_path / "b"
    cfg_b = tiny_config(manifest, b, **{**common, "train": {**common["train"], "max_steps": 5,
                                                            "resume": str(a / "checkpoints" / "step-000002")}})
    make_trainer(cfg_b).train()
    ma, mb = _metrics(a), _metrics(b)
    assert sorted(mb) == [3, 4, 5]
    for step in (3, 4, 5):
        assert mb[step]["loss/total"] == ma[step]["loss/total"], step  # bit-identical
    # the exported file: release layout, loads with the node's loader and no extra parameter (the head width
    # comes from its metadata), reproduces the trainer's tokens
    weights = load_storymaker_weights(str(a / "storymaker.safetensors"))
    assert weights.info.resampler.dim_head == TINY_DIM_HEAD
    model = trainer_a.raw_model
    weights.validate_for(model.layers, "tiny UNet")
    ours = torch.nn.ModuleList(model.unet.attn_processors.values()).state_dict()
    assert set(weights.ip_adapter) == set(ours)  # safetensors sorts keys; the .bin below keeps the order
    assert all(torch.equal(weights.ip_adapter[k], v) for k, v in ours.items())
    g = torch.Generator().manual_seed(0)
    c = model.resampler.config
    ids, clip = torch.randn(2, c.id_dim, generator=g), torch.randn(2, 50, c.clip_dim, generator=g)
    with torch.no_grad():
        expected = model.resampler(ids, clip, clip)
        loaded = weights.build_resampler()(ids, clip, clip)
    assert torch.equal(loaded, expected)
    assert not torch.equal(model.resampler.bg_embed, torch.zeros_like(model.resampler.bg_embed))  # it trained
    # the export CLI turns a checkpoint into a file that loads with no extra parameter, the head width taken
    # from the checkpoint
    checkpoint = str(a / "checkpoints" / "step-000005")
    target = tmp_path / "exported.safetensors"
    assert export_main(["--checkpoint", checkpoint, "--output", str(target), "--dtype", "fp32"]) == 0
    exported = load_storymaker_weights(str(target))
    assert exported.info.resampler == weights.info.resampler
    assert all(torch.equal(exported.ip_adapter[k], v) for k, v in weights.ip_adapter.items())
    # the mask.bin-layout pickle keeps the release's key order but cannot record a head width: for the tiny
    # model's 16 it is refused with the reason rather than written for a loader that would assume 64
    assert list(release_layout(weights.image_proj, weights.ip_adapter)["ip_adapter"]) == list(ours)
    assert export_main(["--checkpoint", checkpoint, "--output", str(tmp_path / "mask.bin")]) == 1
    assert "export to .safetensors" in capsys.readouterr().err and not (tmp_path / "mask.bin").exists()


def test_pose_controlnet_is_frozen_and_used(tmp_path):
    from training.toy import build_toy_dataset

    manifest = build_toy_dataset(str(tmp_path / "toy"), count=4, poses=True)
    cfg = tiny_config(manifest, tmp_path / "run", drop=no_drops(), model={"controlnet": "tiny"})
    trainer = make_trainer(cfg)
    controlnet = trainer.components.controlnet
    with torch.no_grad():  # a fresh ControlNet's output convolutions are zero; a trained one's are not
        for p in [*controlnet.controlnet_down_blocks.parameters(), *controlnet.controlnet_mid_block.parameters()]:
            p.normal_(std=0.02)
    batch = first_batch(trainer)
    assert batch["pose"].shape == batch["pixel_values"].shape and float(batch["pose"].max()) == 1.0
    with_pose = seeded_step(trainer, batch)
    with_pose.loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in controlnet.parameters())
    assert trainer.raw_model.resampler.bg_embed.grad is not None
    del batch["pose"]
    without = seeded_step(trainer, batch)
    assert without.diffusion.item() != with_pose.diffusion.item()  # the residuals reach the UNet


def test_a_non_finite_gradient_stops_before_the_weights_change(manifest, tmp_path):
    """bf16/fp32 have no scaler to skip such a step: the update would write NaN into the weights."""
    trainer = make_trainer(tiny_config(manifest, tmp_path / "nan", drop=no_drops()))
    batch = first_batch(trainer)
    before = [p.detach().clone() for p in trainer.raw_model.parameters()]
    first = next(p for p in trainer.raw_model.parameters() if p.requires_grad)
    first.register_hook(lambda grad: torch.full_like(grad, float("nan")))
    with pytest.raises(FloatingPointError, match="non-finite gradient norm.*weights were not updated"):
        trainer.train_step(batch)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.raw_model.parameters()))
