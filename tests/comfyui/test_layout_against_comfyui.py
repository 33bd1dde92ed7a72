"""Our diffusers ↔ ldm layer mapping equals ComfyUI's own (`comfy.utils.unet_to_diffusers`), layer by layer.

The release file indexes its weights by diffusers processor order; the nodes patch ComfyUI's ldm UNet. A
slip in the mapping would put every layer's weights on another layer with no error, so all 140 attention
layers of SDXL are checked against the converter ComfyUI uses to load diffusers-format UNets.
Needs COMFYUI_PATH; skipped otherwise.
"""

from pathlib import Path

import pytest

from storymaker_core.layout import SDXL, unet_attention_layers

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def comfy_sdxl_key_map():
    from support.comfyui import comfyui_path_or_skip, import_comfyui

    import_comfyui(Path(comfyui_path_or_skip()))
    import comfy.supported_models
    import comfy.utils

    config = {**comfy.supported_models.SDXL.unet_config, "num_res_blocks": [2, 2, 2], "channel_mult": [1, 2, 4],
              "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "transformer_depth_middle": 10,
              "num_head_channels": 64}
    return comfy.utils.unet_to_diffusers(config)  # {diffusers key: ldm key}


def test_every_sdxl_attention_layer_maps_as_comfyui_maps_it(comfy_sdxl_key_map):
    layers = unet_attention_layers(SDXL)
    assert len(layers) == 140
    for layer in layers:
        diffusers_key = layer.processor.removesuffix(".processor") + ".to_q.weight"
        assert comfy_sdxl_key_map[diffusers_key] == f"{layer.ldm_prefix}.to_q.weight", layer.index
    ours = {l.processor.removesuffix(".processor") for l in layers}
    theirs = {k.removesuffix(".to_q.weight") for k in comfy_sdxl_key_map if k.endswith((".attn1.to_q.weight", ".attn2.to_q.weight"))}
    assert ours == theirs  # no attention layer of ComfyUI's SDXL is missing from ours
