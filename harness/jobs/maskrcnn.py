"""Mask R-CNN on COCO-format instances, scored with pycocotools (AP, AP50, AP75; boxes and masks).

Two backends behind one protocol (`params.backend`: auto | detectron2 | torchvision):
- detectron2, when `import detectron2` and `from detectron2 import model_zoo` work (optional install);
- torchvision's `MaskRCNN` otherwise. The harness's backbone goes in a feature-pyramid wrapper: a
  ViTDet-style simple feature pyramid for ViTs (the last block's map at scales 4, 2, 1, 0.5, then
  1x1 and 3x3 convs with channel LayerNorm, plus max-pooled P6), and an FPN over C2-C5 for ResNets
  and over the four stages for Swin.
The record says which backend ran. Training state (model, optimizer, iteration) is saved in the
cell's work directory as plain tensors and resumed with weights_only=True.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from harness.atomic import save_tensors
from harness.datasets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    check_layout,
    open_rgb,
    verify_coco,
)
from harness.device import data_workers
from harness.features import maybe_autocast
from harness.jobs.common import JobResult
from harness.jobs.detection_parts import drop_path, lr_factor, rescale_stage, resolve_schedule, simple_stage
from harness.jobs.optim import describe_optimizer, param_groups


def detectron2_available() -> tuple[bool, str]:
    try:
        import detectron2  # noqa: F401
        from detectron2 import model_zoo  # noqa: F401
    except Exception as e:  # ImportError, or pkg_resources missing with setuptools >= 81
        return False, f"{type(e).__name__}: {e}"
    return True, ""


class PyramidBackbone(nn.Module):
    """The harness Backbone as torchvision detection expects: an OrderedDict of maps and `out_channels`.
    ViTs: `multilevel` (the blocks `vit_levels`, each rescaled, under an FPN: UDI/SelfPatch) or `simple`
    (ViTDet's pyramid on the last block); ResNets and Swin: an FPN over their four stages. The FPN adds a
    max-pooled fifth level, as mmdet's FPN with num_outs 5 and torchvision's LastLevelMaxPool."""

    def __init__(self, backbone, p):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

        self.body, self.out_channels, self.family = backbone, p.out_channels, backbone.info.family
        self.kind = p.pyramid if self.family == "vit" else "stages"
        self.levels = p.blocks_for(backbone.info.depth) if self.family == "vit" else ()
        d, scales = getattr(backbone, "dim", 0), tuple(p.vit_scale_factors)
        if self.kind == "simple":
            self.sfp = nn.ModuleList(simple_stage(d, s, p.out_channels) for s in scales)
            return
        if self.kind == "multilevel":
            self.rescale = nn.ModuleList(rescale_stage(d, s) for s in scales)
            channels = [d] * len(scales)
        else:
            channels = list(backbone.level_channels)
        self.fpn = FeaturePyramidNetwork(channels, p.out_channels, extra_blocks=LastLevelMaxPool())

    def forward(self, x):
        if self.kind == "simple":
            last = self.body.levels(x)[-1]
            maps = [stage(last) for stage in self.sfp]
            out = OrderedDict((str(i), m) for i, m in enumerate(maps))
            out["pool"] = nn.functional.max_pool2d(maps[-1], 1, 2, 0)
            return out
        maps = self.body.levels(x, self.levels) if self.kind == "multilevel" else self.body.levels(x)
        if self.kind == "multilevel":
            maps = [op(m) for op, m in zip(self.rescale, maps)]
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))


class CocoInstances(torch.utils.data.Dataset):
    """COCO instances as torchvision's Mask R-CNN takes them; for training a horizontal flip (p 0.5) and,
    with `crop`, DETR's crop branch of UDI's AutoAugment (with probability crop.prob: the short side resized
    to one of crop.resize_sizes, long side <= max_size, then a crop of absolute size drawn in crop.range,
    boxes and masks cut to it, images without boxes kept). The model's transform then resizes to the
    multi-scale short side, as mmdet's last Resize (override) does."""

    def __init__(self, img_dir: Path, ann_file: Path, train: bool, crop=None):
        from pycocotools.coco import COCO

        self.img_dir, self.train, self.crop = Path(img_dir), train, crop
        self.coco = COCO(str(ann_file))
        self.ids = sorted(self.coco.getImgIds())
        self.cat_ids = sorted(self.coco.getCatIds())
        self.label_of = {c: i + 1 for i, c in enumerate(self.cat_ids)}  # 0 = background

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        img_id = self.ids[i]
        info = self.coco.loadImgs(img_id)[0]
        img = np.asarray(open_rgb(self.img_dir / info["file_name"]), dtype=np.float32) / 255.0
        anns = [a for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=img_id, iscrowd=False)) if a["area"] > 1]
        boxes = torch.tensor(
            [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns],
            dtype=torch.float32,
        ).reshape(-1, 4)
        masks = (
            torch.from_numpy(np.stack([self.coco.annToMask(a) for a in anns]))
            if anns
            else torch.zeros(0, info["height"], info["width"], dtype=torch.uint8)
        )
        labels = torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64)
        x = torch.from_numpy(img).permute(2, 0, 1)
        if self.train and torch.rand(1).item() < 0.5:  # horizontal flip
            x, masks = x.flip(-1), masks.flip(-1)
            w = x.shape[-1]
            boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
        if self.train and self.crop is not None and torch.rand(1).item() < self.crop.prob:
            x, boxes, masks, labels = detr_crop(x, boxes, masks, labels, self.crop)
        return x, {"boxes": boxes, "labels": labels, "masks": masks, "image_id": img_id}


def detr_crop(x, boxes, masks, labels, crop):
    """DETR's crop branch (mmdet Resize -> RandomCrop(absolute_range, allow_negative_crop) as UDI's config):
    the short side resized to a value of crop.resize_sizes (long side <= crop.max_size), then a crop of
    height and width each drawn uniformly in crop.range (clipped to the image); boxes clipped to it, the
    ones left without area dropped."""
    h, w = x.shape[-2:]
    short = crop.resize_sizes[int(torch.randint(len(crop.resize_sizes), (1,)))]
    scale = min(short / min(h, w), crop.max_size / max(h, w))
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    x = nn.functional.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    masks = (
        nn.functional.interpolate(masks[None].float(), size=(nh, nw), mode="nearest")[0].to(torch.uint8)
        if len(masks)
        else torch.zeros(0, nh, nw, dtype=torch.uint8)
    )
    boxes = boxes * torch.tensor([nw / w, nh / h, nw / w, nh / h])
    lo, hi = crop.range
    ch = int(torch.randint(min(nh, lo), min(nh, hi) + 1, (1,)))
    cw = int(torch.randint(min(nw, lo), min(nw, hi) + 1, (1,)))
    y0 = int(torch.randint(0, nh - ch + 1, (1,)))
    x0 = int(torch.randint(0, nw - cw + 1, (1,)))
    x, masks = x[:, y0 : y0 + ch, x0 : x0 + cw], masks[:, y0 : y0 + ch, x0 : x0 + cw]
    boxes = boxes - torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, cw)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, ch)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return x.contiguous(), boxes[keep], masks[keep].contiguous(), labels[keep]


def _collate(batch):
    return tuple(zip(*batch))


def build_torchvision_model(backbone, num_classes: int, p):
    """torchvision's Mask R-CNN with the protocol's pyramid, anchors (one size per level, ratios 0.5, 1, 2),
    multi-scale training sizes, proposals and test thresholds; its heads are mmdet's Shared2FC box head and
    4-conv mask head in shape (TwoMLPHead 1024, MaskRCNNHeads 4 x 256). It tests at `min_size`."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    sizes = tuple((int(s),) for s in p.anchor_sizes)
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    return MaskRCNN(
        PyramidBackbone(backbone, p),
        num_classes=num_classes + 1,
        rpn_anchor_generator=anchors,
        min_size=tuple(p.train_min_sizes) or p.min_size,  # training draws one per image; testing: set_test_size
        max_size=p.max_size,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        rpn_post_nms_top_n_train=p.rpn_post_nms_train,
        box_detections_per_img=p.detections_per_img,
        box_score_thresh=p.score_thresh,
    )


def crop_policy(p):
    """The training crop policy of the protocol (None: no crop branch)."""
    from types import SimpleNamespace

    if p.crop_policy == "none":
        return None
    return SimpleNamespace(
        prob=p.crop_prob, resize_sizes=tuple(p.crop_resize_sizes), range=tuple(p.crop_range), max_size=p.max_size
    )


def set_test_size(model, p) -> None:
    """Evaluate at the protocol's test scale (torchvision otherwise tests at the last training size)."""
    model.transform.min_size = (p.min_size,)


# ---------------------------------------------------------------------------------------------
# The schedule and the record of the optimizer, shared by both backends (the groups: harness.jobs.optim)


def recipe_groups(model, p) -> list[dict]:
    """The AdamW groups of the protocol's optimizer (harness.jobs.optim's rule) for a detection model."""
    return param_groups(
        model,
        lr=p.optimizer.lr,
        weight_decay=p.optimizer.weight_decay,
        layer_decay_rate=p.optimizer.layer_decay_rate,
        backbone_prefix="backbone.",
    )


@torch.no_grad()
def coco_evaluate(model, ds: CocoInstances, batch: int = 2, device: str = "cpu") -> tuple[dict, dict]:
    """(AP metrics in percent, {metric: why it is NaN}); inference in float32 on `device`."""
    from pycocotools import mask as mask_utils
    from pycocotools.cocoeval import COCOeval

    model.eval()
    dets = []
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False, collate_fn=_collate)
    for images, targets in loader:
        for out, t in zip(model([im.to(device) for im in images]), targets):
            out = {k: v.cpu() for k, v in out.items()}
            masks = (out["masks"][:, 0] > 0.5).numpy().astype(np.uint8)
            for box, score, label, m in zip(
                out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist(), masks
            ):
                rle = mask_utils.encode(np.asfortranarray(m))
                rle["counts"] = rle["counts"].decode()
                dets.append(
                    {
                        "image_id": t["image_id"],
                        "category_id": ds.cat_ids[label - 1],
                        "score": score,
                        "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                        "segmentation": rle,
                    }
                )
    result, undefined = {}, {}
    has_gt = len(ds.coco.getAnnIds(iscrowd=False)) > 0
    for iou_type in ("bbox", "segm"):
        names = [f"{iou_type}_AP", f"{iou_type}_AP50", f"{iou_type}_AP75"]
        if not dets and has_gt:  # ground truth but no detection at all: every precision is 0, AP is 0
            result.update(dict.fromkeys(names, 0.0))
            continue
        if not has_gt:
            stats = [-1.0] * 3
        else:
            ev = COCOeval(ds.coco, ds.coco.loadRes([dict(d) for d in dets]), iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            stats = [float(v) for v in ev.stats[:3]]
        for name, v in zip(names, stats):
            # COCOeval writes -1 where AP is undefined (no ground truth to match): NaN with the reason, never 0
            result[name] = v * 100 if v >= 0 else float("nan")
            if v < 0:
                undefined[name] = "COCOeval: undefined (-1), no ground-truth instances to score against"
    result["detections"] = len(dets)
    return result, undefined


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Every optimizer step takes one global batch from a seeded stream that all ranks share -- epoch after
    epoch, a permutation of the training set (each image once per epoch, as mmdet's sampler) -- and each
    rank its own slice of it, in `accumulation` consecutive micro-batches. So 1 process with gradient
    accumulation and N processes see the same global batches, and a resumed run the same as an
    uninterrupted one (the stream is replayed up to the step it resumes at)."""

    def __init__(self, n: int, plan, rank: int, seed: int, start: int, steps: int):
        self.n, self.plan, self.rank, self.seed, self.start, self.steps = n, plan, rank, seed, start, steps
        self.mine = plan.per_device * plan.accumulation

    def _stream(self):
        epoch = 0
        while True:
            yield from torch.randperm(
                self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            ).tolist()
            epoch += 1

    def __iter__(self):
        stream, g = self._stream(), self.plan.global_batch
        for step in range(self.steps):
            idx = [next(stream) for _ in range(g)]
            if step >= self.start:
                yield from idx[self.rank * self.mine : (self.rank + 1) * self.mine]

    def __len__(self):
        return (self.steps - self.start) * self.mine


def _train_torchvision(model, ds, p, work: Path, ctx, schedule: dict) -> tuple[int, int, dict, str, dict]:
    """Train on the cell's device(s): DDP over the cell's processes, the recipe's global batch kept by
    per-device batches and gradient accumulation, bfloat16 autocast on GPUs. Rank 0 saves the state;
    every rank resumes from it. Returns (start step, steps, batch plan, precision)."""
    placement = ctx.placement
    dev, cuda = placement.device, placement.accelerator == "cuda"
    iters = schedule["iters"]
    plan = ctx.batch(p.batch_size)
    precision = "bfloat16" if cuda and p.amp and torch.cuda.is_bf16_supported() else "float32"
    amp = {"float32": None, "bfloat16": torch.bfloat16}[precision]
    if placement.distributed and cuda:  # the pyramid's BatchNorm synchronised over the GPUs, as UDI's SyncBN
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(dev)
    opt = torch.optim.AdamW(recipe_groups(model, p), lr=p.optimizer.lr, betas=tuple(p.optimizer.betas))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, p, schedule))
    state_file = work / "maskrcnn_state.pth"
    start = 0
    if state_file.is_file():
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = int(state["iter"])
    net = model
    if placement.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(
            model, device_ids=[placement.local_rank] if cuda else None, find_unused_parameters=True
        )
    sampler = GlobalBatchSampler(len(ds), plan, placement.rank, p.seed, start, iters)
    workers = data_workers(placement, p.num_workers)
    loader = iter(
        torch.utils.data.DataLoader(
            ds,
            batch_size=plan.per_device,
            sampler=sampler,
            collate_fn=_collate,
            num_workers=workers,
            pin_memory=cuda,
            persistent_workers=workers > 0,
        )
    )
    interval = p.checkpoint_interval
    model.train()
    for it in range(start, iters):
        opt.zero_grad()
        for micro in range(plan.accumulation):
            images, targets = next(loader)
            images = [im.to(dev, non_blocking=cuda) for im in images]
            targets = [{k: v.to(dev) for k, v in t.items() if k != "image_id"} for t in targets]
            sync = micro + 1 == plan.accumulation or not placement.distributed
            with contextlib.nullcontext() if sync else net.no_sync(), maybe_autocast(dev, amp):
                losses = net(images, targets)
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"Mask R-CNN loss is {loss.item()} at iteration {it}: "
                        f"{dict((k, float(v)) for k, v in losses.items())}"
                    )
                (loss / plan.accumulation).backward()
        opt.step()
        sched.step()
        if placement.is_main and ((it + 1) % interval == 0 or it + 1 == iters):
            save_tensors(
                {
                    "iter": it + 1,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                },
                state_file,
            )
    run = {**describe_optimizer(opt, p, schedule), "final_lrs": sorted({g["lr"] for g in opt.param_groups})}
    return start, iters, {**plan.record(), "data_workers": workers, "pin_memory": cuda}, precision, run


def run(cell, ctx) -> dict:
    from harness.models.checkpoints import load_backbone

    reg = ctx.registry
    p = ctx.params
    ds_spec = reg.dataset(cell.dataset, cell.suite)
    root = check_layout(ds_spec)
    for split in ("train", "val"):  # before any training
        verify_coco(ds_spec, root, split)
    work = Path(ctx.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    ok, why = detectron2_available()
    backend = p.backend  # `auto` was resolved when the plan was made: it is part of the cell's identity
    if backend == "auto":
        backend = "detectron2" if ok else "torchvision"
    if backend == "detectron2" and not ok:
        raise RuntimeError(
            f"this cell's backend is detectron2 (its config hash says so), but detectron2 cannot be "
            f"imported here ({why}); run `make install-detectron2` or set backend: torchvision"
        )
    if backend == "detectron2":
        from harness.jobs.maskrcnn_d2 import run_detectron2

        return run_detectron2(cell, reg, p, root, work, ctx)
    t0 = time.perf_counter()
    loaded = load_backbone(
        cell.method, cell.epoch, registry=reg, arch_overrides=drop_path(p, reg, cell.method), kind="maskrcnn"
    )
    tr, va = ds_spec.splits["train"], ds_spec.splits["val"]
    train_ds = CocoInstances(root / tr.img_dir, root / tr.ann_file, train=True, crop=crop_policy(p))
    val_ds = CocoInstances(root / va.img_dir, root / va.ann_file, train=False)
    torch.manual_seed(p.seed)  # the same initial heads on every rank
    model = build_torchvision_model(loaded.backbone, len(train_ds.cat_ids), p)
    schedule = resolve_schedule(p, len(train_ds))
    t1 = time.perf_counter()
    start, iters, batch, precision, optim = _train_torchvision(model, train_ds, p, work, ctx, schedule)
    t2 = time.perf_counter()
    if not ctx.placement.is_main:  # rank 0 scores and writes the record
        return JobResult(metrics={}, info={"rank": ctx.placement.rank})
    set_test_size(model, p)
    metrics, undefined = coco_evaluate(model, val_ds, device=ctx.placement.device)
    t3 = time.perf_counter()
    return JobResult(
        metrics=metrics,
        undefined_metrics=undefined,
        timings={
            "build_s": t1 - t0,
            "train_s": t2 - t1,
            "eval_s": t3 - t2,
            "iters_per_s": (iters - start) / max(t2 - t1, 1e-9),
        },
        info={
            "backend": "torchvision",
            "detectron2_unavailable_because": why or None,
            "checkpoint": loaded.summary(),
            "resumed_from_iter": start,
            "iters": iters,
            "batch": batch,
            "precision": precision,
            **optim,
            "resolved": {
                "params": p.model_dump(mode="json"),
                "pyramid": model.backbone.kind,
                "num_classes": len(train_ds.cat_ids),
                "schedule": schedule,
            },
        },
    )


COCO_TRAIN_IMAGES = 118_287  # COCO 2017 train: what an epoch-based schedule resolves to at paper scale


def _norm_kind(module) -> str:
    """The normalisation inside a head or pyramid, as detectron2 names it: "LN", "BN", or "none"."""
    names = {type(m).__name__ for m in module.modules()}
    if any("LayerNorm" in n for n in names):
        return "LN"
    return "BN" if any("BatchNorm" in n for n in names) else "none"


def recipe_view(cell, reg, ctx, backend: str = "torchvision") -> dict:
    """The recipe this job runs, read back from the torchvision model and training plan it builds (a ViT
    with random weights of the method's architecture; no data, no training) -- what tests/golden/recipes
    compares with the source. `backend="detectron2"`: what detectron2's config decides, read back from the
    config that backend builds, over the parts both share (backbone, pyramid, optimiser groups)."""
    from harness.jobs.optim import NO_DECAY_TOKENS
    from harness.models.archs import build_backbone

    p = ctx.params
    spec = reg.method(cell.method)
    backbone = build_backbone(spec.arch, **{**spec.arch_kwargs, **(drop_path(p, reg, cell.method) or {})})
    model = build_torchvision_model(backbone, 80, p)
    schedule = resolve_schedule(p, COCO_TRAIN_IMAGES)
    heads = model.roi_heads
    multilevel = model.backbone.kind == "multilevel"
    view = {
        "backbone.levels": list(model.backbone.levels) if multilevel else "last",
        "backbone.drop_path": p.drop_path,
        "backbone.attention": "global in every block",  # the checkpoint's own ViT, never re-architected
        "pyramid.type": model.backbone.kind,
        "pyramid.norm": _norm_kind(model.backbone.sfp) if model.backbone.kind == "simple" else None,
        # the ViT's prefix tokens (class, registers) attend with the patches; its blocks are read without the final norm
        "backbone.class_tokens": backbone.info.prefix_tokens if backbone.info.family == "vit" else None,
        "backbone.final_norm": False,
        "pyramid.rescales": list(p.vit_scale_factors),
        "neck.out_channels": model.backbone.out_channels,
        "neck.num_outs": len(p.anchor_sizes),
        "rpn.anchor_sizes": [s[0] for s in model.rpn.anchor_generator.sizes],
        "rpn.aspect_ratios": list(model.rpn.anchor_generator.aspect_ratios[0]),
        "rpn.post_nms_train": p.rpn_post_nms_train,
        "rpn.head_convs": sum(1 for m in model.rpn.head.conv.modules() if isinstance(m, nn.Conv2d)),
        "roi.box_output_size": list(heads.box_roi_pool.output_size),
        "roi.mask_output_size": list(heads.mask_roi_pool.output_size),
        "roi.sampling_ratio": heads.box_roi_pool.sampling_ratio,
        "roi.box_head": "2fc" if type(heads.box_head).__name__ == "TwoMLPHead" else type(heads.box_head).__name__,
        "roi.box_fc": heads.box_head.fc6.out_features,
        "roi.mask_convs": sum(1 for m in heads.mask_head.modules() if isinstance(m, nn.Conv2d)),
        "roi.mask_norm": _norm_kind(heads.mask_head),
        "roi.box_batch": heads.fg_bg_sampler.batch_size_per_image,
        "roi.box_positive_fraction": heads.fg_bg_sampler.positive_fraction,
        "test.score_thresh": heads.score_thresh,
        "test.detections_per_img": heads.detections_per_img,
        "data.train_min_sizes": list(model.transform.min_size),
        "data.max_size": model.transform.max_size,
        "data.test_min_size": p.min_size,
        "data.flip": 0.5,
        "data.crop_policy": p.crop_policy,
        "data.crop_resize_sizes": list(p.crop_resize_sizes),
        "data.crop_range": list(p.crop_range),
        "data.size_divisor": model.transform.size_divisible,
        "data.square_pad": 0,  # torchvision pads a batch to its largest image (a multiple of size_divisor)
        "optimizer.type": "AdamW",
        "optimizer.lr": p.optimizer.lr,
        "optimizer.weight_decay": p.optimizer.weight_decay,
        "optimizer.betas": list(p.optimizer.betas),
        "optimizer.layer_decay_rate": p.optimizer.layer_decay_rate,
        "optimizer.no_decay": "1-D parameters, " + ", ".join(NO_DECAY_TOKENS),
        "schedule.epochs": schedule["epochs"],
        "schedule.step_epochs": list(p.step_epochs),
        "schedule.steps": list(schedule["steps"]),
        "schedule.iters": schedule["iters"],
        "schedule.warmup_iters": schedule["warmup_iters"],
        "schedule.warmup_factor": p.warmup_factor,
        "schedule.gamma": p.gamma,
        "batch.global": p.batch_size,
        "precision": "mixed" if p.amp else "float32",
    }
    if backend == "detectron2":
        from harness.jobs.maskrcnn_d2 import recipe_fields

        view.update(recipe_fields(p, schedule, ctx.placement))
    return view
