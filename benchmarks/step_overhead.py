"""Cost of one SDXL UNet step with Apply StoryMaker vs without, measured in the same run.

    python benchmarks/step_overhead.py --comfyui /path/to/ComfyUI                     # CPU, small SDXL-shaped UNet
    python benchmarks/step_overhead.py --comfyui /path/to/ComfyUI --full --res 1024   # GPU, full SDXL, fp16
    python benchmarks/step_overhead.py --comfyui /path/to/ComfyUI --compile inductor  # under TorchCompileModel

ComfyUI in library mode, CFG batch (cond + uncond). StoryMaker's LoRA is merged into the weights by
ComfyUI, so every variant runs on the same loaded weights and differs only in the attn2 patches:
baseline, 1/2/3 characters, 2/3 characters with region masks. Variants are interleaved over many rounds
(an eager SDXL step on a GPU is CPU-launch-bound and drifts), the median is reported, and on CUDA each
variant is also timed captured in a CUDA graph. With `--compile BACKEND` every variant, the baseline too,
runs through ComfyUI's TorchCompileModel node (its own guard filter) and StoryMaker's compiled path; the
compiled variants are 1, 2 and 3 characters + masks, and the baseline routes attn2 through a pass-through
replace (see `pass_through_baseline`). Prints one summary line last and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

FULL_SDXL = {"model_channels": 320, "channel_mult": [1, 2, 4]}
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def pass_through_baseline(compiled, patcher):
    """The compiled plain model with every attn2 routed through a replace that does what attn2 itself does
    (to_q/k/v, ComfyUI's optimized_attention, to_out: the same kernels). Under TorchCompileModel's guard
    filter a frame traced with `patches_replace` fails with KeyError when run without it, so a plain and a
    patched model cannot be interleaved on one compiled UNet; this baseline has the patched one's structure."""
    from comfy.ldm.modules.attention import optimized_attention

    import importlib

    from storymaker_core.layout import unet_attention_layers_from_state_dict
    from support.comfyui import PACK_MODULE

    storymaker_compiled = importlib.import_module(f"{PACK_MODULE}.storymaker_core.compiled")  # the pack's own

    def attn2(q, k, v, extra_options):
        if storymaker_compiled._PLAN:  # a guard: StoryMaker's calls never reuse this baseline's graphs
            raise RuntimeError("the pass-through baseline ran inside a StoryMaker call")
        return optimized_attention(q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"),
                                   transformer_options=extra_options)

    baseline = compiled.clone()
    shapes = {k: tuple(v.shape) for k, v in patcher.model.diffusion_model.state_dict().items()}
    for layer in unet_attention_layers_from_state_dict(shapes):
        if layer.is_cross_attention:
            baseline.set_model_attn2_replace(attn2, *layer.patch_key)
    return baseline


def build(args):
    import torch

    from support.comfyui import import_comfyui, load_pack, small_sdxl
    from support.v3 import node_function

    import_comfyui(Path(args.comfyui), cpu=not torch.cuda.is_available())
    import comfy.model_management

    from storymaker_core.adapter import StoryMakerAdapter
    from storymaker_core.encode import StoryMakerEmbeds
    from storymaker_core.layout import unet_attention_layers_from_state_dict
    from storymaker_core.weights import expected_image_proj_shapes, expected_ip_adapter_shapes, storymaker_weights_from_state_dict
    from support import seeded_weights, tiny_resampler_config

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, DTYPES[args.dtype or ("fp16" if device.type == "cuda" else "fp32")])
    patcher = small_sdxl(dtype=dtype, **(FULL_SDXL if args.full else {}))
    patcher.load_device = device
    unet = patcher.model.diffusion_model.state_dict()
    layers = unet_attention_layers_from_state_dict({k: tuple(v.shape) for k, v in unet.items()})
    state = {"image_proj_model": seeded_weights(expected_image_proj_shapes(tiny_resampler_config(cross_attention_dim=2048)), 1),
             "ip_adapter": seeded_weights(expected_ip_adapter_shapes(layers, 128), 2, scale=0.01)}
    adapter = StoryMakerAdapter(storymaker_weights_from_state_dict(state, "random", dim_head=16))
    apply = node_function(load_pack().nodes.apply.StoryMakerApply)
    g = torch.Generator().manual_seed(0)
    h = w = args.res // 8
    base = patcher
    if args.compile != "none":
        from comfy_extras.nodes_torch_compile import TorchCompileModel

        base = TorchCompileModel.execute(patcher, args.compile)[0]
    variants = {"baseline": pass_through_baseline(base, patcher) if args.compile != "none" else None}
    shapes = ((1, False), (2, False), (3, False), (2, True), (3, True)) if args.compile == "none" else \
        ((1, False), (2, False), (3, True))
    for n, masked in shapes:
        embeds = StoryMakerEmbeds(torch.randn(n + 1, 20, 2048, generator=g), torch.randn(n + 1, 20, 2048, generator=g), [])
        masks = {}
        if masked:
            for i in range(n):
                m = torch.zeros(1, args.res, args.res)
                m[:, :, i * args.res // n:(i + 1) * args.res // n] = 1
                masks[f"mask_{i + 1}"] = m
        (clone,) = apply(base, adapter, embeds, 0.8, 0.8, 0.0, 1.0, **masks)
        variants[f"{n} char" + (" + masks" if masked else "")] = clone
    loaded = variants["1 char"]
    comfy.model_management.load_models_gpu([loaded])  # LoRA merged once; all variants share these weights
    x = torch.randn(2, 4, h, w, generator=g).to(device, dtype)
    context = torch.randn(2, 77, 2048, generator=g).to(device, dtype)
    y = torch.randn(2, 2816, generator=g).to(device, dtype)
    sigma = torch.full((2,), 5.0, device=device)
    base_options = {k: v for k, v in loaded.model_options["transformer_options"].items() if k != "patches_replace"}

    def options(clone):
        opts = dict(base_options if clone is None else clone.model_options["transformer_options"])
        opts.update(cond_or_uncond=[1, 0], sigmas=sigma)
        if clone is not None:  # the compile and StoryMaker wrappers, as sampling merges them in
            opts["wrappers"] = {kind: {key: list(fns) for key, fns in by_key.items()}
                                for kind, by_key in clone.wrappers.items()}
        return opts

    def step_fn(clone):
        opts = options(clone)
        return lambda: loaded.model.apply_model(x, sigma, c_crossattn=context, y=y, transformer_options=opts)

    host_bytes = sum(p.numel() * p.element_size() for p in adapter.projections(layers).parameters())
    shared = {name: next(iter(clone.model_options["transformer_options"]["patches_replace"]["attn2"].values())).shared
              for name, clone in variants.items() if name != "baseline"}
    return {name: step_fn(clone) for name, clone in variants.items()}, device, host_bytes, shared


def time_eager(steps, rounds, device):
    import torch
    from tqdm import tqdm

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    samples = {name: [] for name in steps}
    with torch.no_grad():
        for fn in tqdm(steps.values(), desc="warm-up (and compile)"):
            fn(), fn()  # warm-up: kernels, K/V caches, compiled graphs
        for _ in range(rounds):
            order = list(steps)
            random.shuffle(order)
            for name in order:
                sync()
                start = time.perf_counter()
                steps[name]()
                sync()
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in samples.items()}


def peak_step_memory(steps):
    """Peak CUDA memory of one step per variant, bytes (weights and K/V caches included: they stay allocated)."""
    import torch

    peaks = {}
    with torch.no_grad():
        for name, fn in steps.items():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            fn()
            torch.cuda.synchronize()
            peaks[name] = torch.cuda.max_memory_allocated()
    return peaks


def capture_cuda_graph(fn):
    """`fn` captured in a CUDA graph after two warm-up runs on a side stream (kernels chosen, caches filled)."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn(), fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


def time_cuda_graph(steps, rounds):
    """Median replay time per variant; a variant that cannot be captured gets its error instead of a time."""
    import torch

    graphs, errors = {}, {}
    with torch.no_grad():
        for name, fn in steps.items():
            try:
                graphs[name] = capture_cuda_graph(fn)
            except Exception as e:  # report, don't hide: the other variants and the eager numbers still stand
                errors[name] = f"{type(e).__name__}: {e}"
                torch.cuda.synchronize()
    samples = {name: [] for name in graphs}
    for _ in range(rounds):
        for name in random.sample(list(graphs), len(graphs)):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            graphs[name].replay()
            end.record()
            end.synchronize()
            samples[name].append(start.elapsed_time(end) / 1000)
    return {name: statistics.median(v) for name, v in samples.items()}, errors


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", required=True, help="ComfyUI source tree")
    parser.add_argument("--full", action="store_true", help="full-size SDXL UNet (use on a GPU)")
    parser.add_argument("--res", type=int, default=256, help="image resolution (latent = res/8)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="UNet dtype (default fp16 on CUDA, fp32 on CPU)")
    parser.add_argument("--compile", choices=["none", "inductor", "cudagraphs"], default="none",
                        help="run every variant through ComfyUI's TorchCompileModel with this backend")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "step_overhead.json"))
    args = parser.parse_args(argv)
    import torch

    steps, device, host_bytes, shared = build(args)
    eager = time_eager(steps, args.rounds, device)
    device_bytes = {name: patch.cached_bytes() for name, patch in shared.items()}  # after the warm-up steps
    peaks = peak_step_memory(steps) if device.type == "cuda" else {}
    capture = device.type == "cuda" and args.compile == "none"  # a compiled step is timed as it runs
    graph, graph_errors = time_cuda_graph(steps, args.rounds) if capture else ({}, {})
    graph_ok = "baseline" in graph
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {name}, {'full' if args.full else 'small'} SDXL-shaped UNet, {args.res}x{args.res}, CFG batch 2, "
          f"{args.rounds} interleaved rounds, torch {torch.__version__}, compile: {args.compile}")
    column = "eager ms" if args.compile == "none" else "step ms"
    print(f"{'variant':<18} {column:>9} {'ratio':>7}" + (f" {'graph ms':>9} {'ratio':>7}" if graph_ok else ""))
    for variant in steps:
        line = f"{variant:<18} {eager[variant] * 1000:9.1f} {eager[variant] / eager['baseline']:7.3f}"
        if graph_ok:
            line += (f" {graph[variant] * 1000:9.2f} {graph[variant] / graph['baseline']:7.3f}" if variant in graph
                     else f" {'failed':>9}")
        print(line)
    for variant, error in graph_errors.items():
        print(f"CUDA graph capture failed for {variant}: {error}")
    result = {"benchmark": "step_overhead", "compile": args.compile, "device": name, "torch": torch.__version__, "full_size": args.full,
              "res": args.res, "rounds": args.rounds, "eager_s": eager, "cuda_graph_s": graph,
              "cuda_graph_errors": graph_errors, "image_projection_host_bytes": host_bytes, "image_kv_device_bytes": device_bytes, "peak_step_bytes": peaks,
              "ratios_eager": {k: v / eager["baseline"] for k, v in eager.items()},
              "ratios_cuda_graph": {k: v / graph["baseline"] for k, v in graph.items()} if graph_ok else {}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"extra memory of the patched model: to_k_ip/to_v_ip {host_bytes / 2**20:.0f} MiB in host memory; on the "
          f"{device.type} only the image K/V, {max(device_bytes.values()) / 2**20:.1f} MiB at most (LoRA is merged)")
    for variant, peak in peaks.items():
        print(f"peak memory of a step, {variant}: {peak / 2**30:.2f} GiB ({(peak - peaks['baseline']) / 2**20:+.0f} MiB)")
    if args.compile != "none":
        print(f"step_overhead: {eager['1 char'] / eager['baseline']:.3f}x (1 character), "
              f"{eager['2 char'] / eager['baseline']:.3f}x (2 characters), {eager['3 char + masks'] / eager['baseline']:.3f}x "
              f"(3 characters + masks) vs plain SDXL step, both compiled ({args.compile}, {name})")
        return 0
    timed = "CUDA graph" if graph_ok and {"1 char", "2 char"} <= set(graph) else "eager"
    best = graph if timed == "CUDA graph" else eager
    print(f"step_overhead: {best['1 char'] / best['baseline']:.3f}x (1 character), {best['2 char'] / best['baseline']:.3f}x "
          f"(2 characters) vs plain SDXL step ({timed}, {name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
