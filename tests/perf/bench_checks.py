"""Benchmark (not a test): what the "no silent wrong number" checks cost a cell at paper scale.

- the split fingerprint a record carries (relative paths and sizes of every file of a split), on an
  ADE20K-sized tree (20,210 train + 2,000 val image/label pairs), cold and from the per-process memo;
- the output check of a job's results (every metric against its kind's domain), on a linear probe's
  results with 150 per-class IoU;
- the finiteness check of an ImageNet-val-sized k-NN embedding (50,000 x 384).
A linear-probe cell is about 2 GPU·h (docs/gpu.md); these are to be compared with that.
Run: make bench   (or: python tests/perf/bench_checks.py)
"""

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def ade_tree(root: Path, train: int = 20210, val: int = 2000) -> None:
    for split, n in (("training", train), ("validation", val)):
        for sub, suffix, size in (("images", ".jpg", 120_000), ("annotations", ".png", 20_000)):
            d = root / sub / split
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                with open(d / f"ADE_{split}_{i:08d}{suffix}", "wb") as f:
                    f.truncate(size)  # sparse: the size is what the fingerprint reads


def main() -> None:
    import torch

    from harness.datasets import forget_fingerprints, split_fingerprint
    from harness.jobs import check_outputs
    from harness.jobs.common import require_finite
    from harness.registry import load_registry

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        ade_tree(tmp / "ade" / "ADEChallengeData2016")
        print(f"made an ADE20K-sized tree (44,420 files) in {time.perf_counter() - t:.1f} s")
        os.environ["SDD_DATA_ROOT"] = str(tmp)
        ds = load_registry().dataset("ade20k")
        for split in ("train", "val"):
            forget_fingerprints()
            t = time.perf_counter()
            fp = split_fingerprint(ds, split)
            cold = time.perf_counter() - t
            t = time.perf_counter()
            split_fingerprint(ds, split)
            warm = time.perf_counter() - t
            print(
                f"split fingerprint, ade20k {split}: {fp['files']:,} files, {cold:.3f} s cold, "
                f"{warm * 1e6:.0f} µs from the memo"
            )
    results = {
        "metrics": {"mIoU": 47.1, "aAcc": 80.2, "mAcc": 58.0, "IoU": {f"c{i}": 40.0 + i / 10 for i in range(150)}}
    }
    t = time.perf_counter()
    for _ in range(1000):
        check_outputs("linear", results)
    print(f"output check of a linear probe's results (150 classes): {(time.perf_counter() - t) * 1e3:.3f} µs per cell")
    emb = torch.randn(50_000, 384)
    t = time.perf_counter()
    require_finite(emb, "embeddings")
    print(f"finiteness check of 50,000 x 384 k-NN embeddings (CPU): {(time.perf_counter() - t) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
