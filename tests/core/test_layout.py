"""The attention layout: diffusers processor order, ldm names and ComfyUI patch keys."""

import re

import pytest

from storymaker_core.layout import (
    SDXL,
    cross_attention_layers,
    unet_attention_layers,
    unet_attention_layers_from_state_dict,
)
from support import small_unet_config

# ComfyUI v0.14.1's SDXL attn2 keys, from its docs: input 4,5 (2 blocks), 7,8 (10), middle 0 (10),
# output 0,1,2 (10), output 3,4,5 (2).
COMFY_SDXL_KEYS = (
    {("input", b, t) for b in (4, 5) for t in range(2)}
    | {("input", b, t) for b in (7, 8) for t in range(10)}
    | {("middle", 0, t) for t in range(10)}
    | {("output", b, t) for b in (0, 1, 2) for t in range(10)}
    | {("output", b, t) for b in (3, 4, 5) for t in range(2)}
)


def test_sdxl_order_equals_the_release_processor_order(layout):
    layers = unet_attention_layers(SDXL)
    assert [l.processor for l in layers] == layout["processor_order"]
    assert [l.index for l in layers] == list(range(140))


def test_sdxl_hidden_sizes_and_kinds_match_the_release_file(layout):
    shapes = layout["ip_adapter"]
    for layer in unet_attention_layers(SDXL):
        assert shapes[f"{layer.index}.to_q_lora.up.weight"][0] == layer.hidden_size
        assert layer.is_cross_attention == (layer.index % 2 == 1)
        assert (f"{layer.index}.to_k_ip.weight" in shapes) == layer.is_cross_attention
        if layer.is_cross_attention:
            assert shapes[f"{layer.index}.to_k_ip.weight"] == [layer.hidden_size, layer.cross_attention_dim]


def test_sdxl_patch_keys_are_comfyuis_seventy_attn2_keys_middle_included():
    cross = cross_attention_layers(unet_attention_layers(SDXL))
    assert len(cross) == 70
    assert {l.patch_key for l in cross} == COMFY_SDXL_KEYS
    assert ("middle", 1, 0) not in {l.patch_key for l in cross}  # the key other packs register by mistake


@pytest.mark.parametrize("index, processor, ldm", [
    (1, "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor", "input_blocks.4.1.transformer_blocks.0.attn2"),
    (9, "down_blocks.2.attentions.0.transformer_blocks.0.attn2.processor", "input_blocks.7.1.transformer_blocks.0.attn2"),
    (49, "up_blocks.0.attentions.0.transformer_blocks.0.attn2.processor", "output_blocks.0.1.transformer_blocks.0.attn2"),
    (108, "up_blocks.1.attentions.0.transformer_blocks.0.attn1.processor", "output_blocks.3.1.transformer_blocks.0.attn1"),
    (121, "mid_block.attentions.0.transformer_blocks.0.attn2.processor", "middle_block.1.transformer_blocks.0.attn2"),
])
def test_known_release_indices_map_to_ldm_modules(index, processor, ldm):
    layer = unet_attention_layers(SDXL)[index]
    assert (layer.processor, layer.ldm_prefix) == (processor, ldm)


def ldm_shapes(layers, prefix="diffusion_model."):
    """An ldm UNet's attention weight shapes, as a ComfyUI model's state dict would show them."""
    shapes = {}
    for l in layers:
        shapes[f"{prefix}{l.ldm_prefix}.to_q.weight"] = (l.hidden_size, l.hidden_size)
        shapes[f"{prefix}{l.ldm_prefix}.to_k.weight"] = (l.hidden_size, l.cross_attention_dim or l.hidden_size)
        shapes[f"{prefix}{l.ldm_prefix}.to_out.0.weight"] = (l.hidden_size, l.hidden_size)
    shapes[f"{prefix}input_blocks.0.0.weight"] = (320, 4, 3, 3)  # non-attention keys are ignored
    return shapes


@pytest.mark.parametrize("config", [SDXL, small_unet_config()], ids=["sdxl", "small"])
def test_layers_read_from_an_ldm_state_dict_equal_the_config_layout(config):
    expected = unet_attention_layers(config)
    # shuffled key order must not matter: order comes from the names
    shapes = dict(sorted(ldm_shapes(expected).items(), key=lambda kv: re.sub(r"\d", "", kv[0])[::-1]))
    assert unet_attention_layers_from_state_dict(shapes) == expected


def test_small_layout_has_sdxl_structure_with_its_own_widths():
    layers = unet_attention_layers(small_unet_config())
    # 2 down attentions x 2 blocks + 3 up attentions x (2 + 1) ... : (0,1,2) depths, 2 res blocks, mid 2
    blocks = 2 * 1 + 2 * 2 + 3 * 2 + 3 * 1 + 2
    assert len(layers) == 2 * blocks
    assert {l.hidden_size for l in layers} == {64, 128}
    assert {l.patch_key[0] for l in cross_attention_layers(layers)} == {"input", "middle", "output"}
