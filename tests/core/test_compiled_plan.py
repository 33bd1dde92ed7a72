"""The compiled path's contract with torch: the only input its graphs mutate is a static one (so inductor's
CUDA-graph trees keep CUDA graphs under mode="reduce-overhead"), the host reads the layer counter back only
when a call shape is new or a sampling ends, and a recompile forgets only the compiled model's own code."""

import sys
import types

import torch
from torch._dynamo.backends.common import aot_autograd
from torch._guards import TracingContext

from storymaker_core.compiled import CallCheck, build_plan, forget_compiled_code, layer_counter, layer_order, published
from storymaker_core.patch import ImageBranchSettings, ImageProjections, LayerPatch, StoryMakerAttention

HEADS, HIDDEN, CTX = 2, 16, 32
KEYS = [("input", 4, 0), ("middle", 0, 0), ("output", 1, 0)]
DROP_OPTIONS = {"guard_filter_fn": lambda entries: ["transformer_options" not in e.name for e in entries]}


def scene(seed=0, masks=None):
    g = torch.Generator().manual_seed(seed)
    weights = {key: (torch.randn(HIDDEN, CTX, generator=g), torch.randn(HIDDEN, CTX, generator=g)) for key in KEYS}
    n = 2 if masks is None else len(masks)
    cond, uncond = torch.randn(n + 1, 4, CTX, generator=g), torch.randn(n + 1, 4, CTX, generator=g)
    settings = ImageBranchSettings(ip_scale=0.7, region_masks=masks, tokens_per_group=4)
    return StoryMakerAttention(ImageProjections(weights), cond, uncond, settings)


def host(q, k, v, transformer_options):
    """ComfyUI-like: the layers reached only through transformer_options, called in UNet order."""
    out = q
    for key in layer_order(transformer_options["patches_replace"]):
        out = out + transformer_options["patches_replace"][key](q, k, v, {**transformer_options, "n_heads": HEADS})
    return out


def run(compiled, shared, q, k, v, hw=(3, 4), layout=(1, 0)):
    options = {"patches_replace": {key: LayerPatch(shared, key) for key in KEYS}, "cond_or_uncond": list(layout),
               "activations_shape": [q.shape[0], HIDDEN, *hw]}
    plan = build_plan(shared, layer_order(KEYS), list(layout), q.shape[0], None, hw, q.device, q.dtype)
    with published(plan):
        out = compiled(q, k, v, options)
    return out, plan


def inspecting_backend(records):
    """aot_eager that records, per compiled graph, the inputs it mutates and those torch treats as static:
    the sets inductor's cudagraph trees compare (torch/_inductor/cudagraph_utils.check_for_mutation)."""
    def forward_compiler(graph, inputs):
        meta = TracingContext.get().fw_metadata
        records.append(({i for i, info in enumerate(meta.input_info) if info.mutates_data or info.mutates_metadata},
                        set(meta.static_input_indices)))
        return graph

    return aot_autograd(fw_compiler=forward_compiler)


def test_compiled_graphs_mutate_only_the_static_layer_counter():
    records = []
    torch._dynamo.reset()
    compiled = torch.compile(host, backend=inspecting_backend(records), options=DROP_OPTIONS)
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(4, 12, HIDDEN, generator=g), torch.randn(4, 7, HIDDEN, generator=g), torch.randn(4, 7, HIDDEN, generator=g)
    with torch.no_grad():
        _, plan = run(compiled, scene(0), q, k, v)
        run(compiled, scene(1, masks=[torch.ones(6, 8), torch.zeros(6, 8)]), q, k, v)  # masks: a second graph
    assert int(plan["counter"]) == len(KEYS)
    assert len(records) >= 2
    for mutated, static in records:
        assert len(mutated) == 1 and mutated <= static, (mutated, static)  # the counter, and it is static
    assert plan["counter"] is layer_counter("cpu")  # one counter for every plan: one static address


def test_call_check_reads_the_counter_once_per_new_shape_and_once_per_sampling(monkeypatch):
    import storymaker_core.compiled as compiled_module

    reads = []
    real = compiled_module.layer_calls
    monkeypatch.setattr(compiled_module, "layer_calls", lambda plan: reads.append(1) or real(plan))
    check, counter = CallCheck(), layer_counter("cpu")
    plan = {"counter": counter, "layers": 3}

    def call(shape, ran=3):
        counter.fill_(ran)
        if check.needs_read(shape):
            return check.read(plan, shape)
        check.add_unread(plan)

    previous = check.start_sampling()
    for step in range(20):
        call("batch 2")
    call("batch 1")  # cond and uncond in separate calls: a new shape, read once
    call("batch 1")
    assert len(reads) == 2 and check.end_sampling(previous) == 0
    previous = check.start_sampling()
    call("batch 2")
    call("batch 2", ran=2)  # a later call of a known shape that misses a layer ...
    call("batch 2", ran=5)  # ... or repeats two: counted on the device, not read
    assert len(reads) == 3 and check.end_sampling(previous) == 3
    call("batch 2")  # outside a sampling: every call is read
    call("batch 2")
    assert len(reads) == 5


def _module_from_source(name, source, tmp_path):
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    module = types.ModuleType(name)
    module.__file__ = str(path)
    exec(compile(source, str(path), "exec"), module.__dict__)
    sys.modules[name] = module
    return module


BLOCK = """
import torch
class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)
    def forward(self, x):
        y = self.linear(x)
        torch._dynamo.graph_break()
        return y * 2
"""


def test_a_recompile_forgets_only_the_compiled_models_own_code(tmp_path):
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    ours = _module_from_source("storymaker_test_unet", BLOCK, tmp_path).Block()
    other = _module_from_source("storymaker_test_other", BLOCK, tmp_path).Block()
    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(ours, backend="eager")(torch.randn(2, 4))
        torch.compile(other, backend="eager")(torch.randn(2, 4))
    ours_code, other_code = type(ours).forward.__code__, type(other).forward.__code__
    assert _debug_get_cache_entry_list(ours_code) and _debug_get_cache_entry_list(other_code)
    forgotten = forget_compiled_code(ours)
    assert forgotten >= 2  # forward and the resume function after its graph break
    assert not _debug_get_cache_entry_list(ours_code)
    assert _debug_get_cache_entry_list(other_code)  # another model keeps its compiled code
