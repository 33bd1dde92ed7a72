"""Host memory a forked data-loader worker copies as it reads the manifest: list of dicts vs PackedRecords.

    python benchmarks/dataset_memory.py [--records 200000] [--workers 2]

Every training process and each of its data-loader workers (forked) holds the manifest records. A worker
shares its parent's pages until it writes one, and reading a Python object writes its reference count, so
a list of dicts ends up copied into every worker; `training.dataset.PackedRecords` keeps the records in
two numpy arrays that reading never writes. The workers here read every record once, as an epoch does, and
report how much of their memory became private (Linux: /proc/self/smaps_rollup). Prints one summary line.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.dataset import PackedRecords  # noqa: E402


def synthetic_records(count: int, seed: int = 0) -> list:
    """Records shaped like `training.prepare`'s manifest after `read_manifest` (two characters each)."""
    rng = np.random.default_rng(seed)
    root = "/data/storymaker/laion-characters"
    return [{
        "id": f"img_{i:07d}", "image": f"{root}/images/img_{i:07d}.jpg", "width": 1024, "height": 1280,
        "caption": "a woman in a red coat and a man with a grey beard walking along a rainy street at night, "
                   "neon reflections, photo, 35mm",
        "caption_missing": False,
        "characters": [{"mask": f"{root}/masks/img_{i:07d}_{c}.png", "face_index": c,
                        "bbox": rng.uniform(0, 1024, 4).round(1).tolist(),
                        "kps": rng.uniform(0, 1024, (5, 2)).astype(np.float32), "det_score": 0.87}
                       for c in range(2)],
        "embeddings": f"{root}/faces/img_{i:07d}.npy", "pose": f"{root}/poses/img_{i:07d}.png", "notes": [],
    } for i in range(count)]


def private_bytes() -> int:
    fields = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("Private_Clean", "Private_Dirty"):
                fields[name] = int(value.split()[0]) * 1024
    return sum(fields.values())


RECORDS = None  # set in the parent before forking: the workers inherit it as a DataLoader worker would


def touch(value) -> int:
    """Visit every object of a record, as `StoryMakerDataset._sample` reads every field."""
    if isinstance(value, dict):
        return sum(touch(v) for v in value.values())
    if isinstance(value, list):
        return sum(touch(v) for v in value)
    return 1


def read_all(_) -> int:
    before = private_bytes()
    visited = sum(touch(RECORDS[i]) for i in range(len(RECORDS)))
    assert visited > 0
    return private_bytes() - before


def measure(records, workers: int) -> float:
    """Mean bytes each forked worker made private by reading every record once."""
    global RECORDS
    RECORDS = records
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        grown = pool.map(read_all, range(workers))
    return float(np.mean(grown))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="alternate the two layouts this many times")
    args = parser.parse_args(argv)
    if not Path("/proc/self/smaps_rollup").exists():
        print("needs Linux (/proc/self/smaps_rollup)", file=sys.stderr)
        return 2
    start = private_bytes()
    as_list = synthetic_records(args.records)
    list_bytes = private_bytes() - start
    packed = PackedRecords(as_list)
    results = {"list of dicts": [], "PackedRecords": []}
    for _ in tqdm(range(args.rounds), desc="rounds"):
        results["list of dicts"].append(measure(as_list, args.workers))
        results["PackedRecords"].append(measure(packed, args.workers))
    mib = 1 << 20
    print(f"{args.records} records, {args.workers} forked workers reading each record once; the list of dicts "
          f"takes {list_bytes / mib:.0f} MiB in the parent, PackedRecords {packed.nbytes / mib:.0f} MiB")
    print(f"{'layout':<16} {'private MiB per worker (median)':>32}")
    for name, values in results.items():
        print(f"{name:<16} {np.median(values) / mib:>32.1f}")
    base, ours = np.median(results["list of dicts"]), np.median(results["PackedRecords"])
    print(f"dataset_memory: {ours / mib:.1f} MiB copied per worker with PackedRecords vs {base / mib:.1f} MiB with "
          f"a list of dicts ({ours / base:.3f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
