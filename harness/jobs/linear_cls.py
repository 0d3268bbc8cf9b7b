"""Linear classification on frozen features (DINO's eval_linear; the W2 paper's CIFAR evaluation).

The backbone is frozen and in eval mode; every step it embeds a freshly augmented batch
(RandomResizedCrop + flip) without gradient, in the cell's precision, and a linear layer (float32,
N(0, 0.01) weights, zero bias) is trained with SGD and a cosine schedule to 0 over the epochs, the
learning rate scaled by the global batch / 256 as DINO does. Features: the class tokens of the last
`n_last_blocks` blocks after the final norm, concatenated, for ViTs with a class token; the global
average pool otherwise (DINO's `model.fc = nn.Identity()`). Validated every `val_every` epochs and after
the last: `top1` / `top5` are the last epoch's, `top1_best` the best validated epoch's (what DINO and
the W2 code print as their result: chosen on the validation set, as they do).

ImageNet is read as an ImageFolder (train / val), CIFAR-10/100 from their released batches
(harness.datasets.read_cifar). One process: the head is tiny and the frozen forward pass is the cost.
Progress is saved after every epoch (resume.pth, read back with weights_only=True).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from harness.atomic import save_tensors
from harness.datasets import IMAGENET_MEAN, IMAGENET_STD, DatasetError, check_layout, open_rgb, read_cifar
from harness.device import DeviceError, data_workers
from harness.jobs.common import JobResult, require_finite

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)  # the W2 code's dataloader.py


def transforms(p):
    """(train, eval) torchvision transforms of the protocol."""
    from torchvision import transforms as T

    mean, std = (CIFAR_MEAN, CIFAR_STD) if p.normalize == "cifar" else (IMAGENET_MEAN, IMAGENET_STD)
    train = T.Compose(
        [
            T.RandomResizedCrop(p.train_crop, scale=tuple(p.crop_scale)),
            T.RandomHorizontalFlip(p.flip),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
    evaluation = [T.Resize(p.resize, interpolation=T.InterpolationMode.BICUBIC)] if p.resize else []
    evaluation += [T.CenterCrop(p.crop)] if p.crop else []
    return train, T.Compose(evaluation + [T.ToTensor(), T.Normalize(mean, std)])


class ArrayImages(torch.utils.data.Dataset):
    """Images held as a uint8 array [N, H, W, 3] (CIFAR), served as PIL images to the transform."""

    def __init__(self, images, labels, transform):
        self.images, self.targets, self.transform = images, [int(y) for y in labels], transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.targets[i]


def datasets(ds, p) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset, int]:
    """(train, val, number of classes) of an ImageNet-style folder or a CIFAR dataset."""
    from torchvision.datasets import ImageFolder

    train_tf, eval_tf = transforms(p)
    if ds.kind in ("cifar10", "cifar100"):
        (xtr, ytr), (xva, yva) = read_cifar(ds, "train"), read_cifar(ds, "val")
        classes = ds.num_classes or int(max(ytr.max(), yva.max())) + 1
        return ArrayImages(xtr, ytr, train_tf), ArrayImages(xva, yva, eval_tf), classes
    root = check_layout(ds, splits=("train", "val"))
    train = ImageFolder(str(root / ds.splits["train"].img_dir), transform=train_tf, loader=open_rgb)
    val = ImageFolder(str(root / ds.splits["val"].img_dir), transform=eval_tf, loader=open_rgb)
    if val.classes != train.classes:
        raise DatasetError(f"{root}: the val classes are not the train classes")
    return train, val, len(train.classes)


@torch.no_grad()
def _features(backbone, x, p, autocast):
    from harness.features import maybe_autocast

    with maybe_autocast(x.device.type, autocast):
        f = backbone.class_tokens(x, p.n_last_blocks, p.avgpool_patchtokens)
    return f.float()


@torch.no_grad()
def evaluate(backbone, head, loader, p, device, autocast) -> tuple[float, float]:
    """(top-1, top-5) accuracy in percent over the loader."""
    head.eval()
    correct1 = correct5 = n = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = head(_features(backbone, x, p, autocast))
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += int((top[:, 0] == y).sum())
        correct5 += int((top == y[:, None]).any(dim=1).sum())
        n += len(y)
    head.train()
    return 100.0 * correct1 / n, 100.0 * correct5 / n


def _resume(path: Path, head, opt, sched) -> dict:
    if not path.is_file():
        return {"epoch": 0, "best": -math.inf, "history": []}
    state = torch.load(path, map_location="cpu", weights_only=True)
    head.load_state_dict(state["head"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return {"epoch": int(state["epoch"]), "best": float(state["best"]), "history": list(state["history"])}


def run(cell, ctx) -> JobResult:
    from harness.models.checkpoints import load_backbone

    p, reg, placement = ctx.params, ctx.registry, ctx.placement
    if placement.distributed:
        raise DeviceError(
            "linear classification runs in one process (a frozen backbone and a linear head: one GPU holds "
            "the recipe's batch); set resources.gpus: 1 in the protocol file"
        )
    t0 = time.perf_counter()
    ds = reg.dataset(cell.dataset, cell.suite)
    train_set, val_set, classes = datasets(ds, p)
    dev, cuda = placement.device, placement.accelerator == "cuda"
    precision = p.precision or ("bfloat16" if cuda else "float32")
    autocast = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[precision]
    bb = load_backbone(cell.method, cell.epoch, registry=reg, kind=cell.config["protocol"]["kind"])
    backbone = bb.backbone.to(dev).eval().requires_grad_(False)
    plan = ctx.batch(p.batch_size)
    workers = data_workers(placement, p.num_workers)
    gen = torch.Generator().manual_seed(p.seed)
    common = dict(num_workers=workers, pin_memory=cuda, persistent_workers=workers > 0)
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=plan.per_device, shuffle=True, generator=gen, drop_last=False, **common
    )
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=plan.per_device, shuffle=False, **common)
    dim = _features(backbone, val_set[0][0][None].to(dev), p, autocast).shape[1]
    torch.manual_seed(p.seed)
    head = nn.Linear(dim, classes).to(dev)
    head.weight.data.normal_(mean=0.0, std=0.01)
    head.bias.data.zero_()
    opt_p = p.optimizer
    lr = opt_p.lr * (plan.global_batch / 256 if opt_p.lr_scaling == "batch/256" else 1.0)
    opt = torch.optim.SGD(head.parameters(), lr, momentum=opt_p.momentum, weight_decay=opt_p.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, p.epochs, eta_min=0)
    state_path = Path(ctx.work_dir) / "resume.pth"
    state = _resume(state_path, head, opt, sched)
    resumed_from = state["epoch"]
    t1 = time.perf_counter()
    top1 = top5 = math.nan
    for epoch in range(state["epoch"], p.epochs):
        loss_sum = _train_epoch(backbone, head, opt, train_loader, p, dev, autocast, plan.accumulation)
        sched.step()
        entry = {"epoch": epoch + 1, "loss": loss_sum, "lr": opt.param_groups[0]["lr"]}
        if (epoch + 1) % p.val_every == 0 or epoch + 1 == p.epochs:
            top1, top5 = evaluate(backbone, head, val_loader, p, dev, autocast)
            entry.update(top1=top1, top5=top5)
            state["best"] = max(state["best"], top1)
            print(f"epoch {epoch + 1}/{p.epochs}: loss {loss_sum:.4f}, top-1 {top1:.2f} (best {state['best']:.2f})")
        state["history"].append(entry)
        _save(state_path, epoch + 1, head, opt, sched, state)
    if math.isnan(top1):  # resumed after the last epoch: evaluate the saved head
        top1, top5 = evaluate(backbone, head, val_loader, p, dev, autocast)
        state["best"] = max(state["best"], top1)
    t2 = time.perf_counter()
    return JobResult(
        metrics={"top1": top1, "top5": top5, "top1_best": state["best"]},
        timings={"setup_s": t1 - t0, "train_s": t2 - t1, "images_per_s": _rate(state, len(train_set), t2 - t1)},
        info={
            "checkpoint": bb.summary(),
            "features": _feature_text(backbone, p),
            "feature_dim": dim,
            "classes": classes,
            "train_images": len(train_set),
            "val_images": len(val_set),
            "lr": lr,
            "batch": plan.record(),
            "precision": precision,
            "resumed_from_epoch": resumed_from,
            "history": state["history"],
            "data_loading": {"workers": workers, "pin_memory": cuda},
        },
    )


def _save(path: Path, epoch: int, head, opt, sched, state: dict) -> None:
    """The progress after an epoch (tensors and plain values: read back with weights_only=True)."""
    save_tensors(  # atomically: a job killed while saving keeps the previous epoch's state
        {
            "epoch": epoch,
            "head": head.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "best": state["best"],
            "history": state["history"],
        },
        path,
    )


def _train_epoch(backbone, head, opt, loader, p, dev, autocast, accumulation: int) -> float:
    """One pass over the training set (gradients accumulated over `accumulation` loader batches per
    step); the mean loss."""
    total, n = 0.0, 0
    opt.zero_grad(set_to_none=True)
    for i, (x, y) in enumerate(loader):
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        loss = F.cross_entropy(head(_features(backbone, x, p, autocast)), y)
        require_finite(loss.detach(), "the linear classifier's loss")
        (loss / accumulation).backward()
        if (i + 1) % accumulation == 0 or i + 1 == len(loader):
            opt.step()
            opt.zero_grad(set_to_none=True)
        total += float(loss.detach()) * len(y)
        n += len(y)
    return total / max(n, 1)


def _rate(state, n_train: int, seconds: float) -> float | None:
    trained = len(state["history"])
    return n_train * trained / seconds if trained and seconds > 0 else None


def _feature_text(backbone, p) -> str:
    if backbone.info.family == "vit" and getattr(backbone.net, "cls_token", None) is not None:
        extra = " + the mean of its patch tokens" if p.avgpool_patchtokens else ""
        return f"class tokens of the last {p.n_last_blocks} block(s), after the final norm{extra}"
    return backbone.embedding_kind


def recipe_view(cell, reg, ctx) -> dict:
    """The recipe this job runs, from its parameters and the transforms it builds (what tests/golden/recipes
    compares with DINO's eval_linear and the W2 code)."""
    p = ctx.params
    train, evaluation = transforms(p)
    crop, flip = train.transforms[0], train.transforms[1]
    plan = ctx.batch(p.batch_size)
    view = {
        "features.n_last_blocks": p.n_last_blocks,
        "features.avgpool": p.avgpool_patchtokens,
        "head": "linear, weights N(0, 0.01), bias 0",
        "optimizer.type": "SGD",
        "optimizer.lr": p.optimizer.lr,
        "optimizer.lr_scaling": p.optimizer.lr_scaling,
        "optimizer.momentum": p.optimizer.momentum,
        "optimizer.weight_decay": p.optimizer.weight_decay,
        "schedule": "cosine to 0 over the epochs",
        "epochs": p.epochs,
        "batch.global": plan.global_batch,
        "train.crop": crop.size[0],
        "train.crop_scale": list(crop.scale),
        "train.flip": flip.p,
        "normalize.mean": list(train.transforms[-1].mean),
        "normalize.std": list(train.transforms[-1].std),
        "eval.resize": p.resize,
        "eval.resize.interpolation": "bicubic" if p.resize else None,
        "eval.crop": p.crop,
        "result": "the best validated epoch",  # top1_best; the record also holds the last epoch's (top1)
        "val_freq": p.val_every,
        # the frozen backbone runs in eval mode (Dropout, BatchNorm statistics) while the head trains
        "backbone.mode": "eval",
        "precision": p.precision or "frozen backbone in bfloat16 on GPUs, head float32",
    }
    return {k: v for k, v in view.items() if v is not None}
