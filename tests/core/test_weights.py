"""Loading, converting and validating StoryMaker weight files, on the real key layout."""

import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from storymaker.cli import main as storymaker
from storymaker_core.layout import SDXL, UNetAttentionConfig, unet_attention_layers
from storymaker_core.resampler import ResamplerConfig
from storymaker_core.weights import (
    StoryMakerWeightsError,
    flatten_for_safetensors,
    load_storymaker_weights,
)
from support import random_storymaker_state, release_state, small_unet_config, tiny_resampler_config


def convert_main(argv: list) -> int:
    """`storymaker convert ...`: the command line around `storymaker_core.convert.convert`."""
    return storymaker(["convert", *argv])


@pytest.fixture(scope="module")
def release_bin(tmp_path_factory):
    """A file with the released mask.bin's exact keys and shapes (random fp16 values, 1.7 GB)."""
    path = tmp_path_factory.mktemp("release") / "mask.bin"
    torch.save(release_state(seed=1), path)
    return path


@pytest.fixture
def small_bin(tmp_path):
    path = tmp_path / "small.bin"
    torch.save(random_storymaker_state(seed=2), path)
    return path


@pytest.mark.slow  # writes and reads a release-sized (1.7 GB) file
def test_release_layout_file_loads_and_describes_itself(release_bin):
    weights = load_storymaker_weights(str(release_bin))
    info = weights.info
    assert (info.num_processors, info.num_cross_layers, info.lora_rank, info.context_dim) == (140, 70, 128, 2048)
    assert info.max_characters == 3 and info.resampler == ResamplerConfig()
    assert set(info.hidden_sizes) == {640, 1280}
    assert len(weights.image_proj) == 113 and len(weights.ip_adapter) == 1260
    weights.validate_for(unet_attention_layers(SDXL), "SDXL")
    resampler = weights.build_resampler(dtype=torch.float32)  # strict load of the release key layout
    assert torch.equal(resampler.bg_embed.half(), weights.image_proj["bg_embed"])
    assert "140 attention layers" in info.summary()


@pytest.mark.slow  # writes and reads a release-sized (1.7 GB) file
def test_bin_and_converted_safetensors_hold_the_same_tensors(release_bin, tmp_path, capsys):
    target = tmp_path / "storymaker.safetensors"
    assert convert_main([str(release_bin), str(target)]) == 0  # fp16 like the release: 1.7 GB, not 3.4 GB on disk
    assert "wrote" in capsys.readouterr().out
    original, converted = load_storymaker_weights(str(release_bin)), load_storymaker_weights(str(target))
    assert converted.info.num_processors == 140 and converted.info.dtype == torch.float16
    for section in ("image_proj", "ip_adapter"):
        a, b = getattr(original, section), getattr(converted, section)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    target.unlink()  # CI machines can be short of disk


def test_converter_writes_fp32_when_asked(small_bin, tmp_path):
    target = tmp_path / "small32.safetensors"
    assert convert_main([str(small_bin), str(target), "--dtype", "fp32", "--dim-head", "16"]) == 0
    original, converted = load_storymaker_weights(str(small_bin), dim_head=16), load_storymaker_weights(str(target), dim_head=16)
    assert converted.info.dtype == torch.float32
    assert all(torch.equal(original.ip_adapter[k], converted.ip_adapter[k]) for k in original.ip_adapter)


def test_converter_writes_fp16_with_provenance(small_bin, tmp_path):
    target = tmp_path / "small.safetensors"
    assert convert_main([str(small_bin), str(target), "--dim-head", "16"]) == 0
    from safetensors import safe_open
    with safe_open(str(target), "pt") as f:
        metadata = f.metadata()
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    assert metadata["source_file"] == "small.bin" and len(metadata["source_sha256"]) == 64
    assert load_storymaker_weights(str(target), dim_head=16).info.dtype == torch.float16
    assert not (tmp_path / "small.safetensors.partial").exists()


def test_converter_refuses_to_overwrite_its_source(small_bin, capsys):
    assert convert_main([str(small_bin), str(small_bin) + ".safetensors", "--dim-head", "16"]) == 0
    assert convert_main([str(small_bin) + ".safetensors", str(small_bin) + ".safetensors", "--dim-head", "16"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_small_sdxl_shaped_model_is_accepted_when_the_file_matches_it(small_bin):
    weights = load_storymaker_weights(str(small_bin), dim_head=16)
    weights.validate_for(unet_attention_layers(small_unet_config()), "small UNet")
    assert weights.info.resampler == tiny_resampler_config()
    with pytest.raises(StoryMakerWeightsError, match="does not fit SDXL") as e:
        # same context width, other widths/depths: every difference is reported with the file name
        weights.validate_for(unet_attention_layers(UNetAttentionConfig(cross_attention_dim=64)), "SDXL")
    assert "small.bin" in str(e.value) and "wrong shapes" in str(e.value) and "missing keys" in str(e.value)


@pytest.mark.slow  # writes and reads a release-sized (1.7 GB) file
def test_release_file_on_sd15_unet_says_sdxl_only(release_bin):
    sd15 = UNetAttentionConfig(block_out_channels=(320, 640, 1280, 1280), transformer_layers_per_block=(1, 1, 1, 0),
                               mid_transformer_depth=1, cross_attention_dim=768)
    with pytest.raises(StoryMakerWeightsError, match="SD1.5.*SDXL models only"):
        load_storymaker_weights(str(release_bin)).validate_for(unet_attention_layers(sd15), "the model")


def test_sd15_sized_file_is_rejected(tmp_path):
    sd15 = UNetAttentionConfig(block_out_channels=(320, 640, 1280, 1280), transformer_layers_per_block=(1, 1, 1, 0),
                               mid_transformer_depth=1, cross_attention_dim=768)
    path = tmp_path / "sd15.bin"
    torch.save(random_storymaker_state(sd15, tiny_resampler_config(cross_attention_dim=768)), path)
    with pytest.raises(StoryMakerWeightsError, match="sd15.bin: this file is for SD1.5"):
        load_storymaker_weights(str(path))


def edited(state, section, edit):
    state = {k: dict(v) for k, v in state.items()}
    edit(state[section])
    return state


@pytest.mark.parametrize("case, edit, message", [
    ("missing", lambda s: s.pop("3.to_v_lora.up.weight"), r"1 missing keys: 3.to_v_lora.up.weight"),
    ("extra", lambda s: s.update({"2.to_k_ip.weight": torch.zeros(64, 64)}), r"1 unexpected keys: 2.to_k_ip.weight"),
    ("shape", lambda s: s.update({"5.to_k_ip.weight": torch.zeros(32, 64)}), r"5.to_k_ip.weight: file \(32, 64\), needed \(128, 64\)"),
])
def test_ip_adapter_problems_are_named(tmp_path, case, edit, message):
    path = tmp_path / f"{case}.bin"
    torch.save(edited(random_storymaker_state(), "ip_adapter", edit), path)
    layers = unet_attention_layers(small_unet_config())
    with pytest.raises(StoryMakerWeightsError, match=message) as e:
        load_storymaker_weights(str(path), dim_head=16).validate_for(layers)
    assert f"{case}.bin" in str(e.value)


@pytest.mark.parametrize("case, edit, message", [
    ("missing", lambda s: s.pop("resample.layers.1.0.to_kv.weight"), "missing keys: resample.layers.1.0.to_kv"),
    ("extra", lambda s: s.update({"resample.pos_emb.weight": torch.zeros(3)}), "unexpected keys: resample.pos_emb"),
    ("shape", lambda s: s.update({"norm_out.bias": torch.zeros(65)}), r"norm_out.bias: file \(65,\), needed \(64,\)"),
    ("not-storymaker", lambda s: s.pop("bg_embed"), "lacks 'bg_embed': this is not a StoryMaker resampler"),
])
def test_image_proj_problems_are_named(tmp_path, case, edit, message):
    path = tmp_path / f"{case}.bin"
    torch.save(edited(random_storymaker_state(), "image_proj_model", edit), path)
    with pytest.raises(StoryMakerWeightsError, match=message):
        load_storymaker_weights(str(path), dim_head=16)


class Exploit:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    state = random_storymaker_state()
    state["ip_adapter"]["0.to_q_lora.up.weight"] = Exploit(str(marker))
    torch.save(state, path)
    with pytest.raises(StoryMakerWeightsError, match="evil.bin: contains Python objects other than tensors"):
        load_storymaker_weights(str(path))
    assert not marker.exists()


def test_plain_non_tensor_values_are_refused(tmp_path):
    path = tmp_path / "odd.bin"
    state = random_storymaker_state()
    state["ip_adapter"]["0.to_q_lora.up.weight"] = [1.0, 2.0]  # allowed by weights_only, still not a tensor
    torch.save(state, path)
    with pytest.raises(StoryMakerWeightsError, match="must be tensors"):
        load_storymaker_weights(str(path))


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_truncated_files_say_download_again(tmp_path, suffix):
    state = random_storymaker_state()
    path = tmp_path / f"cut{suffix}"
    if suffix == ".bin":
        torch.save(state, path)
    else:
        save_file({f"{s}.{k}": v for s, d in state.items() for k, v in d.items()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoryMakerWeightsError, match=f"cut{suffix}.*(truncated or corrupt)"):
        load_storymaker_weights(str(path))


def test_legacy_non_zip_pickle_still_loads(tmp_path):
    path = tmp_path / "legacy.bin"
    torch.save(random_storymaker_state(), path, _use_new_zipfile_serialization=False)
    expected = len(unet_attention_layers(small_unet_config()))
    assert load_storymaker_weights(str(path), dim_head=16).info.num_processors == expected == 34


def test_more_characters_than_supported(tmp_path):
    path = tmp_path / "five.bin"
    torch.save(random_storymaker_state(resampler_config=tiny_resampler_config(max_characters=5)), path)
    assert load_storymaker_weights(str(path), dim_head=16).info.max_characters == 5
    with pytest.raises(StoryMakerWeightsError, match="five.bin: made for 5 characters, but this resampler supports at most 3"):
        load_storymaker_weights(str(path), dim_head=16, max_characters=3)


def test_missing_file_and_foreign_files(tmp_path):
    with pytest.raises(StoryMakerWeightsError, match="no such file.*models/storymaker"):
        load_storymaker_weights(str(tmp_path / "nope.bin"))
    lora = tmp_path / "some_lora.safetensors"
    save_file({"lora_unet_down.weight": torch.zeros(2)}, lora)
    with pytest.raises(StoryMakerWeightsError, match="not a StoryMaker file"):
        load_storymaker_weights(str(lora))


def test_flat_safetensors_layout_round_trips(tmp_path, small_bin):
    weights = load_storymaker_weights(str(small_bin), dim_head=16)
    path = tmp_path / "flat.safetensors"
    save_file(flatten_for_safetensors(weights), path)
    keys = load_file(path).keys()
    assert all(k.startswith(("image_proj_model.", "ip_adapter.")) for k in keys)
    assert load_storymaker_weights(str(path), dim_head=16).info == weights.info
    assert os.path.getsize(path) > 0


@pytest.mark.parametrize("name, content, says", [
    ("mask.bin", b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 3320000000\n", "Git LFS pointer"),
    ("mask.bin", b"\n<!DOCTYPE html><html><body>Sign in</body></html>", "a web page"),
    ("storymaker.safetensors", b"<html><head><title>404</title></head></html>", "a web page"),
    ("mask.bin", bytes(range(256)) * 4, "not a torch checkpoint"),
])
def test_failed_downloads_are_named_not_called_unsafe(tmp_path, name, content, says):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(StoryMakerWeightsError, match=f"{says}.*download the file again") as error:
        load_storymaker_weights(str(path))
    assert "could run code" not in str(error.value) and f"{len(content)} bytes" in str(error.value)


def write_safetensors(path, state, metadata):
    save_file({f"{s}.{k}": v for s, d in state.items() for k, v in d.items()}, str(path), metadata=metadata)
    return str(path)


def test_head_width_comes_from_the_metadata_else_the_release_value(tmp_path):
    state = random_storymaker_state()  # tiny resampler: head width 16
    recorded = write_safetensors(tmp_path / "recorded.safetensors", state, {"dim_head": "16", "max_characters": "3"})
    assert load_storymaker_weights(recorded).info.resampler == tiny_resampler_config()
    bare = write_safetensors(tmp_path / "bare.safetensors", state, {"format": "pt"})
    with pytest.raises(StoryMakerWeightsError, match=r"bare.safetensors: .*head width 64: the release's value"):
        load_storymaker_weights(bare)  # widths of 32 do not split into 64-wide heads
    assert load_storymaker_weights(bare, dim_head=16).info.resampler.dim_head == 16
    wide = tiny_resampler_config(dim_head=64, face_heads=1, character_heads=1)
    torch.save(random_storymaker_state(resampler_config=wide), tmp_path / "pickle.bin")
    assert load_storymaker_weights(str(tmp_path / "pickle.bin")).info.resampler == wide  # no metadata: 64


@pytest.mark.parametrize("metadata, message", [
    ({"dim_head": "sixteen"}, r"metadata 'dim_head' is 'sixteen', not a positive whole number"),
    ({"dim_head": "0"}, r"metadata 'dim_head' is '0', not a positive whole number"),
    ({"dim_head": "7"}, r"not a multiple of the head width 7 \(head width 7: the file's metadata 'dim_head'\)"),
    ({"dim_head": "16", "max_characters": "4"}, r"records 4 character slots but the resampler's 'pos_embed' holds 3"),
    ({"dim_head": "16", "max_characters": "-1"}, r"metadata 'max_characters' is '-1'"),
])
def test_wrong_metadata_is_named(tmp_path, metadata, message):
    path = write_safetensors(tmp_path / "edited.safetensors", random_storymaker_state(), metadata)
    with pytest.raises(StoryMakerWeightsError, match=message) as e:
        load_storymaker_weights(path)
    assert str(e.value).startswith("edited.safetensors: ")


def test_a_head_width_passed_against_the_metadata_is_refused(tmp_path):
    path = write_safetensors(tmp_path / "recorded.safetensors", random_storymaker_state(), {"dim_head": "16"})
    with pytest.raises(StoryMakerWeightsError, match="records head width 16, but 64 was asked for"):
        load_storymaker_weights(path, dim_head=64)


def test_conversion_keeps_the_recorded_head_width(tmp_path):
    source = write_safetensors(tmp_path / "trained.safetensors", random_storymaker_state(), {"dim_head": "16"})
    target = tmp_path / "converted.safetensors"
    assert convert_main([source, str(target)]) == 0  # no --dim-head: the source says 16
    from safetensors import safe_open
    with safe_open(str(target), "pt") as f:
        assert f.metadata()["dim_head"] == "16" and f.metadata()["max_characters"] == "3"
    assert load_storymaker_weights(str(target)).info.resampler == tiny_resampler_config()


def test_an_sdxl_file_cut_short_is_called_incomplete_at_load(tmp_path):
    from support import release_layout

    layout = release_layout()  # the released keys and shapes; only the first 10 processors arrived
    zeros = lambda shapes: {k: torch.zeros(shape, dtype=torch.float16) for k, shape in shapes.items()}
    state = {"image_proj_model": zeros(layout["image_proj_model"]),
             "ip_adapter": zeros({k: v for k, v in layout["ip_adapter"].items() if int(k.split(".")[0]) < 10})}
    path = tmp_path / "mask.bin"
    torch.save(state, path)
    with pytest.raises(StoryMakerWeightsError, match=r"mask.bin: the file is incomplete: it holds 10 of the 140 "
                                                     r"attention processors .* Download it again"):
        load_storymaker_weights(str(path))
