"""Image-level k-NN classification (DINO protocol): L2-normalised embeddings of the train and val
folders, 20 nearest train images by cosine similarity, votes weighted by exp(sim / 0.07); top-1 and
top-5 accuracy. The embedding is the mean of the last-layer dense tokens for every architecture
(recorded), so methods are compared on one rule."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from harness.datasets import DatasetError, check_layout, open_rgb


def knn_classify(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, classes: int, k: int = 20,
                 temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """[test, classes] weighted votes; inputs are L2-normalised."""
    k = min(k, len(train))
    out = []
    for s in range(0, len(test), chunk):
        sims, idx = (test[s:s + chunk] @ train.T).topk(k, dim=1)
        votes = torch.zeros(len(sims), classes).scatter_add_(1, train_labels[idx], (sims / temperature).exp())
        out.append(votes)
    return torch.cat(out)


@torch.no_grad()
def _embed(backbone, folder, resize, crop, batch):
    from torchvision.datasets import ImageFolder

    from harness.features import eval_transform

    ds = ImageFolder(str(folder), transform=eval_transform(resize, crop), loader=open_rgb)
    if not len(ds):
        raise DatasetError(f"no images under {folder}/<class>/")
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False)
    feats = [F.normalize(backbone.dense(x).mean(dim=1), dim=1) for x, _ in loader]
    return torch.cat(feats), torch.tensor(ds.targets), ds.classes


def run(cell, ctx) -> dict:
    from harness.models.checkpoints import load_backbone

    reg = ctx.registry
    p = cell.config["protocol"]["params"]
    ds = reg.dataset(cell.dataset)
    root = check_layout(ds, splits=("train", "val"))
    t0 = time.perf_counter()
    bb = load_backbone(cell.method, cell.epoch, registry=reg)
    args = (int(p.get("resize", 256)), int(p.get("crop", 224)), int(p.get("batch_size", 64)))
    tr, tr_y, classes = _embed(bb.backbone, root / ds.splits["train"].img_dir, *args)
    te, te_y, te_classes = _embed(bb.backbone, root / ds.splits["val"].img_dir, *args)
    if te_classes != classes:
        raise ValueError(f"val classes differ from train classes under {root}")
    t1 = time.perf_counter()
    votes = knn_classify(tr, tr_y, te, len(classes), int(p.get("k", 20)), float(p.get("temperature", 0.07)))
    top = votes.topk(min(5, len(classes)), dim=1).indices
    top1 = (top[:, 0] == te_y).float().mean().item() * 100
    top5 = (top == te_y[:, None]).any(dim=1).float().mean().item() * 100
    return {"metrics": {"top1": top1, "top5": top5}, "checkpoint": bb.summary(),
            "embedding": "mean of last-layer dense tokens, L2-normalised", "train_images": len(tr),
            "val_images": len(te), "timings": {"features_s": t1 - t0, "knn_s": time.perf_counter() - t1}}
