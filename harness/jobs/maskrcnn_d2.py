"""The detectron2 backend of the Mask R-CNN protocol (used only where detectron2 is installed).

The harness's backbone (loaded safely by the harness, never through MODEL.WEIGHTS) is registered
as a detectron2 backbone. ViTs get detectron2's ViTDet `SimpleFeaturePyramid` on the last block;
ResNets and Swin get detectron2's `FPN` over their four stages. Heads, losses, training loop and
`COCOEvaluator` (which scores with pycocotools' COCOeval) are detectron2's, from its R50-FPN Mask
R-CNN config, with the schedule of the protocol file.
"""
from __future__ import annotations

import time
from pathlib import Path

from harness.datasets import imagenet_norm

_CONTEXT: dict = {}


def _register():
    from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec
    from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
    from detectron2.modeling.backbone.vit import SimpleFeaturePyramid

    class HarnessBottomUp(Backbone):
        def __init__(self, backbone):
            super().__init__()
            self.body = backbone
            if backbone.info.family == "vit":
                self._out_features = ["last_feat"]
                self._out_feature_channels = {"last_feat": backbone.dim}
                self._out_feature_strides = {"last_feat": backbone.stride}
            else:
                self._out_features = ["res2", "res3", "res4", "res5"]
                self._out_feature_channels = dict(zip(self._out_features, backbone.level_channels))
                self._out_feature_strides = dict(zip(self._out_features, (4, 8, 16, 32)))

        def forward(self, x):
            maps = self.body.levels(x)
            if self.body.info.family == "vit":
                return {"last_feat": maps[-1]}
            return dict(zip(self._out_features, maps))

        def output_shape(self):
            return {n: ShapeSpec(channels=self._out_feature_channels[n], stride=self._out_feature_strides[n])
                    for n in self._out_features}

    if "build_sdd_backbone" in BACKBONE_REGISTRY:
        return

    @BACKBONE_REGISTRY.register()
    def build_sdd_backbone(cfg, input_shape):
        ctx = _CONTEXT
        bottom_up = HarnessBottomUp(ctx["backbone"])
        out = ctx["params"].out_channels
        if ctx["backbone"].info.family == "vit":
            return SimpleFeaturePyramid(net=bottom_up, in_feature="last_feat", out_channels=out,
                                        scale_factors=tuple(ctx["params"].vit_scale_factors),
                                        top_block=LastLevelMaxPool(), norm="LN",
                                        square_pad=ctx["params"].max_size)
        return FPN(bottom_up=bottom_up, in_features=bottom_up._out_features, out_channels=out, norm="",
                   top_block=LastLevelMaxPool())


def run_detectron2(cell, reg, p, root: Path, work: Path, ctx) -> dict:
    """detectron2's DefaultTrainer on the cell's device(s). A multi-process cell uses detectron2's own
    DDP path: the process group is already up (harness.device), detectron2's local group is made here.
    detectron2 has no gradient accumulation: IMS_PER_BATCH is the recipe's global batch, split over
    the processes there are (recorded)."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog, build_detection_test_loader
    from detectron2.data.datasets import register_coco_instances
    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import COCOEvaluator, inference_on_dataset

    from harness.models.checkpoints import load_backbone

    t0 = time.perf_counter()
    loaded = load_backbone(cell.method, cell.epoch, registry=reg)
    _register()
    _CONTEXT.update(backbone=loaded.backbone, params=p)
    ds = reg.dataset(cell.dataset, cell.suite)
    names = {}
    for split in ("train", "val"):
        s = ds.splits[split]
        name = f"sdd_{cell.suite}_{cell.dataset}_{split}_{cell.config_hash}"
        if name not in DatasetCatalog.list():
            register_coco_instances(name, {}, str(root / s.ann_file), str(root / s.img_dir))
        names[split] = name
    import json

    num_classes = len(json.loads((root / ds.splits["train"].ann_file).read_text())["categories"])
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.BACKBONE.NAME = "build_sdd_backbone"
    placement = ctx.placement
    cfg.MODEL.DEVICE = placement.device
    if placement.distributed:
        import os

        from detectron2.utils import comm

        if comm._LOCAL_PROCESS_GROUP is None:
            comm.create_local_process_group(int(os.environ.get("LOCAL_WORLD_SIZE", placement.world_size)))
    cfg.MODEL.WEIGHTS = ""  # the backbone comes from the harness's safe loader
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = imagenet_norm(255)  # detectron2 normalises 0-255 pixels
    cfg.INPUT.FORMAT = "RGB"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = p.score_thresh
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[int(s)] for s in p.anchor_sizes]
    cfg.TEST.DETECTIONS_PER_IMAGE = p.detections_per_img
    cfg.INPUT.MIN_SIZE_TRAIN = (p.min_size,)
    cfg.INPUT.MAX_SIZE_TRAIN = cfg.INPUT.MAX_SIZE_TEST = p.max_size
    cfg.INPUT.MIN_SIZE_TEST = p.min_size
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (names["train"],), (names["val"],)
    from harness.device import data_workers

    cfg.DATALOADER.NUM_WORKERS = data_workers(placement, p.num_workers)
    cfg.SOLVER.IMS_PER_BATCH = p.batch_size  # global: detectron2 divides it by the world size
    if cfg.SOLVER.IMS_PER_BATCH % placement.world_size:
        raise ValueError(f"batch_size {cfg.SOLVER.IMS_PER_BATCH} does not split over {placement.world_size} processes")
    cfg.SOLVER.AMP.ENABLED = placement.accelerator == "cuda" and p.amp
    # the published schedule: linear warm-up, then x gamma at the steps (AdamW is built by Trainer below)
    cfg.SOLVER.BASE_LR = p.optimizer.lr
    cfg.SOLVER.WEIGHT_DECAY = p.optimizer.weight_decay
    cfg.SOLVER.MAX_ITER = p.iters
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
    cfg.SOLVER.STEPS = tuple(int(s) for s in p.steps)
    cfg.SOLVER.GAMMA = p.gamma
    cfg.SOLVER.WARMUP_METHOD = "linear"
    cfg.SOLVER.WARMUP_FACTOR = p.warmup_factor
    cfg.SOLVER.WARMUP_ITERS = min(p.warmup_iters, cfg.SOLVER.MAX_ITER)
    cfg.SOLVER.CHECKPOINT_PERIOD = p.checkpoint_interval
    cfg.TEST.EVAL_PERIOD = 0
    cfg.OUTPUT_DIR = str(work / "detectron2")
    Path(cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
    import torch

    from harness.jobs.maskrcnn import describe_optimizer, param_groups

    class Trainer(DefaultTrainer):
        """DefaultTrainer builds SGD; the recipe is AdamW with ViTDet's groups (harness.jobs.maskrcnn)."""

        @classmethod
        def build_optimizer(cls, cfg, model):
            return torch.optim.AdamW(param_groups(model, p.optimizer, "backbone."), lr=p.optimizer.lr,
                                     betas=tuple(p.optimizer.betas))

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=True)  # detectron2's own checkpoints of this cell, if any
    start = trainer.start_iter
    t1 = time.perf_counter()
    trainer.train()
    t2 = time.perf_counter()
    evaluator = COCOEvaluator(names["val"], output_dir=str(work / "eval"), use_fast_impl=False)
    res = inference_on_dataset(trainer.model, build_detection_test_loader(cfg, names["val"]), evaluator)
    t3 = time.perf_counter()
    if not placement.is_main:  # detectron2 gathers the results on rank 0, which writes the record
        return {"metrics": {}, "rank": placement.rank}
    import math

    metrics, undefined = {}, {}
    for kind in ("bbox", "segm"):
        r = res.get(kind, {})
        for name, key in ((f"{kind}_AP", "AP"), (f"{kind}_AP50", "AP50"), (f"{kind}_AP75", "AP75")):
            metrics[name] = float(r.get(key, float("nan")))
            if math.isnan(metrics[name]):  # detectron2 turns COCOeval's -1 (undefined) into NaN
                undefined[name] = ("COCOeval: undefined (-1), no ground-truth instances to score against"
                                   if kind in res else f"COCOEvaluator returned no {kind} results")
    return {"backend": "detectron2", "metrics": metrics, "undefined_metrics": undefined, "checkpoint": loaded.summary(),
            "resumed_from_iter": start, "iters": cfg.SOLVER.MAX_ITER, "detectron2_config": cfg.dump(),
            **describe_optimizer(trainer.optimizer, p), "final_lrs": sorted({g["lr"] for g in trainer.optimizer.param_groups}),
            "batch": {"global": cfg.SOLVER.IMS_PER_BATCH, "per_device": cfg.SOLVER.IMS_PER_BATCH // placement.world_size,
                      "accumulation": 1, "world_size": placement.world_size, "data_workers": cfg.DATALOADER.NUM_WORKERS},
            "precision": "float16 (detectron2 AMP)" if cfg.SOLVER.AMP.ENABLED else "float32",
            "pyramid": "detectron2 " + ("SimpleFeaturePyramid" if loaded.backbone.info.family == "vit" else "FPN"),
            "timings": {"build_s": t1 - t0, "train_s": t2 - t1, "eval_s": t3 - t2,
                        "iters_per_s": (cfg.SOLVER.MAX_ITER - start) / max(t2 - t1, 1e-9)}}
