"""Apply StoryMaker under ComfyUI's TorchCompileModel (its own guard filter), through real sampling, on the CPU.

Compiled-patched must equal eager-patched for every node order and scene change, the patch must still change
the image, and it must add no graph break and no recompile beyond what the plain compiled model has (at most
one recompile per new scene). Compiles of the SDXL-shaped model take minutes on a few CPU cores, so one
sequence of compiled runs per backend is shared by all asserts (and marked slow).
"""

from pathlib import Path

import pytest
import torch

from storymaker_core.encode import StoryMakerEmbeds
from support import measured, relative_error

pytestmark = [pytest.mark.comfyui, pytest.mark.slow]
BACKENDS = ["aot_eager", "inductor"]


@pytest.fixture(scope="module")
def setup():
    from support.comfyui import comfyui_path_or_skip, import_comfyui, load_pack, seeded_adapter, small_sdxl

    import_comfyui(Path(str(comfyui_path_or_skip())))
    pack = load_pack()
    model = small_sdxl()
    layers, adapter, _ = seeded_adapter(model)
    g = torch.Generator().manual_seed(3)
    embeds = {n: StoryMakerEmbeds(cond=torch.randn(n + 1, 20, 2048, generator=g),
                                  uncond=torch.randn(n + 1, 20, 2048, generator=g), names=[str(i) for i in range(n)])
              for n in (2, 3)}
    embeds["2b"] = StoryMakerEmbeds(cond=torch.randn(3, 20, 2048, generator=g), uncond=torch.randn(3, 20, 2048, generator=g),
                                    names=["c", "d"])
    conds = [[[torch.randn(1, 77, 2048, generator=g), {"pooled_output": torch.randn(1, 1280, generator=g)}]] for _ in range(3)]
    noise = torch.randn(1, 4, 16, 16, generator=g)
    return pack, model, adapter, embeds, conds, noise


def apply_node(pack):
    """Apply StoryMaker's function: (model, storymaker, embeds, ip_scale, lora_scale, start_at, end_at, **masks)
    -> (MODEL,), whichever node API the pack's Apply uses."""
    node = pack.nodes.apply.StoryMakerApply
    if hasattr(node, "define_schema"):
        return lambda *args, **kwargs: tuple(node.execute(*args, **kwargs).result)
    return node().apply


def sample(setup, patcher, guider="cfg", noise=None):
    """3 euler steps at cfg 5 through ComfyUI's samplers (all wrappers included). The compiled image branch runs
    on SDPA where eager runs ComfyUI's CPU sub-quadratic kernel (it breaks dynamo's graph): ~1e-7 apart per
    call, which a schedule ending at small sigmas amplifies past 1e-3 under DualCFG/PerpNeg even between two
    eager runs; KSampler's normal schedule keeps it near 3e-5."""
    import comfy.sample
    import comfy.samplers
    from support.comfyui import guider as make_guider

    pack, model, adapter, embeds, (positive, negative, middle), setup_noise = setup
    noise = setup_noise if noise is None else noise
    latent = torch.zeros_like(noise)
    with torch.no_grad():
        if guider == "cfg":
            return comfy.sample.sample(patcher, noise, 3, 5.0, "euler", "normal", positive, negative, latent, seed=0,
                                       disable_pbar=True)
        g = make_guider("DualCFGGuider" if guider == "dual" else "PerpNegGuider", patcher, positive, negative, middle)
        sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "normal", 3)  # as KSampler's
        return g.sample(noise, latent, comfy.samplers.sampler_object("euler"), sigmas, seed=0)


def dynamo_counts():
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values()), counters["stats"]["unique_graphs"]


def masks(n):
    out = {}
    for i in range(n):
        m = torch.zeros(1, 128, 128)
        m[..., i * 128 // n:(i + 1) * 128 // n] = 1
        out[f"mask_{i + 1}"] = m
    return out


@pytest.fixture(scope="module", params=BACKENDS)
def runs(request, setup):
    """Every compiled run of one backend, in a fixed order (each may reuse what the previous compiled)."""
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    backend = request.param
    pack, model, adapter, embeds, conds, noise = setup
    apply = apply_node(pack)
    compile_ = lambda m: TorchCompileModel.execute(m, backend)[0]  # noqa: E731
    results, counts = {}, {}

    def run(name, compiled, eager, guider="cfg"):
        before = dynamo_counts()
        results[name] = (sample(setup, compiled, guider), sample(setup, eager, guider))
        after = dynamo_counts()
        counts[name] = (after[0] - before[0], after[1] - before[1])

    torch._dynamo.reset()
    plain_compiled = compile_(model)
    run("plain", plain_compiled, model)
    # TorchCompileModel before Apply: the plain graphs exist and must not run for the patched model
    scene1 = apply(model, adapter, embeds[2], 0.8, 0.7, 0.0, 1.0)[0]
    run("compile before apply", apply(plain_compiled, adapter, embeds[2], 0.8, 0.7, 0.0, 1.0)[0], scene1)
    torch._dynamo.reset()
    run("compile after apply", compile_(scene1), scene1)
    scene2 = apply(model, adapter, embeds["2b"], 0.5, 0.7, 0.2, 0.8)[0]  # new characters, ip_scale, start/end
    run("new scene, same shapes", compile_(scene2), scene2)
    scene3 = apply(model, adapter, embeds[3], 0.8, 0.7, 0.0, 1.0, **masks(3))[0]
    run("new scene, 3 characters + masks", compile_(scene3), scene3)
    compiled1 = compile_(scene1)
    run("DualCFG guider", compiled1, scene1, "dual")
    run("PerpNeg guider", compiled1, scene1, "perpneg")
    other_pack = model.clone()

    def other(q, k, v, extra_options):  # another pack's attn2 replace: plain attention at half strength
        from comfy.ldm.modules.attention import attention_pytorch
        return 0.5 * attention_pytorch(q, k, v, extra_options["n_heads"])

    for key in list(scene1.model_options["transformer_options"]["patches_replace"]["attn2"]):
        other_pack.set_model_attn2_replace(other, *key)
    chained = apply(other_pack, adapter, embeds[2], 0.8, 0.7, 0.0, 1.0)[0]
    run("chained with another pack", compile_(chained), chained)
    plain_eager = results["plain"][1]
    return backend, results, counts, plain_eager


CASES = ["compile before apply", "compile after apply", "new scene, same shapes", "new scene, 3 characters + masks",
         "DualCFG guider", "PerpNeg guider", "chained with another pack"]


def test_compiled_plain_equals_eager_plain(runs):
    backend, results, counts, plain = runs
    measured(f"{backend}: compiled plain vs eager plain", relative_error(*results["plain"]), 1e-4)


@pytest.mark.parametrize("case", CASES)
def test_compiled_patched_equals_eager_patched_and_changes_the_image(runs, case):
    backend, results, counts, plain = runs
    compiled, eager = results[case]
    # DualCFG/PerpNeg amplify rounding ~300x over these 3 steps: swapping only the eager image-branch kernel
    # (ComfyUI's sub-quadratic vs SDPA, ~1e-7 apart) already moves their output by 3-4e-5, and inductor's
    # fused reductions add as much again, so they get 2e-4; every KSampler (CFG) case gets 1e-4.
    tolerance = 2e-4 if "guider" in case else 1e-4
    measured(f"{backend}, {case}: compiled vs eager patched", relative_error(compiled, eager), tolerance)
    if "guider" not in case:  # the guiders sample other conds, so plain (CFG) is not their baseline
        assert relative_error(compiled, plain) > 1e-3


def test_no_graph_break_or_recompile_beyond_the_plain_model(runs):
    backend, results, counts, plain = runs
    print(f"{backend}: (graph breaks, new graphs) per run: {counts}")
    breaks, graphs = counts["plain"]
    first = counts["compile after apply"]  # the first compile: no more than plain's
    assert first[0] <= breaks and first[1] <= graphs, counts
    assert counts["compile before apply"][0] <= breaks and counts["compile before apply"][1] <= graphs, counts
    assert counts["new scene, same shapes"] == (0, 0), counts  # ip_scale, start/end, characters: no recompile
    for case in ("new scene, 3 characters + masks", "chained with another pack"):  # at most one recompile
        assert counts[case][0] <= breaks and counts[case][1] <= graphs, (case, counts)


def test_chaining_another_pack_under_compile_is_warned_about(setup, caplog):
    """Its own per-call decisions cannot be re-checked under ComfyUI's guard filter: say so, once."""
    pack, model, adapter, embeds, conds, noise = setup
    base = model.clone()
    base.set_model_attn2_replace(lambda q, k, v, extra_options: q, "middle", 0, 0)
    patched = apply_node(pack)(base, adapter, embeds[2], 0.8, 0.0, 0.0, 1.0)[0]
    wrapper = patched.get_wrappers("apply_model", "storymaker")[0].__self__
    with caplog.at_level("WARNING"):
        wrapper._check_chains()
        wrapper._check_chains()
    assert caplog.text.count("another pack's attn2 patch") == 1 and "do not compile this model" in caplog.text.lower()


def cache_entries() -> dict:
    """Compiled entries per frame dynamo has seen: `name (file:line)` -> count."""
    from torch._dynamo import convert_frame
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    codes = [code for code in (ref() for ref in convert_frame.input_codes.seen) if code is not None]
    return {f"{code.co_name} ({Path(code.co_filename).name}:{code.co_firstlineno})": len(_debug_get_cache_entry_list(code))
            for code in codes if _debug_get_cache_entry_list(code)}


@pytest.fixture(scope="module")
def shape_runs(setup):
    """Shapes that change inside one compiled workflow (aot_eager): batch 2, cond and uncond in separate calls
    (what ComfyUI does when free memory is short), a second resolution with region masks (hires fix); then,
    from a fresh dynamo, 1/2/3 characters with and without masks on one compiled model. Counts host reads of
    the layer counter, and dynamo's compiled entries per frame after the character runs."""
    import importlib

    import comfy.model_patcher
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    pack, model, adapter, embeds, conds, noise = setup
    compiled_module = importlib.import_module(f"{pack.__name__}.storymaker_core.compiled")  # the pack's own copy
    apply = apply_node(pack)
    g = torch.Generator().manual_seed(5)
    cast = {n: StoryMakerEmbeds(cond=torch.randn(n + 1, 20, 2048, generator=g),
                                uncond=torch.randn(n + 1, 20, 2048, generator=g), names=[str(i) for i in range(n)])
            for n in (1, 2, 3)}
    reads, real_read = [], compiled_module.layer_calls
    results, reads_per_run = {}, {}

    def run(name, patched, noise_=None, short_memory=False):
        compiled = TorchCompileModel.execute(patched, "aot_eager")[0]
        original = comfy.model_patcher.ModelPatcher.get_free_memory
        if short_memory:  # every cond list gets a UNet call of its own
            comfy.model_patcher.ModelPatcher.get_free_memory = lambda self, device: 0
        try:
            before = len(reads)
            results[name] = (sample(setup, compiled, noise=noise_), sample(setup, patched, noise=noise_))
            reads_per_run[name] = len(reads) - before
        finally:
            comfy.model_patcher.ModelPatcher.get_free_memory = original

    compiled_module.layer_calls = lambda plan: reads.append(1) or real_read(plan)
    try:
        torch._dynamo.reset()
        two = apply(model, adapter, embeds[2], 0.8, 0.7, 0.0, 1.0, **masks(2))[0]
        run("first compile", two)
        run("batch 2", two, noise_=torch.randn(2, 4, 16, 16, generator=g))
        run("cond and uncond in separate calls", two, short_memory=True)
        run("hires: 24x24 latent with masks", two, noise_=torch.randn(1, 4, 24, 24, generator=g))
        torch._dynamo.reset()
        for n in (1, 2, 3):
            for with_masks in (False, True):
                run(f"{n} character(s), masks {with_masks}",
                    apply(model, adapter, cast[n], 0.8, 0.7, 0.0, 1.0, **(masks(n) if with_masks else {}))[0])
        entries = cache_entries()
    finally:
        compiled_module.layer_calls = real_read
    return results, reads_per_run, entries


def test_shape_changes_under_compile_render_the_eager_image(shape_runs):
    results, reads, entries = shape_runs
    for name, (compiled, eager) in results.items():
        measured(f"aot_eager, {name}: compiled vs eager patched", relative_error(compiled, eager), 1e-4)


def test_the_layer_counter_is_read_once_per_new_call_shape_not_per_step(shape_runs):
    """3 steps = 3 UNet calls (6 with cond and uncond apart): the counter is read back for the first call of
    each call shape of a sampling only (the rest is checked on the device and read once at its end)."""
    results, reads, entries = shape_runs
    assert reads["first compile"] == 1 and reads["batch 2"] == 1, reads
    assert reads["cond and uncond in separate calls"] == 1, reads  # both calls have the same shape (batch 1)
    assert all(count == 1 for count in reads.values()), reads


def test_characters_and_masks_stay_under_dynamos_recompile_limit(shape_runs):
    """1/2/3 characters with and without masks on one compiled model: every frame keeps fewer compiled entries
    than dynamo's recompile limit (past it, dynamo runs the frame eagerly for good, silently losing the speed)."""
    results, reads, entries = shape_runs
    limit = torch._dynamo.config.recompile_limit
    print("compiled entries per frame after 1/2/3 characters x masks:", entries)
    assert max(entries.values()) < limit, (entries, limit)
