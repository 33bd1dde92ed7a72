"""LoRA re-keying (index -> processor name / ldm key) and merging, against float64 references."""

import torch

from storymaker_core.layout import SDXL, unet_attention_layers
from storymaker_core.lora import (
    LoRAPair,
    image_kv_weights,
    ldm_keyed_lora,
    merge_lora,
    merge_lora_into_state_dict,
    processor_keyed_lora,
)
from support import measured, random_storymaker_state, relative_error, small_unet_config


def meta_release_ip_adapter(layout):
    return {k: torch.empty(v, device="meta") for k, v in layout["ip_adapter"].items()}


def test_processor_keys_cover_every_release_lora_tensor(layout):
    ip_adapter = meta_release_ip_adapter(layout)
    keyed = processor_keyed_lora(ip_adapter, unet_attention_layers(SDXL))
    assert len(keyed) == 140 * 8
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"
    assert keyed[f"{name}.to_k_lora.down.weight"] is ip_adapter["1.to_k_lora.down.weight"]
    assert keyed["mid_block.attentions.0.transformer_blocks.9.attn2.processor.to_out_lora.up.weight"] \
        is ip_adapter["139.to_out_lora.up.weight"]
    lora_keys = {k for k in ip_adapter if "_lora." in k}
    assert {id(v) for v in keyed.values()} == {id(ip_adapter[k]) for k in lora_keys}


def test_ldm_keys_name_the_projection_weights(layout):
    ip_adapter = meta_release_ip_adapter(layout)
    keyed = ldm_keyed_lora(ip_adapter, unet_attention_layers(SDXL))
    assert len(keyed) == 140 * 4
    pair = keyed["input_blocks.7.1.transformer_blocks.0.attn2.to_out.0.weight"]
    assert pair.up is ip_adapter["9.to_out_lora.up.weight"] and pair.down is ip_adapter["9.to_out_lora.down.weight"]
    assert keyed["middle_block.1.transformer_blocks.0.attn1.to_q.weight"].up is ip_adapter["120.to_q_lora.up.weight"]


def test_image_kv_weights_are_keyed_by_comfyui_patch_key(layout):
    ip_adapter = meta_release_ip_adapter(layout)
    kv = image_kv_weights(ip_adapter, unet_attention_layers(SDXL))
    assert len(kv) == 70
    assert kv[("middle", 0, 0)][0] is ip_adapter["121.to_k_ip.weight"]
    assert kv[("input", 4, 1)][1] is ip_adapter["3.to_v_ip.weight"]


def test_merged_weight_equals_unmerged_lora_forward():
    g = torch.Generator().manual_seed(5)
    w, up, down, x = (torch.randn(*s, generator=g) for s in ((48, 40), (48, 8), (8, 40), (7, 40)))
    merged = merge_lora(w, LoRAPair(up, down), 0.8)
    reference = x.double() @ w.double().T + 0.8 * (x.double() @ down.double().T) @ up.double().T
    measured("x @ merged LoRA weight vs unmerged float64 forward", relative_error(x @ merged.T, reference), 1e-6)
    half = merge_lora(w.half(), LoRAPair(up, down), 0.8)
    assert half.dtype == torch.float16


def test_merge_into_state_dict_touches_only_lora_targets():
    config = small_unet_config()
    layers = unet_attention_layers(config)
    ip_adapter = random_storymaker_state(config, rank=4)["ip_adapter"]
    g = torch.Generator().manual_seed(6)
    state = {}
    for l in layers:
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            in_dim = l.cross_attention_dim if (l.is_cross_attention and proj in ("to_k", "to_v")) else l.hidden_size
            state[f"diffusion_model.{l.ldm_prefix}.{proj}.weight"] = torch.randn(l.hidden_size, in_dim, generator=g)
    state["diffusion_model.out.2.weight"] = torch.randn(4, 4, generator=g)
    merged = merge_lora_into_state_dict(state, ip_adapter, layers, 0.5, prefix="diffusion_model.")
    assert torch.equal(merged["diffusion_model.out.2.weight"], state["diffusion_model.out.2.weight"])
    l = layers[5]
    key = f"diffusion_model.{l.ldm_prefix}.to_k.weight"
    expected = state[key].double() + 0.5 * ip_adapter["5.to_k_lora.up.weight"].double() @ ip_adapter["5.to_k_lora.down.weight"].double()
    measured("merged state-dict weight vs float64 W + s*up@down", relative_error(merged[key], expected), 1e-6)
    assert sum(not torch.equal(merged[k], state[k]) for k in state) == 4 * len(layers)
