"""The release pickle -> safetensors (`python -m storymaker convert mask.bin out.safetensors` runs `convert`).

A `.safetensors` file loads without unpickling, memory-maps, and in fp16 is half the download's size.
The metadata records where it came from so a converted file can be traced back to its source.
"""

from __future__ import annotations

import hashlib
import os

import torch

from .weights import StoryMakerWeightsError, flatten_for_safetensors, load_storymaker_weights, weights_metadata

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def sha256_of(path: str, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def convert(source: str, target: str, dtype: str = "fp16", dim_head: int | None = None) -> dict:
    """Write `target` (safetensors) from `source` (.bin or .safetensors); returns the metadata written.

    dim_head: the resampler's head width; by default the source's metadata, else the release's (64).
    """
    from safetensors.torch import save_file

    if os.path.abspath(source) == os.path.abspath(target):
        raise StoryMakerWeightsError(f"{target}: refusing to overwrite the source file; choose another name.")
    weights = load_storymaker_weights(source, dim_head=dim_head)
    flat = {k: v.to(DTYPES[dtype]).contiguous() if v.is_floating_point() else v.contiguous()
            for k, v in flatten_for_safetensors(weights).items()}
    metadata = {
        "format": "pt",
        "storymaker_layout": "release",
        "source_file": os.path.basename(source),
        "source_sha256": sha256_of(source),
        "dtype": dtype,
        **weights_metadata(weights.info),  # what the loader needs: head width, character slots
        "summary": weights.info.summary(),
    }
    tmp = target + ".partial"
    save_file(flat, tmp, metadata=metadata)
    os.replace(tmp, target)  # never leave a half-written file under the final name
    return metadata
