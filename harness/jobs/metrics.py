"""The `metrics` job: one checkpoint -> features on the fixed image list -> every label-free metric.

The backbone's forward pass happens once (features cached on disk); all metrics read the same tensor.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch

from harness.datasets import root_of
from harness.features import extract_dense, extract_views, image_list
from harness.metrics import compute_all
from harness.models.checkpoints import checkpoint_path, load_backbone


def _checkpoint_fingerprint(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]


def run(cell, ctx) -> dict:
    reg, progress = ctx.registry, ctx.progress
    params = cell.config["protocol"]["params"]
    t0 = time.perf_counter()
    ds = reg.dataset(cell.dataset)
    split = params.get("split", "train")
    root = root_of(ds) / ds.splits[split].img_dir
    images = image_list(root, int(params["num_images"]), int(params.get("image_list_seed", 0)))
    loaded = load_backbone(cell.method, cell.epoch, registry=reg)
    t_load = time.perf_counter()
    key = f"{cell.method}_ep{cell.epoch:04d}_{_checkpoint_fingerprint(checkpoint_path(reg.method(cell.method), cell.epoch))}"
    dense, cache = extract_dense(loaded.backbone, images, resize=int(params.get("resize", 256)),
                                 crop=int(params.get("crop", 224)), batch_size=int(params.get("forward_batch", 64)),
                                 cache_key=key if params.get("cache", True) else None,
                                 cache_dtype=getattr(torch, params.get("cache_dtype", "float16")), progress=progress)
    views = None
    lc = params.get("lidar", {})
    if lc.get("num_images", 0) > 0 and lc.get("views", 0) > 1:
        sub = image_list(root, min(int(lc["num_images"]), len(images)), int(params.get("image_list_seed", 0)))
        views = extract_views(loaded.backbone, sub, int(lc["views"]), seed=int(params.get("image_list_seed", 0)),
                              batch_size=int(params.get("forward_batch", 64)), augment=lc.get("augment"),
                              progress=progress)
    t_feat = time.perf_counter()
    metrics, details, per_metric = compute_all(dense, params, views)
    t_metrics = time.perf_counter()
    return {"metrics": metrics, "details": details,
            "checkpoint": loaded.summary(), "image_list": {"root": str(root), "count": len(images),
                                                           "hash": images.hash, "seed": images.seed},
            "features": {"shape": list(dense.shape), "cache": cache["cache"], "layer": "last",
                         "embedding": "mean of dense tokens"},
            "mode": params.get("dse", {}).get("mode", "parity"), "seeds": {"image_list": images.seed, "dse": 0},
            "timings": {"load_s": t_load - t0, "features_s": t_feat - t_load, "metrics_s": t_metrics - t_feat,
                        "per_metric_s": per_metric}}
