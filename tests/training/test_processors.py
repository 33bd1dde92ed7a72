"""The trainer's attention processors: the release's key layout, the authors' numerics, the loss layers."""

import pytest
import torch

from storymaker_core.layout import AttentionLayer, unet_attention_layers
from storymaker_core.resampler import ResamplerConfig
from storymaker_core.weights import expected_ip_adapter_shapes
from support import measured, relative_error, seeded_weights
from training.model import StoryMakerTrainingModel, attention_config_from_unet
from training.processors import AttentionContext, StoryMakerAttnProcessor
from training.synthetic import unet_config


def test_full_size_sdxl_processors_have_the_release_layout(layout):
    """Built on `meta` (no memory): the state dicts are the released mask.bin's, key for key, shape for shape."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config(full_size=True))
        assert sum(p.numel() for p in unet.parameters()) == 2_567_463_684  # SDXL base's UNet, exactly
        model = StoryMakerTrainingModel(unet, ResamplerConfig(), rank=128)
    assert sum(p.numel() for p in model.parameters()) == 831_033_600  # the released mask.bin's count
    assert list(unet.attn_processors) == layout["processor_order"]
    state = model.trainable_state()
    for section in ("image_proj_model", "ip_adapter"):
        assert list(state[section]) == list(layout[section]), section  # same keys, same order
        assert {k: list(v.shape) for k, v in state[section].items()} == layout[section]
    # the same tensors as torch.nn.ModuleList(unet.attn_processors.values()).state_dict(), as the release saves
    assert list(torch.nn.ModuleList(unet.attn_processors.values()).state_dict()) == list(layout["ip_adapter"])
    # the attention loss reads the 60 cross-attention layers at 1/32: down_blocks.2, up_blocks.0, mid_block
    index = {name: i for i, name in enumerate(layout["processor_order"])}
    loss_indices = sorted(index[name] for name in model.loss_layer_names)
    assert loss_indices == list(range(9, 48, 2)) + list(range(49, 108, 2)) + list(range(121, 140, 2))
    assert model.loss_level == 2


def test_tiny_unet_layout_and_lora_init():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_config())
    from training.synthetic import TINY_RESAMPLER

    model = StoryMakerTrainingModel(unet, ResamplerConfig(**TINY_RESAMPLER), rank=16)
    layers = unet_attention_layers(attention_config_from_unet(unet))
    expected = expected_ip_adapter_shapes(layers, 16)
    assert {k: tuple(v.shape) for k, v in model.adapter_modules.state_dict().items()} == expected
    assert all(n.startswith(("down_blocks.2", "up_blocks.0", "mid_block")) for n in model.loss_layer_names)
    assert len(model.loss_layer_names) == 2 * 1 * 2 + 3 * 2 + 2  # down 2x2 blocks, up 3x2, mid 2: all attn2
    named = model.adapter_modules.named_parameters()
    downs = torch.cat([p.detach().flatten() for n, p in named if n.endswith("down.weight")])
    ups = [p for n, p in model.adapter_modules.named_parameters() if n.endswith("up.weight")]
    assert all(torch.count_nonzero(p) == 0 for p in ups)
    measured("LoRA down init std vs 1/rank (relative)", abs(float(downs.std()) * 16 - 1), 0.05)
    frozen = [p for n, p in unet.named_parameters() if ".processor." not in n]
    assert frozen and all(p.requires_grad for p in frozen)  # the model does not freeze: the trainer does


def _golden_attention(layer_weights):
    from diffusers.models.attention_processor import Attention

    attn = Attention(query_dim=640, cross_attention_dim=2048, heads=10, dim_head=64, bias=False, out_bias=True)
    with torch.no_grad():
        for name in ("to_q", "to_k", "to_v"):
            getattr(attn, name).weight.copy_(layer_weights[f"{name}.weight"])
        attn.to_out[0].weight.copy_(layer_weights["to_out.0.weight"])
        attn.to_out[0].bias.copy_(layer_weights["to_out.0.bias"])
    context = AttentionContext(lora_scale=0.8, ip_scale=0.8)
    layer = AttentionLayer(1, "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor", "", ("input", 4, 0),
                           640, 2048)
    processor = StoryMakerAttnProcessor(layer, context, rank=128, records_probs=True)
    processor.load_state_dict({k: v for k, v in layer_weights.items() if "_lora." in k or "_ip." in k}, strict=True)
    attn.set_processor(processor)
    return attn, context


@pytest.mark.parametrize("n", [1, 2])
def test_processor_equals_the_authors_layer(layout, golden, n):
    """The golden output of the authors' LoRAIPAttnProcessor2_0, through diffusers' Attention + our processor."""
    shapes = {"to_q.weight": (640, 640), "to_k.weight": (640, 2048), "to_v.weight": (640, 2048),
              "to_out.0.weight": (640, 640), "to_out.0.bias": (640,)}
    shapes.update({k[2:]: v for k, v in layout["ip_adapter"].items() if k.startswith("1.")})
    weights = seeded_weights(shapes, seed=20261128)
    attn, context = _golden_attention(weights)
    g = golden["attention_layer"]
    image = g["image_tokens"][:, : 20 * (n + 1)]
    context.num_image_tokens = image.shape[1]
    context.record = True
    with torch.no_grad():
        out = attn(g["hidden_states"], encoder_hidden_states=torch.cat([g["text_context"], image], dim=1))
    measured(f"training processor N={n} vs authors' LoRAIPAttnProcessor2_0", relative_error(out, g[f"output_N{n}"]),
             1e-5)
    probs = context.probs[attn.processor.name]
    assert probs.shape == (2, 20 * (n + 1), 96) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(1), torch.ones(2, 96), atol=1e-5)


def test_text_image_split_uses_the_image_token_count_not_77(layout, golden):
    """154 text tokens (two 77-token chunks): the image branch still gets exactly the image tokens."""
    shapes = {"to_q.weight": (640, 640), "to_k.weight": (640, 2048), "to_v.weight": (640, 2048),
              "to_out.0.weight": (640, 640), "to_out.0.bias": (640,)}
    shapes.update({k[2:]: v for k, v in layout["ip_adapter"].items() if k.startswith("1.")})
    attn, context = _golden_attention(seeded_weights(shapes, seed=20261128))
    g = golden["attention_layer"]
    text, image = torch.cat([g["text_context"], g["text_context"]], dim=1), g["image_tokens"][:, :40]
    context.num_image_tokens = 40
    with torch.no_grad():
        long = attn(g["hidden_states"], encoder_hidden_states=torch.cat([text, image], dim=1))
        # duplicating every text token leaves the text softmax unchanged, so the output must be the N=1 golden
    measured("154-token prompt (duplicated text) vs golden N=1", relative_error(long, g["output_N1"]), 1e-5)
    context.record, context.probs = False, {}
    with torch.no_grad():
        attn(g["hidden_states"], encoder_hidden_states=torch.cat([text, image], dim=1))
    assert context.probs == {}  # maps are only computed while the attention loss asks for them
