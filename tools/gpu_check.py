"""The GPU check (`make gpu-check`): real-size work on this machine's GPU, through the harness's own
jobs (`harness.jobs.execute`, so the device resolution, precision and records are the ones a cluster
run uses), and one table of what it measured.

- metrics: a real-size ViT-S/16 and ResNet-50 (random weights in their official DINO / DenseCL key
  layouts) over 2,048 generated 224² images: features, DSE parity, every metric (LiDAR on fewer images,
  extrapolated); images/s, peak GPU memory, seconds per checkpoint (paper: 0.025 GPU·h = 90 s);
- CPU vs GPU values of the metrics on the same cached features (parity DSE within 1e-4, W2 within 1e-6),
  and fast-mode DSE on the GPU;
- linear probe and UperNet at the recipe's 512² crop and per-GPU batch, Mask R-CNN (torchvision) at
  800 px, for a few hundred / dozen iterations; k-NN over 100 k x 10 k features; DAVIS on a real-size
  clip: iterations/s, GPU utilisation (nvidia-smi), peak memory, and the extrapolated GPU·h of one full
  cell against the protocol file's `gpu_hours`;
- the DSE monitor (issue 26): one `monitor.step` (metrics_fast, 2,048 images) against DINO ViT-S/16's
  training step timed at its default per-GPU recipe and extrapolated to one ImageNet epoch: the call's
  share of an epoch (goal: under 1%).

`--smoke` runs every stage tiny on the CPU (checks the script itself, no figures worth keeping).
Output: the table on stdout and `gpu_check.json` / `gpu_check.md` under `--out` (default $OUT, else
results/gpu-check/ -- never the repository's root).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.atomic import write_json, write_text  # noqa: E402


class GpuSampler:
    """Mean GPU utilisation and peak memory from nvidia-smi, sampled every 0.5 s while a stage runs."""

    def __init__(self):
        self.samples, self._stop, self._thread = [], threading.Event(), None

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
            )
            try:
                util, mem = (float(x) for x in out.stdout.splitlines()[0].split(","))
                self.samples.append((util, mem))
            except (ValueError, IndexError):
                pass
            self._stop.wait(0.5)

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def summary(self) -> dict:
        if not self.samples:
            return {"gpu_util_pct": None, "gpu_mem_mib": None}
        return {
            "gpu_util_pct": round(sum(u for u, _ in self.samples) / len(self.samples), 1),
            "gpu_mem_mib": max(m for _, m in self.samples),
        }


def build_world(tmp: Path, smoke: bool) -> dict:
    """Generated data in the real layouts and real-size checkpoints in their methods' own formats."""
    import torch

    from harness.mini import generate
    from harness.models.archs import build_backbone
    from tests import formats

    data, ck = tmp / "data", tmp / "ckpts"
    t = time.perf_counter()
    if smoke:
        generate.imagenet(data / "imagenet-1k", classes=4, train=16, val=4, size=64)
        generate.ade20k(data / "ade" / "ADEChallengeData2016", train=8, val=2, size=64)
        generate.coco_instances(data / "coco", train=4, val=2, size=96)
        generate.davis2017(data / "DAVIS", sequences=1, frames=4, size=(64, 96))
    else:
        generate.imagenet(data / "imagenet-1k", classes=16, train=128, val=4, size=256)  # 2,048 train images
        generate.ade20k(data / "ade" / "ADEChallengeData2016", train=64, val=200, size=512)  # 200 evaluated
        generate.coco_instances(data / "coco", train=32, val=8, size=640)
        generate.davis2017(data / "DAVIS", sequences=1, frames=24, size=(480, 854))
    gen_s = time.perf_counter() - t
    archs = {
        "dino": ("vit_tiny_test" if smoke else "vit_small_patch16", formats.dino),
        "densecl": ("resnet_tiny_test" if smoke else "resnet50", formats.densecl),
    }
    for method, (arch, writer) in archs.items():
        torch.manual_seed(0)
        net = build_backbone(arch)
        writer(net.net.state_dict(), ck / method, 10)  # the method's own file layout, read back by its rule
    os.environ.update(
        SDD_DATA_ROOT=str(data),
        SDD_CKPT_ROOT=str(ck),
        SDD_CACHE=str(tmp / "cache"),
        SDD_RESULTS=str(tmp / "results"),
        SDD_SUBMITIT=str(tmp / "submitit"),
    )
    return {"data": data, "ckpts": ck, "archs": {m: a for m, (a, _) in archs.items()}, "generate_s": gen_s}


PROTOCOLS = {
    # name: (kind, params, recipe cell for the extrapolation: (optimizer steps, GPUs) or None)
    "metrics_check": (
        "metrics",
        {
            "num_images": 2048,
            "batch_size": 1024,
            "image_list_seed": 0,
            "resize": 256,
            "crop": 224,
            "forward_batch": 128,
            "cache": True,
            "tokens_per_image": 16,
            "dse": {
                "mode": "parity",
                "local_clusters": 3,
                "global_clusters": 24,
                "group_size": 8,
                "normalize": True,
                "kmeans_iters": 20,
                "kmeans_tol": 1.0e-4,
            },
            "alpha_req": {"fit_min_rank": 6, "fit_max_rank": 100},
            "lidar": {"num_images": 100, "views": 50, "augment": {"crop": 224}},
        },
        None,
    ),
    "linear_check": (
        "linear",
        {
            "batch_size": 16,
            "crop_size": [512, 512],
            "optimizer": {"lr": 1.0e-3},
            "schedule": {"iters": 500, "warmup_iters": 50},
            "checkpoint_interval": 100000,
            "log_interval": 100,
            "test": {"mode": "slide", "crop_size": [512, 512], "stride": [341, 341]},
        },
        (40000, 1),
    ),
    "upernet_check": (
        "upernet",
        {
            "batch_size": 2,
            "crop_size": [512, 512],
            "optimizer": {"lr": 3.0e-5, "layer_decay_rate": 0.9},
            "schedule": {"iters": 150, "warmup_iters": 15},
            "drop_path": 0.1,
            "checkpoint_interval": 100000,
            "log_interval": 100,
            "test": {"mode": "whole"},
        },
        (160000, 8),
    ),
    "maskrcnn_check": (
        "maskrcnn",
        {
            "backend": "torchvision",
            "iters": 40,
            "batch_size": 2,
            "min_size": 800,
            "max_size": 1333,
            "checkpoint_interval": 100000,
        },
        (90000, 8),
    ),
    "davis_check": (
        "davis",
        {
            "split": "val",
            "short_side": 480,
            "n_last_frames": 7,
            "size_mask_neighborhood": 12,
            "topk": 5,
            "temperature": 0.1,
            "resnet_layer": 3,
        },
        None,
    ),
}
SMOKE = {
    "metrics_check": {
        "num_images": 16,
        "batch_size": 16,
        "forward_batch": 8,
        "resize": 72,
        "crop": 64,
        "lidar": {"num_images": 4, "views": 3, "augment": {"crop": 64, "scale": [0.4, 1.0]}},
        "alpha_req": {"fit_min_rank": 2, "fit_max_rank": 10},
    },
    "linear_check": {
        "batch_size": 2,
        "crop_size": [64, 64],
        "train_scale": [64, 64],
        "schedule": {"iters": 4, "warmup_iters": 1},
        "test": {"mode": "whole"},
    },
    "upernet_check": {
        "crop_size": [64, 64],
        "train_scale": [64, 64],
        "schedule": {"iters": 4, "warmup_iters": 1},
        "decode_head": {"channels": 16},
        "auxiliary_head": {"channels": 8},
    },
    "maskrcnn_check": {
        "iters": 2,
        "min_size": 96,
        "max_size": 96,
        "anchor_sizes": [8, 16, 32, 64, 128],
        "out_channels": 16,
    },
    "davis_check": {"short_side": 64, "size_multiple": 16, "size_mask_neighborhood": 3},
}
DATASET = {
    "metrics_check": "imagenet",
    "linear_check": "ade20k",
    "upernet_check": "ade20k",
    "maskrcnn_check": "coco_instances",
    "davis_check": "davis2017",
}


def write_registry(tmp: Path, smoke: bool) -> Path:
    import yaml

    bench = tmp / "benchmarks"
    shutil.copytree(ROOT / "benchmarks", bench)
    gpus = 0 if smoke else 1
    if smoke:  # the tiny test architectures in the same checkpoint formats
        for method, arch in (("dino", "vit_small_patch16"), ("densecl", "resnet50")):
            f = bench / "methods" / f"{method}.yaml"
            f.write_text(
                f.read_text().replace(
                    f"arch: {arch}", f"arch: {'vit' if arch.startswith('vit') else 'resnet'}_tiny_test"
                )
            )
    for name, (kind, params, _) in PROTOCOLS.items():
        params = {**params, **(SMOKE[name] if smoke else {})}
        (bench / "protocols" / f"{name}.yaml").write_text(
            yaml.safe_dump(
                {
                    "name": name,
                    "kind": kind,
                    "title": f"GPU check: {kind}",
                    "params": params,
                    "resources": {
                        "gpus": gpus,
                        "cpus": min(16, os.cpu_count() or 1),
                        "mem_gb": 64,
                        "time_min": 60,
                        "gpu_hours": 0.0,
                    },
                }
            )
        )
    grid = [{"protocol": n, "datasets": [DATASET[n]], "epochs": [10]} for n in PROTOCOLS]
    (bench / "suites" / "gpucheck.yaml").write_text(
        yaml.safe_dump({"name": "gpucheck", "title": "GPU check", "methods": ["dino", "densecl"], "grid": grid})
    )
    return bench


def run_cells(bench: Path, results: Path, only: list[str] | None) -> list[dict]:
    import torch

    from harness.jobs import execute
    from harness.plan import build_plan
    from harness.registry import load_registry

    reg = load_registry(bench)
    rows = []
    for cell in build_plan(reg, "gpucheck"):
        if only and cell.protocol not in only:
            continue
        if (
            cell.protocol in ("upernet_check", "maskrcnn_check", "davis_check", "linear_check")
            and cell.method != "dino"
        ):
            continue  # one architecture is enough for the training protocols' speed
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        with GpuSampler() as gpu:
            t = time.perf_counter()
            rec = execute(cell, results, progress=False)
            wall = time.perf_counter() - t
        kind, _, recipe = PROTOCOLS[cell.protocol]
        row = {
            "stage": f"{kind} ({cell.method})",
            "status": rec["status"],
            "wall_s": round(wall, 1),
            **gpu.summary(),
            "peak_alloc_mib": round(torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else None,
            "device": (rec.get("placement") or {}).get("name"),
            "precision": rec.get("precision"),
            "error": rec.get("error"),
        }
        timings = rec.get("timings") or {}
        if kind == "metrics" and rec["status"] == "ok":
            n = rec["image_list"]["count"]
            row.update(
                images_per_s=round(n / max(timings.get("features_s", 0), 1e-9), 1),
                per_metric_s={k: round(v, 2) for k, v in (timings.get("per_metric_s") or {}).items()},
                s_per_checkpoint=round(wall, 1),
                paper_s=90.0,
                cache=rec["features"]["cache"],
            )
        if recipe and rec["status"] == "ok":
            ips = timings.get("iters_per_s")
            steps, recipe_gpus = recipe
            if ips:  # one GPU's speed at the recipe's per-GPU batch; the recipe's GPUs run in parallel
                # plus the evaluation, scaled to ADE20K's 2,000 validation images, where the stage evaluated
                val_s = timings.get("val_s", 0.0) * 2000 / timings["val_images"] if timings.get("val_images") else 0.0
                hours = round((steps / ips + val_s) * recipe_gpus / 3600, 3)
                on_gpu = (rec.get("placement") or {}).get("accelerator") == "cuda"
                # a figure extrapolated from a CPU run is a CPU figure: never printed as GPU·h
                row.update({"extrapolated_gpu_h" if on_gpu else "extrapolated_cpu_h": hours})
                row.update(
                    iters_per_s=round(ips, 2),
                    data_wait_share=None
                    if timings.get("data_wait_share") is None
                    else round(timings["data_wait_share"], 3),
                    photometric=rec.get("photometric"),
                    val_s_per_image=round(timings["val_s"] / timings["val_images"], 4)
                    if timings.get("val_images")
                    else None,
                    protocol_gpu_h={"linear": 2.43, "upernet": 80.0, "maskrcnn": 96.0}[kind],
                )
        if kind == "davis" and rec["status"] == "ok":
            row["JF_mean"] = rec["metrics"]["JF_mean"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def cpu_vs_gpu(cache: Path, smoke: bool) -> list[dict]:
    """The metrics on the same cached features, on the CPU and on the GPU."""
    import torch

    from harness.jobs.metrics import full_float32
    from harness.metrics import compute_all
    from harness.metrics.dse import dse

    params = {**PROTOCOLS["metrics_check"][1], **(SMOKE["metrics_check"] if smoke else {})}
    params = {**params, "lidar": {}}
    rows = []
    for f in sorted((cache / "features").glob("*.pt")):
        cached = torch.load(f, weights_only=True)
        feats, emb = cached["features"], cached["embeddings"]
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        got = {}
        for dev in devices:
            with full_float32(dev):
                t = time.perf_counter()
                got[dev] = compute_all(feats.to(dev), params, embeddings=emb.to(dev))[0]
                got[dev]["_s"] = time.perf_counter() - t
                if dev == "cuda":
                    t = time.perf_counter()
                    fast = dse(feats.to(dev), batch_size=params["batch_size"], mode="fast")
                    got[dev]["_fast_s"], got[dev]["_fast_dse"] = time.perf_counter() - t, fast.dse
        row = {"stage": f"metrics CPU vs GPU ({f.name.split('_ep')[0]})", "cpu_s": round(got["cpu"]["_s"], 1)}
        if "cuda" in got:
            c, g = got["cpu"], got["cuda"]
            rel = lambda k: abs(g[k] - c[k]) / max(abs(c[k]), 1e-12)
            row.update(
                gpu_s=round(g["_s"], 2),
                dse_parity_rel_diff=rel("dse"),
                w2_abs_diff=abs(g["w2"] - c["w2"]),
                rankme_rel_diff=rel("rankme"),
                fast_dse=g["_fast_dse"],
                parity_dse=g["dse"],
                fast_s=round(g["_fast_s"], 2),
                within_tolerance=rel("dse") <= 1e-4 and abs(g["w2"] - c["w2"]) <= 1e-6,
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def knn_scale(smoke: bool) -> dict:
    import torch
    import torch.nn.functional as F

    from harness.jobs.knn import knn_classify

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    n, m, d = (2000, 200, 64) if smoke else (100_000, 10_000, 384)
    g = torch.Generator().manual_seed(0)
    train = F.normalize(torch.randn(n, d, generator=g), dim=1).to(
        dev, torch.float16 if dev == "cuda" else torch.float32
    )
    test = F.normalize(torch.randn(m, d, generator=g), dim=1).to(dev, train.dtype)
    labels = torch.randint(0, 1000, (n,), generator=g).to(dev)
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    votes = knn_classify(train, labels, test, 1000, k=20)
    if dev == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t
    row = {
        "stage": f"k-NN {n:,} x {m:,} (d={d})",
        "status": "ok",
        "wall_s": round(wall, 2),
        "queries_per_s": round(m / wall),
        "votes_finite": bool(torch.isfinite(votes).all()),
        "peak_alloc_mib": round(torch.cuda.max_memory_allocated() / 2**20) if dev == "cuda" else None,
        "imagenet_val_extrapolated_s": round(wall * 50_000 / m * 1_281_167 / n, 1),
    }
    print(json.dumps(row), flush=True)
    return row


def monitor_cost(bench: Path, results: Path, smoke: bool) -> list[dict]:
    """Issue 26's goal: one DSEMonitor call (metrics_fast: 2,048 images, fast DSE) under 1% of a DINO
    ViT-S/16 ImageNet epoch on one GPU. The epoch is extrapolated from DINO training steps timed here, per
    GPU: batch 64 (main_dino.py's batch_size_per_gpu), 2 global crops of 224 and 10 local of 96 (the paper's
    ViT-S/16 setting; main_dino.py defaults to 8), the student forward and backward through a DINO head of
    65,536 prototypes, the teacher forward on the global crops, mixed precision (bf16 here, where DINO uses
    fp16 with a scaler), over 1,281,167 images. Data loading is left out of the step, so the epoch is
    shorter than a real one and the monitor's share comes out larger (the safe side)."""
    import torch
    import yaml

    from harness.models.archs import build_backbone
    from harness.monitor import DSEMonitor
    from harness.registry import load_registry

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    proto = yaml.safe_load((ROOT / "benchmarks" / "protocols" / "metrics_fast.yaml").read_text())
    proto.pop("recipe", None)
    proto.update(name="monitor_check", resources={**proto["resources"], "gpus": 0 if smoke else 1})
    if smoke:
        proto["params"].update(num_images=16, batch_size=16, forward_batch=8, resize=72, crop=64, tokens_per_image=8)
    (bench / "protocols" / "monitor_check.yaml").write_text(yaml.safe_dump(proto))
    (bench / "suites" / "watch.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "watch",
                "title": "GPU check: the DSE monitor",
                "methods": ["dino"],
                "grid": [{"protocol": "monitor_check", "datasets": ["imagenet"]}],
            }
        )
    )
    reg = load_registry(bench)
    spec = reg.method("dino")
    model = build_backbone(spec.arch).to(dev)
    monitor = DSEMonitor("watch", "dino", results=results, registry=reg, device=dev)
    epoch = max(spec.epochs())
    monitor.step(model, epoch)  # warm-up: cuDNN and allocator; the record is rewritten by the timed call
    if dev == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    rec = monitor.step(model, epoch)
    call_s = time.perf_counter() - t

    # DINO's training step, timed
    batch, g, loc, steps = (2, 64, 32, 2) if smoke else (64, 224, 96, 20)
    student = build_backbone(spec.arch).net.to(dev).train()
    teacher = build_backbone(spec.arch).net.to(dev).eval().requires_grad_(False)
    out_dim, hidden = (256, 64) if smoke else (65536, 2048)
    d = student.embed_dim
    head = torch.nn.Sequential(
        torch.nn.Linear(d, hidden),
        torch.nn.GELU(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.GELU(),
        torch.nn.Linear(hidden, 256),
        torch.nn.Linear(256, out_dim, bias=False),
    ).to(dev)
    opt = torch.optim.AdamW(list(student.parameters()) + list(head.parameters()), lr=1e-4)
    globals_ = torch.randn(2 * batch, 3, g, g, device=dev)
    locals_ = torch.randn(10 * batch, 3, loc, loc, device=dev)

    def step():
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
            with torch.no_grad():
                t_out = head(teacher.forward_features(globals_)[:, 0]).float().softmax(-1)
            s = [head(student.forward_features(x)[:, 0]) for x in (globals_, locals_)]
            s = torch.cat(s).float().log_softmax(-1)
            loss = -(t_out.repeat(6, 1)[: len(s)] * s).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    if dev == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if dev == "cuda":
        torch.cuda.synchronize()
    step_s = (time.perf_counter() - t) / steps
    epoch_s = 1_281_167 / batch * step_s
    row = {
        "stage": f"DSE monitor call vs one DINO {spec.arch} ImageNet epoch",
        "status": rec["status"],
        "wall_s": round(call_s, 1),
        "monitor_features_s": round(rec["timings"]["features_s"], 2),
        "monitor_dse_s": round(rec["timings"]["per_metric_s"]["dse"], 2),
        "dino_step_s": round(step_s, 4),
        "dino_images_per_s": round(batch / step_s, 1),
        "dino_epoch_s_extrapolated": round(epoch_s),
        "monitor_share_of_epoch_pct": round(100 * call_s / epoch_s, 3),
        "goal_pct": 1.0,
        "precision": "bf16 autocast (DINO: fp16 + scaler)" if dev == "cuda" else "float32 (CPU)",
    }
    print(json.dumps(row), flush=True)
    return [row]


def markdown(rows: list[dict], env: dict) -> str:
    cols = [
        "stage",
        "status",
        "wall_s",
        "images_per_s",
        "iters_per_s",
        "gpu_util_pct",
        "peak_alloc_mib",
        "extrapolated_gpu_h",
        "protocol_gpu_h",
        "data_wait_share",
        "precision",
    ]
    if not env.get("cuda_available"):
        cols[cols.index("extrapolated_gpu_h")] = "extrapolated_cpu_h"
    head = f"GPU check, {env['date']}, {env['device']} (torch {env['torch']}, CUDA {env['cuda']})"
    if not env.get("cuda_available"):
        head += (
            "\n\nNo GPU ran this: every figure below is from the CPU (a smoke run checks the script, its "
            "speeds are not GPU figures and no GPU·h is extrapolated from them)."
        )
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |")
    extra = [
        r
        for r in rows
        if "dse_parity_rel_diff" in r or "queries_per_s" in r or "monitor_share_of_epoch_pct" in r or r.get("error")
    ]
    for r in extra:
        lines.append("")
        lines.append(f"- {r['stage']}: " + ", ".join(f"{k} {v}" for k, v in r.items() if k != "stage"))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out",
        default=os.environ.get("OUT") or str(ROOT / "results" / "gpu-check"),
        help="folder for gpu_check.json / .md (default: $OUT, else results/gpu-check/)",
    )
    ap.add_argument("--smoke", action="store_true", help="every stage tiny on the CPU (tests the script)")
    ap.add_argument("--only", nargs="*", help="protocols to run (default: all), e.g. metrics_check linear_check")
    ap.add_argument("--keep", help="keep the generated world in this folder")
    args = ap.parse_args(argv)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("gpu-check: no CUDA device visible; use --smoke to check the script on the CPU", file=sys.stderr)
        return 2
    env = {
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (smoke)",
        "cuda_available": torch.cuda.is_available(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="sdd-gpucheck-"))
    rows, t0 = [], time.perf_counter()
    try:
        world = build_world(tmp, args.smoke)
        rows.append({"stage": "generate data + checkpoints", "status": "ok", "wall_s": round(world["generate_s"], 1)})
        bench = write_registry(tmp, args.smoke)
        for stage in (
            lambda: run_cells(bench, tmp / "results", args.only),
            lambda: [knn_scale(args.smoke)],
            lambda: cpu_vs_gpu(tmp / "cache", args.smoke),
            lambda: monitor_cost(bench, tmp / "results", args.smoke),
        ):
            try:
                rows += stage()
            except Exception as e:  # one broken stage does not hide the others' figures
                traceback.print_exc()
                rows.append({"stage": "(stage crashed)", "status": "failed", "error": f"{type(e).__name__}: {e}"})
            write_json(out / "gpu_check.json", {"env": env, "rows": rows})
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    md = markdown(rows, env)
    write_text(out / "gpu_check.md", md)
    print(md)
    print(f"gpu-check: {time.perf_counter() - t0:.0f} s; {out / 'gpu_check.md'}")
    return 0 if all(r.get("status", "ok") == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
