"""`python -m storymaker fetch` against loopback stand-ins of the Hub and the release hosts."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from models_fake_hosts import COMMIT
from models_support import ONNX_NAMES, payload, release_args

from storymaker.models.catalog import ITEMS, HubSource, select
from storymaker.models.cli import main


def fetch(comfyui, hosts, *extra):
    return main(["--comfyui", str(comfyui), *release_args(hosts), *extra])


def served(hosts, item) -> bytes:
    if isinstance(item.source, HubSource):
        return hosts.hub[f"{item.source.repo_id}/{item.source.filename}"]
    return hosts.releases[item.name]


def leftovers(comfyui) -> list[str]:
    """Partial or staging files anywhere under models/ (there must be none after a finished run)."""
    return sorted(str(p.relative_to(comfyui)) for p in (comfyui / "models").rglob("*")
                  if p.name.endswith((".part", ".part.version", ".incomplete")) or p.name == ".storymaker-download")


def test_fresh_download_puts_every_file_under_the_name_the_workflows_use(comfyui, hosts, onnx_files, capsys):
    assert fetch(comfyui, hosts, "--accept-insightface-license", "--trust-unpinned") == 0
    for item in ITEMS:
        if item.unzip_members:
            folder = comfyui / "models/insightface/models/buffalo_l"
            # the zip nests a buffalo_l/ folder; the files must still sit directly in buffalo_l/
            assert sorted(p.name for p in folder.iterdir()) == sorted(ONNX_NAMES)
            assert all((folder / name).read_bytes() == data for name, data in onnx_files.items())
        else:
            assert (comfyui / item.folder / item.name).read_bytes() == served(hosts, item), item.key
    assert (comfyui / "models/clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors").is_file()
    assert (comfyui / "models/controlnet/controlnet-openpose-sdxl-1.0.safetensors").is_file()
    assert leftovers(comfyui) == []  # no partial file, no staging folder, no zip kept
    assert len(hosts.gets(f"/resolve/{COMMIT}/")) == 4  # Hub files: pinned to the commit the HEAD reported
    out = capsys.readouterr().out
    assert "all 6 model(s) in place" in out
    assert out.count("checked against the pin") == 5 and "NOT pinned: checked only against what the Hub" in out


def test_present_files_are_skipped_without_touching_the_network(comfyui, hosts, capsys):
    assert fetch(comfyui, hosts, "--accept-insightface-license", "--trust-unpinned") == 0
    assert len(hosts.gets()) == 6  # one body per model
    hosts.log.clear()
    assert fetch(comfyui, hosts, "--accept-insightface-license") == 0
    assert hosts.log == []  # the records of the first run vouch for unchanged files
    out = capsys.readouterr().out
    assert out.count("] present:") == 6


def test_files_placed_by_hand_are_checked_against_the_pinned_size_and_sha256(comfyui, hosts, capsys):
    sdxl = next(item for item in ITEMS if item.key == "sdxl")
    target = comfyui / sdxl.folder / sdxl.name
    target.parent.mkdir(parents=True)
    target.write_bytes(served(hosts, sdxl))
    assert fetch(comfyui, hosts, "--only", "sdxl") == 0
    assert hosts.log == []  # checked against the pin: no request, no download
    assert "[sdxl] present" in capsys.readouterr().out
    records = json.loads((comfyui / "models/.storymaker-models.json").read_text())
    assert records["models/checkpoints/sd_xl_base_1.0.safetensors"]["sha256"] == \
        hashlib.sha256(served(hosts, sdxl)).hexdigest()


@pytest.mark.parametrize("key", ["sdxl", "sam"])
def test_a_corrupted_file_is_detected_and_fetched_again(comfyui, hosts, key, capsys):
    item = next(item for item in ITEMS if item.key == key)
    assert fetch(comfyui, hosts, "--only", key) == 0
    target = comfyui / item.folder / item.name
    data = bytearray(target.read_bytes())
    data[len(data) // 3] ^= 0xFF  # same size, one byte flipped: only a hash can tell
    target.write_bytes(bytes(data))
    hosts.log.clear()
    assert fetch(comfyui, hosts, "--only", key) == 0
    assert target.read_bytes() == served(hosts, item)
    assert len(hosts.gets(item.source.filename if key == "sdxl" else item.name)) == 1
    assert "is not valid (sha256" in capsys.readouterr().out


def test_verify_hashes_files_whose_record_still_matches(comfyui, hosts, capsys):
    item = next(item for item in ITEMS if item.key == "controlnet")
    assert fetch(comfyui, hosts, "--only", "controlnet") == 0
    target = comfyui / item.folder / item.name
    stat = target.stat()
    data = bytearray(target.read_bytes())
    data[0] ^= 0xFF
    target.write_bytes(bytes(data))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # a change the record cannot see
    assert fetch(comfyui, hosts, "--only", "controlnet") == 0
    assert target.read_bytes() != served(hosts, item)  # trusted by default (documented)
    assert fetch(comfyui, hosts, "--only", "controlnet", "--verify") == 0
    assert target.read_bytes() == served(hosts, item)


def test_a_truncated_onnx_file_fetches_the_pack_again(comfyui, hosts, onnx_files):
    assert fetch(comfyui, hosts, "--accept-insightface-license", "--only", "insightface") == 0
    damaged = comfyui / "models/insightface/models/buffalo_l/w600k_r50.onnx"
    damaged.write_bytes(onnx_files["w600k_r50.onnx"][:1000])
    assert fetch(comfyui, hosts, "--accept-insightface-license", "--only", "insightface") == 0
    assert damaged.read_bytes() == onnx_files["w600k_r50.onnx"]
    assert len(hosts.gets("buffalo_l.zip")) == 2


@pytest.mark.parametrize("key,path", [("sam", "/releases/sam_vit_b_01ec64.pth"),
                                      ("insightface", "/releases/buffalo_l.zip")])
def test_a_cut_connection_to_a_release_host_is_resumed_from_where_it_stopped(comfyui, hosts, key, path):
    item = next(item for item in ITEMS if item.key == key)
    body = hosts.releases[path.rsplit("/", 1)[-1]]
    hosts.cut_next(path)
    assert fetch(comfyui, hosts, "--accept-insightface-license", "--only", key) == 0
    gets = [entry for entry in hosts.gets() if entry[1] == path]
    assert [entry[2] for entry in gets] == [None, f"bytes={len(body) // 2}-"]  # resumed, not restarted
    if key == "sam":
        assert (comfyui / item.folder / item.name).read_bytes() == body
    assert leftovers(comfyui) == []


def test_a_cut_connection_to_the_hub_is_resumed_by_huggingface_hub(comfyui, hosts, repin):
    """huggingface_hub writes 10 MiB chunks and resumes after the last one written: a 25 MiB file cut in the
    middle continues from 10 MiB instead of starting over."""
    item = next(item for item in ITEMS if item.key == "sdxl")
    body = payload("big", 25 << 20)
    hosts.hub[f"{item.source.repo_id}/{item.source.filename}"] = body
    repin()
    path = f"/{item.source.repo_id}/resolve/{COMMIT}/{item.source.filename}"  # the download is pinned
    hosts.cut_next(path)
    assert fetch(comfyui, hosts, "--only", "sdxl") == 0
    assert [entry[2] for entry in hosts.gets() if entry[1] == path] == [None, f"bytes={10 << 20}-"]
    assert (comfyui / item.folder / item.name).read_bytes() == body
    assert leftovers(comfyui) == []


def test_insightface_is_refused_until_its_licence_is_accepted_and_the_others_still_come(comfyui, hosts, capsys):
    assert fetch(comfyui, hosts, "--trust-unpinned") == 1
    captured = capsys.readouterr()
    assert "non-commercial research purposes" in captured.out  # the licence is shown
    assert "[insightface] refused" in captured.out and "--accept-insightface-license" in captured.out
    assert hosts.gets("buffalo_l.zip") == [] and not (comfyui / "models/insightface").exists()
    assert "1 of 6 model(s) not fetched" in captured.err
    for item in ITEMS:
        if not item.unzip_members:
            assert (comfyui / item.folder / item.name).is_file(), item.key
    assert fetch(comfyui, hosts, "--accept-insightface-license") == 0
    assert "licence accepted" in capsys.readouterr().out
    assert len(hosts.gets("buffalo_l.zip")) == 1


def test_no_network_names_what_to_fetch_by_hand(comfyui, hosts, monkeypatch, capsys):
    closed = f"http://127.0.0.1:{hosts.server.server_address[1]}"
    hosts.__exit__(None, None, None)  # nothing listens there any more
    monkeypatch.setenv("HF_ENDPOINT", closed)
    assert fetch(comfyui, hosts, "--accept-insightface-license") == 1
    err = capsys.readouterr().err
    assert "6 of 6 model(s) not fetched" in err and "No network" in err
    urls = {"insightface": hosts.release_url("buffalo_l.zip"), "sam": hosts.release_url("sam_vit_b_01ec64.pth")}
    for item in select(urls=urls):  # every item: where it comes from (as given) and where it goes
        assert f"{item.key}: download {item.source.browser_url()}" in err, item.key
        assert f"ComfyUI/{item.relative_target}" in err
    assert "https://huggingface.co/RED-AIGC/StoryMaker/resolve/main/mask.bin" in err
    assert not any(p.is_file() for p in (comfyui / "models").rglob("*"))


def test_present_files_stay_usable_without_network(comfyui, hosts, monkeypatch, capsys):
    assert fetch(comfyui, hosts, "--only", "sdxl,sam") == 0
    hosts.__exit__(None, None, None)
    assert fetch(comfyui, hosts, "--only", "sdxl,sam") == 0  # records: no network needed
    assert capsys.readouterr().out.count("] present:") == 2


def test_list_prints_sources_and_folders_without_network(hosts, capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for item in ITEMS:
        assert item.source.browser_url() in out and item.relative_target in out
    assert "h94/IP-Adapter -> models/image_encoder/model.safetensors" in out
    assert hosts.log == []


@pytest.mark.parametrize("refuse_head", [False, True])
def test_dry_run_reports_sizes_and_writes_nothing(comfyui, hosts, capsys, refuse_head):
    hosts.refuse_head = refuse_head  # then the size comes from a one-byte ranged GET
    assert fetch(comfyui, hosts, "--dry-run", "--accept-insightface-license", "--trust-unpinned") == 0
    out = capsys.readouterr().out
    assert out.count("would download") == 6
    assert "(150.0 KB)" in out and "(120.0 KB)" in out  # a Hub file's size, and the release host's sam file
    assert all(rng == "bytes=0-0" for _, _, rng in hosts.gets())  # no body transferred
    assert list((comfyui / "models").rglob("*")) == []


def test_dry_run_does_not_record_a_file_it_hashed(comfyui, hosts):
    item = next(item for item in ITEMS if item.key == "sdxl")
    target = comfyui / item.folder / item.name
    target.parent.mkdir(parents=True)
    target.write_bytes(served(hosts, item))
    assert fetch(comfyui, hosts, "--dry-run", "--only", "sdxl") == 0
    assert not (comfyui / "models/.storymaker-models.json").exists()


def test_a_partial_file_from_a_stopped_run_is_continued(comfyui, hosts):
    item = next(item for item in ITEMS if item.key == "sam")
    body = served(hosts, item)
    part = comfyui / item.folder / (item.name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(body[:50_000])
    assert fetch(comfyui, hosts, "--only", "sam") == 0
    assert [entry[2] for entry in hosts.gets(item.name)] == ["bytes=50000-"]
    assert (comfyui / item.folder / item.name).read_bytes() == body and not part.exists()


def test_a_host_that_ignores_range_gets_the_file_from_the_start(comfyui, hosts):
    item = next(item for item in ITEMS if item.key == "sam")
    body = served(hosts, item)
    part = comfyui / item.folder / (item.name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(body[:50_000])
    hosts.ignore_range = True  # answers 200 with the whole file: appending would corrupt it
    assert fetch(comfyui, hosts, "--only", "sam") == 0
    assert (comfyui / item.folder / item.name).read_bytes() == body


def test_bytes_that_differ_from_the_published_sha256_never_take_the_final_name(comfyui, hosts, capsys):
    item = next(item for item in ITEMS if item.key == "clip_vision")
    hosts.hub_sha256[f"{item.source.repo_id}/{item.source.filename}"] = "0" * 64  # a mirror serving other bytes
    assert fetch(comfyui, hosts, "--only", "clip_vision") == 1
    assert f"sha256 {'0' * 64}; the pin is" in capsys.readouterr().out
    assert hosts.gets() == []  # refused before any byte was downloaded
    assert not (comfyui / item.folder / item.name).exists()
    assert leftovers(comfyui) == []


def test_usage_errors_name_the_input(tmp_path, hosts, capsys):
    assert main(["--comfyui", str(tmp_path), "--only", "sdxl"]) == 2
    assert "--comfyui" in capsys.readouterr().err
    assert main(["--only", "sdxl,vae"]) == 2
    assert "unknown model vae" in capsys.readouterr().err
    assert main(["--url", "sdxl=http://x/y"]) == 2
    assert "HF_ENDPOINT" in capsys.readouterr().err


def test_convert_writes_the_half_size_safetensors_right_after_the_download(comfyui, hosts, capsys):
    import torch
    from safetensors.torch import load_file
    from support import random_storymaker_state, tiny_resampler_config

    from storymaker_core.weights import load_storymaker_weights

    item = next(item for item in ITEMS if item.key == "storymaker")
    state = random_storymaker_state(resampler_config=tiny_resampler_config(dim_head=64, cross_attention_dim=64))
    mask_bin = comfyui / "release-mask.bin"
    torch.save(state, mask_bin)
    hosts.hub[f"{item.source.repo_id}/{item.source.filename}"] = mask_bin.read_bytes()
    assert fetch(comfyui, hosts, "--only", "storymaker", "--convert", "--trust-unpinned") == 0
    converted = comfyui / "models/storymaker/storymaker.safetensors"
    tensors = load_file(converted)
    original = load_storymaker_weights(str(comfyui / "models/storymaker/mask.bin"))
    assert all(v.dtype == torch.float16 for v in tensors.values())
    assert torch.equal(tensors["ip_adapter.1.to_k_ip.weight"], original.ip_adapter["1.to_k_ip.weight"].half())
    assert "converted to" in capsys.readouterr().out
    assert fetch(comfyui, hosts, "--only", "storymaker", "--convert", "--trust-unpinned") == 0  # nothing to do
    assert "already converted from this mask.bin" in capsys.readouterr().out
    state["ip_adapter"]["1.to_k_ip.weight"] = state["ip_adapter"]["1.to_k_ip.weight"] + 1  # a new release
    torch.save(state, mask_bin)
    hosts.hub[f"{item.source.repo_id}/{item.source.filename}"] = mask_bin.read_bytes()
    assert fetch(comfyui, hosts, "--only", "storymaker", "--convert", "--verify", "--trust-unpinned") == 0
    assert torch.equal(load_file(converted)["ip_adapter.1.to_k_ip.weight"],
                       state["ip_adapter"]["1.to_k_ip.weight"].half())  # converted again from the new file


def test_the_hub_token_is_sent_and_hf_endpoint_is_read_at_run_time(comfyui, hosts, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_loopbacktoken")
    assert fetch(comfyui, hosts, "--only", "clip_vision") == 0
    hub_requests = [auth for (method, path, _), auth in zip(hosts.log, hosts.authorization) if "/resolve/" in path]
    assert hub_requests and all(auth == "Bearer hf_loopbacktoken" for auth in hub_requests)


def test_a_file_already_in_the_hugging_face_cache_is_copied_not_downloaded(comfyui, hosts, tmp_path):
    from huggingface_hub import hf_hub_download

    item = next(item for item in ITEMS if item.key == "controlnet")
    hf_hub_download(item.source.repo_id, item.source.filename, endpoint=hosts.url, cache_dir=tmp_path / "hf-cache")
    assert len(hosts.gets(item.source.filename)) == 1
    assert fetch(comfyui, hosts, "--only", "controlnet") == 0
    assert len(hosts.gets(item.source.filename)) == 1  # no second transfer
    assert (comfyui / item.folder / item.name).read_bytes() == served(hosts, item)


def test_a_file_missing_on_the_hub_is_named(comfyui, hosts, capsys):
    del hosts.hub["h94/IP-Adapter/models/image_encoder/model.safetensors"]
    assert fetch(comfyui, hosts, "--only", "clip_vision") == 1
    assert "models/image_encoder/model.safetensors not found in h94/IP-Adapter" in capsys.readouterr().out


def test_a_pack_without_the_expected_onnx_files_is_refused_and_not_kept(comfyui, hosts, onnx_files, capsys, repin):
    from models_support import zip_of

    hosts.releases["buffalo_l.zip"] = zip_of({k: v for k, v in onnx_files.items() if k != "genderage.onnx"})
    repin()  # a pinned zip that lacks a member
    assert fetch(comfyui, hosts, "--only", "insightface", "--accept-insightface-license") == 1
    assert "the zip lacks genderage.onnx" in capsys.readouterr().out
    assert leftovers(comfyui) == []  # the bad zip is not resumed next time


def test_a_pack_unzipped_by_hand_with_a_broken_file_is_fetched_again(comfyui, hosts, onnx_files, capsys):
    folder = comfyui / "models/insightface/models/buffalo_l"
    folder.mkdir(parents=True)
    for name in ONNX_NAMES:  # what a blocked download often leaves: a saved web page under each name
        (folder / name).write_bytes(b"<!DOCTYPE html><html><body>Sign in to continue</body></html>")
    assert fetch(comfyui, hosts, "--only", "insightface", "--accept-insightface-license") == 0
    assert "1k3d68.onnx is a web page" in capsys.readouterr().out
    assert all((folder / name).read_bytes() == data for name, data in onnx_files.items())


def test_hf_hub_offline_is_reported_as_such(comfyui, hosts, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read once at import; the env var is the same flag
    assert fetch(comfyui, hosts, "--only", "sdxl") == 1
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().out
    assert hosts.log == []


@pytest.mark.parametrize("same_version", [True, False])
def test_a_partial_file_is_resumed_only_if_the_server_still_has_that_version(comfyui, hosts, same_version):
    item = next(item for item in ITEMS if item.key == "sam")
    new = served(hosts, item)
    old = new if same_version else payload("old release", 120_000)
    part = comfyui / item.folder / (item.name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(old[:50_000])
    etag = f'"{hashlib.sha256(old).hexdigest()[:16]}"'  # what the host sent when .part was started
    (comfyui / item.folder / (item.name + ".part.version")).write_text(etag)
    assert fetch(comfyui, hosts, "--only", "sam") == 0
    assert [entry[2] for entry in hosts.gets(item.name)] == ["bytes=50000-"]
    assert [status for path, status in hosts.statuses if path.endswith(item.name)] == [206 if same_version else 200]
    assert (comfyui / item.folder / item.name).read_bytes() == new
    assert leftovers(comfyui) == [] and not (comfyui / item.folder / (item.name + ".part.version")).exists()


def test_ctrl_c_while_unzipping_leaves_the_live_pack_folder_untouched(comfyui, hosts, onnx_files, monkeypatch,
                                                                      capsys):
    """A simulated Ctrl-C while the third .onnx file is being unzipped: the live buffalo_l folder keeps the old
    pack exactly (no .onnx.part, no mix of versions), no staging folder is left, and the next run installs the
    zip it had already downloaded and checked."""
    from storymaker.models import insightface_pack

    folder = comfyui / "models/insightface/models/buffalo_l"
    folder.mkdir(parents=True)
    old = {name: b"<html>an older, broken download</html>" for name in ONNX_NAMES}
    for name, data in old.items():
        (folder / name).write_bytes(data)
    real_hashlib, started = insightface_pack.hashlib, []

    class Interrupted:
        def update(self, block):
            raise KeyboardInterrupt

    class Hashlib:  # the third member's digest interrupts the unzip (the old code and the new one both hash)
        @staticmethod
        def sha256(*args):
            started.append(1)
            return Interrupted() if len(started) == 3 else real_hashlib.sha256(*args)

    monkeypatch.setattr(insightface_pack, "hashlib", Hashlib)
    assert fetch(comfyui, hosts, "--only", "insightface", "--accept-insightface-license") == 130
    assert "interrupted" in capsys.readouterr().err
    assert len(started) == 3
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == old
    assert sorted(p.name for p in folder.parent.iterdir()) == ["buffalo_l"]
    assert not [p for p in (comfyui / "models").rglob("*.onnx.part")]
    monkeypatch.setattr(insightface_pack, "hashlib", real_hashlib)
    assert fetch(comfyui, hosts, "--only", "insightface", "--accept-insightface-license") == 0
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == onnx_files
    assert len(hosts.gets("buffalo_l.zip")) == 1  # the checked zip was kept for the next run
    assert leftovers(comfyui) == []
