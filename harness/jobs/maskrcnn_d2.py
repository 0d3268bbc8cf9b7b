"""The detectron2 backend of the Mask R-CNN protocol (used only where detectron2 is installed).

The harness's backbone (loaded safely by the harness, never through MODEL.WEIGHTS) goes into detectron2's
own Mask R-CNN through its extension point (`harness.jobs.d2_adapter`): ViTs under ViTDet's
`SimpleFeaturePyramid`, ResNets and Swin under `FPN`. Heads, losses, the training loop and
`COCOEvaluator` (pycocotools' COCOeval) are detectron2's, from its R50-FPN Mask R-CNN config, with the
schedule of the protocol file and the optimiser rule of `harness.jobs.optim`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from harness.datasets import imagenet_norm
from harness.jobs import d2_adapter
from harness.jobs.common import JobResult
from harness.jobs.detection_parts import drop_path, resolve_schedule
from harness.jobs.optim import describe_optimizer, param_groups


def _datasets(cell, ds, root: Path) -> dict[str, str]:
    """The cell's train and val splits registered with detectron2's catalog (once per process)."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    names = {}
    for split in ("train", "val"):
        s = ds.splits[split]
        name = f"sdd_{cell.suite}_{cell.dataset}_{split}_{cell.config_hash}"
        if name not in DatasetCatalog.list():
            register_coco_instances(name, {}, str(root / s.ann_file), str(root / s.img_dir))
        names[split] = name
    return names


def build_config(p, placement, names: dict, num_classes: int, work: Path, schedule: dict):
    """detectron2's R50-FPN Mask R-CNN config with the protocol's inputs, batch and schedule."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    from harness.device import data_workers

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.DEVICE = placement.device
    cfg.MODEL.WEIGHTS = ""  # the backbone comes from the harness's safe loader
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = imagenet_norm(255)  # detectron2 normalises 0-255 pixels
    cfg.INPUT.FORMAT = "RGB"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = p.score_thresh
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[int(s)] for s in p.anchor_sizes]
    cfg.TEST.DETECTIONS_PER_IMAGE = p.detections_per_img
    cfg.INPUT.MIN_SIZE_TRAIN = tuple(p.train_min_sizes) or (p.min_size,)
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"  # one short side per image, as mmdet's multiscale_mode 'value'
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = p.rpn_post_nms_train
    cfg.INPUT.MAX_SIZE_TRAIN = cfg.INPUT.MAX_SIZE_TEST = p.max_size
    cfg.INPUT.MIN_SIZE_TEST = p.min_size
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (names["train"],), (names["val"],)
    cfg.DATALOADER.NUM_WORKERS = data_workers(placement, p.num_workers)
    cfg.SOLVER.IMS_PER_BATCH = p.batch_size  # global: detectron2 divides it by the world size
    if cfg.SOLVER.IMS_PER_BATCH % placement.world_size:
        raise ValueError(f"batch_size {cfg.SOLVER.IMS_PER_BATCH} does not split over {placement.world_size} processes")
    cfg.SOLVER.AMP.ENABLED = placement.accelerator == "cuda" and p.amp
    # the published schedule: linear warm-up, then x gamma at the steps (AdamW is built by the trainer)
    cfg.SOLVER.BASE_LR = p.optimizer.lr
    cfg.SOLVER.WEIGHT_DECAY = p.optimizer.weight_decay
    cfg.SOLVER.MAX_ITER = schedule["iters"]
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
    cfg.SOLVER.STEPS = tuple(int(s) for s in schedule["steps"])
    cfg.SOLVER.GAMMA = p.gamma
    cfg.SOLVER.WARMUP_METHOD = "linear"
    cfg.SOLVER.WARMUP_FACTOR = p.warmup_factor
    cfg.SOLVER.WARMUP_ITERS = min(schedule["warmup_iters"], cfg.SOLVER.MAX_ITER)
    cfg.SOLVER.CHECKPOINT_PERIOD = p.checkpoint_interval
    cfg.TEST.EVAL_PERIOD = 0
    cfg.OUTPUT_DIR = str(work / "detectron2")
    Path(cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
    return cfg


def trainer_class(backbone, p):
    """detectron2's DefaultTrainer with its two documented hooks: the model is built around the harness's
    backbone, the optimizer is AdamW with the harness's parameter groups (DefaultTrainer's is SGD)."""
    import torch
    from detectron2.engine import DefaultTrainer

    class Trainer(DefaultTrainer):
        @classmethod
        def build_model(cls, cfg):
            return d2_adapter.build_model(cfg, d2_adapter.feature_pyramid(backbone, p))

        @classmethod
        def build_optimizer(cls, cfg, model):
            groups = param_groups(
                model,
                lr=p.optimizer.lr,
                weight_decay=p.optimizer.weight_decay,
                layer_decay_rate=p.optimizer.layer_decay_rate,
                backbone_prefix="backbone.",
            )
            return torch.optim.AdamW(groups, lr=p.optimizer.lr, betas=tuple(p.optimizer.betas))

    return Trainer


def _scores(res: dict) -> tuple[dict, dict]:
    """(metrics, {metric: why it is NaN}) from COCOEvaluator's results (NaN where COCOeval gave -1)."""
    metrics, undefined = {}, {}
    for kind in ("bbox", "segm"):
        r = res.get(kind, {})
        for name, key in ((f"{kind}_AP", "AP"), (f"{kind}_AP50", "AP50"), (f"{kind}_AP75", "AP75")):
            metrics[name] = float(r.get(key, float("nan")))
            if math.isnan(metrics[name]):  # detectron2 turns COCOeval's -1 (undefined) into NaN
                undefined[name] = (
                    "COCOeval: undefined (-1), no ground-truth instances to score against"
                    if kind in res
                    else f"COCOEvaluator returned no {kind} results"
                )
    return metrics, undefined


def run_detectron2(cell, reg, p, root: Path, work: Path, ctx) -> dict:
    """detectron2's trainer on the cell's device(s). A multi-process cell uses detectron2's own DDP path:
    the process group is already up (harness.device), detectron2's local group is made here. detectron2
    has no gradient accumulation: IMS_PER_BATCH is the recipe's global batch, split over the processes
    there are (recorded)."""
    import os

    from detectron2.data import build_detection_test_loader
    from detectron2.evaluation import COCOEvaluator, inference_on_dataset

    from harness.models.checkpoints import load_backbone

    t0 = time.perf_counter()
    loaded = load_backbone(
        cell.method, cell.epoch, registry=reg, arch_overrides=drop_path(p, reg, cell.method), kind="maskrcnn"
    )
    ds = reg.dataset(cell.dataset, cell.suite)
    names = _datasets(cell, ds, root)
    coco = json.loads((root / ds.splits["train"].ann_file).read_text())
    num_classes = len(coco["categories"])
    schedule = resolve_schedule(p, len(coco["images"]))
    placement = ctx.placement
    if placement.distributed:
        d2_adapter.ensure_local_group(int(os.environ.get("LOCAL_WORLD_SIZE", placement.world_size)))
    cfg = build_config(p, placement, names, num_classes, work, schedule)
    trainer = trainer_class(loaded.backbone, p)(cfg)
    trainer.resume_or_load(resume=True)  # detectron2's own checkpoints of this cell, if any
    start = trainer.start_iter
    t1 = time.perf_counter()
    trainer.train()
    t2 = time.perf_counter()
    evaluator = COCOEvaluator(names["val"], output_dir=str(work / "eval"), use_fast_impl=False)
    res = inference_on_dataset(trainer.model, build_detection_test_loader(cfg, names["val"]), evaluator)
    t3 = time.perf_counter()
    if not placement.is_main:  # detectron2 gathers the results on rank 0, which writes the record
        return JobResult(metrics={}, info={"rank": placement.rank})
    metrics, undefined = _scores(res)
    return JobResult(
        metrics=metrics,
        undefined_metrics=undefined,
        timings={
            "build_s": t1 - t0,
            "train_s": t2 - t1,
            "eval_s": t3 - t2,
            "iters_per_s": (cfg.SOLVER.MAX_ITER - start) / max(t2 - t1, 1e-9),
        },
        info={
            "backend": "detectron2",
            "checkpoint": loaded.summary(),
            "resumed_from_iter": start,
            "iters": cfg.SOLVER.MAX_ITER,
            "detectron2_config": cfg.dump(),
            **describe_optimizer(trainer.optimizer, p, schedule),
            "final_lrs": sorted({g["lr"] for g in trainer.optimizer.param_groups}),
            "batch": {
                "global": cfg.SOLVER.IMS_PER_BATCH,
                "per_device": cfg.SOLVER.IMS_PER_BATCH // placement.world_size,
                "accumulation": 1,
                "world_size": placement.world_size,
                "data_workers": cfg.DATALOADER.NUM_WORKERS,
            },
            "precision": "float16 (detectron2 AMP)" if cfg.SOLVER.AMP.ENABLED else "float32",
            "pyramid": "detectron2 "
            + ("SimpleFeaturePyramid" if loaded.backbone.info.family == "vit" and p.pyramid == "simple" else "FPN"),
            "crop_policy": "none (detectron2 has no DETR crop branch)" if p.crop_policy != "none" else "none",
        },
    )


def recipe_fields(p, schedule: dict, placement) -> dict:
    """The recipe fields detectron2 decides, read back from the config this job builds (no data, no
    training; tests/golden/recipes compares them with the source as for the torchvision backend)."""
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        cfg = build_config(p, placement, {"train": "t", "val": "v"}, 80, Path(work), schedule)
    m, solver = cfg.MODEL, cfg.SOLVER
    return {
        "neck.out_channels": m.FPN.OUT_CHANNELS,
        "rpn.anchor_sizes": [s[0] for s in m.ANCHOR_GENERATOR.SIZES],
        "rpn.aspect_ratios": list(m.ANCHOR_GENERATOR.ASPECT_RATIOS[0]),
        "rpn.post_nms_train": m.RPN.POST_NMS_TOPK_TRAIN,
        "roi.box_output_size": [m.ROI_BOX_HEAD.POOLER_RESOLUTION] * 2,
        "roi.mask_output_size": [m.ROI_MASK_HEAD.POOLER_RESOLUTION] * 2,
        "roi.sampling_ratio": m.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
        "roi.box_head": f"{m.ROI_BOX_HEAD.NUM_FC}fc" if not m.ROI_BOX_HEAD.NUM_CONV else "conv-fc",
        "roi.box_fc": m.ROI_BOX_HEAD.FC_DIM,
        "roi.mask_convs": m.ROI_MASK_HEAD.NUM_CONV,
        "roi.box_batch": m.ROI_HEADS.BATCH_SIZE_PER_IMAGE,
        "roi.box_positive_fraction": m.ROI_HEADS.POSITIVE_FRACTION,
        "test.score_thresh": m.ROI_HEADS.SCORE_THRESH_TEST,
        "test.detections_per_img": cfg.TEST.DETECTIONS_PER_IMAGE,
        "data.train_min_sizes": list(cfg.INPUT.MIN_SIZE_TRAIN),
        "data.max_size": cfg.INPUT.MAX_SIZE_TRAIN,
        "data.test_min_size": cfg.INPUT.MIN_SIZE_TEST,
        "data.crop_policy": cfg.INPUT.CROP.TYPE if cfg.INPUT.CROP.ENABLED else "none",
        "optimizer.lr": solver.BASE_LR,
        "optimizer.weight_decay": solver.WEIGHT_DECAY,
        "schedule.iters": solver.MAX_ITER,
        "schedule.steps": list(solver.STEPS),
        "schedule.warmup_iters": solver.WARMUP_ITERS,
        "schedule.warmup_factor": solver.WARMUP_FACTOR,
        "schedule.gamma": solver.GAMMA,
        "batch.global": solver.IMS_PER_BATCH,
    }
