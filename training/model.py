"""The trainable StoryMaker model around a frozen diffusers SDXL UNet.

`StoryMakerTrainingModel` registers only what is trained: `resampler` (release key names) and
`adapter_modules` (the 140 SDXL attention processors, in `unet.attn_processors` order). The frozen UNet
and ControlNet are held outside the module tree, so DDP/FSDP wrap and all-reduce only trainable
weights, and an accelerate checkpoint holds ~0.8 G parameters instead of the whole SDXL.
Its forward is one denoising prediction: references -> image tokens -> UNet with those tokens.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from storymaker_core.layout import UNetAttentionConfig, unet_attention_layers
from storymaker_core.resampler import ResamplerConfig, StoryMakerResampler

from .losses import attention_loss_layers
from .processors import AttentionContext, install_processors


def attention_config_from_unet(unet) -> UNetAttentionConfig:
    """The diffusers UNet's config -> `storymaker_core.layout`'s description of its attention layers."""
    cfg = unet.config
    n = len(cfg.block_out_channels)
    tlpb = cfg.transformer_layers_per_block
    tlpb = [tlpb] * n if isinstance(tlpb, int) else list(tlpb)
    if any(isinstance(t, (list, tuple)) for t in tlpb):
        raise ValueError("per-layer transformer depths (nested transformer_layers_per_block) are not SDXL's layout")
    depths = tuple(t if "CrossAttn" in kind else 0 for t, kind in zip(tlpb, cfg.down_block_types))
    mid = tlpb[-1] if (cfg.mid_block_type or "UNetMidBlock2DCrossAttn") == "UNetMidBlock2DCrossAttn" else 0
    return UNetAttentionConfig(block_out_channels=tuple(cfg.block_out_channels), transformer_layers_per_block=depths,
                               mid_transformer_depth=mid, layers_per_block=cfg.layers_per_block,
                               cross_attention_dim=cfg.cross_attention_dim)


class StoryMakerTrainingModel(nn.Module):
    def __init__(self, unet, resampler_config: ResamplerConfig, rank: int = 128, lora_scale: float = 1.0,
                 ip_scale: float = 1.0, loss_layers="lowest", controlnet=None):
        super().__init__()
        if resampler_config.cross_attention_dim != unet.config.cross_attention_dim:
            raise ValueError(f"the resampler makes {resampler_config.cross_attention_dim}-wide tokens but the UNet's "
                             f"context is {unet.config.cross_attention_dim}")
        self.rank = rank
        self.attention_config = attention_config_from_unet(unet)
        self.layers = unet_attention_layers(self.attention_config)
        num_levels = len(self.attention_config.block_out_channels)
        self.loss_layer_names, self.loss_level = attention_loss_layers(self.layers, num_levels, loss_layers)
        self.context = AttentionContext(lora_scale=lora_scale, ip_scale=ip_scale)
        self.resampler = StoryMakerResampler(resampler_config)
        self.adapter_modules = install_processors(unet, self.layers, self.context, rank, self.loss_layer_names)
        self._frozen = (unet, controlnet)  # a tuple: not registered, not in state_dict(), not wrapped by DDP

    @property
    def unet(self):
        return self._frozen[0]

    @property
    def controlnet(self):
        return self._frozen[1]

    @property
    def tokens_per_group(self) -> int:
        return self.resampler.config.tokens_per_character

    def image_tokens(self, id_embeds: Tensor, character_clip: Tensor, face_clip: Tensor,
                     zero_face: Sequence[bool], zero_character: Sequence[bool]) -> Tensor:
        """References of B samples with N characters each -> `[B, (N+1)*20, D]` (background first).

        id_embeds `[B, N, 512]`; character_clip, face_clip `[B, N, L, C]`; zero_* one flag per sample
        (the release zeroes the face or character tokens of all characters of a sample at once).
        """
        b, n = id_embeds.shape[:2]
        per_char = lambda flags: [bool(f) for f in flags for _ in range(n)]
        tokens = self.resampler.character_tokens(id_embeds.flatten(0, 1), character_clip.flatten(0, 1),
                                                 face_clip.flatten(0, 1), zero_face=per_char(zero_face),
                                                 zero_character=per_char(zero_character))  # [B*N, 20, D]
        tokens = tokens.view(b, n, *tokens.shape[1:])
        return torch.stack([self.resampler.assemble(t) for t in tokens]).flatten(1, 2)

    def forward(self, noisy_latents: Tensor, timesteps: Tensor, prompt_embeds: Tensor, added_cond: dict,
                id_embeds: Tensor, character_clip: Tensor, face_clip: Tensor, zero_face: Sequence[bool],
                zero_character: Sequence[bool], record_attention: bool = False,
                controlnet_cond: Optional[Tensor] = None) -> Tensor:
        """One noise (or v) prediction `[B, 4, h, w]`; image-branch maps land in `self.context.probs`."""
        tokens = self.image_tokens(id_embeds, character_clip, face_clip, zero_face, zero_character)
        context = torch.cat([prompt_embeds.to(tokens.dtype), tokens], dim=1)  # [B, 77 + (N+1)*20, D]
        self.context.num_image_tokens = tokens.shape[1]
        self.context.record = record_attention
        self.context.probs = {}
        extra = {}
        if self.controlnet is not None and controlnet_cond is not None:
            # Frozen pose ControlNet on the text context (a standard OpenPose ControlNet expects text; the
            # release fed it the image tokens only).
            down, mid = self.controlnet(noisy_latents, timesteps, encoder_hidden_states=prompt_embeds,
                                        controlnet_cond=controlnet_cond, added_cond_kwargs=added_cond,
                                        return_dict=False)
            extra = {"down_block_additional_residuals": [r.to(noisy_latents.dtype) for r in down],
                     "mid_block_additional_residual": mid.to(noisy_latents.dtype)}
        return self.unet(noisy_latents, timesteps, context, added_cond_kwargs=added_cond, return_dict=False,
                         **extra)[0]

    def recorded_probs(self) -> list:
        """The loss layers' maps of the last forward, in layer order: each `[B, (N+1)*20, h*w]`."""
        return [self.context.probs[name] for name in self.loss_layer_names if name in self.context.probs]

    def trainable_state(self) -> dict:
        """The release's two sections: `{"image_proj_model": ..., "ip_adapter": ...}` (index-keyed)."""
        return {"image_proj_model": self.resampler.state_dict(), "ip_adapter": self.adapter_modules.state_dict()}
