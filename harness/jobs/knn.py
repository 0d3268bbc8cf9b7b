"""Image-level k-NN classification (DINO protocol): L2-normalised embeddings of the train and val
folders, 20 nearest train images by cosine similarity, votes weighted by exp(sim / 0.07); top-1 and
top-5 accuracy. The embedding is the backbone's image-level one, as the paper and DINO's k-NN take it:
the class token (after the final norm) for ViTs that have one, global average pooling for CNNs, Swin
and class-token-free ViTs (recorded)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from harness.datasets import DatasetError, check_layout, open_rgb
from harness.device import data_workers
from harness.jobs.common import JobResult, require_finite


def _neighbours(train: torch.Tensor, test: torch.Tensor, k: int, chunk: int, train_chunk: int):
    """(the queries' slice, their k best similarities [q, k] in descending order, the neighbours' indices),
    chunk by chunk: similarities in blocks of `chunk` test x `train_chunk` train rows with a running top-k,
    so memory stays bounded (no test x train matrix) at ImageNet scale."""
    for s in range(0, len(test), chunk):
        q = test[s : s + chunk]
        best_sim = torch.full((len(q), k), -float("inf"), device=q.device, dtype=q.dtype)
        best_idx = torch.zeros((len(q), k), dtype=torch.long, device=q.device)
        for t0 in range(0, len(train), train_chunk):
            sims, idx = (q @ train[t0 : t0 + train_chunk].T).topk(min(k, len(train) - t0), dim=1)
            cat_s, cat_i = torch.cat([best_sim, sims], 1), torch.cat([best_idx, idx + t0], 1)
            best_sim, pick = cat_s.topk(k, dim=1)
            best_idx = cat_i.gather(1, pick)
        yield s, best_sim, best_idx


def _votes(best_sim, best_idx, train_labels, classes: int, k: int, temperature: float) -> torch.Tensor:
    """Weighted votes of the first k neighbours: DINO's exp(sim / T), each query's weights divided by its top
    neighbour's (the same vote ranking, without the overflow a small T gives)."""
    votes = torch.zeros(len(best_sim), classes, device=best_sim.device, dtype=torch.float32)
    sim, idx = best_sim[:, :k].float(), best_idx[:, :k]
    votes.scatter_add_(1, train_labels[idx], ((sim - sim[:, :1]) / temperature).exp())
    return votes.cpu()


def knn_sweep(
    train, train_labels, test, classes: int, ks, temperature: float = 0.07, chunk: int = 1024, train_chunk: int = 262144
) -> dict[int, torch.Tensor]:
    """k -> [test, classes] votes for every k of `ks`, from one neighbour search (DINO's eval_knn sweeps
    k = 10, 20, 100, 200 over the same sorted neighbours)."""
    kmax = min(max(ks), len(train))
    out: dict[int, list] = {k: [] for k in ks}
    for _, best_sim, best_idx in _neighbours(train, test, kmax, chunk, train_chunk):
        for k in ks:
            out[k].append(_votes(best_sim, best_idx, train_labels, classes, min(k, kmax), temperature))
    return {k: torch.cat(v) for k, v in out.items()}


def knn_classify(
    train,
    train_labels,
    test,
    classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
    train_chunk: int = 262144,
) -> torch.Tensor:
    """[test, classes] weighted votes of the k most similar train rows (inputs L2-normalised, on one device)."""
    return knn_sweep(train, train_labels, test, classes, (k,), temperature, chunk, train_chunk)[k]


@torch.no_grad()
def _embed(backbone, folder, resize, crop, batch, device: str, workers: int, autocast):
    from torchvision.datasets import ImageFolder

    from harness.features import eval_transform, maybe_autocast

    try:
        ds = ImageFolder(str(folder), transform=eval_transform(resize, crop), loader=open_rgb)
    except FileNotFoundError as e:  # torchvision's message names the classes but not the folder
        empty = (
            sorted(d.name for d in Path(folder).iterdir() if d.is_dir() and not any(d.iterdir()))
            if Path(folder).is_dir()
            else []
        )
        raise DatasetError(
            f"{folder}: {e}"
            + (f"; empty class folder(s): {', '.join(empty[:5])}" if empty else "")
            + "; every class folder must hold images"
        ) from None
    if not len(ds):
        raise DatasetError(f"no images under {folder}/<class>/")
    cuda = torch.device(device).type == "cuda"
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False, num_workers=workers, pin_memory=cuda)
    feats = []
    with maybe_autocast(device, autocast):
        for x, _ in loader:  # embeddings stay on the device (1.28 M x 384 float16 = 1 GB)
            feats.append(
                F.normalize(backbone.embed(x.to(device, non_blocking=cuda)).float(), dim=1).to(
                    torch.float16 if cuda else torch.float32
                )
            )
    out = torch.cat(feats)
    require_finite(out, f"the embeddings of {folder}")
    return out, torch.tensor(ds.targets, device=device), ds.classes


def run(cell, ctx) -> dict:
    from harness.models.checkpoints import load_backbone

    reg = ctx.registry
    p = ctx.params
    ds = reg.dataset(cell.dataset, cell.suite)
    root = check_layout(ds, splits=("train", "val"))
    t0 = time.perf_counter()
    bb = load_backbone(cell.method, cell.epoch, registry=reg, kind=cell.config["protocol"]["kind"])
    placement = ctx.placement
    dev, cuda = placement.device, placement.accelerator == "cuda"
    bb.backbone.to(dev)
    precision = p.precision or ("bfloat16" if cuda else "float32")
    autocast = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[precision]
    workers = data_workers(placement, p.num_workers)
    args = (p.resize, p.crop, p.batch_size, dev, workers, autocast)
    tr, tr_y, classes = _embed(bb.backbone, root / ds.splits["train"].img_dir, *args)
    te, te_y, te_classes = _embed(bb.backbone, root / ds.splits["val"].img_dir, *args)
    if te_classes != classes:
        raise ValueError(f"val classes differ from train classes under {root}")
    t1 = time.perf_counter()
    if max(p.ks) > len(tr):  # never a silent clamp: the record would say k=200 of a vote over fewer
        raise ValueError(
            f"k = {max(p.ks)} neighbours, but the training split has {len(tr)} images "
            f"({root / ds.splits['train'].img_dir}); lower ks in the protocol file"
        )
    sweep = knn_sweep(tr, tr_y, te, len(classes), p.ks, p.temperature)
    te_y = te_y.cpu()
    top1_at, top5_at = {}, {}
    for k, votes in sweep.items():
        require_finite(votes, f"the k-NN votes at k={k}")
        top = votes.topk(min(5, len(classes)), dim=1).indices
        top1_at[str(k)] = (top[:, 0] == te_y).float().mean().item() * 100
        top5_at[str(k)] = (top == te_y[:, None]).any(dim=1).float().mean().item() * 100
    top1, top5 = top1_at[str(p.k)], top5_at[str(p.k)]
    return JobResult(
        metrics={"top1": top1, "top5": top5, "top1_at": top1_at, "top5_at": top5_at},
        timings={"features_s": t1 - t0, "knn_s": time.perf_counter() - t1},
        info={
            "checkpoint": bb.summary(),
            "embedding": f"{bb.backbone.embedding_kind}, L2-normalised",
            "train_images": len(tr),
            "precision": precision,
            "data_loading": {"workers": workers, "pin_memory": cuda},
            "top5_over": min(5, len(classes)),
            "val_images": len(te),
        },
    )


def recipe_view(cell, reg, ctx) -> dict:
    """The recipe this job runs, from its parameters and its own code (what tests/golden/recipes compares)."""
    from harness.features import eval_transform

    p = ctx.params
    tf = eval_transform(p.resize, p.crop).transforms
    return {
        "ks": list(p.ks),
        "temperature": p.temperature,
        "resize": tf[0].size,
        "resize.interpolation": tf[0].interpolation.value,
        "crop": tf[1].size[0],
        "normalize.mean": list(tf[3].mean),
        "normalize.std": list(tf[3].std),
        "features": "L2-normalised image-level embedding (class token for ViTs)",
        "vote": "exp(similarity / temperature), summed per class over the k nearest",
    }
