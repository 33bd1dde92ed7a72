"""A loaded StoryMaker file, ready to patch a UNet: what the host needs, checked against that UNet."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from .layout import AttentionLayer, unet_attention_layers_from_state_dict
from .lora import image_kv_weights, ldm_keyed_lora
from .group_kv import GroupKVCache
from .patch import ImageProjections
from .resampler import StoryMakerResampler
from .weights import StoryMakerWeights, StoryMakerWeightsError


class StoryMakerAdapter:
    """Resampler, image projections and LoRA of one file; built lazily and cached (they are large)."""

    def __init__(self, weights: StoryMakerWeights):
        self.weights = weights
        self._resampler = None
        self._projections: dict = {}
        self.group_kv = GroupKVCache()  # image K/V per token group, shared by a story's scenes

    @property
    def resampler(self) -> StoryMakerResampler:
        """float32 on the CPU: it runs once per cast, not per step."""
        if self._resampler is None:
            self._resampler = self.weights.build_resampler(dtype=torch.float32)
        return self._resampler

    def layers_for(self, unet_shapes: Mapping[str, Sequence[int]], model_name: str = "the model") -> list:
        """The UNet's attention layers (from its ldm state-dict shapes), after checking the file fits them."""
        layers = unet_attention_layers_from_state_dict(unet_shapes)
        if not layers:
            raise StoryMakerWeightsError(f"{model_name} has no SDXL-style transformer blocks (is it Flux, SD3 or "
                                         f"another DiT?). StoryMaker works with SDXL models only.")
        self.weights.validate_for(layers, model_name)
        return layers

    def lora(self, layers: Sequence[AttentionLayer]) -> dict:
        """{ldm weight key (no prefix): LoRAPair} for the LoRA engine of the host."""
        return ldm_keyed_lora(self.weights.ip_adapter, layers)

    def projections(self, layers: Sequence[AttentionLayer]) -> ImageProjections:
        """One shared `to_k_ip`/`to_v_ip` module per layout, so every Apply reuses the same weights."""
        key = tuple(layer.patch_key for layer in layers if layer.is_cross_attention)
        if key not in self._projections:
            self._projections[key] = ImageProjections(image_kv_weights(self.weights.ip_adapter, layers))
        return self._projections[key]

