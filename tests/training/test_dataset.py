"""Dataset samples, aspect buckets, the deterministic sharded sampler and the null-condition draws."""

import numpy as np
import pytest
import torch

from support.training import toy_manifest
from training.config import DataConfig, DropConfig
from training.dataset import (
    BucketBatchSampler,
    DatasetError,
    PackedRecords,
    StoryMakerDataset,
    collate,
    draw_drops,
    make_buckets,
    resize_and_crop,
    nearest_bucket,
    read_manifest,
)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return toy_manifest(tmp_path_factory.mktemp("toy"), count=6)


def test_packed_records_give_back_every_record(manifest):
    records = read_manifest(str(manifest))
    packed = PackedRecords(records)
    assert len(packed) == len(records) and packed.nbytes > 0
    for original, unpacked in zip(records, [packed[i] for i in range(len(packed))]):
        assert unpacked.keys() == original.keys() and unpacked["image"] == original["image"]
        for a, b in zip(original["characters"], unpacked["characters"]):
            assert b["kps"].dtype == np.float32 and np.array_equal(a["kps"], b["kps"])
            assert {k: v for k, v in a.items() if k != "kps"} == {k: v for k, v in b.items() if k != "kps"}
    assert packed[-1]["id"] == records[-1]["id"]
    with pytest.raises(IndexError):
        packed[len(records)]
    assert [r["id"] for r in packed[1:3]] == [r["id"] for r in records[1:3]]
    packed[0]["caption"] = "edited"
    assert packed[0]["caption"] == records[0]["caption"]  # records are a snapshot
    assert PackedRecords([{"characters": [], "score": np.float32(0.5)}])[0]["score"] == 0.5
    ds = StoryMakerDataset(records, DataConfig(manifest=str(manifest), resolution=128), DropConfig())
    assert isinstance(ds.records, PackedRecords)  # the dataset keeps no per-record Python objects
    assert all(isinstance(v, np.ndarray) for v in (ds.bucket_of, ds.character_counts))


def test_buckets_cover_aspects_at_constant_area():
    buckets = make_buckets(1024, 64, 2.0)
    assert (1024, 1024) in buckets and (1216, 832) in buckets and (832, 1216) in buckets
    assert all(h % 64 == 0 and w % 64 == 0 and 0.8 < h * w / 1024 ** 2 <= 1.0 for h, w in buckets)
    assert nearest_bucket(1280, 960, buckets) == (1152, 896)  # the release's 4:3 portrait
    assert make_buckets(128, 64, 2.0) == [(128, 128)]
    assert all((w, h) in buckets for h, w in buckets)  # landscape reaches the aspects portrait does


def test_the_crop_keeps_the_characters_when_the_centre_would_cut_them():
    shape, bucket = (1024, 3072), (704, 1408)  # a 3:1 film still
    (rh, rw), top, left = resize_and_crop(shape, bucket)
    assert (rh, rw) == (704, 2112) and (top, left) == (0, 352)  # centred, as the release
    scale = 704 / 1024
    for box in [(100, 50, 900, 400), (100, 2700, 900, 3050), (0, 1000, 1024, 2000)]:
        _, top, left = resize_and_crop(shape, bucket, box)
        assert left <= box[1] * scale and box[3] * scale <= left + 1408, box  # the characters stay in
        assert 0 <= left <= rw - 1408
    _, _, left = resize_and_crop(shape, bucket, (0, 1300, 1024, 1700))
    assert left == 352  # a box the centred crop holds: unchanged
    _, _, left = resize_and_crop(shape, bucket, (0, 100, 1024, 2900))  # wider than the bucket: centred on it
    assert abs((left + 704) - 1500 * scale) <= 1


def test_samples_have_the_documented_shapes(manifest):
    records = read_manifest(str(manifest))
    data = DataConfig(manifest=str(manifest), resolution=128, num_workers=0)
    ds = StoryMakerDataset(records, data, DropConfig(), seed=0)
    two = next(i for i, r in enumerate(records) if len(r["characters"]) == 2)
    s = ds[(two, 0)]
    assert s["pixel_values"].shape == (3, 128, 128) and -1 <= float(s["pixel_values"].min())
    assert s["masks"].shape == (2, 16, 16) and 0 <= float(s["masks"].min()) and float(s["masks"].max()) <= 1
    assert s["character_pixels"].shape == s["face_pixels"].shape == (2, 3, 224, 224)
    assert s["id_embeds"].shape == (2, 512)
    assert s["time_ids"].tolist() == [128, 128, 0, 0, 128, 128]
    # left-to-right order: character 0's mask centre is left of character 1's
    cx = [float((m.sum(0) * torch.arange(16)).sum() / m.sum()) for m in s["masks"]]
    assert cx[0] < cx[1]
    assert torch.equal(ds[(two, 0)]["character_pixels"], s["character_pixels"])  # same key, same sample
    assert not torch.equal(ds[(two, 1)]["character_pixels"], s["character_pixels"])  # another epoch rotates
    batch = collate([ds[(i, 0)] for i in range(len(records)) if len(records[i]["characters"]) == 2])
    assert batch["masks"].shape[:2] == (len(batch["captions"]), 2) and batch["drop_image"].dtype == torch.bool


def test_sampler_is_deterministic_sharded_and_resumable(manifest):
    groups = {((128, 128), 1): list(range(0, 10)), ((128, 128), 2): list(range(10, 17)),
              ((64, 256), 1): [17, 18, 19]}
    a = BucketBatchSampler(groups, batch_size=2, seed=3)
    first = list(a)
    assert first == list(BucketBatchSampler(groups, batch_size=2, seed=3))
    for batch in first:  # a batch never mixes buckets or character counts
        assert len({next(k for k, v in groups.items() if i in v) for i, _ in batch}) == 1
    assert sorted(i for b in first for i, _ in b) == list(range(20))
    a.set_epoch(1)
    assert list(a) != first
    a.set_epoch(0, start=3)
    assert list(a) == first[3:] and len(a) == len(first) - 3
    shards = [list(BucketBatchSampler(groups, 2, seed=3, num_replicas=2, rank=r)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(first) // 2
    assert not {tuple(b[0]) for b in shards[0]} & {tuple(b[0]) for b in shards[1]}
    with pytest.raises(DatasetError, match="fewer batches"):
        BucketBatchSampler({((128, 128), 1): [0]}, 1, num_replicas=2)


def test_drop_frequencies_follow_the_release():
    rng = np.random.default_rng(0)
    draws = [draw_drops(rng, DropConfig()) for _ in range(20000)]
    freq = lambda f: sum(map(f, draws)) / len(draws)
    assert abs(freq(lambda d: d.image and not d.text) - 0.05) < 0.01
    assert abs(freq(lambda d: d.text and not d.image) - 0.20) < 0.01
    assert abs(freq(lambda d: d.text and d.image) - 0.05) < 0.01
    assert abs(freq(lambda d: d.face_tokens) - 0.10) < 0.01
    assert abs(freq(lambda d: d.character_tokens) - 0.10) < 0.01


def test_manifest_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetError, match="storymaker prepare"):
        read_manifest(str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "manifest.jsonl"
    bad.write_text('{"id": "x"}\n')
    with pytest.raises(DatasetError, match=r"manifest.jsonl:1"):
        read_manifest(str(bad))
