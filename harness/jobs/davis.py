"""DAVIS-2017 semi-supervised label propagation (the DINO protocol), scored with J&F.

Per frame: dense features of the last layer (ViT: after the final norm, class tokens dropped;
ResNet/Swin: the stride-16 stage, `resnet_layer`, recorded), L2-normalised. Affinities to the first
frame and the `n_last_frames` previous frames are exp(cos / temperature), restricted to a
`size_mask_neighborhood` window. The top-k affinities per target location are kept and normalised,
and the soft labels are propagated. The result is upsampled by the stride, min-max normalised per
channel, argmax'd, resized to the original size (nearest) and written as an indexed PNG with a palette
made in code (nothing downloaded). J&F follows the DAVIS definitions (`jandf.py`).
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from harness.datasets import (
    IMAGENET_MEAN,
    check_layout,
    davis_sequences,
    open_rgb,
    read_label_png,
    write_indexed_png,
)
from harness.jobs import jandf
from harness.jobs.common import JobResult, require_finite

# DINO's DAVIS evaluation normalises with std 0.228 (not ImageNet's 0.229) for red; kept for parity with
# its published J&F.
DINO_DAVIS_STD = (0.228, 0.224, 0.225)


def frame_sizes(p, stride: int) -> tuple[int, int]:
    """(short side, multiple of the long side) a frame is resized to: the protocol's (DINO's 480 and 64) where
    the feature stride divides them, as for patches 8 and 16; else the short side rounded down to a multiple of
    the stride and the long side a multiple of the stride (a patch-14 ViT: 476 and 14), so that no pixel is
    dropped by the patch embedding and no padding shifts the grid."""
    short = p.short_side if p.short_side % stride == 0 else p.short_side // stride * stride
    mult = p.size_multiple if p.size_multiple % stride == 0 else stride
    return short, mult


def read_frame(path: Path, short_side: int, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    img = open_rgb(path)
    w, h = img.size
    if h > w:
        tw, th = short_side, int((short_side * h / w) // multiple * multiple)
    else:
        th, tw = short_side, int((short_side * w / h) // multiple * multiple)
    x = torch.from_numpy(np.asarray(img.resize((tw, th), Image.BILINEAR), dtype=np.float32) / 255.0)
    x = (x - torch.tensor(IMAGENET_MEAN)) / torch.tensor(DINO_DAVIS_STD)
    return x.permute(2, 0, 1)[None], (h, w)


def neighbourhood(h: int, w: int, size: int, device="cpu") -> torch.Tensor:
    """[h*w, h*w] mask: 1 where two token positions are within `size` rows and columns."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return (((ys[:, None] - ys[None]).abs() <= size) & ((xs[:, None] - xs[None]).abs() <= size)).float()


def propagate(feat_tar, ctx_feats, ctx_segs, h, w, *, topk: int, temperature: float, mask: torch.Tensor | None):
    """Soft labels [C, h, w] of the target from the context frames' features [N, d] and labels [C, h, w]."""
    src = torch.stack(ctx_feats)  # [K, N, d]
    logits = torch.einsum("nd,kmd->kmn", feat_tar, src) / temperature  # [K, src N, tar N]
    if mask is not None:
        logits = logits.masked_fill(mask[None] == 0, -torch.inf)
    # DINO's exp(sim / T), less each target's largest logit: the same weights after the normalisation
    # below (and the same top-k), without the overflow a small temperature gives exp(sim / T)
    logits = logits.reshape(-1, h * w)  # (context x source) x target
    aff = torch.exp(logits - logits.max(dim=0, keepdim=True).values)
    kth = torch.topk(aff, k=min(topk, aff.shape[0]), dim=0).values.min(dim=0).values
    aff = torch.where(aff < kth, torch.zeros_like(aff), aff)
    aff = aff / aff.sum(dim=0, keepdim=True).clamp_min(1e-20)
    segs = torch.stack(ctx_segs)  # [K, C, h, w]
    c = segs.shape[1]
    segs = segs.reshape(len(ctx_segs), c, -1).permute(1, 0, 2).reshape(c, -1)  # C x (context x source)
    return (segs @ aff).reshape(c, h, w)


def _features(backbone, x, layer, frame: Path | None = None):
    t = backbone.dense(x, layer)[0]
    require_finite(t, f"the features of frame {frame}")
    return F.normalize(t, dim=1)


@torch.no_grad()
def segment_sequence(
    backbone, frames: list[Path], first_mask: Path, out_dir: Path, p, layer, stride: int, device: str = "cpu"
) -> None:
    """Propagate the first frame's labels through the sequence on `device` (float32: the affinities'
    exponentials and top-k are sensitive to rounding); predictions written as indexed PNGs."""
    short, mult = frame_sizes(p, stride)
    x0, (oh, ow) = read_frame(frames[0], short, mult)
    f0 = _features(backbone, x0.to(device), layer, frames[0])
    h, w = x0.shape[2] // stride, x0.shape[3] // stride
    lab = read_label_png(first_mask)
    small = np.array(Image.fromarray(lab).resize((w, h), Image.NEAREST)).astype(np.int64)
    n_lab = int(lab.max()) + 1
    seg0 = F.one_hot(torch.from_numpy(small), n_lab).permute(2, 0, 1).float().to(device)
    size = p.size_mask_neighborhood
    mask = neighbourhood(h, w, size, device) if size > 0 else None
    queue: deque = deque(maxlen=p.n_last_frames)
    write_indexed_png(lab, out_dir / f"{frames[0].stem}.png")
    for frame in frames[1:]:
        x, _ = read_frame(frame, short, mult)
        ft = _features(backbone, x.to(device), layer, frame)
        soft = propagate(
            ft,
            [f0] + [q[0] for q in queue],
            [seg0] + [q[1] for q in queue],
            h,
            w,
            topk=p.topk,
            temperature=p.temperature,
            mask=mask,
        )
        require_finite(soft, f"the propagated labels of frame {frame}")
        queue.append((ft, soft))
        up = F.interpolate(soft[None], scale_factor=stride, mode="bilinear", align_corners=False)[0]
        lo = up.flatten(1).min(dim=1).values[:, None, None]
        hi = up.flatten(1).max(dim=1).values[:, None, None]
        up = torch.where(hi > 0, (up - lo) / (hi - lo).clamp_min(1e-12), up)  # per-channel min-max, as DINO
        pred = up.argmax(dim=0).cpu().numpy().astype(np.uint8)
        pred = np.array(Image.fromarray(pred).resize((ow, oh), Image.NEAREST))
        write_indexed_png(pred, out_dir / f"{frame.stem}.png")


def run(cell, ctx) -> dict:
    from harness.models.checkpoints import load_backbone

    reg = ctx.registry
    p = ctx.params
    ds = reg.dataset(cell.dataset, cell.suite)
    split = p.split
    root = check_layout(ds, splits=(split,))
    sequences = davis_sequences(ds, root, split)  # frames paired with annotations by name, checked
    t0 = time.perf_counter()
    loaded = load_backbone(cell.method, cell.epoch, registry=reg, kind=cell.config["protocol"]["kind"])
    bb = loaded.backbone.to(ctx.placement.device)
    if bb.info.family == "vit":
        layer, stride, feature = None, bb.stride, "last block + final norm (patch tokens)"
    else:
        layer = p.resnet_layer
        stride, feature = 2 ** (1 + layer), f"stage {layer} (stride {2 ** (1 + layer)})"
    out = Path(ctx.work_dir) / "predictions"
    per_seq = {}
    for seq, pairs in sequences.items():
        frames = [f for f, _ in pairs]
        segment_sequence(bb, frames, pairs[0][1], out / seq, p, layer, stride, ctx.placement.device)
        gts = [read_label_png(m) for _, m in pairs]
        preds = [read_label_png(out / seq / f"{f.stem}.png") for f in frames]
        per_seq[seq] = jandf.evaluate_sequence(gts, preds, p.bound_th)
    t1 = time.perf_counter()
    scores = jandf.summarize(per_seq)
    per_object = scores.pop("per_object")
    return JobResult(
        metrics=scores,
        details={"per_object": per_object},
        timings={"propagation_s": t1 - t0},
        info={
            "checkpoint": loaded.summary(),
            "feature": feature,
            "frame_size": dict(zip(("short_side", "size_multiple"), frame_sizes(p, stride))),
            "sequences": len(sequences),
            "predictions": str(out),
            "precision": "float32",
        },
    )


def recipe_view(cell, reg, ctx) -> dict:
    """The recipe this job runs, from its parameters and its own constants (what tests/golden/recipes compares)."""
    p = ctx.params
    return {
        "n_last_frames": p.n_last_frames,
        "size_mask_neighborhood": p.size_mask_neighborhood,
        "topk": p.topk,
        "temperature": p.temperature,
        "short_side": p.short_side,
        "size_multiple": p.size_multiple,
        "normalize.std": list(DINO_DAVIS_STD),
        "bound_th": p.bound_th,
        "frames_scored": "every frame but the first and the last",
        "context": f"the first frame and the {p.n_last_frames} previous ones",
        "features": "the last block's patch tokens after the final norm",  # ViTs; a CNN's stage: resnet_layer
        "upsample": "bilinear by the feature stride, then min-max normalised per channel",
    }
