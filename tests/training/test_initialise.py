"""Starting points: IP-Adapter-FaceID-PlusV2 + IP-Adapter-Plus (from scratch) and the release (fine-tune).

No IP-Adapter file can be downloaded here, so the files are built with random values in the layouts the
release's loader relies on (FaceID-PlusV2 `image_proj` = our `proj.*`/`norm.*`/`perceiver_resampler.*`
names, its `ip_adapter` = our index-keyed processor names; IP-Adapter-Plus `image_proj` = our
`resample.*` names without the prefix), taken from our own module's key names.
"""

import pytest
import torch
from safetensors.torch import save_file

from storymaker_core.resampler import ResamplerConfig
from support import seeded_weights
from training.initialise import InitialisationError, init_from_ip_adapters, init_from_release
from training.model import StoryMakerTrainingModel
from training.synthetic import TINY_RESAMPLER, unet_config

RANK = 8


def tiny_model(rank=RANK):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return StoryMakerTrainingModel(UNet2DConditionModel(**unet_config()), ResamplerConfig(**TINY_RESAMPLER), rank=rank)


def ip_adapter_files(tmp_path, model, rank=RANK):
    shapes = {k: tuple(v.shape) for k, v in model.resampler.state_dict().items()}
    face_proj = seeded_weights({k: s for k, s in shapes.items()
                                if k.startswith(("proj.", "norm.", "perceiver_resampler."))}, seed=1)
    plus_proj = seeded_weights({k[len("resample."):]: s for k, s in shapes.items() if k.startswith("resample.")}, 2)
    lora_shapes = {k: tuple(v.shape) for k, v in tiny_model(rank).adapter_modules.state_dict().items()}
    face_ip = seeded_weights(lora_shapes, seed=3)
    plus_ip = seeded_weights({k: s for k, s in lora_shapes.items() if "_ip." in k}, seed=4)  # not used
    faceid = tmp_path / "ip-adapter-faceid-plusv2_sdxl.bin"
    torch.save({"image_proj": face_proj, "ip_adapter": face_ip}, faceid)
    plus = tmp_path / "ip-adapter-plus_sdxl_vit-h.safetensors"
    save_file({**{f"image_proj.{k}": v for k, v in plus_proj.items()},
               **{f"ip_adapter.{k}": v for k, v in plus_ip.items()}}, plus)
    return faceid, plus, face_proj, plus_proj, face_ip


def test_from_ip_adapters_maps_every_key_and_starts_new_parts_fresh(tmp_path):
    model = tiny_model()
    faceid, plus, face_proj, plus_proj, face_ip = ip_adapter_files(tmp_path, model)
    with torch.no_grad():
        for name in ("pos_embed", "bg_embed"):
            getattr(model.resampler, name).normal_()
        model.resampler.proj_out.weight.normal_()
    init_from_ip_adapters(model, str(faceid), str(plus))
    state = model.resampler.state_dict()
    assert all(torch.equal(state[k], v) for k, v in face_proj.items())
    assert all(torch.equal(state[f"resample.{k}"], v) for k, v in plus_proj.items())
    ours = model.adapter_modules.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in face_ip.items()) and ours.keys() == face_ip.keys()
    for k in ("pos_embed", "bg_embed", "proj_out.weight", "proj_out.bias", "norm_out.bias"):
        assert torch.count_nonzero(state[k]) == 0, k
    assert torch.all(state["norm_out.weight"] == 1)
    # at step 0 the fusion is the identity: the output is [0 | FaceID-PlusV2 tokens + IP-Adapter-Plus tokens]
    ids, clip = torch.randn(1, 512), torch.randn(1, 50, TINY_RESAMPLER["clip_dim"])
    with torch.no_grad():
        out = model.resampler(ids, clip, clip)
        raw = model.resampler.character_tokens(ids, clip, clip)
    assert torch.count_nonzero(out[0]) == 0 and torch.equal(out[1], raw[0])


def test_ip_adapter_files_that_do_not_fit_are_refused(tmp_path):
    model = tiny_model()
    faceid, plus, *_ = ip_adapter_files(tmp_path, model, rank=4)  # LoRA rank 4 file, model rank 8
    with pytest.raises(InitialisationError, match="lora_rank"):
        init_from_ip_adapters(model, str(faceid), str(plus))
    faceid, plus, face_proj, *_ = ip_adapter_files(tmp_path, model)
    torch.save({"image_proj": {k: v for k, v in face_proj.items() if not k.startswith("norm.")},
                "ip_adapter": {}}, faceid)
    with pytest.raises(InitialisationError, match="uninitialised"):
        init_from_ip_adapters(model, str(faceid), str(plus))


def test_from_release_loads_strictly(tmp_path):
    source = tiny_model()
    state = {section: seeded_weights({k: tuple(v.shape) for k, v in sd.items()}, seed=i)
             for i, (section, sd) in enumerate(source.trainable_state().items())}
    path = tmp_path / "mask.bin"
    torch.save(state, path)
    model = tiny_model()
    init_from_release(model, str(path), dim_head=TINY_RESAMPLER["dim_head"])
    assert all(torch.equal(model.resampler.state_dict()[k], v) for k, v in state["image_proj_model"].items())
    assert all(torch.equal(model.adapter_modules.state_dict()[k], v) for k, v in state["ip_adapter"].items())
    wrong_rank = tiny_model(rank=4)
    with pytest.raises(InitialisationError, match="model.lora_rank to 8"):
        init_from_release(wrong_rank, str(path), dim_head=TINY_RESAMPLER["dim_head"])
