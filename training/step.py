"""One training micro-step: a batch -> the loss terms (docs/method.md §5.3).

Why it is separate from the loop: the same function is what the tests check (loss goes down, gradients
reach the right weights) and what the throughput benchmark times, so all three measure one thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .components import Components, encode_latents
from .config import Config
from .losses import attention_group_maps, attention_mask_loss, diffusion_loss, level_size


@dataclass
class StepOutput:
    loss: Tensor  # scalar, what is back-propagated: diffusion + lambda * attention
    diffusion: Tensor  # scalar (with its graph)
    attention: Tensor  # scalar (with its graph; 0 when the attention loss is off)
    preview: Optional[dict] = None  # maps/masks of the first row, when asked for


def _to(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


class TrainingStep:
    def __init__(self, components: Components, model, config: Config, device):
        """model: the *unwrapped* StoryMakerTrainingModel (for its layer names and recorded maps)."""
        self.c, self.model, self.config, self.device = components, model, config, device
        self.scheduler = components.noise_scheduler
        self.num_timesteps = self.scheduler.config.num_train_timesteps
        self.prediction_type = self.scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction type {self.prediction_type} is not supported (epsilon or v_prediction)")

    def encode_references(self, batch: dict) -> tuple:
        """CLIP penultimate states of the character and face crops `[B, N, L, C]` and the ID embeddings
        `[B, N, 512]`, with the null image condition applied to image-dropped rows."""
        ids, chars, faces = batch["id_embeds"], batch["character_pixels"], batch["face_pixels"]
        dropped = batch["drop_image"]  # [B] bool
        zero_pixels = self.config.drop.null_image == "zero_pixels"
        keep = (~dropped).to(ids.dtype)
        if zero_pixels:  # release training: CLIP of a zeroed normalised pixel tensor, zero ID
            ids = ids * keep.view(-1, 1, 1)
            chars = chars * keep.view(-1, 1, 1, 1, 1)
            faces = faces * keep.view(-1, 1, 1, 1, 1)
        b, n = ids.shape[:2]
        both = self.c.image_encoder(torch.cat([chars.flatten(0, 1), faces.flatten(0, 1)])).float()
        char_hidden, face_hidden = both.view(2, b, n, *both.shape[1:]).unbind(0)  # each [B, N, L, C]
        if not zero_pixels:  # inference's negative: zero hidden states and zero ID
            ids = ids * keep.view(-1, 1, 1)
            char_hidden = char_hidden * keep.view(-1, 1, 1, 1)
            face_hidden = face_hidden * keep.view(-1, 1, 1, 1)
        return ids, char_hidden, face_hidden

    def __call__(self, wrapped_model, batch: dict, preview: bool = False) -> StepOutput:
        cfg = self.config
        batch = _to(batch, self.device)
        latents = encode_latents(self.c.vae, batch["pixel_values"])  # [B, 4, h, w]
        b = latents.shape[0]
        noise = torch.randn_like(latents)
        if cfg.loss.noise_offset:
            noise = noise + cfg.loss.noise_offset * torch.randn(b, latents.shape[1], 1, 1, device=latents.device)
        timesteps = torch.randint(0, self.num_timesteps, (b,), device=latents.device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        if self.prediction_type == "epsilon":
            target = noise
        else:
            target = self.scheduler.get_velocity(latents, noise, timesteps)

        prompt_embeds, pooled = self.c.text_encoder(batch["captions"], self.device)  # [B, 77, D], [B, P]
        ids, char_hidden, face_hidden = self.encode_references(batch)
        dropped = batch["drop_image"]
        zero_face = (batch["zero_face"] & ~dropped).tolist() if cfg.drop.null_image == "zero_hidden" else \
            batch["zero_face"].tolist()
        zero_character = (batch["zero_character"] & ~dropped).tolist() if cfg.drop.null_image == "zero_hidden" \
            else batch["zero_character"].tolist()
        added_cond = {"text_embeds": pooled.float(), "time_ids": batch["time_ids"]}
        record = cfg.loss.attention_loss_weight > 0
        prediction = wrapped_model(noisy, timesteps, prompt_embeds.float(), added_cond, ids, char_hidden, face_hidden,
                                   zero_face, zero_character, record_attention=record,
                                   controlnet_cond=batch.get("pose"))

        masks = batch["masks"]  # [B, N, h, w]
        l_diff = diffusion_loss(prediction, target, masks, cfg.loss.mask_loss_weight, weighted=~dropped).mean()
        l_attn = torch.zeros((), device=latents.device)
        out_preview = None
        if record:
            probs = self.model.recorded_probs()
            latent_hw = tuple(latents.shape[-2:])
            per_row = attention_mask_loss(probs, masks, latent_hw, self.model.loss_level, self.model.tokens_per_group,
                                          cfg.loss.attention_loss_upsample)  # [B]
            if not cfg.loss.attention_loss_on_dropped:
                per_row = per_row * (~dropped).float()
            l_attn = per_row.mean()
            if preview:
                layer_hw = level_size(latent_hw, self.model.loss_level)
                size = (layer_hw[0] * cfg.loss.attention_loss_upsample, layer_hw[1] * cfg.loss.attention_loss_upsample)
                with torch.no_grad():
                    maps = attention_group_maps([p[:1] for p in probs], layer_hw, self.model.tokens_per_group, size)
                out_preview = {"maps": maps[0].cpu(), "masks": masks[0].float().cpu(), "id": batch["ids"][0],
                               "image": batch["pixel_values"][0].float().cpu()}
            self.model.context.probs = {}
        loss = l_diff + cfg.loss.attention_loss_weight * l_attn
        return StepOutput(loss, l_diff, l_attn, out_preview)
