"""Load Segment Anything node inside ComfyUI: .pth and .safetensors files, SAM under ComfyUI's model management.

Needs COMFYUI_PATH (a ComfyUI v0.14.1 source tree), its requirements and segment-anything; skipped otherwise.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from support.v3 import node_function

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def sams(tmp_path_factory):
    from support.comfyui import comfyui_path_or_skip

    path = str(comfyui_path_or_skip())
    pytest.importorskip("segment_anything")
    from safetensors.torch import save_file
    from segment_anything import sam_model_registry
    from support.comfyui import import_comfyui, load_pack

    import_comfyui(Path(path))
    import folder_paths

    pack = load_pack()
    folder = tmp_path_factory.mktemp("sams")
    torch.manual_seed(0)
    state = sam_model_registry["vit_b"](checkpoint=None).state_dict()
    torch.save(state, folder / "sam_vit_b_01ec64.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "person.safetensors"))
    folder_paths.folder_names_and_paths["sams"] = ([str(folder)], {".pth", ".safetensors"})
    return pack


def test_both_file_kinds_load_and_segment_alike_under_model_management(sams):
    import comfy.model_management

    load = node_function(sams.nodes.loaders.StoryMakerSAMLoader)
    (from_pth,) = load("sam_vit_b_01ec64.pth")
    (from_safetensors,) = load("person.safetensors")  # type read from the weights: the name does not say
    assert from_safetensors.segmenter.model_type == "vit_b"
    image = np.random.default_rng(1).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    masks = [s.segment(image, [6, 4, 40, 36]) for s in (from_pth, from_safetensors)]
    assert masks[0].shape == (40, 56) and np.array_equal(masks[0], masks[1])
    loaded = [m.model for m in comfy.model_management.current_loaded_models]
    assert from_pth.patcher in loaded and from_safetensors.patcher in loaded  # ComfyUI loads, counts, can offload
