"""Linear depth estimation on a frozen backbone (DINOv3's NYU linear depth evaluation, dinov3/eval/depth @ 6876159).

The backbone's last-block patch tokens after its final norm, as a [C, h, w] map (class and register tokens dropped,
inputs padded at the centre to a multiple of the patch), go through BatchNorm and a 1x1 convolution to `bins`
channels; the channels weigh bins spread linearly over [min_depth, max_depth] (w = relu(x) + 0.1, normalised: not a
softmax) and the depth map at the patch grid is upsampled bilinearly to the label. The head trains with the scale-
invariant log loss (SigLoss: its variance term left out for the first iterations) under AdamW and DINOv3's
one-cycle schedule, which also drives beta1 (0 during the warm-up, then 0.85 -> 0.95). Training data: NYU's valid
box, a small rotation, a flip, a random crop and a colour jitter; evaluation: the whole image, flipped and averaged at
the patch grid, scored per image on the evaluation mask (the Eigen crop) and averaged over images, as the depth
toolboxes report RMSE, AbsRel, log10, RMSE-log and δ1-δ3.

The head's state is saved every `checkpoint_interval` iterations (atomically, read back with weights_only=True): a
requeued cell resumes there. DDP over the cell's processes (SyncBatchNorm on GPUs), the recipe's global batch kept by
per-device batches and gradient accumulation; the evaluation shared out over the processes.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.atomic import save_tensors
from harness.datasets import IMAGENET_MEAN, IMAGENET_STD, DatasetError, open_rgb
from harness.device import data_workers
from harness.jobs.common import JobResult

STATE_FILE = "depth_state.pth"
NYU_SIZE = (480, 640)  # the (height, width) the crop boxes are written for
EIGEN = (45, 471, 41, 601)  # rows y1:y2, columns x1:x2 of a 480x640 image (dinov3 datasets_utils.py l.26-33)


def scaled_box(box, height: int, width: int) -> tuple[int, int, int, int]:
    """A (x1, y1, x2, y2) box written for 640x480, scaled to an image of this size (DINOv3's NYUCrop)."""
    x1, y1, x2, y2 = box
    sx, sy = width / NYU_SIZE[1], height / NYU_SIZE[0]
    return int(x1 * sx), int(y1 * sy), int(x2 * sx), int(y2 * sy)


def eval_mask(gt: torch.Tensor, p) -> torch.Tensor:
    """The evaluated pixels of a [H, W] depth: inside (min_depth, max_depth), both exclusive, and the Eigen crop."""
    valid = (gt > p.min_depth) & (gt < p.max_depth)
    if p.eval_mask == "eigen":
        h, w = gt.shape
        y1, y2, x1, x2 = EIGEN
        box = torch.zeros_like(valid)
        box[int(y1 / 480 * h) : int(y2 / 480 * h), int(x1 / 640 * w) : int(x2 / 640 * w)] = True
        valid &= box
    return valid


class DepthPairs(torch.utils.data.Dataset):
    """(normalised image [3, H, W], depth in metres [1, H, W]) of the split's listed pairs; augmented for training."""

    def __init__(self, pairs, p, train: bool):
        self.pairs, self.p, self.train = pairs, p, train

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        from torchvision.transforms import functional as TF

        from harness.datasets import read_depth_png

        rgb, dpath, _ = self.pairs[i]
        img = TF.to_tensor(open_rgb(rgb))
        depth = torch.from_numpy(np.ascontiguousarray(read_depth_png(dpath)))[None]
        if depth.shape[1:] != img.shape[1:]:
            raise DatasetError(
                f"{dpath}: depth {tuple(depth.shape[1:])} is not its image's size {tuple(img.shape[1:])}"
            )
        if self.train:
            img, depth = augment(img, depth, self.p)
        return TF.normalize(img, IMAGENET_MEAN, IMAGENET_STD), depth


def augment(img: torch.Tensor, depth: torch.Tensor, p) -> tuple[torch.Tensor, torch.Tensor]:
    """DINOv3's training transforms (transforms.py l.306-355), in order: the fixed NYU box, a rotation (p = 0.5;
    image bilinear, depth nearest, filled with 0 = no depth), a horizontal flip, a random crop, and with p =
    color_prob gamma (on the 0-255 scale), brightness and a per-channel colour factor together."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    if p.fixed_crop is not None:
        x1, y1, x2, y2 = scaled_box(p.fixed_crop, *img.shape[1:])
        img, depth = img[:, y1:y2, x1:x2], depth[:, y1:y2, x1:x2]
    if p.rotation and torch.rand(()) < 0.5:
        angle = float(torch.empty(()).uniform_(-p.rotation, p.rotation))
        img = TF.rotate(img, angle, interpolation=InterpolationMode.BILINEAR, fill=0.0)
        depth = TF.rotate(depth, angle, interpolation=InterpolationMode.NEAREST, fill=0.0)
    if torch.rand(()) < p.flip:
        img, depth = img.flip(-1), depth.flip(-1)
    th, tw = p.train_crop
    h, w = img.shape[1:]
    if h < th or w < tw:
        raise DatasetError(f"a training image of {h}x{w} after the fixed crop is smaller than train_crop {th}x{tw}")
    top, left = int(torch.randint(0, h - th + 1, ())), int(torch.randint(0, w - tw + 1, ()))
    img, depth = img[:, top : top + th, left : left + tw], depth[:, top : top + th, left : left + tw]
    if torch.rand(()) < p.color_prob:
        gamma = float(torch.empty(()).uniform_(0.9, 1.1))
        bright = float(torch.empty(()).uniform_(*p.brightness))
        colour = torch.empty(3, 1, 1).uniform_(0.9, 1.1)
        img = ((img * 255) ** gamma * bright * colour).clamp(0, 255) / 255
    return img, depth


class DepthHead(nn.Module):
    """BatchNorm over the backbone's channels, a 1x1 convolution to `bins` channels (weights N(0, 0.01), bias 0),
    and DINOv3's FeaturesToDepth with linear bins and linear normalisation (models/__init__.py l.37-110)."""

    def __init__(self, channels: int, bins: int, min_depth: float, max_depth: float):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)
        self.conv = nn.Conv2d(channels, bins, kernel_size=1)
        nn.init.normal_(self.conv.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.conv.bias)
        self.register_buffer("bin_depths", torch.linspace(min_depth, max_depth, bins), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        w = torch.relu(self.conv(self.norm(features))) + 0.1
        w = w / w.sum(dim=1, keepdim=True)
        return torch.einsum("bkhw,k->bhw", w, self.bin_depths)[:, None]


def sig_loss(pred: torch.Tensor, gt: torch.Tensor, p, iteration: int) -> torch.Tensor:
    """DINOv3's SigLoss (loss.py l.105-131) over every valid pixel of the device batch: g = log(pred + 1e-3) -
    log(gt + 1e-3), sqrt(var(g) + (1 - variance_focus) mean(g)^2), the (unbiased) variance left out for the first
    loss_warmup_iters iterations; valid = gt != 0."""
    valid = gt != 0
    g = torch.log(pred[valid] + 1e-3) - torch.log(gt[valid] + 1e-3)
    dg = (1 - p.variance_focus) * g.mean() ** 2
    if iteration >= p.loss_warmup_iters:
        dg = dg + g.var()
    return torch.sqrt(dg) if dg > 0 else dg.abs()


def one_cycle(p, step: int) -> tuple[float, float]:
    """(lr, beta1) of DINOv3's WarmupOneCycleLR at `step` (schedulers.py l.96-128, anneal cos): during the warm-up
    lr = M / final_div + M (1 + cos(pi s / T)) / 2 * s / W with beta1 0; then lr anneals by cosine from M to
    M / div / final_div at (s + 1) / T, and beta1 from momentum[0] to momentum[1] over the rest."""
    s, M, T, W = step, p.optimizer.lr, p.iters, p.schedule.warmup_iters
    if s < W:
        return M / p.schedule.final_div_factor + M * (1 + math.cos(math.pi * s / T)) / 2 * s / W, 0.0

    def cos(start: float, end: float, pct: float) -> float:
        return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)

    low, high = p.schedule.momentum
    beta1 = cos(low, high, (s - W) / max(T - W, 1))
    return cos(M, M / p.schedule.div_factor / p.schedule.final_div_factor, (s + 1) / T), beta1


@torch.no_grad()
def features(backbone, x: torch.Tensor, autocast) -> torch.Tensor:
    from harness.features import maybe_autocast

    with maybe_autocast(x.device.type, autocast):
        return backbone.dense_map(x).float()  # the last block's normed patch tokens as [B, C, h, w]


def run(cell, ctx) -> JobResult:
    from harness.datasets import depth_pairs
    from harness.models.checkpoints import load_backbone

    p, reg, placement = ctx.params, ctx.registry, ctx.placement
    t0 = time.perf_counter()
    ds = reg.dataset(cell.dataset, cell.suite)
    train_pairs, val_pairs = depth_pairs(ds, "train"), depth_pairs(ds, "val")
    dev, cuda = placement.device, placement.accelerator == "cuda"
    precision = p.precision or "float32"  # DINOv3 evaluates in float32
    autocast = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[precision]
    loaded = load_backbone(cell.method, cell.epoch, registry=reg, kind="depth_linear")
    backbone = loaded.backbone.to(dev).eval().requires_grad_(False)
    torch.manual_seed(p.seed)  # the same initial head on every process
    head = DepthHead(backbone.dim, p.bins, p.min_depth, p.max_depth)
    if placement.distributed and cuda:
        head = nn.SyncBatchNorm.convert_sync_batchnorm(head)
    head.to(dev)
    plan = ctx.batch(p.batch_size)
    opt = torch.optim.AdamW(
        head.parameters(), lr=p.optimizer.lr, betas=p.optimizer.betas, weight_decay=p.optimizer.weight_decay
    )
    work = Path(ctx.work_dir)
    start = _resume(work / STATE_FILE, head, opt)
    net = head
    if placement.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(head, device_ids=[placement.local_rank] if cuda else None)
    workers = data_workers(placement, p.num_workers)
    t1 = time.perf_counter()
    history = _train(backbone, head, net, opt, DepthPairs(train_pairs, p, True), p, ctx, plan, start, autocast, work)
    t2 = time.perf_counter()
    metrics, per_image = evaluate(backbone, head, DepthPairs(val_pairs, p, False), p, placement, autocast)
    t3 = time.perf_counter()
    if not placement.is_main:
        return JobResult(metrics={}, info={"rank": placement.rank})
    return JobResult(
        metrics=metrics,
        timings={"setup_s": t1 - t0, "train_s": t2 - t1, "eval_s": t3 - t2},
        info={
            "checkpoint": loaded.summary(),
            "features": "the last block's patch tokens after the final norm, as a map at the patch grid",
            "train_images": len(train_pairs),
            "val_images": len(val_pairs),
            "evaluated_images": per_image,
            "iters": p.iters,
            "resumed_from_iter": start,
            "batch": plan.record(),
            "precision": precision,
            "history": history,
            "data_loading": {"workers": workers, "pin_memory": cuda},
        },
    )


def _resume(path: Path, head, opt) -> int:
    if not path.is_file():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    head.load_state_dict(state["head"])
    opt.load_state_dict(state["optimizer"])
    return int(state["iter"])


def _batches(dataset, p, ctx, plan, start: int):
    """An endless stream of per-device batches from `start` on: each pass over the split shuffled by its pass number
    (DistributedSampler's seed + epoch), re-entered at the right pass and offset after a resume."""
    placement = ctx.placement
    sampler = torch.utils.data.DistributedSampler(
        dataset, num_replicas=placement.world_size, rank=placement.rank, shuffle=True, seed=0
    )
    workers = data_workers(placement, p.num_workers)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=plan.per_device,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        pin_memory=placement.accelerator == "cuda",
    )
    per_pass = len(loader)
    if per_pass < 1:
        raise DatasetError(f"{len(dataset)} training images give no batch of {plan.per_device} per process")
    done = start * plan.accumulation
    epoch, skip = divmod(done, per_pass)
    while True:
        sampler.set_epoch(epoch)
        torch.manual_seed(p.seed * 1_000_003 + placement.rank * 1_009 + epoch)  # the workers' augmentation streams
        for i, batch in enumerate(loader):
            if i >= skip:
                yield batch
        epoch, skip = epoch + 1, 0


def _train(backbone, head, net, opt, dataset, p, ctx, plan, start: int, autocast, work: Path) -> list[dict]:
    """Iterations `start` to `iters`: one-cycle lr and beta1 per step, SigLoss, gradient clipping; the state saved
    every checkpoint_interval iterations and at the end (rank 0)."""
    placement, dev = ctx.placement, ctx.placement.device
    head.train()
    batches = _batches(dataset, p, ctx, plan, start)
    history, window = [], []
    for it in range(start, p.iters):
        lr, beta1 = one_cycle(p, it)
        for g in opt.param_groups:
            g["lr"], g["betas"] = lr, (beta1, p.optimizer.betas[1])
        opt.zero_grad(set_to_none=True)
        finite = torch.ones((), device=dev)
        for micro in range(plan.accumulation):
            x, gt = next(batches)
            x, gt = x.to(dev, non_blocking=True), gt.to(dev, non_blocking=True)
            sync = micro + 1 == plan.accumulation or not placement.distributed
            with contextlib.nullcontext() if sync else net.no_sync():
                pred = F.interpolate(net(features(backbone, x, autocast)), size=gt.shape[-2:], mode="bilinear")
                loss = sig_loss(pred, gt, p, it)
            finite = finite * torch.isfinite(loss.detach())
            (loss / plan.accumulation).backward()
            window.append(float(loss.detach()))
        if placement.distributed:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if not bool(finite):  # decided by every process together: one raising alone would hang the others
            raise FloatingPointError(f"the depth loss is not finite at iteration {it + 1}")
        if p.optimizer.clip_grad is not None:
            nn.utils.clip_grad_norm_(head.parameters(), p.optimizer.clip_grad)
        opt.step()
        if (it + 1) % p.checkpoint_interval == 0 or it + 1 == p.iters:
            history.append({"iter": it + 1, "loss": sum(window) / len(window), "lr": lr, "beta1": beta1})
            window = []
            if placement.is_main:
                save_tensors(
                    {"iter": it + 1, "head": head.state_dict(), "optimizer": opt.state_dict()}, work / STATE_FILE
                )
    return history


@torch.no_grad()
def evaluate(backbone, head, dataset, p, placement, autocast) -> tuple[dict, int]:
    """Per-image metrics on the evaluation mask, averaged over the images (every process its share, the sums
    all-reduced): the prediction at the patch grid (flip-averaged when eval_flip), upsampled bilinearly to the label,
    clamped to [min_depth, max_depth]."""
    head.eval()
    dev = placement.device
    names = ("rmse", "abs_rel", "log10", "rmse_log", "delta1", "delta2", "delta3")
    sums = torch.zeros(len(names) + 1, dtype=torch.float64, device=dev)
    for i in range(placement.rank, len(dataset), placement.world_size):
        x, gt = dataset[i]
        x, gt = x[None].to(dev), gt[0].to(dev)
        pred = head(features(backbone, x, autocast))
        if p.eval_flip:
            flipped = head(features(backbone, x.flip(-1), autocast)).flip(-1)
            pred = (pred + flipped) / 2
        pred = F.interpolate(pred, size=gt.shape, mode="bilinear")[0, 0].clamp(p.min_depth, p.max_depth)
        valid = eval_mask(gt, p)
        if not valid.any():
            continue
        sums += torch.tensor([*image_metrics(pred[valid], gt[valid]), 1.0], dtype=torch.float64, device=dev)
    if placement.distributed:
        torch.distributed.all_reduce(sums)
    n = int(sums[-1])
    if n == 0:
        raise DatasetError(f"no evaluation image has a valid depth pixel inside the {p.eval_mask} mask")
    return {name: float(sums[k] / n) for k, name in enumerate(names)}, n


def image_metrics(pred: torch.Tensor, gt: torch.Tensor) -> list[float]:
    """RMSE, AbsRel, log10, RMSE-log (natural log), δ1-δ3 of one image's valid pixels (dinov3 metrics.py l.45-91)."""
    pred, gt = pred.double(), gt.double()
    ratio = torch.maximum(gt / pred, pred / gt)
    return [
        float(torch.sqrt(((gt - pred) ** 2).mean())),
        float(((gt - pred).abs() / gt).mean()),
        float((torch.log10(gt) - torch.log10(pred)).abs().mean()),
        float(torch.sqrt(((torch.log(gt) - torch.log(pred)) ** 2).mean())),
        *(float((ratio < 1.25**k).double().mean()) for k in (1, 2, 3)),
    ]


def recipe_view(cell, reg, ctx) -> dict:
    """The recipe this job runs (what tests/golden/recipes/depth_linear.yaml compares with DINOv3's NYU config)."""
    p = ctx.params
    plan = ctx.batch(p.batch_size)
    return {
        "iters": p.iters,
        "batch.global": plan.global_batch,
        "optimizer.type": "AdamW",
        "optimizer.lr": p.optimizer.lr,
        "optimizer.betas": list(p.optimizer.betas),
        "optimizer.weight_decay": p.optimizer.weight_decay,
        "optimizer.clip_grad": p.optimizer.clip_grad,
        "schedule.type": "WarmupOneCycleLR",
        "schedule.warmup_iters": p.schedule.warmup_iters,
        "schedule.final_div_factor": p.schedule.final_div_factor,
        "schedule.div_factor": p.schedule.div_factor,
        "schedule.momentum": list(p.schedule.momentum),
        "head.type": "LinearHead",
        "head.batchnorm": True,
        "head.channels": p.bins,
        "head.init": "normal std 0.01, bias 0",
        "depth.min": p.min_depth,
        "depth.max": p.max_depth,
        "features.layers": "last",
        "features.norm": True,
        "features.cls_token": False,
        "loss": "SigLoss",
        "loss.weight": 1.0,
        "loss.warmup_iters": p.loss_warmup_iters,
        "train.crop": list(p.train_crop),
        "train.brightness": list(p.brightness),
        "train.flip": p.flip,
        "train.rotation": p.rotation,
        "train.fixed_crop": list(p.fixed_crop) if p.fixed_crop else None,
        "eval.crop": "full image",
        "eval.mask": "Eigen crop" if p.eval_mask == "eigen" else "full image",
        "eval.flip_tta": p.eval_flip,
        "eval.align_least_squares": False,
        "seed": p.seed,
        "precision": p.precision or "float32",
        "batch.per_gpu": plan.global_batch // max(plan.recipe_devices, 1),
        "optimizer.no_decay": "none",  # weight decay on every head parameter, BatchNorm's and biases included
        "schedule.interval": "iter",
        "schedule.warmup": f"lr = max_lr/{p.schedule.final_div_factor:g} + max_lr*(1+cos(pi*s/T))/2 * s/W",
        "schedule.anneal_strategy": "cos",
        "schedule.min_lr": p.optimizer.lr / p.schedule.div_factor / p.schedule.final_div_factor,
        "schedule.momentum_warmup": one_cycle(p, 0)[1],
        "head.output": f"weighted sum of {p.bins} linear bins, weights (relu(x)+0.1) normalised to sum 1",
        "head.bins_strategy": "linear bins",
        "head.norm_strategy": "linear normalisation",
        "head.upsample.mode": "bilinear",
        "head.upsample.align_corners": False,
        "features.pad": "center_padding",  # the kind's patch_remainder (harness.kinds)
        "backbone.frozen": True,
        "backbone.train_mode_iters": 0,
        "loss.formula": f"sqrt(var(g) + {1 - p.variance_focus:.2f}*mean(g)^2), g = log(pred+eps) - log(gt+eps)",
        "loss.eps": 1e-3,
        "loss.valid_mask": "gt != 0",
        "train.color_prob": p.color_prob,
        "train.gamma": [0.9, 1.1],
        "train.color": [0.9, 1.1],
        "train.rotation_prob": 0.5,
        "data.depth_scale": 1000.0,  # harness.datasets.read_depth_png: the 16-bit PNG's millimetres
        "data.mean": list(IMAGENET_MEAN),
        "data.std": list(IMAGENET_STD),
        "eval.mask_box": list(EIGEN),
        "eval.depth_range": [p.min_depth, p.max_depth],
        "eval.interval": None,  # no periodic validation: DINOv3's only logs, and the final head is reported
        "eval.batch": 1,
        "metrics": ["rmse", "abs_rel", "log10", "rmse_log", "delta1", "delta2", "delta3"],
        "metrics.reduction": "per_image_mean",
        "metrics.delta_base": 1.25,
    }
