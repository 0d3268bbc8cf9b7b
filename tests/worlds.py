"""Small generated inputs for the job tests: an ImageFolder tree and a registry with tiny methods."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def imagefolder(root: Path, classes: int = 4, per_class: int = 10, size: int = 64, seed: int = 0) -> Path:
    """<root>/train/n0000000c/*.JPEG: each class a colour and stripe orientation, plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for c in range(classes):
        d = root / "train" / f"n{c:08d}"
        d.mkdir(parents=True, exist_ok=True)
        colour = rng.uniform(40, 215, 3)
        for i in range(per_class):
            phase = rng.uniform(0, 6.28)
            stripes = np.sin((xx * np.cos(c) + yy * np.sin(c)) / 3.0 + phase)[..., None] * 40
            img = np.clip(colour + stripes + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"img_{c}_{i:03d}.JPEG", quality=95)
    return root


def tiny_registry(tmp: Path, data_root: Path, ckpt_root: Path, *, num_images: int = 24, lidar_images: int = 6) -> Path:
    """The real registry plus tiny DINO-format methods and a small `metrics` protocol and suite."""
    bench = tmp / "benchmarks"
    shutil.copytree(ROOT / "benchmarks", bench)
    for name, arch in (("tinyvit", "vit_tiny_test"), ("tinyres", "resnet_tiny_test")):
        (bench / "methods" / f"{name}.yaml").write_text(
            f"name: {name}\ntitle: {name}\nfamily: test\narch: {arch}\n"
            f"checkpoint:\n  dir: {ckpt_root}/{name}\n  file: 'checkpoint{{epoch:04d}}.pth'\n  epochs: [1, 2]\n"
            "  state_dict: {key: teacher, strip_prefixes: [module., backbone.]}\n"
        )
    (bench / "datasets" / "imagenet.yaml").write_text(
        f"name: imagenet\ntitle: mini ImageNet\nkind: imagenet\nroot: {data_root}\ntask: classification\n"
        "splits:\n  train: {img_dir: train}\n"
    )
    (bench / "protocols" / "metrics.yaml").write_text(
        "name: metrics\nkind: metrics\ntitle: metrics (tiny)\ndatasets: [imagenet]\n"
        f"params:\n  num_images: {num_images}\n  batch_size: 16\n  image_list_seed: 0\n  resize: 72\n  crop: 64\n"
        "  forward_batch: 8\n  cache: true\n  tokens_per_image: 8\n"
        "  dse: {mode: parity, local_clusters: 3, global_clusters: 24, normalize: true}\n"
        "  alpha_req: {fit_min_rank: 2, fit_max_rank: 20}\n"
        f"  lidar: {{num_images: {lidar_images}, views: 4, augment: {{crop: 64, scale: [0.4, 1.0]}}}}\n"
        "resources: {gpus: 0, cpus: 1, mem_gb: 2, time_min: 5, gpu_hours: 0.0}\n"
    )
    (bench / "suites" / "tiny.yaml").write_text(
        "name: tiny\ntitle: tiny metrics suite\nmethods: [tinyvit, tinyres]\n"
        "grid:\n  - protocol: metrics\n    datasets: [imagenet]\n"
    )
    return bench


def dino_checkpoint(ckpt_root: Path, method: str, arch: str, epoch: int, seed: int, nan: bool = False) -> Path:
    from harness.models.archs import build_backbone

    torch.manual_seed(seed)
    sd = build_backbone(arch).net.state_dict()
    if nan:
        first = next(k for k, v in sd.items() if v.is_floating_point())
        sd[first] = torch.full_like(sd[first], float("nan"))
    path = ckpt_root / method / f"checkpoint{epoch:04d}.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in sd.items()}, "epoch": epoch}, path)
    return path


def synthetic_suite(
    results: Path,
    suite: str = "syn",
    methods: int = 3,
    epochs: int = 10,
    seed: int = 0,
    datasets=("coco_stuff164k", "voc12_aug", "ade20k", "cityscapes"),
) -> int:
    """Records of a made-up SDD study: mIoU rises then degrades; DSE follows it with noise.
    Returns the number of records written."""
    from harness import records

    rng = np.random.default_rng(seed)
    n = 0
    for m in range(methods):
        name = f"m{m:03d}"
        peak = rng.uniform(0.3, 0.8)
        for e in range(1, epochs + 1):
            x = e / epochs
            quality = 1 - (x - peak) ** 2
            sep = 0.5 * quality + rng.normal(0, 0.02)
            dim = 0.6 + 0.1 * quality + rng.normal(0, 0.01)
            metrics = {
                "dse": sep + dim,
                "dse_separability": sep,
                "dse_dim": dim,
                "dse_inter": 1 + sep,
                "dse_intra_image": 1.0,
                "dse_intra_batch": 1.0,
                "rankme": 100 + rng.normal(0, 5),
                "alpha_req": 1 + rng.normal(0, 0.2),
                "lidar": 50 + rng.normal(0, 5),
                "w2": 1 - 0.3 * quality,
                "neg_w2": -(1 - 0.3 * quality),
                "neg_lu": 3 + quality,
            }
            rec = {
                "suite": suite,
                "protocol": "metrics",
                "dataset": "imagenet",
                "method": name,
                "epoch": e * 10,
                "status": "ok",
                "config_hash": "h",
                "metrics": metrics,
                "timings": {"total_s": 90.0},
                "details": {"log_sv": list(np.linspace(0, -5 * (1 + x), 8))},
            }
            records.write_record(records.record_path(results, suite, "metrics", "imagenet", name, e * 10), rec)
            n += 1
            for d in datasets:
                miou = 40 + 20 * quality + rng.normal(0, 0.5)
                rec = {
                    "suite": suite,
                    "protocol": "linear",
                    "dataset": d,
                    "method": name,
                    "epoch": e * 10,
                    "status": "ok",
                    "config_hash": "h",
                    "metrics": {"mIoU": miou, "aAcc": 80.0, "mAcc": 50.0, "IoU": {"a": miou, "b": miou / 2}},
                    "timings": {"total_s": 8748.0},
                }
                records.write_record(records.record_path(results, suite, "linear", d, name, e * 10), rec)
                n += 1
    return n


def registry_with_suite(tmp: Path, monkeypatch, name: str, text: str) -> Path:
    """A copy of the real registry at `tmp/bench` with one more suite, `suites/<name>.yaml` holding `text`;
    SDD_RESULTS points at `tmp/results` for the test."""
    monkeypatch.setenv("SDD_RESULTS", str(tmp / "results"))
    bench = tmp / "bench"
    shutil.copytree(ROOT / "benchmarks", bench)
    (bench / "suites" / f"{name}.yaml").write_text(text)
    return bench
