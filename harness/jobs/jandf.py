"""J&F of DAVIS-2017 semi-supervised evaluation, written from the benchmark's definitions
(davisvideochallenge/davis2017-evaluation; its package uses numpy's removed `np.bool`, so the
harness computes the same quantities itself):

- J: region IoU per object and frame; void pixels (255 in the ground truth) excluded; an empty
  union gives 1.
- F: boundary F-measure. Boundaries come from the mask's 1-pixel border map; the tolerance is
  ceil(0.008 * image diagonal) pixels, by dilation with a disk. Precision and recall are the
  matched boundary fractions, F = 2PR/(P+R). If neither mask has a boundary, P = R = 1.
- First and last frames are excluded. Per object: Mean (nanmean over frames), Recall (fraction of
  frames > 0.5), Decay (mean of the first of 4 frame bins minus the mean of the last).
  J-Mean and F-Mean are means over every object of every sequence; J&F-Mean is their average.
"""

from __future__ import annotations

import math
import warnings

import cv2
import numpy as np


def region_iou(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> float:
    gt, pred = gt.astype(bool), pred.astype(bool)
    keep = ~void.astype(bool) if void is not None else np.ones_like(gt)
    union = ((gt | pred) & keep).sum()
    if union == 0:
        return 1.0
    return float(((gt & pred) & keep).sum() / union)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """1-pixel boundary of a binary mask: a pixel differs from its right, lower or lower-right neighbour."""
    m = mask.astype(bool)
    e, s, se = np.zeros_like(m), np.zeros_like(m), np.zeros_like(m)
    e[:, :-1], s[:-1, :], se[:-1, :-1] = m[:, 1:], m[1:, :], m[1:, 1:]
    b = (m ^ e) | (m ^ s) | (m ^ se)
    b[-1, :] = m[-1, :] ^ e[-1, :]
    b[:, -1] = m[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def disk(radius: int) -> np.ndarray:
    r = int(radius)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx**2 + yy**2 <= r**2).astype(np.uint8)


def boundary_f(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None, bound_th: float = 0.008) -> float:
    keep = ~void.astype(bool) if void is not None else np.ones(gt.shape, bool)
    bound_pix = bound_th if bound_th >= 1 else math.ceil(bound_th * np.linalg.norm(gt.shape))
    fg_b, gt_b = boundary_map(pred.astype(bool) & keep), boundary_map(gt.astype(bool) & keep)
    se = disk(bound_pix)
    fg_dil = cv2.dilate(fg_b.astype(np.uint8), se).astype(bool)
    gt_dil = cv2.dilate(gt_b.astype(np.uint8), se).astype(bool)
    n_fg, n_gt = fg_b.sum(), gt_b.sum()
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision, recall = (fg_b & gt_dil).sum() / n_fg, (gt_b & fg_dil).sum() / n_gt
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def statistics(values: np.ndarray) -> tuple[float, float, float]:
    """(Mean, Recall, Decay) of one object's per-frame values."""
    v = np.asarray(values, dtype=float)
    ids = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(int)
    bins = [v[ids[i] : ids[i + 1] + 1] for i in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(v)), float(np.nanmean(v > 0.5)), float(np.nanmean(bins[0]) - np.nanmean(bins[3]))


def evaluate_sequence(gt_frames: list[np.ndarray], pred_frames: list[np.ndarray], bound_th: float = 0.008) -> dict:
    """Per object of one sequence: J and F per frame (first and last frames excluded)."""
    objects = sorted(int(o) for o in np.unique(gt_frames[0]) if o not in (0, 255))
    out = {}
    for o in objects:
        js, fs = [], []
        for gt, pred in zip(gt_frames[1:-1], pred_frames[1:-1]):
            void = gt == 255
            js.append(region_iou(gt == o, pred == o, void))
            fs.append(boundary_f(gt == o, pred == o, void, bound_th))
        out[o] = {"J": np.array(js), "F": np.array(fs)}
    return out


def summarize(per_sequence: dict[str, dict]) -> dict:
    """J&F-Mean, J/F Mean, Recall, Decay over every object of every sequence."""
    rows = {"J": [], "F": []}
    per_object = {}
    for seq, objs in sorted(per_sequence.items()):
        for o, v in objs.items():
            sj, sf = statistics(v["J"]), statistics(v["F"])
            rows["J"].append(sj)
            rows["F"].append(sf)
            per_object[f"{seq}_{o}"] = {"J": sj[0], "F": sf[0]}
    if not rows["J"]:
        raise ValueError("no objects to evaluate (first-frame annotations are empty)")
    j, f = np.array(rows["J"]), np.array(rows["F"])
    return {
        "JF_mean": float((j[:, 0].mean() + f[:, 0].mean()) / 2),
        "J_mean": float(j[:, 0].mean()),
        "J_recall": float(j[:, 1].mean()),
        "J_decay": float(j[:, 2].mean()),
        "F_mean": float(f[:, 0].mean()),
        "F_recall": float(f[:, 1].mean()),
        "F_decay": float(f[:, 2].mean()),
        "objects": len(j),
        "per_object": per_object,
    }
