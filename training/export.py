"""Export trained weights in the release's layout, loadable by the Load StoryMaker node unchanged.

`.safetensors`: the tensors flat, prefixed `image_proj_model.` / `ip_adapter.`, with header metadata
recording the resampler's head width and number of character slots (`storymaker_core.weights.
weights_metadata`): the shapes do not give the head width, so the loader reads it from there.
`.bin`: `torch.save({"image_proj_model": {...}, "ip_adapter": {"{i}.to_q_lora.down.weight": ..., ...}})`,
the exact layout of the released `mask.bin` (plain tensors only, so `weights_only=True` loads it). It has
no room for metadata, so it is written only for the release's head width (64).
Both are checked by reading them back the way Load StoryMaker does, with no extra parameter.

CLI: `python -m storymaker export --checkpoint RUN/checkpoints/step-001000 --output storymaker.safetensors` (or
`python -m training.export ...`) turns an accelerate checkpoint (its `model.safetensors` holds
`resampler.*` and `adapter_modules.*`) into a release-layout file without loading any base model.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Mapping, Optional

import torch
from torch import Tensor

from storymaker_core.resampler import ResamplerConfig, StoryMakerResampler
from storymaker_core.weights import (
    IMAGE_PROJ,
    IP_ADAPTER,
    META_DIM_HEAD,
    RELEASE_DIM_HEAD,
    load_storymaker_weights,
    read_metadata,
    storymaker_weights_from_state_dict,
    weights_metadata,
)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


PROCESSOR_KEY_ORDER = tuple(f"{n}_lora.{p}.weight" for n in ("to_q", "to_k", "to_v", "to_out")
                            for p in ("down", "up")) + ("to_k_ip.weight", "to_v_ip.weight")


def _release_order(image_proj: Mapping[str, Tensor], ip_adapter: Mapping[str, Tensor]) -> tuple:
    """Keys in the order of the release's state dicts (accelerate checkpoints store them sorted)."""
    with torch.device("meta"):  # dim_head 1 divides every width; the order does not depend on it
        module = StoryMakerResampler(ResamplerConfig.from_state_dict(image_proj, dim_head=1))
    order = {k: i for i, k in enumerate(module.state_dict())}

    def processor_key(k: str):
        i, name = k.split(".", 1)
        rank = PROCESSOR_KEY_ORDER.index(name) if name in PROCESSOR_KEY_ORDER else len(PROCESSOR_KEY_ORDER)
        return int(i), rank, name

    return sorted(image_proj, key=lambda k: (order.get(k, len(order)), k)), sorted(ip_adapter, key=processor_key)


def release_layout(image_proj: Mapping[str, Tensor], ip_adapter: Mapping[str, Tensor], dtype=torch.float32) -> dict:
    """Contiguous CPU copies in the release's nested layout and key order."""
    proj_keys, ip_keys = _release_order(image_proj, ip_adapter)
    convert = lambda sd, keys: {k: sd[k].detach().to("cpu", dtype).contiguous().clone() for k in keys}
    return {IMAGE_PROJ: convert(image_proj, proj_keys), IP_ADAPTER: convert(ip_adapter, ip_keys)}


def save_storymaker_file(state: Mapping, path: str, dim_head: int = RELEASE_DIM_HEAD, check: bool = True):
    """Write `.safetensors` (with metadata) or `.bin` (torch pickle of plain tensors); read it back as the
    loader does, with no extra parameter, and check it describes the model that was saved.

    Args:
        state: `{"image_proj_model": {...}, "ip_adapter": {...}}` (see `release_layout`).
        path: target file; its suffix picks the format.
        dim_head: the resampler's head width.
    """
    path = str(path)
    if not path.endswith((".safetensors", ".bin", ".pt", ".pth")):
        raise ValueError(f"{path}: export to .safetensors or .bin")
    # the file's own description (shapes + head width), so its metadata is what the loader will check
    info = storymaker_weights_from_state_dict(state, os.path.basename(path), dim_head).info
    if not path.endswith(".safetensors") and dim_head != RELEASE_DIM_HEAD:
        raise ValueError(f"{path}: a .bin cannot record the head width ({dim_head}), and loaders assume the "
                         f"release's {RELEASE_DIM_HEAD}: export to .safetensors instead")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = path + ".tmp"
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        flat = {f"{section}.{k}": v for section in (IMAGE_PROJ, IP_ADAPTER) for k, v in state[section].items()}
        save_file(flat, tmp, metadata={"format": "pt", "storymaker": "trained with ComfyUI-StoryMaker training/",
                                       **weights_metadata(info)})
    else:
        torch.save({IMAGE_PROJ: dict(state[IMAGE_PROJ]), IP_ADAPTER: dict(state[IP_ADAPTER])}, tmp)
    os.replace(tmp, path)  # never leave a half-written file under the final name
    if not check:
        return None
    weights = load_storymaker_weights(path)
    if weights.info.resampler != info.resampler:
        raise ValueError(f"{path}: reads back as {weights.info.resampler}, not the saved {info.resampler}")
    return weights


def split_training_state(state: Mapping[str, Tensor]) -> dict:
    """The training module's state dict (`resampler.*`, `adapter_modules.*`) -> the release's two sections."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    image_proj = {k[len("resampler."):]: v for k, v in state.items() if k.startswith("resampler.")}
    ip_adapter = {k[len("adapter_modules."):]: v for k, v in state.items() if k.startswith("adapter_modules.")}
    if not image_proj or not ip_adapter:
        raise ValueError("the state dict has no resampler.* / adapter_modules.* weights")
    return {IMAGE_PROJ: image_proj, IP_ADAPTER: ip_adapter}


def export_model(model, path: str, dtype: str = "fp16", dim_head: int = RELEASE_DIM_HEAD,
                 state: Optional[Mapping] = None):
    """A `StoryMakerTrainingModel` -> release-layout file; returns the loaded-back weights.

    state: the full training state dict when the live parameters are sharded (FSDP/ZeRO-3:
    `accelerator.get_state_dict(model)`); by default the model's own parameters.
    """
    sections = split_training_state(state if state is not None else model.state_dict())
    weights = save_storymaker_file(release_layout(sections[IMAGE_PROJ], sections[IP_ADAPTER], DTYPES[dtype]), path,
                                   dim_head)
    weights.validate_for(model.layers, "the trained UNet")
    return weights


def state_from_checkpoint(checkpoint: str) -> dict:
    """An accelerate checkpoint folder -> release sections (`resampler.*` / `adapter_modules.*` keys)."""
    folder = Path(checkpoint)
    files = sorted(folder.glob("model*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"{checkpoint}: no model.safetensors / pytorch_model.bin (is it a checkpoint "
                                f"folder written by training.train?)")
    tensors: dict = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors.update(load_file(str(f)))
        else:
            tensors.update(torch.load(f, map_location="cpu", weights_only=True))
    try:
        return split_training_state(tensors)
    except ValueError as e:
        raise ValueError(f"{checkpoint}: {e}") from e


def checkpoint_dim_head(checkpoint: str) -> int:
    """The head width recorded by the file the trainer exports into every checkpoint folder."""
    exported = Path(checkpoint) / "storymaker.safetensors"
    recorded = read_metadata(str(exported)).get(META_DIM_HEAD) if exported.is_file() else None
    if recorded is None:
        raise ValueError(f"{checkpoint}: no {exported.name} with a recorded head width; pass --dim-head (the run's "
                         f"model.dim_head: {RELEASE_DIM_HEAD} for SDXL, 16 for the tiny model)")
    return int(recorded)


def main(argv: Optional[list] = None, prog: str = "python -m training.export") -> int:
    """``python -m storymaker export`` (``prog``: that name), or ``python -m training.export``."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"example:\n  {prog} --checkpoint runs/storymaker-sdxl-8gpu/checkpoints/step-001000 "
               f"--output ComfyUI/models/storymaker/mine.safetensors")
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder (RUN/checkpoints/step-NNNNNN)")
    parser.add_argument("--output", required=True, help="target .safetensors (or .bin for the release's head width)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--dim-head", type=int, default=None,
                        help="resampler head width (default: the one the checkpoint recorded)")
    args = parser.parse_args(argv)
    try:
        state = state_from_checkpoint(args.checkpoint)
        dim_head = args.dim_head if args.dim_head is not None else checkpoint_dim_head(args.checkpoint)
        weights = save_storymaker_file(release_layout(state[IMAGE_PROJ], state[IP_ADAPTER], DTYPES[args.dtype]),
                                       args.output, dim_head)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: {weights.info.summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
