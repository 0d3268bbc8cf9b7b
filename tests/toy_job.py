"""The job of the toy protocol kind that tests/test_toy_kind.py adds the way docs/architecture.md says a
kind is added: it reads the images of its split and scores the mean brightness of each class's folder."""

from __future__ import annotations

import numpy as np

from harness.datasets import open_rgb, root_of
from harness.jobs.common import JobResult


def run(cell, ctx) -> JobResult:
    ds = ctx.registry.dataset(cell.dataset, cell.suite)
    folder = root_of(ds) / ds.splits["train"].img_dir
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: ctx.params.images]
    brightness = float(np.mean([np.asarray(open_rgb(p), dtype=np.float32).mean() for p in images])) / 255 * 100
    return JobResult(metrics={"toy_score": brightness}, info={"images": len(images)})
