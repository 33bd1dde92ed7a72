"""Apply StoryMaker inside a real ComfyUI (library mode, CPU) and compare with an independent reference.

Needs a ComfyUI v0.14.1 source tree in COMFYUI_PATH and its Python requirements; skipped otherwise.
"""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from storymaker_core.encode import StoryMakerEmbeds
from storymaker_core.layout import cross_attention_layers
from storymaker_core.lora import merge_lora_into_state_dict
from support import measured, relative_error
from support.v3 import node_function, outputs, recorded_progress

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def comfy():
    from support.comfyui import comfyui_path_or_skip

    path = str(comfyui_path_or_skip())
    from support.comfyui import import_comfyui

    return import_comfyui(Path(path))


@pytest.fixture(scope="module")
def setup(comfy):
    from support.comfyui import load_pack, seeded_adapter, small_sdxl

    pack = load_pack()
    model = small_sdxl()
    layers, adapter, state = seeded_adapter(model)
    g = torch.Generator().manual_seed(3)
    embeds = StoryMakerEmbeds(cond=torch.randn(3, 20, 2048, generator=g), uncond=torch.randn(3, 20, 2048, generator=g),
                              names=["a", "b"])
    return pack, model, layers, adapter, embeds, state


def run(patcher, x, sigma, context, y, layout):
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher])
    options = {**patcher.model_options["transformer_options"], "cond_or_uncond": layout, "sigmas": sigma}
    with torch.no_grad():
        return patcher.model.apply_model(x, sigma, c_crossattn=context, y=y, transformer_options=options)


def reference_unet(layers, ip_adapter, embeds, layout, ip_scale, lora_scale, region_masks=None, latent_hw=None):
    """A second copy of the UNet with LoRA merged and every attn2.forward replaced by the equations, written here."""
    from support.comfyui import small_sdxl

    unet = small_sdxl().model  # same seed: the same weights as the model under test
    sd = unet.diffusion_model.state_dict()
    unet.diffusion_model.load_state_dict(merge_lora_into_state_dict(sd, ip_adapter, layers, lora_scale))
    rows = [embeds.cond if kind == 0 else embeds.uncond for kind in layout]

    def attention(q, k, v, heads, mask=None):
        split = lambda t: t.unflatten(-1, (heads, -1)).transpose(1, 2)
        return F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask).transpose(1, 2).flatten(2)

    def region_mask(queries):
        """Additive mask [1, 1, Lq, L_img]: character j's 20 tokens only inside its (resized) region."""
        if region_masks is None:
            return None
        scale = int(round((latent_hw[0] * latent_hw[1] / queries) ** 0.5))
        h, w = latent_hw[0] // scale, latent_hw[1] // scale
        columns = [torch.zeros(h * w, 20)]
        for m in region_masks:
            inside = F.interpolate(m[None, None], size=(h, w), mode="area").flatten() >= 0.5
            columns.append(torch.where(inside, 0.0, float("-inf"))[:, None].expand(h * w, 20))
        return torch.cat(columns, 1)[None, None]

    for layer in cross_attention_layers(layers):
        module = unet.diffusion_model.get_submodule(layer.ldm_prefix)
        kw, vw = ip_adapter[f"{layer.index}.to_k_ip.weight"], ip_adapter[f"{layer.index}.to_v_ip.weight"]

        def forward(x, context=None, value=None, mask=None, transformer_options={}, module=module, kw=kw, vw=vw):
            q, k, v = module.to_q(x), module.to_k(context), module.to_v(context)
            per_chunk = x.shape[0] // len(rows)
            tokens = torch.cat([t.flatten(0, 1)[None].expand(per_chunk, -1, -1) for t in rows])
            image = attention(q, tokens @ kw.T, tokens @ vw.T, module.heads, region_mask(q.shape[1]))
            return module.to_out(attention(q, k, v, module.heads) + ip_scale * image)

        module.forward = forward
    return unet


@pytest.mark.parametrize("layout", [[1, 0], [0], [0, 1], [0, 1, 2]])  # [0, 1, 2]: PerpNegGuider
def test_patched_model_equals_the_reference(setup, layout):
    pack, model, layers, adapter, embeds, state = setup
    apply = node_function(pack.nodes.apply.StoryMakerApply)
    (patched,) = apply(model, adapter, embeds, ip_scale=0.8, lora_scale=0.7, start_at=0.0, end_at=1.0)
    g = torch.Generator().manual_seed(4)
    b = 2 * len(layout)
    x, context, y = torch.randn(b, 4, 16, 24, generator=g), torch.randn(b, 77, 2048, generator=g), torch.randn(b, 2816, generator=g)
    sigma = torch.full((b,), 3.0)
    ours = run(patched, x, sigma, context, y, layout)
    reference_model = reference_unet(layers, state["ip_adapter"], embeds, layout, 0.8, 0.7)
    with torch.no_grad():
        reference = reference_model.apply_model(x, sigma, c_crossattn=context, y=y, transformer_options={})
    plain = run(model, x, sigma, context, y, layout)
    measured(f"ComfyUI-patched small SDXL UNet, cond_or_uncond={layout}, vs reference", relative_error(ours, reference), 1e-4)
    assert relative_error(plain, reference) > 1e-3  # the patch does change the output


def test_unpatched_model_is_unchanged_after_the_patched_clone_ran(setup):
    pack, model, layers, adapter, embeds, state = setup
    g = torch.Generator().manual_seed(5)
    x, context, y = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 2048, generator=g), torch.randn(2, 2816, generator=g)
    sigma = torch.full((2,), 2.0)
    before = run(model, x, sigma, context, y, [1, 0])
    (patched,) = outputs(pack.nodes.apply.StoryMakerApply, model, adapter, embeds, 0.8, 0.8, 0.0, 1.0)
    run(patched, x, sigma, context, y, [1, 0])
    after = run(model, x, sigma, context, y, [1, 0])
    assert torch.equal(before, after)
    assert "attn2" not in model.model_options["transformer_options"].get("patches_replace", {})
    assert not model.patches


def test_all_seventy_keys_middle_included_and_existing_replace_chained(setup):
    pack, model, layers, adapter, embeds, state = setup
    seen = []

    def other(q, k, v, extra_options):
        seen.append(extra_options["block"])
        from comfy.ldm.modules.attention import optimized_attention
        return optimized_attention(q, k, v, extra_options["n_heads"])

    base = model.clone()
    base.set_model_attn2_replace(other, "middle", 0, 3)
    (patched,) = outputs(pack.nodes.apply.StoryMakerApply, base, adapter, embeds, 0.8, 0.0, 0.0, 1.0)
    replaces = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert len(replaces) == 70 and ("middle", 0, 9) in replaces and ("middle", 1, 0) not in replaces
    settings = replaces[("input", 4, 0)].shared.settings
    assert (settings.sigma_start, settings.sigma_end) == (float("inf"), 0.0)  # full range: no sigma read per step
    assert patched.model_patches_models() == []  # nothing for ComfyUI to load: the projections stay in host memory
    assert replaces[("middle", 0, 3)].previous is other
    assert base.model_options["transformer_options"]["patches_replace"]["attn2"][("middle", 0, 3)] is other
    g = torch.Generator().manual_seed(6)
    run(patched, torch.randn(1, 4, 16, 16, generator=g), torch.full((1,), 1.0), torch.randn(1, 77, 2048, generator=g),
        torch.randn(1, 2816, generator=g), [0])
    assert seen == [("middle", 0)]


def test_progress_reaches_the_editor_through_the_v3_api_and_floats_are_validated(setup, comfy):
    """Run as node 12 of a prompt, the node's two steps (LoRA, image branch) reach ComfyUI's progress registry;
    its validate_inputs reads the limits from the INPUT_TYPES() ComfyUI derives from the V3 schema."""
    pack, model, layers, adapter, embeds, state = setup
    node = pack.nodes.apply.StoryMakerApply
    with recorded_progress(node_id="12") as updates:
        outputs(node, model, adapter, embeds, 0.8, 0.8, 0.0, 1.0)
    assert updates == [("12", 1, 2), ("12", 2, 2)]
    outputs(node, model, adapter, embeds, 0.8, 0.8, 0.0, 1.0)  # no prompt running: no progress, no error
    assert node.INPUT_TYPES()["required"]["ip_scale"][1] | {"tooltip": ""} == {
        "tooltip": "", "default": 0.8, "min": 0.0, "max": 2.0, "step": 0.05}
    assert node.validate_inputs(ip_scale=0.8, lora_scale=0.8, start_at=0.0, end_at=1.0) is True
    assert "end_at is inf" in node.validate_inputs(ip_scale=0.8, lora_scale=0.8, start_at=0.0, end_at=float("inf"))


def test_clear_errors_for_wrong_models_and_inputs(setup, comfy):
    pack, model, layers, adapter, embeds, state = setup
    apply = node_function(pack.nodes.apply.StoryMakerApply)
    with pytest.raises(ValueError, match="start_at"):
        apply(model, adapter, embeds, 0.8, 0.8, 0.6, 0.5)
    with pytest.raises(ValueError, match="mask_3 is connected but the embeds hold only 2"):
        apply(model, adapter, embeds, 0.8, 0.8, 0.0, 1.0, mask_3=torch.ones(1, 8, 8))
    with pytest.raises(ValueError, match="mask_1 is empty"):
        apply(model, adapter, embeds, 0.8, 0.8, 0.0, 1.0, mask_1=torch.zeros(1, 8, 8))
    with pytest.raises(ValueError, match=r"mask_2: expected a MASK \[H, W\] or \[B, H, W\], got shape \(1, 1, 1, 8, 8\)"):
        apply(model, adapter, embeds, 0.8, 0.8, 0.0, 1.0, mask_2=torch.ones(1, 1, 1, 8, 8))
    (four_d,) = apply(model, adapter, embeds, 0.8, 0.8, 0.0, 1.0, mask_1=torch.ones(1, 1, 8, 6))
    shared = next(iter(four_d.model_options["transformer_options"]["patches_replace"]["attn2"].values())).shared
    assert shared.settings.region_masks[0].shape == (8, 6) and shared.settings.region_masks[1] is None
    import comfy.model_patcher
    import comfy.supported_models

    sd15 = comfy.supported_models.SD15({"use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True,
                                        "legacy": False, "num_head_channels": -1, "model_channels": 32, "in_channels": 4, "out_channels": 4, "num_res_blocks": [1, 1, 1, 1],
                                        "channel_mult": [1, 1, 1, 1], "transformer_depth": [1, 1, 1, 0],
                                        "transformer_depth_output": [0, 0, 1, 1, 1, 1, 1, 1],
                                        "transformer_depth_middle": 1, "context_dim": 768, "num_heads": 2,
                                        "use_linear_in_transformer": False, "adm_in_channels": None,
                                        "use_temporal_attention": False, "use_temporal_resblock": False})
    sd15.set_inference_dtype(torch.float32, None)
    cpu = torch.device("cpu")
    sd15_patcher = comfy.model_patcher.ModelPatcher(sd15.get_model({}), load_device=cpu, offload_device=cpu)
    with pytest.raises(Exception, match="SD1.5.*SDXL models only"):
        apply(sd15_patcher, adapter, embeds, 0.8, 0.8, 0.0, 1.0)


def test_region_masks_inside_comfyui_equal_the_reference(setup):
    pack, model, layers, adapter, embeds, state = setup
    left = torch.zeros(128, 192)
    left[:, :96] = 1
    masks = [left, 1 - left]
    (patched,) = outputs(pack.nodes.apply.StoryMakerApply, model, adapter, embeds, 0.8, 0.7, 0.0, 1.0,
                                                          mask_1=left[None], mask_2=(1 - left)[None])
    g = torch.Generator().manual_seed(7)
    x, context, y = torch.randn(4, 4, 16, 24, generator=g), torch.randn(4, 77, 2048, generator=g), torch.randn(4, 2816, generator=g)
    sigma = torch.full((4,), 3.0)
    ours = run(patched, x, sigma, context, y, [1, 0])
    reference_model = reference_unet(layers, state["ip_adapter"], embeds, [1, 0], 0.8, 0.7, masks, (16, 24))
    with torch.no_grad():
        reference = reference_model.apply_model(x, sigma, c_crossattn=context, y=y, transformer_options={})
    unmasked = run(outputs(pack.nodes.apply.StoryMakerApply, model, adapter, embeds, 0.8, 0.7, 0.0, 1.0)[0],
                   x, sigma, context, y, [1, 0])
    measured("ComfyUI-patched small SDXL UNet with region masks vs reference", relative_error(ours, reference), 1e-4)
    assert relative_error(unmasked, reference) > 1e-4  # the masks do change the output


@pytest.mark.parametrize("masked", [False, True])
def test_attention_overrides_reach_the_patch_and_masked_calls_use_sdpa(setup, masked):
    """An attention-switching node's override (e.g. sage) runs our text and image calls; a masked image call
    goes to ComfyUI's SDPA kernel instead, because sage drops masks and flash refuses them."""
    pack, model, layers, adapter, embeds, state = setup
    keys_seen = []

    def override(func, q, k, v, heads, *args, **kwargs):
        keys_seen.append(k.shape[1])
        return func(q, k, v, heads, *args, **kwargs)

    base = model.clone()
    base.model_options["transformer_options"]["optimized_attention_override"] = override
    left = torch.zeros(1, 128, 128)
    left[..., :64] = 1
    masks = {"mask_1": left, "mask_2": 1 - left} if masked else {}
    (patched,) = outputs(pack.nodes.apply.StoryMakerApply, base, adapter, embeds, 0.8, 0.0, 0.0, 1.0, **masks)
    g = torch.Generator().manual_seed(7)
    run(patched, torch.randn(2, 4, 16, 16, generator=g), torch.full((2,), 1.0), torch.randn(2, 77, 2048, generator=g),
        torch.randn(2, 2816, generator=g), [1, 0])
    image_tokens = embeds.cond.shape[0] * embeds.cond.shape[1]
    assert keys_seen.count(77) == 70  # the text branch of every attn2
    assert keys_seen.count(image_tokens) == (0 if masked else 70)


@pytest.mark.parametrize("guider_kind, area", [("CFGGuider", False), ("CFGGuider", True), ("DualCFGGuider", False),
                                              ("DualCFGGuider", True), ("PerpNegGuider", False)])
def test_the_positive_prompt_gets_the_characters_under_every_guider(setup, guider_kind, area, monkeypatch):
    """Real sampling through ComfyUI's guiders. The positive prompt's text is all zeros, every other prompt
    random, so a chunk is the positive prompt exactly when its text keys are zero (to_k has no bias): that
    chunk, and only it, must get the characters. DualCFG batches [negative, middle, positive]; an area cond
    is copied into the other lists (with the positive's uuid but their text)."""
    import comfy.samplers
    from support.comfyui import guider as make_guider

    pack, model, layers, adapter, embeds, state = setup
    (patched,) = outputs(pack.nodes.apply.StoryMakerApply, model, adapter, embeds, 0.8, 0.8, 0.0, 1.0)
    g = torch.Generator().manual_seed(6)
    pooled = lambda: {"pooled_output": torch.randn(1, 1280, generator=g)}  # noqa: E731
    positive = [[torch.zeros(1, 77, 2048), pooled()]]
    if area:  # ConditioningSetArea on the top-left quarter (latent units: h, w, y, x)
        positive.append([torch.zeros(1, 77, 2048), {**pooled(), "area": (8, 8, 0, 0), "strength": 1.0,
                                                    "set_area_to_bounds": False}])
    negative, middle = ([[torch.randn(1, 77, 2048, generator=g), pooled()]] for _ in range(2))
    guider = make_guider(guider_kind, patched, positive, negative, middle)
    seen = []
    patch_cls = type(patched.model_options["transformer_options"]["patches_replace"]["attn2"][layers[1].patch_key])
    original = patch_cls.__call__

    def spy(self, q, k, v, extra_options):
        chunks = len(extra_options["cond_or_uncond"])
        text_is_positive = [bool(part.abs().max() == 0) for part in k.chunk(chunks)]
        seen.append((list(extra_options["cond_or_uncond"]), text_is_positive, self.shared.chunk_roles(extra_options)))
        return original(self, q, k, v, extra_options)

    monkeypatch.setattr(patch_cls, "__call__", spy)
    with torch.no_grad():
        guider.sample(torch.randn(1, 4, 16, 16, generator=g), torch.zeros(1, 4, 16, 16),
                      comfy.samplers.sampler_object("euler"), torch.tensor([3.0, 1.5, 0.0]), seed=0)
    assert seen
    for layout, text_is_positive, roles in seen:
        assert [role == 0 for role in roles] == text_is_positive, (layout, roles)
    assert any(any(t) for _, t, _ in seen) and any(not all(t) for _, t, _ in seen)  # both kinds were batched
    assert next(iter(patched.model_options["transformer_options"]["patches_replace"]["attn2"].values())).shared.cond_list_roles is None


def test_applying_twice_is_warned_about(setup, caplog):
    pack, model, layers, adapter, embeds, state = setup
    apply = node_function(pack.nodes.apply.StoryMakerApply)
    (once,) = apply(model, adapter, embeds, 0.8, 0.8, 0.0, 1.0)
    assert "already went through Apply StoryMaker" not in caplog.text
    with caplog.at_level("WARNING"):
        apply(once, adapter, embeds, 0.8, 0.8, 0.0, 1.0)
    assert "already went through Apply StoryMaker" in caplog.text and "apply once" in caplog.text
