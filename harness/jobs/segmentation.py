"""Semantic segmentation jobs on MMSegmentation: `linear` (frozen backbone, BNHead on the last layer,
DINOv2 recipe) and `upernet` (fine-tuned backbone, multi-level features, UPerHead + auxiliary
FCNHead, layer-wise lr decay, iBOT recipe). mmseg's own dataset classes, pipelines and IoUMetric.

The whole resolved mmseg config goes into the record. Training state is saved in the cell's work
directory every `checkpoint_interval` iterations; a requeued job resumes from it.
"""

from __future__ import annotations

import time
from pathlib import Path

from harness.datasets import check_layout, imagenet_norm, verify_segmentation
from harness.device import data_workers
from harness.jobs.common import JobResult

MEAN, STD = imagenet_norm(255)  # mmseg's data preprocessor works on 0-255 pixels
WINDOW_BATCH = 16  # slide inference: windows per forward pass (speed only; the windows are mmseg's)


def _scales(ds, p) -> tuple[tuple, tuple, tuple]:
    """(crop, train scale, test scale): the dataset's own (its `segmentation:` block, as mmseg's dataset
    configs: 512x512 at (2048, 512); Cityscapes 512x1024 at (2048, 1024)), unless the protocol overrides."""
    lay = ds.segmentation
    crop, scale = tuple(p.crop_size or lay.crop_size), tuple(p.train_scale or lay.train_scale)
    return crop, scale, tuple(p.test_scale or scale)


def photometric_where(p, cuda: bool) -> str:
    """Where PhotoMetricDistortion runs: "device" (SDDSegDataPreProcessor), "pipeline" or "off"."""
    if not p.photometric:
        return "off"
    return p.photometric_on if p.photometric_on != "auto" else "device" if cuda else "pipeline"


def _pipelines(ds, p, photometric: str):
    crop, scale, test_scale = _scales(ds, p)
    train = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations"),
        dict(type="RandomResize", scale=scale, ratio_range=tuple(p.ratio_range), keep_ratio=True),
        dict(type="SDDRandomCrop", crop_size=crop, cat_max_ratio=0.75),
        dict(type="RandomFlip", prob=0.5),
    ]
    if photometric == "pipeline":
        train.append(dict(type="PhotoMetricDistortion"))
    train.append(dict(type="PackSegInputs"))
    test = [
        dict(type="LoadImageFromFile"),
        dict(type="Resize", scale=test_scale, keep_ratio=True),
        dict(type="LoadAnnotations"),
        dict(type="PackSegInputs"),
    ]
    return train, test, crop


NO_CAP = 1 << 30  # ResizeShortestEdge's max_size when the long side is free (it takes no None)


def multi_scale_pipeline(ms, crop, test_scale) -> list:
    """mmseg's TestTimeAug over the protocol's scales (and flips): each view is resized from the loaded
    image, annotations loaded after the resize (scored at full resolution, as the single-scale test)."""
    if ms.resize == "setr":  # iBOT's SETR_Resize: the short side never below the crop, the long side free
        resizes = [
            dict(type="ResizeShortestEdge", scale=max(crop[0], round(r * min(test_scale))), max_size=NO_CAP)
            for r in ms.ratios
        ]
    else:
        resizes = [
            dict(type="Resize", scale=(round(test_scale[0] * r), round(test_scale[1] * r)), keep_ratio=True)
            for r in ms.ratios
        ]
    flips = [dict(type="RandomFlip", prob=0.0, direction="horizontal")]
    if ms.flip:
        flips.append(dict(type="RandomFlip", prob=1.0, direction="horizontal"))
    return [
        dict(type="LoadImageFromFile"),
        dict(
            type="TestTimeAug",
            transforms=[resizes, flips, [dict(type="LoadAnnotations")], [dict(type="PackSegInputs")]],
        ),
    ]


def _dataset(ds, root: Path, split: str, pipeline):
    s = ds.splits[split]
    cfg = dict(
        type=ds.mmseg_dataset,
        data_root=str(root),
        data_prefix=dict(img_path=s.img_dir, seg_map_path=s.ann_dir),
        img_suffix=ds.img_suffix,
        seg_map_suffix=ds.seg_map_suffix,
        reduce_zero_label=ds.reduce_zero_label,
        pipeline=pipeline,
        # mmengine serialises the sample list for sharing with workers, behind a gc.collect() that
        # costs ~0.3 s per dataset in a process holding torch: a list of paths needs no sharing
        serialize_data=False,
    )
    if s.split_file:
        cfg["ann_file"] = s.split_file
    return cfg


def build_config(cell, reg, work_dir: Path, ctx, root: Path | None = None) -> dict:
    """The mmseg config of a cell as it runs here, composed of parts (as detectron2's configs/common):
    the model (backbone + the kind's heads), the optimiser and schedule, the data, the runtime. The
    recipe's global batch runs as per-device batches and gradient accumulation over the cell's processes
    (`ctx.batch`); iterations count optimizer steps as in the recipe: with accumulation k, mmengine runs k
    forward passes per step, so its iteration counts are the recipe's times k."""
    kind = cell.config["protocol"]["kind"]
    ds = reg.dataset(cell.dataset, cell.suite)
    root = root or check_layout(ds)
    from harness.models.archs import facts_of_method

    info = facts_of_method(reg.method(cell.method))
    p, cuda = ctx.params, ctx.placement.accelerator == "cuda"
    photometric = photometric_where(p, cuda)
    train_pipe, test_pipe, crop = _pipelines(ds, p, photometric)
    plan = ctx.batch(p.batch_size)
    model, backbone = _model(cell, reg, kind, info, ds, p, crop, photometric)
    optim, schedulers, precision = _optimiser(kind, p, plan.accumulation, cuda, backbone)
    workers = data_workers(ctx.placement, p.num_workers)
    data = _data(ds, root, p, train_pipe, test_pipe, plan.per_device, workers, cuda)
    multi_scale = None
    if p.test.multi_scale is not None:  # a second test after the single-scale one, one image at a time
        pipe = multi_scale_pipeline(p.test.multi_scale, crop, _scales(ds, p)[2])
        val = data["val_dataloader"]
        multi_scale = dict(
            p.test.multi_scale.model_dump(mode="json"),
            dataloader={**val, "batch_size": 1, "dataset": {**val["dataset"], "pipeline": pipe}},
        )
    return dict(
        default_scope="mmseg",
        work_dir=str(work_dir),
        model=model,
        **_launch(kind, ctx.placement),
        sdd_run=dict(
            batch=plan.record(),
            precision=precision,
            data_workers=workers,
            pin_memory=cuda,
            photometric=photometric,
            evaluation_precision=p.test.precision,
            multi_scale=multi_scale,
        ),
        **data,
        optim_wrapper=optim,
        param_scheduler=schedulers,
        **_runtime(kind, p, work_dir, plan.accumulation, ctx.placement),
    )


def _model(cell, reg, kind: str, info, ds, p, crop, photometric: str) -> tuple[dict, dict]:
    """(the segmentor, its backbone part): SDDBackbone, and the heads of the protocol kind."""
    norm = dict(type="SyncBN" if p.sync_bn else "BN", requires_grad=True)
    backbone = dict(
        type="SDDBackbone", method=cell.method, epoch=cell.epoch, registry_root=str(reg.root), protocol_kind=kind
    )
    parts = HEADS[kind](info, p, ds.num_classes, norm, backbone)
    if p.test.precision != "float32":  # evaluation: the backbone under autocast, the heads in float32
        backbone["eval_autocast"] = p.test.precision
    model = dict(
        type="SDDEncoderDecoder",
        window_batch=WINDOW_BATCH,
        data_preprocessor=dict(
            type="SDDSegDataPreProcessor",
            mean=MEAN,
            std=STD,
            bgr_to_rgb=True,
            pad_val=0,
            seg_pad_val=255,
            size=crop,
            seed=p.seed,
            photometric=photometric == "device",
        ),
        backbone=backbone,
        train_cfg=dict(),
        test_cfg=_test_mode(ds, p, crop),
        **parts,
    )
    return model, backbone


def _ce(weight: float = 1.0) -> dict:
    return dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=weight)


def _linear_heads(info, p, num_classes: int, norm: dict, backbone: dict) -> dict:
    """DINOv2's linear probe: a frozen backbone's last layer, BatchNorm + 1x1 conv."""
    backbone.update(mode="last", frozen=True)
    d = info.dim
    return dict(
        decode_head=dict(
            type="BNHead",
            in_channels=[d],
            in_index=[0],
            input_transform="resize_concat",
            channels=d,
            dropout_ratio=p.head.dropout,
            num_classes=num_classes,
            norm_cfg=norm,
            align_corners=False,
            loss_decode=_ce(),
        )
    )


def _upernet_heads(info, p, num_classes: int, norm: dict, backbone: dict) -> dict:
    """iBOT's UperNet: a fine-tuned backbone's four levels (ViT: Feature2Pyramid), UPerHead + FCN auxiliary."""
    over = {"drop_path_rate": p.drop_path} if info.family in ("vit", "swin") else None
    backbone.update(mode="levels", frozen=False, arch_overrides=over)
    if info.family == "vit":
        backbone["levels"] = list(p.blocks_for(info.depth))
    chans = list(info.level_channels)
    dh, ah = p.decode_head, p.auxiliary_head
    parts = dict(
        decode_head=dict(
            type="UPerHead",
            in_channels=chans,
            in_index=[0, 1, 2, 3],
            pool_scales=tuple(dh.pool_scales),
            channels=dh.channels,
            dropout_ratio=dh.dropout,
            num_classes=num_classes,
            norm_cfg=norm,
            align_corners=False,
            loss_decode=_ce(),
        ),
        auxiliary_head=dict(
            type="FCNHead",
            in_channels=chans[ah.in_index],
            in_index=ah.in_index,
            channels=ah.channels,
            num_convs=ah.num_convs,
            concat_input=False,
            dropout_ratio=0.1,
            num_classes=num_classes,
            norm_cfg=norm,
            align_corners=False,
            loss_decode=_ce(ah.loss_weight),
        ),
    )
    if info.family == "vit":
        parts["neck"] = dict(type="Feature2Pyramid", embed_dim=info.dim, rescales=list(p.neck_rescales), norm_cfg=norm)
    return parts


def _semfpn_heads(info, p, num_classes: int, norm: dict, backbone: dict) -> dict:
    """UDI's / SelfPatch's Semantic FPN: a fine-tuned backbone's four levels (ViT: the blocks `vit_levels` at
    stride 16, as UDI's backbone returns them, not rescaled) under mmseg's FPN neck and FPNHead."""
    over = {"drop_path_rate": p.drop_path} if info.family in ("vit", "swin") else None
    backbone.update(mode="levels", frozen=False, arch_overrides=over)
    if info.family == "vit":
        backbone["levels"] = list(p.blocks_for(info.depth))
    chans = [info.dim] * len(p.vit_levels) if info.family == "vit" else list(info.level_channels)
    width, dh = p.neck.out_channels, p.decode_head
    return dict(
        neck=dict(type="FPN", in_channels=chans, out_channels=width, num_outs=len(chans)),
        decode_head=dict(
            type="FPNHead",
            in_channels=[width] * len(chans),
            in_index=list(range(len(chans))),
            feature_strides=list(dh.feature_strides),
            channels=dh.channels,
            dropout_ratio=dh.dropout,
            num_classes=num_classes,
            norm_cfg=norm,
            align_corners=False,
            loss_decode=_ce(),
        ),
    )


HEADS = {"linear": _linear_heads, "upernet": _upernet_heads, "semfpn": _semfpn_heads}


def _test_mode(ds, p, crop) -> dict:
    """Whole-image or sliding-window evaluation; the window is the dataset's (its segmentation.slide_crop,
    else its crop), strided by 2/3 unless the dataset or the protocol says otherwise."""
    if p.test.mode != "slide":
        return dict(mode="whole")
    lay = ds.segmentation
    win = tuple(p.test.crop_size or lay.slide_crop or crop)
    stride = tuple(p.test.stride or lay.slide_stride or (round(c * 2 / 3) for c in win))
    return dict(mode="slide", crop_size=win, stride=stride)


def _optimiser(kind: str, p, k: int, cuda: bool, backbone: dict) -> tuple[dict, list, object]:
    """(optim wrapper, schedulers, precision): AdamW; a fine-tuned backbone's groups by the harness's one
    rule (harness.jobs.optim: no decay on 1-D parameters and tokens, ViT layer decay); linear warm-up,
    then poly decay; the linear probe's frozen backbone in low precision, fine-tuning under mmengine's AMP."""
    opt, sch = p.optimizer, p.schedule
    iters, warm = sch.iters * k, sch.warmup_iters * k
    schedulers = []
    if warm:
        schedulers.append(
            dict(type="LinearLR", start_factor=sch.warmup_ratio, by_epoch=False, begin=0, end=min(warm, iters))
        )
    schedulers.append(
        dict(type="PolyLR", eta_min=sch.min_lr, power=sch.power, begin=min(warm, iters), end=iters, by_epoch=False)
    )
    optim = dict(
        type="OptimWrapper",
        accumulative_counts=k,
        optimizer=dict(type="AdamW", lr=opt.lr, weight_decay=opt.weight_decay, betas=tuple(opt.betas)),
    )
    if not backbone["frozen"]:
        optim.update(
            constructor="SDDParamGroupsConstructor",
            paramwise_cfg=dict(layer_decay_rate=getattr(opt, "layer_decay_rate", 1.0), backbone_prefix="backbone."),
        )
    precision = p.precision or ("bfloat16" if cuda and _bf16() else "float16" if cuda else "float32")
    if backbone["frozen"]:  # the frozen backbone alone runs in low precision (no_grad + autocast); the head in float32
        if precision != "float32":
            backbone["autocast"] = precision
        precision = {"backbone": precision, "head": "float32"}
    elif precision != "float32":  # fine-tuning: mmengine's AMP, autocast forward, (scaled) float32 master weights
        optim.update(
            type="AmpOptimWrapper", dtype=precision, **({"loss_scale": "dynamic"} if precision == "float16" else {})
        )
    return optim, schedulers, precision


def _data(ds, root: Path, p, train_pipe, test_pipe, per_device: int, workers: int, cuda: bool) -> dict:
    def loader(split, pipe, bs, shuffle):
        return dict(
            batch_size=bs,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=cuda,
            sampler=dict(type="InfiniteSampler" if shuffle else "DefaultSampler", shuffle=shuffle),
            dataset=_dataset(ds, root, split, pipe),
        )

    return dict(
        train_dataloader=loader("train", train_pipe, per_device, True),
        val_dataloader=loader("val", test_pipe, p.val_batch_size, False),
        val_evaluator=dict(type="SDDIoUMetric", iou_metrics=["mIoU"]),
    )


def _launch(kind: str, placement) -> dict:
    """A multi-process cell: mmengine's `pytorch` launcher (the process group is already up:
    harness.device.init_distributed)."""
    if not placement.distributed:
        return {}
    # a fine-tuned backbone has parameters no loss reaches (e.g. a ViT's final norm when UperNet reads
    # intermediate blocks): DDP must not wait for their gradients
    unused = kind != "linear"
    if (
        placement.accelerator != "cuda"
    ):  # DDP of a CPU module takes no device ids (mmengine's default passes LOCAL_RANK)
        return dict(
            launcher="pytorch",
            model_wrapper_cfg=dict(type="MMDistributedDataParallel", device_ids=None, find_unused_parameters=unused),
        )
    return dict(launcher="pytorch", find_unused_parameters=unused)


def _runtime(kind: str, p, work_dir: Path, k: int, placement) -> dict:
    iters = p.schedule.iters * k
    skip = ("backbone.",) if kind == "linear" else ()  # the frozen backbone is not part of the resume state
    return dict(
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=iters, val_interval=iters + 1),
        val_cfg=dict(type="ValLoop"),
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=p.log_interval * k, log_metric_by_epoch=False),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=None,
            sampler_seed=dict(type="DistSamplerSeedHook"),
        ),
        custom_hooks=[
            dict(type="SDDFiniteLossHook"),
            dict(
                type="SDDResumeHook",
                path=str(work_dir / "resume.pth"),
                interval=p.checkpoint_interval * k,
                skip_prefixes=skip,
            ),
        ],
        env_cfg=dict(
            cudnn_benchmark=False,
            mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
            dist_cfg=dict(backend=placement.backend or "nccl"),
        ),
        # INFO: the loss, lr and iteration lines and the final mIoU go to the cell's own log (a file, never the
        # terminal); mmengine also keeps its own copy under the work folder (the record's `library_logs`)
        log_processor=dict(by_epoch=False),
        log_level="INFO",
        randomness=dict(seed=p.seed),
        visualizer=dict(type="SegLocalVisualizer", vis_backends=[dict(type="LocalVisBackend")]),
    )


def _bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def run(cell, ctx) -> dict:
    from harness.jobs import mm_adapter
    from harness.jobs.mm_modules import SDDResumeHook  # importing it registers the harness's modules with mmseg

    reg = ctx.registry
    work = Path(ctx.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ds = reg.dataset(cell.dataset, cell.suite)
    root = check_layout(ds)
    data_check = {split: verify_segmentation(ds, root, split) for split in ("train", "val")}  # before any training
    t_check = time.perf_counter()
    cfg = build_config(cell, reg, work, ctx)
    run_info = cfg.pop("sdd_run")
    with mm_adapter.on_device(ctx.placement.accelerator):
        runner = mm_adapter.runner_from_config(cfg)
        t_build = time.perf_counter()
        resume = mm_adapter.hook_of(runner, SDDResumeHook)
        runner.train()
        t_train = time.perf_counter()
        metrics = runner.val()
        t_val = time.perf_counter()
        if run_info.get("multi_scale"):
            metrics_ms, _ = _prediction(multi_scale_val(runner, run_info["multi_scale"]["dataloader"]))
            metrics.update({_ms(k): v for k, v in metrics_ms.items()})
        t_ms = time.perf_counter()
    k = run_info["batch"]["accumulation"]
    net = mm_adapter.unwrap(runner.model)
    backbone = net.backbone
    metrics, prediction = _prediction(metrics)
    summary = {k: float(v) for k, v in metrics.items() if not k.startswith("IoU")}
    per_class = {k[4:]: float(v) for k, v in metrics.items() if k.startswith("IoU.")}
    per_class_ms = {k[7:]: float(v) for k, v in metrics.items() if k.startswith("IoU_ms.")}
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    data_share = _data_share(runner.message_hub)
    lrs = sorted({round(g.get("initial_lr", g["lr"]), 12) for g in runner.optim_wrapper.optimizer.param_groups})
    return JobResult(
        metrics={**summary, "IoU": per_class, **({"IoU_ms": per_class_ms} if per_class_ms else {})},
        library_logs=[str(mm_adapter.library_log(runner))],
        timings={
            "data_check_s": t_check - t0,
            "build_s": t_build - t_check,
            "train_s": t_train - t_build,
            "val_s": t_val - t_train,
            **({"val_multi_scale_s": t_ms - t_val} if run_info.get("multi_scale") else {}),
            "iters_per_s": (cfg["train_cfg"]["max_iters"] - resume.resumed_from) / k / max(t_train - t_build, 1e-9),
            "data_wait_share": data_share,
            "val_images": len(runner.val_dataloader.dataset),
        },
        info={
            "data_check": data_check,
            "prediction": prediction,
            "checkpoint": backbone.loaded,
            "backbone_frozen": backbone.frozen,
            "trainable_params": trainable,
            "resumed_from_iter": resume.resumed_from // k,
            "initial_lrs": lrs,
            "iters": cfg["train_cfg"]["max_iters"] // k,
            "forward_iters": cfg["train_cfg"]["max_iters"],
            **run_info,
            "mmseg_config": _jsonable(cfg),
        },
    )


def _ms(name: str) -> str:
    """The multi-scale test's name of a metric: mIoU -> mIoU_ms, IoU.<class> -> IoU_ms.<class>."""
    head, dot, rest = name.partition(".")
    return f"{head}_ms{dot}{rest}"


def multi_scale_val(runner, loader_cfg: dict) -> dict:
    """The trained model tested again over several scales (+ flips) with mmseg's SegTTAModel (softmax
    scores averaged over the views), scored by the same metric as the single-scale test; on every rank
    of a multi-process cell, each on its shard (mmengine's evaluator gathers)."""
    import torch
    from mmseg.models import SegTTAModel

    from harness.jobs import mm_adapter

    tta = SegTTAModel(module=mm_adapter.unwrap(runner.model))
    loader = runner.build_dataloader(loader_cfg)
    evaluator = runner.build_evaluator(dict(type="SDDIoUMetric", iou_metrics=["mIoU"]))
    evaluator.dataset_meta = loader.dataset.metainfo
    tta.eval()
    with torch.no_grad():
        for batch in loader:
            evaluator.process(data_samples=tta.test_step(batch), data_batch=batch)
    return evaluator.evaluate(len(loader.dataset))


def _prediction(metrics: dict) -> tuple[dict, dict]:
    """(the metrics, how the predictions spread over the classes): a probe that predicts one class almost
    everywhere is named in the record and in the cell log."""
    prediction = {k[len("_pred.") :]: v for k, v in metrics.items() if k.startswith("_pred.")}
    metrics = {k: v for k, v in metrics.items() if not k.startswith("_pred.")}
    if prediction.get("dominant_share", 0) >= DEGENERATE_SHARE:
        prediction["degenerate"] = (
            f"predicts '{prediction['dominant_class']}' on "
            f"{100 * prediction['dominant_share']:.1f}% of the validation pixels"
        )
        print(f"warning: the probe {prediction['degenerate']}")
    return metrics, prediction


# a probe whose predictions are this share of one class is a (near-)constant predictor
DEGENERATE_SHARE = 0.99


def _data_share(hub) -> float | None:
    """The share of training iterations' time spent waiting for data (mmengine's IterTimerHook: data_time
    over time, averaged over the iterations this run trained)."""
    try:
        data, total = hub.get_scalar("train/data_time").mean(), hub.get_scalar("train/time").mean()
    except KeyError:
        return None
    return float(data / total) if total > 0 else None


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x if isinstance(x, (str, int, float, bool)) or x is None else str(x)


def recipe_view(cell, reg, ctx) -> dict:
    """The recipe the job will run, read back from the mmseg config it builds (no data, no training): the
    values a recipe test compares with a transcription of the source (tests/golden/recipes/)."""
    from harness.jobs.optim import NO_DECAY_TOKENS

    cfg = build_config(cell, reg, Path("/nonexistent/work"), ctx, root=Path("/data"))
    run, model, optim = cfg["sdd_run"], cfg["model"], cfg["optim_wrapper"]
    k, backbone = run["batch"]["accumulation"], model["backbone"]
    levels = backbone.get("levels") or "last"
    from harness.models.archs import facts_of_method

    facts = facts_of_method(reg.method(cell.method))
    decode = {key: v for key, v in model["decode_head"].items() if key in HEAD_FIELDS}
    pw = optim.get("paramwise_cfg") or {}
    train = {t["type"]: t for t in cfg["train_dataloader"]["dataset"]["pipeline"]}
    test = {t["type"]: t for t in cfg["val_dataloader"]["dataset"]["pipeline"]}
    aux = model.get("auxiliary_head") or {}
    scheds = cfg["param_scheduler"]
    view = {
        "optimizer.type": optim["optimizer"]["type"],
        "optimizer.lr": optim["optimizer"]["lr"],
        "optimizer.weight_decay": optim["optimizer"]["weight_decay"],
        "optimizer.betas": list(optim["optimizer"]["betas"]),
        "optimizer.layer_decay_rate": pw.get("layer_decay_rate", 1.0),
        "optimizer.no_decay": ("1-D parameters, " + ", ".join(NO_DECAY_TOKENS)) if pw else "none",
        "schedule.iters": cfg["train_cfg"]["max_iters"] // k,
        "schedule.policy": scheds[-1]["type"],
        "schedule.power": scheds[-1]["power"],
        "schedule.min_lr": scheds[-1]["eta_min"],
        "schedule.warmup_iters": scheds[0]["end"] // k if len(scheds) > 1 else 0,
        "schedule.warmup_ratio": scheds[0]["start_factor"] if len(scheds) > 1 else None,
        "batch.global": run["batch"]["global"],
        "backbone.frozen": backbone["frozen"],
        "backbone.levels": levels,
        "backbone.drop_path": (backbone.get("arch_overrides") or {}).get("drop_path_rate", 0.0),
        # multi-level ViT features: blocks read without the final norm, the prefix tokens attending with the patches
        "backbone.out_norm": "none" if backbone["mode"] == "levels" and facts.family == "vit" else None,
        "backbone.class_tokens": facts.prefix_tokens
        if backbone["mode"] == "levels" and facts.family == "vit"
        else None,
        "neck.type": (model.get("neck") or {}).get("type"),
        "neck.out_channels": (model.get("neck") or {}).get("out_channels"),
        "neck.rescales": (model.get("neck") or {}).get("rescales"),
        "neck.num_outs": (model.get("neck") or {}).get("num_outs"),
        **{f"decode_head.{key}": v for key, v in decode.items()},
        "auxiliary_head.loss_weight": (aux.get("loss_decode") or {}).get("loss_weight"),
        "auxiliary_head.in_index": aux.get("in_index"),
        "auxiliary_head.channels": aux.get("channels"),
        "auxiliary_head.num_convs": aux.get("num_convs"),
        "data.crop_size": list(train["SDDRandomCrop"]["crop_size"]),
        "data.train_scale": list(train["RandomResize"]["scale"]),
        "data.ratio_range": list(train["RandomResize"]["ratio_range"]),
        "data.cat_max_ratio": train["SDDRandomCrop"]["cat_max_ratio"],
        "data.flip": train["RandomFlip"]["prob"],
        "data.photometric": run["photometric"] != "off",
        "test.mode": model["test_cfg"]["mode"],
        # the single-scale test: resized keep-ratio to the dataset's scale, no flip (a TestTimeAug is separate)
        "test.resize": list(test["Resize"]["scale"]) if "Resize" in test else None,
        "test.keep_ratio": test["Resize"]["keep_ratio"] if "Resize" in test else None,
        "test.flip": "RandomFlip" in test,
        "test.crop_size": list(model["test_cfg"].get("crop_size") or []) or None,
        "test.stride": list(model["test_cfg"].get("stride") or []) or None,
        **_multi_scale_view(run.get("multi_scale")),
        # what the job picks on GPUs (this view is built on the CPU, where it runs float32)
        "precision": ctx.params.precision or ("mixed, frozen backbone only" if backbone["frozen"] else "mixed"),
    }
    return {key: _plain(v) for key, v in view.items() if v is not None}


def _multi_scale_view(ms: dict | None) -> dict:
    if not ms:
        return {}
    return {"test.ms_ratios": list(ms["ratios"]), "test.ms_flip": ms["flip"], "test.ms_resize": ms["resize"]}


HEAD_FIELDS = ("type", "channels", "dropout_ratio", "pool_scales", "in_index", "feature_strides", "input_transform")


def _plain(v):
    """Tuples as lists (YAML has no tuples), the rest as it is."""
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v
