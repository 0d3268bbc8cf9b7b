"""A registry and generated data for the downstream job tests."""

from __future__ import annotations

from pathlib import Path

from harness.mini import generate
from tests import worlds

TINY_SEG = """name: {name}
kind: {kind}
title: tiny {kind}
params: {{batch_size: 4, crop_size: [64, 64], train_scale: [128, 64],
  ratio_range: [1.0, 1.0], photometric: false, checkpoint_interval: 10,
  log_interval: 10, schedule: {{iters: {iters}, warmup_iters: 5}}, {extra}}}
resources: {{gpus: 0, cpus: 1, mem_gb: 2, time_min: 5, gpu_hours: 0.0}}
"""
EXTRA = {
    "linear": "optimizer: {{lr: {lr}}}",
    "upernet": "optimizer: {{lr: {lr}, layer_decay_rate: 0.9}}, decode_head: {{channels: 32}}, "
    "auxiliary_head: {{channels: 16}}",
}


def tiny_seg_protocol(name: str, kind: str, iters: int, lr: float) -> str:
    return TINY_SEG.format(name=name, kind=kind, iters=iters, extra=EXTRA[kind].format(lr=lr))


def seg_registry(tmp: Path, data: Path, ck: Path, iters: int = 30) -> Path:
    bench = worlds.tiny_registry(tmp, data / "imagenet-1k", ck)
    (bench / "protocols" / "linear_tiny.yaml").write_text(tiny_seg_protocol("linear_tiny", "linear", iters, 0.01))
    (bench / "protocols" / "upernet_tiny.yaml").write_text(tiny_seg_protocol("upernet_tiny", "upernet", iters, 0.001))
    (bench / "suites" / "seg.yaml").write_text(
        "name: seg\ntitle: seg\nmethods: [tinyvit, tinyres]\ngrid:\n"
        "  - protocol: linear_tiny\n    datasets: [ade20k, voc12_aug, coco_stuff164k, cityscapes]\n    epochs: [1]\n"
        "  - protocol: upernet_tiny\n    datasets: [ade20k]\n    epochs: [1]\n"
    )
    return bench


def data_world(root: Path) -> Path:
    if not (root / "ade").exists():
        generate.generate_all(root)
    return root
