"""End-to-end fine-tuning with a new classification head: UDI's ImageNet fine-tuning (BEiT's recipe: layer-wise
lr decay, a cosine per step), transfer learning (DeiT's recipe: a cosine per epoch, repeated augmentation) and
low-shot fine-tuning (iBOT's: from the first layer of the method's projection head, on SimCLRv2's 1% / 10%
lists). One training loop; the three recipes differ only in their protocol's parameters.

The whole backbone trains (drop path as the recipe says) with the head on its image-level embedding (the class
token after the final norm; the global average pool for models without one). AdamW through the harness's one
optimiser rule (harness.jobs.optim: no decay on 1-D parameters and tokens, BEiT's layer decay); timm's
create_transform (RandAugment, colour jitter, random erasing), Mixup / CutMix with label smoothing, its soft-target
loss and its RepeatAugSampler (DeiT's RASampler) — the libraries the sources call, never re-written. float16
autocast with a gradient scaler on GPUs, as the sources' torch.cuda.amp + NativeScaler. DDP over the cell's
processes; the recipe's global batch kept by per-device batches and gradient accumulation.

Progress is saved after every epoch (finetune_state.pth, atomically, read back with weights_only=True): a cell
stopped mid-run resumes from its last finished epoch with the same data order (the sampler's order is a function
of the epoch) and the same learning rates. Validated every `val_every` epochs and after the last: `top1` / `top5`
are the last epoch's, `top1_best` the best validated epoch's (the sources' `max_accuracy`).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.atomic import save_tensors
from harness.datasets import DatasetError, check_layout, open_rgb, read_cifar, root_of
from harness.device import DeviceError, data_workers
from harness.jobs.common import JobResult

STATE_FILE = "finetune_state.pth"


def normalization(p) -> tuple[tuple[float, ...], tuple[float, ...]]:
    from timm.data.constants import (
        IMAGENET_DEFAULT_MEAN,
        IMAGENET_DEFAULT_STD,
        IMAGENET_INCEPTION_MEAN,
        IMAGENET_INCEPTION_STD,
    )

    if p.augment.normalize == "inception":
        return IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
    return IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


def _posterize(img, bits_to_keep, **_):
    """timm's posterize op, with 0 bits kept giving the black image it gave when the sources ran: RandAugment's
    increasing posterize keeps 4 - int(m / 10 x 4) bits, 0 at magnitude 10 (rand-m9-mstd0.5 reaches it for about
    2 % of the draws), and Pillow 13 (this stack) refuses 0 bits where older Pillow returned all zeros."""
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _keep_posterize_total() -> None:
    from timm.data import auto_augment

    for name, op in list(auto_augment.NAME_TO_OP.items()):
        if op is auto_augment.posterize:
            auto_augment.NAME_TO_OP[name] = _posterize


def transforms(p):
    """(train, eval) transforms: timm's create_transform as the sources call it, and resize + centre crop."""
    from timm.data import create_transform
    from torchvision import transforms as T

    _keep_posterize_total()

    a = p.augment
    mean, std = normalization(p)
    train = create_transform(
        input_size=a.input_size,
        is_training=True,
        color_jitter=a.color_jitter,
        auto_augment=a.auto_augment,
        interpolation=a.interpolation,
        re_prob=a.reprob,
        re_mode=a.remode,
        re_count=a.recount,
        mean=mean,
        std=std,
    )
    mode = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}[p.eval_interpolation]
    evaluation = T.Compose(
        [T.Resize(p.eval_resize, interpolation=mode), T.CenterCrop(a.input_size), T.ToTensor(), T.Normalize(mean, std)]
    )
    return train, evaluation


def released_size(ds, split: str, n: int) -> None:
    """A split whose dataset file states its released size (`images`) must have it: a partial copy of ImageNet or
    CIFAR would give a fine-tuned accuracy that is not the protocol's, without any other sign."""
    expected = ds.splits[split].images
    if expected is not None and n != expected:
        raise DatasetError(
            f"dataset '{ds.name}' split '{split}': {n} images under {root_of(ds)}, but the released split has "
            f"{expected} (images: {expected} in {ds.source or 'the dataset file'}); a partial copy gives another "
            "number: complete it, or point a suite's data_root at it for a run that is not the protocol's"
        )


def datasets(ds, p):
    """(train, val, number of classes) of the cell's dataset: an ImageNet folder (or a labelled subset of its
    train split), CIFAR's batches, or a fine-grained dataset's released layout; each split of its released size
    where the dataset file states it."""
    train, val, classes = _read_splits(ds, p)
    released_size(ds, p.train_split, len(train))
    released_size(ds, "val", len(val))
    return train, val, classes


def _read_splits(ds, p):
    from harness.jobs.linear_cls import ArrayImages
    from harness.jobs.lowshot import FileImages, labelled_subset

    train_tf, eval_tf = transforms(p)
    if ds.kind in ("cifar10", "cifar100"):
        if p.train_split != "train":
            raise DatasetError(f"dataset '{ds.name}': CIFAR has no split '{p.train_split}' (train and val only)")
        (xtr, ytr), (xva, yva) = read_cifar(ds, "train"), read_cifar(ds, "val")
        classes = ds.num_classes or int(max(ytr.max(), yva.max())) + 1
        return ArrayImages(xtr, ytr, train_tf), ArrayImages(xva, yva, eval_tf), classes
    if ds.kind == "imagenet":
        from torchvision.datasets import ImageFolder

        root = check_layout(ds, splits=("val",))
        val = ImageFolder(str(root / ds.splits["val"].img_dir), transform=eval_tf, loader=open_rgb)
        if p.train_split == "train":
            train = ImageFolder(str(root / ds.splits["train"].img_dir), transform=train_tf, loader=open_rgb)
            if train.classes != val.classes:
                raise DatasetError(f"{root}: the val classes are not the train classes")
            return train, val, len(train.classes)
        _, samples, classes = labelled_subset(ds, p.train_split)
        if list(classes) != list(val.classes):
            raise DatasetError(f"{root}: the val classes are not the train classes")
        return FileImages(samples, train_tf), val, len(classes)
    from harness.datasets import classification_samples

    train_samples, classes = classification_samples(ds, p.train_split)
    val_samples, val_classes = classification_samples(ds, "val")
    if val_classes != classes:
        raise DatasetError(f"dataset '{ds.name}': {classes} classes in {p.train_split} but {val_classes} in val")
    return FileImages(train_samples, train_tf), FileImages(val_samples, eval_tf), classes


class Classifier(nn.Module):
    """The backbone's image-level embedding (`Backbone.embed`) into a head."""

    def __init__(self, backbone, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.embed(x))


def build_head(p, dim: int, classes: int, projection: dict | None) -> nn.Module:
    """A new linear layer (timm ViT's head init: truncated normal, std 0.02, bias 0, x head_init_scale), after
    the method's own projection layer + GELU for `head: projection` (iBOT's ClassProjHead, finetune_layer 1)."""
    torch.manual_seed(p.seed)
    layers: list[nn.Module] = []
    width = dim
    if p.head == "projection":
        assert projection is not None
        w, b = projection["weight"], projection["bias"]
        if w.shape[1] != dim:
            from harness.models.checkpoints import CheckpointError

            raise CheckpointError(
                f"the method's projection layer (projection_head) takes {w.shape[1]} inputs, the backbone gives {dim}"
            )
        first = nn.Linear(dim, w.shape[0], bias=b is not None)
        with torch.no_grad():
            first.weight.copy_(w.float())
            if b is not None:
                first.bias.copy_(b.float())
        layers += [first, nn.GELU()]
        width = w.shape[0]
    last = nn.Linear(width, classes)
    nn.init.trunc_normal_(last.weight, std=0.02)
    nn.init.zeros_(last.bias)
    with torch.no_grad():
        last.weight.mul_(p.head_init_scale)
        last.bias.mul_(p.head_init_scale)
    return nn.Sequential(*layers, last) if layers else last


def step_lr(p, lr: float, it: int, steps_per_epoch: int) -> float:
    """BEiT's cosine_scheduler, the value of iteration `it` (UDI eval_finetuning/utils_for_finetuning.py): a linear
    warm-up from warmup_lr over warmup_epochs (np.linspace: it reaches lr at the warm-up's last step), then a
    cosine from lr to min_lr over the remaining steps."""
    s = p.schedule
    warm = s.warmup_epochs * steps_per_epoch
    if it < warm:
        return s.warmup_lr + (lr - s.warmup_lr) * (it / (warm - 1) if warm > 1 else 1.0)
    total = p.epochs * steps_per_epoch - warm
    return s.min_lr + 0.5 * (lr - s.min_lr) * (1 + math.cos(math.pi * (it - warm) / max(total, 1)))


def epoch_scheduler(p, opt, lr: float):
    """timm's CosineLRScheduler as DeiT's create_scheduler builds it (cosine over the epochs, warm-up from
    warmup_lr, floor min_lr). It scales each group by its `lr_scale` itself, so the groups start at the base lr."""
    from timm.scheduler import CosineLRScheduler

    for g in opt.param_groups:
        g["lr"] = lr
        g.pop("initial_lr", None)
    s = p.schedule
    return CosineLRScheduler(
        opt,
        t_initial=p.epochs,
        lr_min=s.min_lr,
        warmup_lr_init=s.warmup_lr,
        warmup_t=s.warmup_epochs,
        cycle_limit=1,
        t_in_epochs=True,
    )


def train_sampler(train_set, p, placement):
    from timm.data.distributed_sampler import RepeatAugSampler

    if p.augment.repeated_aug > 1:
        return RepeatAugSampler(
            train_set, num_replicas=placement.world_size, rank=placement.rank, num_repeats=p.augment.repeated_aug
        )
    return torch.utils.data.DistributedSampler(
        train_set, num_replicas=placement.world_size, rank=placement.rank, shuffle=True, seed=p.seed
    )


@torch.no_grad()
def evaluate(model, loader, device, autocast, distributed: bool = False) -> tuple[float, float]:
    """(top-1, top-5) accuracy in percent over the loader; with `distributed`, each process's loader holds its
    own share of the split (`val_shard`) and the counts are summed over the processes, so every GPU of the cell
    evaluates and every process gets the whole split's accuracy."""
    from harness.features import maybe_autocast

    model.eval()
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # correct top-1, correct top-5, images
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with maybe_autocast(device, autocast):
            logits = model(x).float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        counts += torch.stack(
            [(top[:, 0] == y).sum(), (top == y[:, None]).any(dim=1).sum(), torch.tensor(len(y), device=y.device)]
        ).to(counts)
    if distributed:
        torch.distributed.all_reduce(counts)
    c1, c5, n = counts.tolist()
    return 100.0 * c1 / n, 100.0 * c5 / n


def val_shard(val_set, placement):
    """This process's share of the evaluation split: every world_size-th image from its rank, none twice (the
    sources evaluate the whole split on every GPU; a DistributedSampler would pad with repeats)."""
    if not placement.distributed:
        return val_set
    return torch.utils.data.Subset(val_set, range(placement.rank, len(val_set), placement.world_size))


def _load_state(path: Path, model, opt, scaler) -> dict:
    if not path.is_file():
        return {"epoch": 0, "best": -math.inf, "best_epoch": 0, "history": []}
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return {k: state[k] for k in ("epoch", "best", "best_epoch", "history")}


def _criterion(p):
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    a = p.augment
    if a.mixup > 0 or a.cutmix > 0:
        return SoftTargetCrossEntropy()  # Mixup's targets carry the label smoothing
    if a.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=a.smoothing)
    return nn.CrossEntropyLoss()


def _mixup(p, classes: int):
    from timm.data import Mixup

    a = p.augment
    if not (a.mixup > 0 or a.cutmix > 0):
        return None
    return Mixup(
        mixup_alpha=a.mixup,
        cutmix_alpha=a.cutmix,
        prob=a.mixup_prob,
        switch_prob=a.switch_prob,
        mode=a.mixup_mode,
        label_smoothing=a.smoothing,
        num_classes=classes,
    )


@dataclass
class Training:
    """What one fine-tuning cell trains with: its data, model, optimiser, schedule and precision."""

    train_set: Any
    val_set: Any
    classes: int
    loaded: Any
    model: nn.Module
    plan: Any
    sampler: Any
    loader: Any
    val_loader: Any
    steps_per_epoch: int
    lr: float
    opt: Any
    groups: list  # each group's peak lr (lr x its layer-decay scale) and decay, before any schedule
    sched: Any
    scaler: Any
    precision: str
    autocast: Any
    workers: int


def _prepare(cell, ctx) -> Training:
    from harness.jobs.detection_parts import drop_path
    from harness.jobs.optim import describe_groups, param_groups
    from harness.models.checkpoints import load_backbone, projection_layer

    p, reg, placement = ctx.params, ctx.registry, ctx.placement
    ds = reg.dataset(cell.dataset, cell.suite)
    train_set, val_set, classes = datasets(ds, p)
    cuda = placement.accelerator == "cuda"
    precision = p.precision or ("float16" if cuda else "float32")
    loaded = load_backbone(
        cell.method, cell.epoch, registry=reg, arch_overrides=drop_path(p, reg, cell.method), kind="finetune"
    )
    projection = projection_layer(cell.method, cell.epoch, registry=reg) if p.head == "projection" else None
    model = Classifier(loaded.backbone, build_head(p, loaded.backbone.dim, classes, projection)).to(placement.device)
    plan = ctx.batch(p.batch_size)
    if (p.augment.mixup > 0 or p.augment.cutmix > 0) and plan.per_device % 2:
        raise DeviceError(
            f"Mixup / CutMix mixes pairs within a device's batch: the per-device batch {plan.per_device} must be even "
            f"(global batch {p.batch_size} over {plan.recipe_devices} device(s) in the protocol's resources)"
        )
    sampler = train_sampler(train_set, p, placement)
    workers = data_workers(placement, p.num_workers)
    common = dict(num_workers=workers, pin_memory=cuda, persistent_workers=workers > 0)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=plan.per_device, sampler=sampler, drop_last=True, **common
    )
    steps_per_epoch = len(loader) // plan.accumulation  # full global batches only, as the sources' drop_last
    if steps_per_epoch < 1:
        raise DatasetError(
            f"dataset '{ds.name}' split '{p.train_split}': {len(train_set)} images give no full global batch of "
            f"{plan.global_batch} per epoch (the sampler yields {len(sampler)} per process)"
        )
    lr = p.optimizer.lr * (plan.global_batch / 512 if p.optimizer.lr_scaling == "batch/512" else 1.0)
    groups = param_groups(
        model, lr=lr, weight_decay=p.optimizer.weight_decay, layer_decay_rate=p.optimizer.layer_decay_rate
    )
    opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(p.optimizer.betas), eps=p.optimizer.eps)
    groups_run = describe_groups(opt)
    return Training(
        train_set=train_set,
        val_set=val_set,
        classes=classes,
        loaded=loaded,
        model=model,
        plan=plan,
        sampler=sampler,
        loader=loader,
        val_loader=torch.utils.data.DataLoader(
            val_shard(val_set, placement), batch_size=max(1, int(1.5 * plan.per_device)), **common
        ),
        steps_per_epoch=steps_per_epoch,
        lr=lr,
        opt=opt,
        groups=groups_run,
        sched=epoch_scheduler(p, opt, lr) if p.schedule.kind == "cosine_per_epoch" else None,
        scaler=torch.amp.GradScaler("cuda") if precision == "float16" and cuda else None,
        precision=precision,
        autocast={"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[precision],
        workers=workers,
    )


def _fit(t: Training, ctx, state_path: Path) -> tuple[dict, float, float, int]:
    """Train from the saved state (if any) to the last epoch, validating and saving after every epoch; (state,
    last validated top-1, top-5 — NaN when nothing was left to train —, the epoch it resumed from)."""
    p, placement = ctx.params, ctx.placement
    state = _load_state(state_path, t.model, t.opt, t.scaler)
    resumed_from = int(state["epoch"])
    if t.sched is not None and state["epoch"]:
        t.sched.step(state["epoch"] - 1)  # the lr DeiT's loop set after the last finished epoch
    net = t.model
    if placement.distributed:
        from torch.nn.parallel import DistributedDataParallel

        cuda = placement.accelerator == "cuda"
        net = DistributedDataParallel(t.model, device_ids=[placement.local_rank] if cuda else None)
    mixup_fn, criterion = _mixup(p, t.classes), _criterion(p)
    top1 = top5 = math.nan
    for epoch in range(state["epoch"], p.epochs):
        t.sampler.set_epoch(epoch)
        _seed(p.seed, placement.rank, epoch)
        loss = _train_epoch(net, t, p, ctx, epoch, mixup_fn, criterion)
        if t.sched is not None:
            t.sched.step(epoch)  # DeiT's loop: after epoch e, the lr of t = e (so epoch e + 1 trains at lr(e))
        entry = {"epoch": epoch + 1, "loss": loss, "lr": max(g["lr"] for g in t.opt.param_groups)}
        if (epoch + 1) % p.val_every == 0 or epoch + 1 == p.epochs:  # every process its share of the split
            top1, top5 = evaluate(t.model, t.val_loader, placement.device, t.autocast, placement.distributed)
            entry.update(top1=top1, top5=top5)
            if top1 > state["best"]:
                state["best"], state["best_epoch"] = top1, epoch + 1
            if placement.is_main:
                print(f"epoch {epoch + 1}/{p.epochs}: loss {loss:.4f}, top-1 {top1:.2f} (best {state['best']:.2f})")
        state["history"].append(entry)
        state["epoch"] = epoch + 1
        if placement.is_main:
            _save(state_path, t.model, t.opt, t.scaler, state)
    return state, top1, top5, resumed_from


def _seed(seed: int, rank: int, epoch: int) -> None:
    """Each process's random streams (drop path, Mixup's lambda and boxes, the data workers' augmentation seeds)
    its own, as UDI's fine-tuning seeds seed + rank, and a function of the epoch, so that a resumed epoch draws what
    it would have drawn (the model's initial head is seeded before, the same on every process)."""
    import random

    import numpy as np

    s = (seed * 1_000_003 + rank) * 100_003 + epoch
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)


def run(cell, ctx) -> JobResult:
    p, placement = ctx.params, ctx.placement
    t0 = time.perf_counter()
    t = _prepare(cell, ctx)
    t1 = time.perf_counter()
    state, top1, top5, resumed_from = _fit(t, ctx, Path(ctx.work_dir) / STATE_FILE)
    t2 = time.perf_counter()
    if math.isnan(top1):  # resumed after the last epoch: evaluate the saved model (every process its share)
        top1, top5 = evaluate(t.model, t.val_loader, placement.device, t.autocast, placement.distributed)
        if top1 > state["best"]:
            state["best"], state["best_epoch"] = top1, p.epochs
    if not placement.is_main:  # rank 0 writes the record
        return JobResult(metrics={}, info={"rank": placement.rank})
    trained = p.epochs - resumed_from
    return JobResult(
        metrics={"top1": top1, "top5": top5, "top1_best": state["best"], "best_epoch": state["best_epoch"]},
        timings={
            "setup_s": t1 - t0,
            "train_s": t2 - t1,
            "images_per_s": (trained * t.steps_per_epoch * t.plan.global_batch / (t2 - t1)) if trained else None,
        },
        info={
            "checkpoint": t.loaded.summary(),
            "features": t.loaded.backbone.embedding_kind,
            "head": _head_text(p, t.model.head),
            "classes": t.classes,
            "train_images": len(t.train_set),
            "val_images": len(t.val_set),
            "lr": t.lr,
            "param_groups": t.groups,
            "schedule": {"kind": p.schedule.kind, "steps_per_epoch": t.steps_per_epoch},
            "sampler": type(t.sampler).__name__,
            "batch": t.plan.record(),
            "precision": t.precision + (" autocast with a gradient scaler" if t.scaler is not None else ""),
            "resumed_from_epoch": resumed_from,
            "history": state["history"],
            "data_loading": {"workers": t.workers, "pin_memory": placement.accelerator == "cuda"},
        },
    )


def _train_epoch(net, t: Training, p, ctx, epoch: int, mixup_fn, criterion) -> float:
    """One epoch of `steps_per_epoch` optimizer steps of the global batch; the mean loss."""
    from harness.features import maybe_autocast

    placement, accumulation, steps = ctx.placement, t.plan.accumulation, t.steps_per_epoch
    opt, scaler, autocast, lr = t.opt, t.scaler, t.autocast, t.lr
    dev = placement.device
    net.train()
    batches = iter(t.loader)
    total = 0.0
    for step in range(steps):
        if p.schedule.kind == "cosine_per_step":  # BEiT's engine sets every group's lr x its lr_scale each step
            value = step_lr(p, lr, epoch * steps + step, steps)
            for g in opt.param_groups:
                g["lr"] = value * g.get("lr_scale", 1.0)
        opt.zero_grad(set_to_none=True)
        finite = torch.ones((), device=dev)
        for micro in range(accumulation):
            x, y = next(batches)
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            if mixup_fn is not None:
                x, y = mixup_fn(x, y)
            sync = micro + 1 == accumulation or not placement.distributed
            with contextlib.nullcontext() if sync else net.no_sync(), maybe_autocast(dev, autocast):
                loss = criterion(net(x), y)
            # every process runs its backward (DDP's all-reduce waits for all of them) and the processes decide
            # together below: one process raising alone would leave the others waiting in the all-reduce
            finite = finite * torch.isfinite(loss.detach()).all()
            scaled = loss.float() / accumulation
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
            total += float(loss.detach())
        if placement.distributed:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if not bool(finite):
            raise FloatingPointError(
                f"the fine-tuning loss is not finite at epoch {epoch + 1}, step {step + 1} (on at least one of the "
                f"{placement.world_size} process(es)); the cell stops here, as UDI's scripts do"
            )
        if p.optimizer.clip_grad is not None:
            if scaler is not None:
                scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(net.parameters(), p.optimizer.clip_grad)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
    return total / (steps * accumulation)


def _save(path: Path, model, opt, scaler, state: dict) -> None:
    """The progress after an epoch (tensors and plain values: read back with weights_only=True), atomically: a
    job killed while saving keeps the previous epoch's state."""
    save_tensors(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            **state,
        },
        path,
    )


def _head_text(p, head) -> str:
    if p.head == "projection":
        first = head[0]
        return (
            f"the method's projection layer ({first.in_features} -> {first.out_features}) + GELU "
            f"+ a new linear layer to {head[-1].out_features} classes"
        )
    return (
        f"a new linear layer ({head.in_features} -> {head.out_features}), "
        f"truncated normal std 0.02 x {p.head_init_scale:g}"
    )


def _split_list(cell, reg, p) -> str | None:
    """The file a labelled subset's split lists its images in (SimCLRv2's 1percent.txt), None for a whole split."""
    if p.train_split == "train":
        return None
    split = reg.dataset(cell.dataset).splits.get(p.train_split)
    return Path(split.split_file).name if split is not None and split.split_file else p.train_split


def recipe_view(cell, reg, ctx) -> dict:
    """The recipe this job runs, from its parameters and the transforms and sampler it builds (what
    tests/golden/recipes compares with UDI's fine-tuning, transfer and semi-supervised scripts)."""
    p = ctx.params
    a, o, s = p.augment, p.optimizer, p.schedule
    plan = ctx.batch(p.batch_size)
    _, evaluation = transforms(p)
    mean, std = normalization(p)
    view = {
        "epochs": p.epochs,
        "batch.global": plan.global_batch,
        "model.drop_path": p.drop_path,
        "features": "class token after the final norm",
        "head.type": {"new": "new linear layer", "projection": "projection"}[p.head],
        "head.hidden": None,
        "head.init": "trunc_normal std 0.02, bias 0",
        "head.init_scale": p.head_init_scale,
        "optimizer.type": "AdamW",
        "optimizer.lr": o.lr,
        "optimizer.lr_scaling": o.lr_scaling,
        "optimizer.weight_decay": o.weight_decay,
        "optimizer.betas": list(o.betas),
        "optimizer.eps": o.eps,
        "optimizer.layer_decay": o.layer_decay_rate,
        "optimizer.no_weight_decay": "1-D parameters, pos_embed, cls_token",
        "optimizer.clip_grad": o.clip_grad,
        "schedule.type": {
            "cosine_per_step": "cosine per step",
            "cosine_per_epoch": "cosine per epoch (timm CosineLRScheduler)",
        }[s.kind],
        "schedule.warmup_epochs": s.warmup_epochs,
        "schedule.warmup_lr": s.warmup_lr,
        "schedule.min_lr": s.min_lr,
        "train.input_size": a.input_size,
        "train.color_jitter": a.color_jitter,
        "train.auto_augment": a.auto_augment,
        "train.interpolation": a.interpolation,
        "train.reprob": a.reprob,
        "train.remode": a.remode,
        "train.recount": a.recount,
        "mixup.alpha": a.mixup,
        "mixup.cutmix": a.cutmix,
        "mixup.prob": a.mixup_prob,
        "mixup.switch_prob": a.switch_prob,
        "mixup.mode": a.mixup_mode,
        "label_smoothing": a.smoothing,
        "data.repeated_aug": a.repeated_aug,
        "normalize.mean": [round(v, 4) for v in mean],
        "normalize.std": [round(v, 4) for v in std],
        "eval.resize": evaluation.transforms[0].size,
        "eval.interpolation": p.eval_interpolation,
        "eval.crop": evaluation.transforms[1].size[0],
        "model_ema": False,
        "precision": p.precision or "float16 autocast with a GradScaler",
        "result": "max over epochs of the validated top-1 (max_accuracy)",
        "val_freq": p.val_every,
        "train_split": _split_list(cell, reg, p),
        # BEiT's weight-decay schedule ends where it starts unless weight_decay_end is given: a constant decay
        "schedule.weight_decay_end": o.weight_decay if s.kind == "cosine_per_step" else None,
    }
    if p.head == "projection":
        view["head.hidden"] = "from the checkpoint"
    return {k: v for k, v in view.items() if v is not None or k == "optimizer.clip_grad"}
