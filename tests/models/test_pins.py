"""Every file ``fetch`` places is pinned to a size and sha256, checked before it takes its final name, whoever
serves it (the Hub, an HF_ENDPOINT mirror, a --url mirror, a host that sends no Content-Length); a file
without a pin is placed only with --trust-unpinned."""

from __future__ import annotations

import hashlib
import re

import pytest
from models_support import ONNX_NAMES, payload, release_args, zip_of

from storymaker.models.catalog import ITEMS, SAM_MD5, UNKNOWN, Pin
from storymaker.models.cli import main
from storymaker.models.fetch import human_size

SHA256 = re.compile(r"[0-9a-f]{64}")


def fetch(comfyui, hosts, *extra, urls=None):
    return main(["--comfyui", str(comfyui), *(urls if urls is not None else release_args(hosts)), *extra])


def item(key):
    return next(i for i in ITEMS if i.key == key)


def leftovers(comfyui) -> list[str]:
    return sorted(str(p.relative_to(comfyui)) for p in (comfyui / "models").rglob("*")
                  if p.name.endswith((".part", ".part.version", ".incomplete", ".storymaker-new",
                                      ".storymaker-old")) or p.name == ".storymaker-download")


# -- the catalog ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("entry", ITEMS, ids=lambda entry: entry.key)
def test_every_file_is_pinned_with_its_source_or_explicitly_unknown(entry):
    if entry.key == "storymaker":  # no public source gives mask.bin's exact numbers: not guessed
        assert entry.pin == UNKNOWN and "unknown" in entry.pin.origin
        return
    assert entry.pin.known, entry.key
    assert isinstance(entry.pin.size, int) and entry.pin.size > 100_000_000
    assert SHA256.fullmatch(entry.pin.sha256)
    assert entry.pin.origin  # where the numbers come from


def test_release_host_files_are_pinned_too():
    pack, sam = item("insightface"), item("sam")
    assert (pack.pin.size, pack.pin.sha256) == (
        288621354, "80ffe37d8a5940d59a7384c201a2a38d4741f2f3c51eef46ebb28218a7b0ca2f")
    assert (sam.pin.size, sam.pin.sha256) == (
        375042383, "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912")
    assert [name for name, _ in pack.member_sha256] == list(pack.unzip_members) == list(ONNX_NAMES)
    assert all(SHA256.fullmatch(digest) for _, digest in pack.member_sha256)
    # sam_vit_b_01ec64: the 01ec64 in the name is the start of the file's MD5, not of its sha256
    assert SAM_MD5.startswith("01ec64") and "01ec64" in sam.name and not sam.pin.sha256.startswith("01ec64")


def test_sizes_under_1_mb_print_in_kb():
    assert human_size(512) == "0.5 KB"
    assert human_size(150_000) == "150.0 KB"
    assert human_size(999_949) == "999.9 KB"
    assert human_size(1_040_000) == "1.0 MB"  # over 1 MB, though under 1 MiB
    assert human_size(375_042_383) == "375.0 MB"
    assert human_size(6_938_078_334) == "6.9 GB"  # the README's "SDXL alone is 6.9 GB"
    assert human_size(None) == "size unknown"


# -- a mirror is held to the pin -----------------------------------------------------------------------------
def test_a_url_mirror_serving_other_bytes_of_the_same_size_is_refused_before_placing(comfyui, hosts, capsys):
    sam = item("sam")
    hosts.releases["mirror.pth"] = payload("not sam", len(hosts.releases[sam.name]))
    urls = ["--url", f"sam={hosts.release_url('mirror.pth')}"]
    assert fetch(comfyui, hosts, "--only", "sam", urls=urls) == 1
    out = capsys.readouterr().out
    assert "[sam] failed" in out and "not the file" in out
    assert not (comfyui / sam.folder / sam.name).exists() and leftovers(comfyui) == []


def test_a_url_mirror_serving_another_size_is_refused_before_its_body_is_read(comfyui, hosts, capsys):
    sam = item("sam")
    hosts.releases["mirror.pth"] = payload("not sam", 99_999)
    assert fetch(comfyui, hosts, "--only", "sam", urls=["--url", f"sam={hosts.release_url('mirror.pth')}"]) == 1
    assert "the server says 99999 bytes, expected 120000" in capsys.readouterr().out
    assert not (comfyui / sam.folder).exists() or list((comfyui / sam.folder).iterdir()) == []


def test_a_pack_mirror_serving_another_zip_is_refused_before_unzipping(comfyui, hosts, onnx_files, capsys):
    other = {name: payload("other " + name, len(data)) for name, data in onnx_files.items()}
    hosts.releases["other.zip"] = zip_of(other, "buffalo_l/")
    urls = ["--url", f"insightface={hosts.release_url('other.zip')}"]
    assert fetch(comfyui, hosts, "--only", "insightface", "--accept-insightface-license", urls=urls) == 1
    assert "[insightface] failed" in capsys.readouterr().out
    assert not (comfyui / "models/insightface/models/buffalo_l").exists() and leftovers(comfyui) == []


def test_an_hf_endpoint_mirror_announcing_other_bytes_is_refused_before_downloading(comfyui, hosts, capsys):
    sdxl = item("sdxl")
    key = f"{sdxl.source.repo_id}/{sdxl.source.filename}"
    hosts.hub[key] = payload("a different checkpoint", len(hosts.hub[key]))  # published with its own sha256
    assert fetch(comfyui, hosts, "--only", "sdxl") == 1
    assert "the pin is" in capsys.readouterr().out
    assert hosts.gets() == [] and not (comfyui / sdxl.folder / sdxl.name).exists()


def test_an_hf_endpoint_mirror_lying_about_the_sha256_is_caught_before_placing(comfyui, hosts, capsys):
    sdxl = item("sdxl")
    key = f"{sdxl.source.repo_id}/{sdxl.source.filename}"
    hosts.hub_sha256[key] = hashlib.sha256(hosts.hub[key]).hexdigest()  # announces the pinned file...
    hosts.hub[key] = payload("a different checkpoint", len(hosts.hub[key]))  # ...serves other bytes
    assert fetch(comfyui, hosts, "--only", "sdxl") == 1
    assert "the pin says" in capsys.readouterr().out
    assert not (comfyui / sdxl.folder / sdxl.name).exists() and leftovers(comfyui) == []


def test_a_file_recorded_under_an_older_pin_is_fetched_again(comfyui, hosts, repin, capsys):
    sdxl = item("sdxl")
    assert fetch(comfyui, hosts, "--only", "sdxl") == 0
    key = f"{sdxl.source.repo_id}/{sdxl.source.filename}"
    hosts.hub[key] = payload("sdxl, re-released", 150_021)
    repin()  # the catalog now pins the new file; the one on disk still has its (old) record
    hosts.log.clear()
    assert fetch(comfyui, hosts, "--only", "sdxl") == 0
    assert (comfyui / sdxl.folder / sdxl.name).read_bytes() == hosts.hub[key]
    assert len(hosts.gets(sdxl.source.filename)) == 1


# -- no Content-Length ---------------------------------------------------------------------------------------
def test_a_response_without_content_length_is_verified_by_the_pinned_hash(comfyui, hosts, capsys):
    sam = item("sam")
    hosts.omit_length = True
    assert fetch(comfyui, hosts, "--only", "sam") == 0
    assert (comfyui / sam.folder / sam.name).read_bytes() == hosts.releases[sam.name]
    hosts.releases["mirror.pth"] = payload("not sam", len(hosts.releases[sam.name]))
    (comfyui / sam.folder / sam.name).unlink()
    assert fetch(comfyui, hosts, "--only", "sam", urls=["--url", f"sam={hosts.release_url('mirror.pth')}"]) == 1
    assert not (comfyui / sam.folder / sam.name).exists() and leftovers(comfyui) == []


def test_an_unpinned_file_without_content_length_is_refused(comfyui, hosts, repin, capsys):
    sam = item("sam")
    repin(sam=UNKNOWN)
    hosts.omit_length = True
    assert fetch(comfyui, hosts, "--only", "sam", "--trust-unpinned") == 1
    assert "no size (no Content-Length) and no sha256" in capsys.readouterr().out
    assert not (comfyui / sam.folder / sam.name).exists() and leftovers(comfyui) == []


# -- unpinned files ------------------------------------------------------------------------------------------
def test_an_unpinned_file_is_refused_without_trust_unpinned_and_nothing_is_requested(comfyui, hosts, capsys):
    storymaker = item("storymaker")
    assert fetch(comfyui, hosts, "--only", "storymaker") == 1
    captured = capsys.readouterr()
    assert "[storymaker] refused" in captured.out and "--trust-unpinned" in captured.out
    assert "no pinned size + sha256" in captured.out
    assert hosts.log == [] and not (comfyui / storymaker.folder / storymaker.name).exists()
    assert fetch(comfyui, hosts, "--only", "storymaker", "--trust-unpinned") == 0
    assert "NOT pinned: checked only against what the Hub publishes" in capsys.readouterr().out


def test_an_unpinned_release_file_is_placed_only_with_trust_unpinned(comfyui, hosts, repin, capsys):
    sam = item("sam")
    repin(sam=Pin(origin="size + sha256 unknown (test)"))
    assert fetch(comfyui, hosts, "--only", "sam") == 1
    assert "[sam] refused" in capsys.readouterr().out and hosts.gets() == []
    assert fetch(comfyui, hosts, "--only", "sam", "--trust-unpinned") == 0
    assert (comfyui / sam.folder / sam.name).read_bytes() == hosts.releases[sam.name]


def test_the_docs_pin_table_matches_the_catalog():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "models.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(): line for line in docs.splitlines() if line.startswith("| `")}
    for entry in ITEMS:
        row = rows[f"`{entry.key}`"]
        if entry.pin.known:
            short = f"`{entry.pin.sha256[:8]}…{entry.pin.sha256[-8:]}`"
            assert str(entry.pin.size) in row and short in row, entry.key
        else:
            assert "unknown" in row
