"""Benchmark (not a test): the linear probe's cost at real size, in the parts this machine can measure.

1. The train data pipeline, one data worker (one core, OpenCV single-threaded as in mmengine's
   workers), mmseg's own transforms on 640x480 photo-like JPEGs with ADE20K-style labels: ms per sample
   for each step and its share, and samples/s per worker for mmseg's pipeline and the harness's (its
   crop counting classes with a bincount, PhotoMetricDistortion on the device, as on GPU cells). The device
   op's own time on this CPU for
   a batch of 16 crops of 512² is printed too (on a GPU it is a few small kernels; not measured here).
2. Frozen ViT-S/16 dense features at 512² in bfloat16 (autocast) against float32: cosine similarity
   and relative error.
3. The planner's price of the paper's grid (`sdd plan --suite sdd`), and what a linear cell at
   0.25 GPU·h would make of it.
Run: make bench   (or: python tests/perf/bench_pipeline.py [--samples N])
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def photo_like(rng, h: int, w: int):
    """A JPEG-worthy scene: smooth colour fields, edges, texture and sensor noise (the entropy of a photo
    sets the decoder's cost; flat synthetic images decode several times faster)."""
    import numpy as np

    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        a, b, f = rng.uniform(-1, 1, 3)
        img[..., c] = 128 + 60 * np.sin(xx / (40 + 30 * a) + yy / (50 + 30 * b) + f)
    labels = np.zeros((h, w), np.uint8)
    for k in range(12):  # regions with their own colour and texture
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(30, 160)
        m = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        img[m] = rng.uniform(0, 255, 3) + 25 * np.sin(xx[m, None] / rng.uniform(2, 9))
        labels[m] = rng.integers(1, 151)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), labels


def pipeline_steps(n: int) -> None:
    import cv2
    import numpy as np
    import torch
    from PIL import Image

    from harness.mmcv_shim import import_mmseg

    import_mmseg()
    from mmseg.registry import TRANSFORMS

    import harness.jobs.mm_modules  # noqa: F401  (SDDRandomCrop)
    import harness.jobs.photometric as photometric

    cv2.setNumThreads(0)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = []
        for i in range(min(n, 24)):
            img, lab = photo_like(rng, 480, 640)
            Image.fromarray(img).save(tmp / f"{i}.jpg", quality=90)
            Image.fromarray(lab).save(tmp / f"{i}.png")
            files.append((str(tmp / f"{i}.jpg"), str(tmp / f"{i}.png")))
        steps = [
            ("decode image", dict(type="LoadImageFromFile")),
            ("decode label", dict(type="LoadAnnotations", reduce_zero_label=True)),
            ("resize", dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True)),
            ("crop (mmseg)", dict(type="RandomCrop", crop_size=(512, 512), cat_max_ratio=0.75)),
            ("crop (harness)", dict(type="SDDRandomCrop", crop_size=(512, 512), cat_max_ratio=0.75)),
            ("flip", dict(type="RandomFlip", prob=0.5)),
            ("photometric", dict(type="PhotoMetricDistortion")),
            ("pack", dict(type="PackSegInputs")),
        ]
        built = [(name, TRANSFORMS.build(cfg)) for name, cfg in steps]
        times = {name: 0.0 for name, _ in steps}
        np.random.seed(0)
        for k in range(n):
            img, seg = files[k % len(files)]
            res = {"img_path": img, "seg_map_path": seg, "reduce_zero_label": True, "seg_fields": []}
            for name, t in built:
                if name == "crop (mmseg)":  # timed on the same input as the harness's, which goes on
                    state = np.random.get_state()
                    t0 = time.perf_counter()
                    t(dict(res))
                    times[name] += time.perf_counter() - t0
                    np.random.set_state(state)
                    continue
                t0 = time.perf_counter()
                res = t(res)
                times[name] += time.perf_counter() - t0
        mmseg = sum(t for k, t in times.items() if k != "crop (harness)")
        harness = sum(t for k, t in times.items() if k not in ("crop (mmseg)", "photometric"))
        print(
            f"train pipeline at real size (640x480 JPEG -> 512² crops), one worker, {n} samples "
            f"(share of mmseg's pipeline):"
        )
        for name, _ in steps:
            print(f"  {name:15s} {1e3 * times[name] / n:6.2f} ms  {100 * times[name] / mmseg:5.1f}%")
        print(
            f"  samples/s per worker: {n / mmseg:.0f} mmseg's pipeline, {n / harness:.0f} the harness's on a GPU "
            f"cell (x{mmseg / harness:.2f}); a cell's 8 workers: {8 * n / harness:.0f} crops/s"
        )
        x = torch.randint(0, 256, (16, 3, 512, 512)).float()
        params = photometric.sample(16, torch.Generator().manual_seed(0))
        photometric.distort(x[:2], {k: v[:2] for k, v in params.items()})
        t0 = time.perf_counter()
        photometric.distort(x, params)
        dt = time.perf_counter() - t0
        print(
            f"  the device op on this CPU (1 thread), batch 16 x 512²: {1e3 * dt:.0f} ms "
            f"({1e3 * dt / 16:.1f} ms per crop; on a GPU: not measured here)"
        )


def bf16_agreement() -> None:
    import torch

    from harness.models.archs import build_backbone

    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    vit = build_backbone("vit_small_patch16").eval()
    x = torch.randn(2, 3, 512, 512)
    with torch.no_grad():
        t0 = time.perf_counter()
        f32 = vit.dense_map(x)
        t1 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            b16 = vit.dense_map(x).float()
        t2 = time.perf_counter()
    cos = torch.nn.functional.cosine_similarity(f32, b16, dim=1)
    rel = ((f32 - b16).norm() / f32.norm()).item()
    print(
        f"ViT-S/16 (random init) dense features at 512², bfloat16 autocast vs float32, 2 crops: cosine "
        f"similarity mean {cos.mean():.5f}, min {cos.min():.5f}; relative error {rel:.4f} "
        f"(CPU time {t1 - t0:.1f} s float32, {t2 - t1:.1f} s bfloat16)"
    )


def grid_price() -> None:
    from harness.plan import build_plan, cell_states, summarize
    from harness.registry import load_registry

    reg = load_registry()
    cells = build_plan(reg, "sdd")
    with tempfile.TemporaryDirectory() as empty:
        rows = summarize(cells, cell_states(cells, Path(empty)))
    total = sum(r["gpu_h_all"] for r in rows)
    linear = [r for r in rows if r["protocol"] == "linear"]
    print(
        f"the paper's grid as planned (suite sdd, priced from the protocol files): {len(cells)} cells, "
        f"{total:,.0f} GPU·h"
    )
    for r in rows:
        print(
            f"  {r['protocol']:10s} {r['cells']:5d} cells  {r['gpu_h_cell']:.3f} GPU·h each  "
            f"{r['gpu_h_all']:9,.1f} GPU·h  ({r['priced_from']})"
        )
    if linear:
        r = linear[0]
        cheaper = total - r["gpu_h_all"] + r["cells"] * 0.25
        print(
            f"  with linear cells at the 0.25 GPU·h target: {cheaper:,.0f} GPU·h "
            f"({total / cheaper:.1f}x less); GPU figures: not measured yet (docs/gpu.md)"
        )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=48)
    args = ap.parse_args()
    pipeline_steps(args.samples)
    bf16_agreement()
    grid_price()


if __name__ == "__main__":
    main()
