"""StoryMaker on a ComfyUI MODEL: LoRA as weight patches, the image branch as attn2 replace patches, and the
wrappers that keep it right under CFG-style guiders and torch.compile. Used by Apply StoryMaker and the scene nodes."""

from __future__ import annotations

import logging

import torch

from ..storymaker_core.compiled import (
    CallCheck,
    build_plan,
    call_shape,
    chain_of,
    forget_compiled_code,
    layer_order,
    published,
)
from ..storymaker_core.attention import REGION_THRESHOLD
from ..storymaker_core.patch import ImageBranchSettings, LayerPatch, StoryMakerAttention, roles_of_cond_lists

logger = logging.getLogger(__name__)


class ComfyLayerPatch(LayerPatch):
    """The core layer patch, computing attention with ComfyUI's kernels."""

    def attention_function(self, extra_options):
        from comfy.ldm.modules.attention import attention_pytorch, optimized_attention

        precision = extra_options.get("attn_precision")

        def attention(q, k, v, heads, mask=None):
            if mask is not None:  # region masks: ComfyUI's sage kernel drops a mask and flash refuses one
                return attention_pytorch(q, k, v, heads, mask=mask, attn_precision=precision)
            # transformer_options: attention-switching nodes (optimized_attention_override) apply here too
            return optimized_attention(q, k, v, heads, attn_precision=precision, transformer_options=extra_options)

        return attention


class GuiderRoles:
    """Tells the patch which batched cond list is the positive prompt. ComfyUI numbers the chunks of a model
    call by their list's place in the guider's call (CFG [positive, negative], DualCFG [negative, middle,
    positive]); the guider names its lists. Two wrappers: OUTER_SAMPLE sees the guider, CALC_COND_BATCH
    the lists of each call (matched by identity: area conds copied across lists keep their uuid)."""

    def __init__(self, shared: StoryMakerAttention, free_after_sampling: bool = False):
        self.shared, self.guider, self.free_after_sampling = shared, None, free_after_sampling

    def outer_sample(self, executor, *args, **kwargs):
        previous, self.guider = self.guider, executor.class_obj
        try:
            return executor(*args, **kwargs)
        finally:
            self.guider = previous
            if self.free_after_sampling and previous is None:
                self.shared.release_caches()

    def calc_cond_batch(self, executor, model, conds, *args, **kwargs):
        named = getattr(self.guider, "conds", None)
        positive = named.get("positive") if isinstance(named, dict) else None
        previous, self.shared.cond_list_roles = self.shared.cond_list_roles, roles_of_cond_lists(conds, positive)
        try:
            return executor(model, conds, *args, **kwargs)
        finally:
            self.shared.cond_list_roles = previous

    def install(self, patcher) -> None:
        from comfy.patcher_extension import WrappersMP

        patcher.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, "storymaker", self.outer_sample)
        patcher.add_wrapper_with_key(WrappersMP.CALC_COND_BATCH, "storymaker", self.calc_cond_batch)


COMPILED_KWARG = "storymaker_compiled"  # an extra UNet kwarg: graphs traced without StoryMaker fail its guard


def _is_compiled(base_model, transformer_options) -> bool:
    """Does this call run a torch.compile'd UNet? ComfyUI's wrapper (TorchCompileModel and the helpers using
    set_torch_compile_wrapper) registers under one key; a module compiled in place is an OptimizedModule."""
    from comfy.patcher_extension import WrappersMP

    wrappers = transformer_options.get("wrappers", {}).get(WrappersMP.APPLY_MODEL, {})
    return bool(wrappers.get("torch.compile")) or hasattr(getattr(base_model, "diffusion_model", None), "_orig_mod")


class CompiledCalls:
    """APPLY_MODEL wrapper: for a compiled UNet, builds the call's plan outside the compiled region and
    publishes it (storymaker_core.compiled), adds a kwarg to the UNet call so that a UNet graph traced for the
    model without StoryMaker fails its guard, and checks that every layer ran the compiled patch exactly once
    (`CallCheck`: no host read per call). Eager calls pass through untouched."""

    def __init__(self, shared: StoryMakerAttention, patches: dict):
        self.shared, self.patches, self.warned = shared, patches, False
        self.keys = layer_order(patches)
        self.check = CallCheck()

    def outer_sample(self, executor, *args, **kwargs):
        previous = self.check.start_sampling()
        try:
            out = executor(*args, **kwargs)
        except BaseException:
            self.check.end_sampling(previous)
            raise
        missed = self.check.end_sampling(previous)
        if missed:
            raise RuntimeError(f"Apply StoryMaker: the compiled UNet skipped or repeated StoryMaker's layers {missed} "
                               "times during this sampling, so its image would be wrong. Something else changes which "
                               "attn2 layers run; remove TorchCompileModel (or that node) for this model.")
        return out

    def apply_model(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},
                    **kwargs):
        if not _is_compiled(executor.class_obj, transformer_options):
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        self._check_chains()
        plan = build_plan(self.shared, self.keys, transformer_options.get("cond_or_uncond"), x.shape[0],
                          transformer_options.get("sigmas"), x.shape[-2:], x.device,
                          executor.class_obj.get_dtype_inference(), [self.patches[key].previous for key in self.keys])
        residuals = [r for v in (control or {}).values() for r in (v or []) if isinstance(r, torch.Tensor)]
        shape = call_shape(plan, x, c_concat, c_crossattn, *kwargs.values(), *residuals)  # ControlNet too
        read_back = self.check.needs_read(shape)
        for attempt in (0, 1):
            with published(plan):
                out = executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs,
                               **{COMPILED_KWARG: True})
            if not read_back:  # a shape this sampling already checked: counted on the device, read at its end
                self.check.add_unread(plan)
                return out
            calls = self.check.read(plan, shape)
            if calls == plan["layers"]:
                return out
            if attempt == 0:
                # Graphs traced without StoryMaker (or for another patch chain) ran some blocks: with ComfyUI's
                # guard filter nothing tells them apart, so drop the UNet's compiled code and trace again.
                unet = executor.class_obj.diffusion_model
                forgotten = forget_compiled_code(getattr(unet, "_orig_mod", unet))
                logger.info("Apply StoryMaker: the compiled UNet ran %d of %d StoryMaker layers (graphs traced "
                            "without StoryMaker were reused); recompiling its %d frames.", calls, plan["layers"],
                            forgotten)
        raise RuntimeError(f"Apply StoryMaker: the compiled UNet ran StoryMaker's layers {calls} times for "
                           f"{plan['layers']} layers, so its image would be wrong. Something else changes which "
                           "attn2 layers run; remove TorchCompileModel (or that node) for this model.")

    def _check_chains(self):
        previous = [self.patches[key].previous for key in self.keys]
        if any(isinstance(p, LayerPatch) for p in previous):
            raise ValueError("Apply StoryMaker was applied twice to a compiled model: that cannot be compiled "
                             "correctly. Put all characters in one Encode StoryMaker Characters and apply once.")
        chain = chain_of(previous)[0]
        if chain == "none" or self.warned:
            return
        self.warned = True
        names = sorted({getattr(p, "__qualname__", type(p).__name__) for p in previous if p is not None})
        if chain == "per_layer":
            logger.warning("Apply StoryMaker: another pack's attn2 patches (%s) differ from layer to layer, and "
                           "under TorchCompileModel one compiled graph can serve several transformer blocks "
                           "without telling them apart (ComfyUI's guard filter): that pack's layers may run the "
                           "wrong patch and the image may be wrong. Do not compile this model, or leave that "
                           "pack out.", names)
        else:
            logger.warning("Apply StoryMaker: under TorchCompileModel, another pack's attn2 patch (%s) runs "
                           "inside the compiled UNet, and ComfyUI does not re-check what it reads from "
                           "transformer_options (e.g. its own start/end or CFG chunks): those decisions are "
                           "fixed when the UNet is compiled. StoryMaker itself stays exact. If that pack's "
                           "effect must change per step or scene, do not compile this model.", names)

    def install(self, patcher) -> None:
        from comfy.patcher_extension import WrappersMP

        patcher.add_wrapper_with_key(WrappersMP.APPLY_MODEL, "storymaker", self.apply_model)
        patcher.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, "storymaker", self.outer_sample)


def region_masks(masks, num_characters):
    given = [(i, m) for i, m in enumerate(masks) if m is not None]
    if not given:
        return None
    for i, m in given:
        if i >= num_characters:
            raise ValueError(f"mask_{i + 1} is connected but the embeds hold only {num_characters} character(s).")
        if float(m.max()) <= 0:
            raise ValueError(f"mask_{i + 1} is empty: paint the region where character {i + 1} should appear.")
        if float(m.max()) < REGION_THRESHOLD:
            raise ValueError(f"mask_{i + 1} is faint (its brightest value is {float(m.max()):.2f}): a character stays "
                             f"where its mask is at least {REGION_THRESHOLD}, so character {i + 1} would be left out "
                             f"of the whole image. Paint its region white.")
    unmasked = [i + 1 for i in range(num_characters) if i >= len(masks) or masks[i] is None]
    if unmasked:
        logger.warning("Apply StoryMaker: %s connected, but not %s: %s not confined to a region (their image tokens "
                       "reach every pixel, other characters' regions included).",
                       ", ".join(f"mask_{i + 1}" for i, _ in given), ", ".join(f"mask_{i}" for i in unmasked),
                       "those characters are" if len(unmasked) > 1 else f"character {unmasked[0]} is")
    return [None if m is None else one_region(m, f"mask_{i + 1}") for i, m in enumerate(masks[:num_characters])]


def one_region(mask, name):
    """`[H, W]` from a MASK `[H, W]` / `[B, H, W]` / `[B, 1, H, W]`: one region per character, for every image."""
    region = mask.reshape(-1, *mask.shape[-2:]) if mask.dim() >= 2 else None
    if region is None or mask.dim() > 4:
        raise ValueError(f"{name}: expected a MASK [H, W] or [B, H, W], got shape {tuple(mask.shape)}.")
    if region.shape[0] > 1 and not torch.equal(region, region[:1].expand_as(region)):
        logger.warning("%s holds %d different masks; StoryMaker uses the first for every image.", name, region.shape[0])
    return region[0].float().cpu()


def unet_layers(model, storymaker):
    """The SDXL attention layers of `model`'s UNet, after checking that the StoryMaker file fits them."""
    model_name = type(model.model).__name__
    shapes = {k: tuple(v.shape) for k, v in model.model.diffusion_model.state_dict().items()}
    return storymaker.layers_for(shapes, f"the connected model ({model_name})")


def add_lora(patched, storymaker, layers, lora_scale: float) -> None:
    """StoryMaker's LoRA as ComfyUI weight patches (merged into the UNet when it loads, free per step)."""
    from comfy.weight_adapter import LoRAAdapter

    if lora_scale == 0:
        return
    lora = {f"diffusion_model.{key}": LoRAAdapter(set(), (pair.up, pair.down, None, None, None, None))
            for key, pair in storymaker.lora(layers).items()}
    added = patched.add_patches(lora, strength_patch=lora_scale)
    if len(added) != len(lora):
        missing = sorted(set(lora) - set(added))[:3]
        raise ValueError(f"StoryMaker's LoRA did not find {len(lora) - len(added)} weights in the model, e.g. {missing}.")


def sigma_range(patched, start_at: float, end_at: float) -> tuple:
    """(sigma_start, sigma_end) of [start_at, end_at]. The whole range is "always on" (inf, 0), not
    percent_to_sigma's 999999999.9: then the patch never reads the step's sigma back from the device, so a
    sampling step stays free of host syncs."""
    if start_at >= end_at:
        raise ValueError(f"start_at ({start_at}) must be below end_at ({end_at}).")
    sampling = patched.get_model_object("model_sampling")
    sigma_start = float("inf") if start_at <= 0 else float(sampling.percent_to_sigma(start_at))
    sigma_end = 0.0 if end_at >= 1 else float(sampling.percent_to_sigma(end_at))
    return sigma_start, sigma_end


def add_image_branch(patched, storymaker, layers, embeds, ip_scale: float, start_at: float, end_at: float,
                     region_masks=None, free_after_sampling: bool = False) -> StoryMakerAttention:
    """The characters' image tokens on all cross-attentions of `patched` (a clone), chained after any attn2
    patch already there. `free_after_sampling` drops the image K/V when a sampling ends (a story's scenes),
    keeping them per token group in the StoryMaker adapter for the next scene (`storymaker_core.group_kv`)."""
    sigma_start, sigma_end = sigma_range(patched, start_at, end_at)
    settings = ImageBranchSettings(ip_scale=ip_scale, sigma_start=sigma_start, sigma_end=sigma_end,
                                   region_masks=region_masks, tokens_per_group=embeds.cond.shape[1])
    shared = StoryMakerAttention(storymaker.projections(layers), embeds.cond, embeds.uncond, settings,
                                 group_cache=storymaker.group_kv if free_after_sampling else None)
    GuiderRoles(shared, free_after_sampling).install(patched)
    existing = patched.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    if any(isinstance(p, LayerPatch) for p in existing.values()):
        logger.warning("Apply StoryMaker: the model already went through Apply StoryMaker; the image branches add "
                       "up (and StoryMaker's LoRA, unless a lora_scale is 0, is applied twice). Put all "
                       "characters in one Encode StoryMaker Characters and apply once.")
    patches = {layer.patch_key: ComfyLayerPatch(shared, layer.patch_key, existing.get(layer.patch_key))
               for layer in layers if layer.is_cross_attention}
    for key, patch in patches.items():
        patched.set_model_attn2_replace(patch, *key)
    CompiledCalls(shared, patches).install(patched)
    return shared
