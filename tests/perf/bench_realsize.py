"""Benchmark (not a test): real-size work on this machine's CPU, so regressions of the GPU path's
shapes show as ratios here too: ViT-S/16 dense features of 64 images at 224², and linear-probe
iterations at 512² crops, batch 2, through the harness's own jobs.
Run: make bench   (or: python tests/perf/bench_realsize.py)
"""

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main():
    import torch
    import yaml

    from harness.features import extract_dense, image_list
    from harness.jobs import execute
    from harness.mini import generate
    from harness.models.archs import build_backbone
    from harness.plan import build_plan
    from harness.registry import load_registry
    from tests import formats

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate.imagenet(tmp / "data" / "imagenet-1k", classes=4, train=16, val=1, size=256)
        generate.ade20k(tmp / "data" / "ade" / "ADEChallengeData2016", train=8, val=2, size=512)
        torch.manual_seed(0)
        vit = build_backbone("vit_small_patch16").eval()
        images = image_list(tmp / "data" / "imagenet-1k" / "train", 64, 0)
        t = time.perf_counter()
        feats, _, _ = extract_dense(vit, images, batch_size=32, progress=False)
        dt = time.perf_counter() - t
        print(
            f"ViT-S/16 features, 64 images at 224² on {torch.get_num_threads()} CPU threads: {dt:.1f} s "
            f"({64 / dt:.1f} images/s), {tuple(feats.shape)}"
        )

        formats.dino(vit.net.state_dict(), tmp / "ck" / "dino", 10)
        os.environ.update(SDD_DATA_ROOT=str(tmp / "data"), SDD_CKPT_ROOT=str(tmp / "ck"), SDD_CACHE=str(tmp / "cache"))
        bench = tmp / "benchmarks"
        shutil.copytree(ROOT / "benchmarks", bench)
        (bench / "protocols" / "linear_512.yaml").write_text(
            yaml.safe_dump(
                {
                    "name": "linear_512",
                    "kind": "linear",
                    "title": "linear probe at 512², batch 2",
                    "params": {
                        "batch_size": 2,
                        "crop_size": [512, 512],
                        "schedule": {"iters": 10, "warmup_iters": 2},
                        "checkpoint_interval": 1000,
                        "log_interval": 100,
                        "test": {"mode": "whole"},
                        "num_workers": 0,
                    },
                    "resources": {"gpus": 0, "cpus": 2, "mem_gb": 8, "time_min": 30, "gpu_hours": 0.0},
                }
            )
        )
        (bench / "suites" / "rs.yaml").write_text(
            "name: rs\ntitle: real size\nmethods: [dino]\ngrid:\n  - protocol: linear_512\n    datasets: [ade20k]\n"
            "    epochs: [10]\n"
        )
        cell = build_plan(load_registry(bench), "rs")[0]
        rec = execute(cell, tmp / "results", progress=False)
        if rec["status"] != "ok":
            print("linear probe at 512² failed:", rec["error"])
            return
        tm = rec["timings"]
        print(
            f"linear probe (ViT-S/16 frozen, 512², batch 2): {tm['iters_per_s']:.2f} iterations/s over "
            f"{rec['iters']} iterations ({tm['train_s']:.1f} s training), peak RSS {rec['peak_memory_mb']:.0f} MiB"
        )


if __name__ == "__main__":
    main()
