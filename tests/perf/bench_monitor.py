"""Benchmark (not a test): what one DSEMonitor call costs a training run at real size on this machine.

A ViT-S/16 (random weights, DINO's architecture) scored on 2,048 generated 224x224 images through the
`metrics_fast` protocol (DSE in fast mode, LiDAR off): the dense features of every image plus the
metrics, as `monitor.step(model, epoch)` runs them. Printed: seconds per call, split into the forward
pass and the metrics, and the figure to set against one training epoch (issue 26's goal: under 1% of a
DINO ViT-S/16 epoch on one GPU; the GPU figure comes from `make gpu-check`).
Run: make bench   (or: python tests/perf/bench_monitor.py [--images 2048])
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2048)
    args = ap.parse_args()
    import shutil

    import torch

    from harness.mini import generate
    from harness.models.archs import build_backbone
    from harness.monitor import DSEMonitor
    from harness.registry import ROOT, load_registry

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        per_class = -(-args.images // 16)
        t = time.perf_counter()
        generate.imagenet(tmp / "imagenet-1k", classes=16, train=per_class, val=1, size=224)
        print(f"generated {16 * per_class} images of 224x224 in {time.perf_counter() - t:.1f} s")
        bench = tmp / "benchmarks"
        shutil.copytree(ROOT / "benchmarks", bench)
        (bench / "datasets" / "imagenet.yaml").write_text(
            f"name: imagenet\ntitle: generated\nkind: imagenet\nroot: {tmp / 'imagenet-1k'}\ntask: classification\n"
            "img_suffix: .JPEG\nsplits:\n  train: {img_dir: train}\n"
        )
        proto = (bench / "protocols" / "metrics_fast.yaml").read_text()
        (bench / "protocols" / "metrics_fast.yaml").write_text(
            proto.replace("num_images: 2048", f"num_images: {args.images}").replace("gpus: 1", "gpus: 0")
        )
        (bench / "suites" / "watch.yaml").write_text(
            "name: watch\ntitle: monitored run\nmethods: [dino]\ngrid:\n"
            "  - protocol: metrics_fast\n    datasets: [imagenet]\n"
        )
        reg = load_registry(bench)
        model = build_backbone("vit_small_patch16")
        monitor = DSEMonitor("watch", "dino", results=tmp / "results", registry=reg)
        t = time.perf_counter()
        rec = monitor.step(model, 800)
        wall = time.perf_counter() - t
        tm = rec["timings"]
        print(
            f"monitor.step, ViT-S/16, {args.images} images, fast DSE, {torch.get_num_threads()} CPU threads: "
            f"{wall:.1f} s (features {tm['features_s']:.1f} s, metrics {tm['metrics_s']:.1f} s, "
            f"of which DSE {tm['per_metric_s']['dse']:.2f} s)"
        )


if __name__ == "__main__":
    main()
