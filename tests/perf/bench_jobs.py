"""Benchmark (not a test): every downstream job on the tiny generated data, each in a fresh process.

Prints per protocol: wall time, training iterations per second (or frames/images per second) and
peak resident memory, the measured inputs for the cost model. Target: each job < 2 GiB RSS.
Run: make bench   (or: python tests/perf/bench_jobs.py)
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, os, sys, time, resource
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from harness.jobs import execute
from harness.plan import build_plan
from harness.registry import load_registry
from harness.mini import generate
from tests import seg_world, worlds
tmp = Path(sys.argv[2]); proto = sys.argv[3]; dataset = sys.argv[4]
data = tmp / "data"
os.environ["SDD_DATA_ROOT"] = str(data)
ck = tmp / "ck"
worlds.dino_checkpoint(ck, "tinyvit", "vit_tiny_test", 1, seed=1)
bench = seg_world.seg_registry(tmp / proto, data, ck, iters=50)
(bench / "protocols" / "maskrcnn_tiny.yaml").write_text(
    "name: maskrcnn_tiny\nkind: maskrcnn\ntitle: t\nparams: {backend: torchvision, iters: 20, batch_size: 2, "
    "min_size: 96, max_size: 96, anchor_sizes: [8, 16, 32, 64, 128], out_channels: 32}\n"
    "resources: {gpus: 0, cpus: 1, mem_gb: 2, time_min: 5, gpu_hours: 0.0}\n")
(bench / "protocols" / "davis_tiny.yaml").write_text(
    "name: davis_tiny\nkind: davis\ntitle: t\nparams: {short_side: 128, size_multiple: 16, n_last_frames: 7, "
    "size_mask_neighborhood: 12, topk: 5}\nresources: {gpus: 0, cpus: 1, mem_gb: 2, time_min: 5, gpu_hours: 0.0}\n")
(bench / "protocols" / "knn_tiny.yaml").write_text(
    "name: knn_tiny\nkind: knn\ntitle: t\nparams: {k: 20, resize: 64, crop: 64}\n"
    "resources: {gpus: 0, cpus: 1, mem_gb: 2, time_min: 5, gpu_hours: 0.0}\n")
(bench / "datasets" / "imagenet.yaml").write_text(
    f"name: imagenet\ntitle: mini\nkind: imagenet\nroot: {data / 'imagenet-1k'}\ntask: classification\n"
    "img_suffix: .JPEG\nsplits:\n  train: {img_dir: train}\n  val: {img_dir: val}\n")
for released in ("cifar10", "nyu_depth_v2"):  # the generated copies are not of the released sizes
    f = bench / "datasets" / f"{released}.yaml"
    f.write_text("\n".join(l.replace(", images: 50000", "").replace(", images: 10000", "")
                 .replace(", images: 24231", "").replace(", images: 654", "") for l in f.read_text().splitlines()))
(bench / "suites" / "b.yaml").write_text(f"name: b\ntitle: b\nmethods: [tinyvit]\ngrid:\n  - protocol: {proto}\n"
                                         f"    datasets: [{dataset}]\n    epochs: [1]\n")
reg = load_registry(bench)
cell = build_plan(reg, "b")[0]
t = time.perf_counter()
rec = execute(cell, tmp / proto / "results")
wall = time.perf_counter() - t
print(json.dumps({"status": rec["status"], "error": rec.get("error"), "wall_s": wall,
                  "iters_per_s": rec.get("timings", {}).get("iters_per_s"), "iters": rec.get("iters"),
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "metric": {k: v for k, v in rec.get("metrics", {}).items() if isinstance(v, (int, float))}}))
"""

CASES = [
    ("metrics", "imagenet"),
    ("linear_tiny", "ade20k"),
    ("upernet_tiny", "ade20k"),
    ("maskrcnn_tiny", "coco_instances"),
    ("davis_tiny", "davis2017"),
    ("knn_tiny", "imagenet"),
    ("finetune_mini", "imagenet"),  # issue 35: end-to-end fine-tuning, 10 epochs on the generated ImageNet
    ("depth_linear_mini", "nyu_depth_v2"),  # issue 33: 600 iterations of the linear depth head
]


def main():
    sys.path.insert(0, str(ROOT))
    from harness.mini import generate

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate.generate_all(tmp / "data")
        print(f"{'protocol':15s} {'status':6s} {'wall s':>7s} {'it/s':>7s} {'peak RSS MiB':>13s}  main metric")
        for proto, ds in CASES:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(ROOT), str(tmp), proto, ds], capture_output=True, text=True
            )
            lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
            if not lines:
                print(f"{proto:15s} crashed: {out.stderr[-500:]}")
                continue
            r = json.loads(lines[-1])
            main_metric = next(
                (
                    (k, v)
                    for k, v in r["metric"].items()
                    if k in ("mIoU", "segm_AP", "JF_mean", "top1", "top1_best", "rmse", "dse")
                ),
                ("", float("nan")),
            )
            ips = f"{r['iters_per_s']:.1f}" if r["iters_per_s"] else "-"
            print(
                f"{proto:15s} {r['status']:6s} {r['wall_s']:7.1f} {ips:>7s} {r['rss_mib']:13.0f}  "
                f"{main_metric[0]} {main_metric[1]:.3g}" + (f"  {r['error']}" if r["error"] else "")
            )


if __name__ == "__main__":
    main()
