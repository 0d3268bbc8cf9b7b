"""The `metrics` job: one checkpoint -> features on the fixed image list -> every label-free metric.

The backbone's forward pass happens once (features cached on disk); all metrics read the same tensor.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path

import torch

from harness.datasets import root_of, verify_images
from harness.device import data_workers
from harness.features import extract_dense, extract_views, image_list
from harness.fingerprint import file_fingerprint
from harness.jobs.common import JobResult
from harness.metrics import compute_all
from harness.models.checkpoints import load_backbone


def feature_cache_key(cell, checkpoint: Path) -> str:
    """The backbone's part of the feature cache's key: the content (SHA-256) of the checkpoint file that was
    loaded and everything that turns it into a backbone (architecture, its arguments, the state-dict rule).
    The data's part -- the resolved image root, the image list and what `stat` says of every image read --
    and the transform, the precision and the code are added by `extract_dense` (`features.cache_inputs`)."""
    fp = file_fingerprint(checkpoint)
    if fp is None:
        raise FileNotFoundError(f"checkpoint {checkpoint} disappeared while the job ran")
    loader = hashlib.sha256(json.dumps(cell.config["method"], sort_keys=True).encode()).hexdigest()[:8]
    return f"{cell.method}_ep{cell.epoch:04d}_{fp['id']}_{loader}"


PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}


@contextlib.contextmanager
def full_float32(device: str):
    """Metrics in true float32 on a GPU (TF32 off, as on the CPU); restored afterwards."""
    if torch.device(device).type != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _lidar_views(backbone, root, images, params, progress: bool, dev: str, autocast):
    """LiDAR's augmented views of the first images of the list (None when LiDAR is off)."""
    lc = params.lidar
    if lc.num_images == 0:
        return None
    sub = image_list(root, min(lc.num_images, len(images)), params.image_list_seed)
    with full_float32(dev):
        return extract_views(
            backbone,
            sub,
            lc.views,
            seed=params.image_list_seed,
            batch_size=params.forward_batch,
            augment=lc.augment.model_dump(),
            progress=progress,
            device=dev,
            autocast=autocast,
        )


EMBEDDINGS_USED_BY = {
    "image_level": ["rankme", "effective_rank", "alpha_req", "collapsed_dims", "log_sv", "lidar"],
    "dense": ["dse*", "dense_rankme", "w2", "neg_lu", "collapsed_dims_dense", "log_sv_dense"],
}


def run(cell, ctx) -> JobResult:
    t0 = time.perf_counter()
    loaded = load_backbone(cell.method, cell.epoch, registry=ctx.registry, kind=cell.config["protocol"]["kind"])
    params = ctx.params
    key = feature_cache_key(cell, loaded.path) if params.cache else None  # extract_dense adds the precision
    return score(
        loaded.backbone,
        cell,
        ctx.registry,
        params,
        ctx.placement,
        progress=ctx.progress,
        cache_key=key,
        checkpoint=loaded.summary(),
        load_s=time.perf_counter() - t0,
    )


def score(
    backbone,
    cell,
    reg,
    params,
    placement,
    *,
    progress: bool = False,
    cache_key: str | None = None,
    checkpoint: dict | None = None,
    load_s: float = 0.0,
) -> JobResult:
    """Every label-free metric of a backbone on the protocol's fixed image list: what the metrics job
    records for a checkpoint file, and what harness.monitor records for a model while it trains."""
    dev, cuda = placement.device, placement.accelerator == "cuda"
    precision = params.precision or "float32"  # of the backbone's forward pass; the metrics are float32
    if precision not in PRECISIONS:
        raise ValueError(f"params.precision: {precision!r}; the metrics job takes one of {', '.join(PRECISIONS)}")
    workers = data_workers(placement, params.num_workers)
    t0 = time.perf_counter()
    ds = reg.dataset(cell.dataset, cell.suite)
    split = params.split
    root = root_of(ds) / ds.splits[split].img_dir
    images = image_list(root, params.num_images, params.image_list_seed)
    verify_images(ds, split, [root / p for p in images.paths])  # every image readable and whole
    backbone.to(dev)
    t_load = time.perf_counter()
    with full_float32(dev):
        dense, embeddings, cache = extract_dense(
            backbone,
            images,
            resize=params.resize,
            crop=params.crop,
            batch_size=params.forward_batch,
            cache_key=cache_key,
            progress=progress,
            device=dev,
            num_workers=workers,
            autocast=PRECISIONS[precision],
        )
    t_dense = time.perf_counter()
    views = _lidar_views(backbone, root, images, params, progress, dev, PRECISIONS[precision])
    t_feat = time.perf_counter()
    with full_float32(dev):
        metrics, details, per_metric = compute_all(
            dense.to(dev), params, None if views is None else views.to(dev), embeddings=embeddings.to(dev)
        )
    if cuda:
        torch.cuda.synchronize(dev)
    t_metrics = time.perf_counter()
    return JobResult(
        metrics=metrics,
        details=details,
        timings={
            "load_s": load_s + (t_load - t0),
            "features_s": t_dense - t_load,
            "views_s": t_feat - t_dense,
            "metrics_s": t_metrics - t_feat,
            "per_metric_s": per_metric,
            # DSE's own cost (the paper's 0.025 GPU·h): checkpoint, dense features, the estimator
            "dse_s": load_s + (t_dense - t0) + per_metric["dse"],
        },
        info={
            "checkpoint": checkpoint,
            "image_list": {"root": str(root), "count": len(images), "hash": images.hash, "seed": images.seed},
            "features": {"shape": list(dense.shape), "dtype": "float32", "cache": cache["cache"], "layer": "last"},
            "embeddings": {
                "image_level": backbone.embedding_kind,
                "dense": "last-layer patch tokens after the final norm (class and register tokens dropped)",
                "used_by": EMBEDDINGS_USED_BY,
            },
            "mode": params.dse.mode,
            "seeds": {"image_list": images.seed, "dse": params.dse.seed},
            "precision": {"features": precision, "metrics": "float32" + (" (TF32 off)" if cuda else "")},
            "data_loading": {"workers": workers, "pin_memory": cuda},
            "peak_device_memory_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else None,
        },
    )


def recipe_view(cell, reg, ctx) -> dict:
    """The recipe this job runs, from its parameters and the transform it uses (what tests/golden/recipes
    compares with the official DSE code)."""
    from harness.features import eval_transform

    p = ctx.params
    tf = eval_transform(p.resize, p.crop).transforms
    return {
        "images": p.num_images,
        "images.selection": (
            f"{p.num_images} train images drawn once with seed {p.image_list_seed} over the sorted file list"
        ),
        "dse.batch": p.batch_size,
        "dse.local_clusters": p.dse.local_clusters,
        "dse.global_clusters": p.dse.global_clusters,
        "dse.group_size": p.dse.group_size,
        "dse.normalize": p.dse.normalize,
        "dse.kmeans_iters": p.dse.kmeans_iters,
        "dse.kmeans_tol": p.dse.kmeans_tol,
        "features.layer": "last",
        "features.norm": "after the final norm",  # Backbone.dense: forward_features, the final norm applied
        "dse.kmeans_init": (
            "k-means++ weighted by distance (not squared), one run"
            if p.dse.mode == "parity"
            else "k-means++ on bfloat16 tokens (fast mode)"
        ),
        "resize": tf[0].size,
        "resize.interpolation": tf[0].interpolation.value,
        "crop": tf[1].size[0],
        "normalize.mean": list(tf[3].mean),
        "normalize.std": list(tf[3].std),
    }
