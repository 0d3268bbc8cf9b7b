"""Low-shot classification by logistic regression on frozen features (UDI's protocol, from DINO and iBOT:
eval_semi_supervised_learning/eval_logistic_regression.py).

The labelled subset (SimCLRv2's 1% or 10% list of ImageNet train file names: the protocol's
`train_split`, a split with a `split_file`) and the val split are embedded without augmentation (resize
256 bicubic, centre crop 224): the class token of the last block after the final norm (global average
pool for models without one), L2-normalised. A multinomial logistic regression with an L2 penalty and no
intercept is fitted for every lambda (divided by the number of training images, as UDI's
`adjust_lambd`); top-1 on val for each, and `top1` the best of them (UDI prints each; papers report the
best). The solver is scikit-learn's (lbfgs), where UDI uses cyanure's catalyst-miso on the same
objective: the optimum is the same (the objective is strictly convex), reached to the solvers' tolerance.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from harness.datasets import DatasetError, check_layout, open_rgb
from harness.device import data_workers
from harness.jobs.common import JobResult, require_finite


def labelled_subset(ds, split: str):
    """(root, [(path, class index)], classes) of a split that lists file names (`split_file`, one per line)
    under its class folders; every listed name must be found (the missing ones are named)."""
    from torchvision.datasets import ImageFolder

    root = check_layout(ds, splits=(split,))
    s = ds.splits[split]
    if not s.split_file:
        raise DatasetError(
            f"dataset '{ds.name}': split '{split}' lists no files (split_file); a low-shot subset is a list "
            f"of train image names, e.g. SimCLRv2's 1percent.txt ({ds.source})"
        )
    wanted = [line.strip() for line in (root / s.split_file).read_text().splitlines() if line.strip()]
    if not wanted:
        raise DatasetError(f"{root / s.split_file}: no file names")
    if len(set(wanted)) != len(wanted):
        dup = sorted({w for w in wanted if wanted.count(w) > 1})
        raise DatasetError(f"{root / s.split_file}: listed twice: {', '.join(dup[:5])}")
    folder = ImageFolder(str(root / s.img_dir), loader=open_rgb)
    by_name = {Path(path).name: (path, y) for path, y in folder.samples}
    missing = [w for w in wanted if Path(w).name not in by_name]
    if missing:
        raise DatasetError(
            f"{root / s.split_file}: {len(missing)} of {len(wanted)} listed images are not under "
            f"{root / s.img_dir}/<class>/ (e.g. {', '.join(missing[:5])})"
        )
    return root, [by_name[Path(w).name] for w in wanted], folder.classes


class FileImages(torch.utils.data.Dataset):
    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, y = self.samples[i]
        return self.transform(open_rgb(path)), y


@torch.no_grad()
def embed(backbone, samples, p, device: str, workers: int, autocast) -> tuple[torch.Tensor, np.ndarray]:
    from harness.features import eval_transform, maybe_autocast

    cuda = torch.device(device).type == "cuda"
    loader = torch.utils.data.DataLoader(
        FileImages(samples, eval_transform(p.resize, p.crop)),
        batch_size=p.batch_size,
        num_workers=workers,
        pin_memory=cuda,
    )
    feats = []
    with maybe_autocast(device, autocast):
        for x, _ in loader:
            feats.append(F.normalize(backbone.embed(x.to(device, non_blocking=cuda)).float(), dim=1).cpu())
    out = torch.cat(feats)
    require_finite(out, "the low-shot embeddings")
    return out, np.array([y for _, y in samples])


def fit_and_score(xtr, ytr, xte, yte, lam: float, p) -> float:
    """Top-1 (percent) of a multinomial logistic regression with penalty (lam / 2) |W|^2 on the mean loss
    and no intercept: scikit-learn's C (on the summed loss) is 1 / (lam n)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    n = len(ytr)
    lam_eff = lam / n if p.adjust_lambda else lam
    clf = LogisticRegression(C=1.0 / (lam_eff * n), fit_intercept=False, max_iter=p.max_iter, tol=p.tol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # checked below, with a message that says what to do
        clf.fit(xtr, ytr)
    if int(np.max(clf.n_iter_)) >= p.max_iter:  # not the optimum: never a number from an unfinished fit
        raise RuntimeError(
            f"the logistic regression at lambda {lam:g} did not converge in {p.max_iter} lbfgs iterations "
            f"(tol {p.tol:g}); raise max_iter in the protocol file"
        )
    return 100.0 * float((clf.predict(xte) == yte).mean())


def run(cell, ctx) -> JobResult:
    from harness.models.checkpoints import load_backbone

    p, reg, placement = ctx.params, ctx.registry, ctx.placement
    ds = reg.dataset(cell.dataset, cell.suite)
    t0 = time.perf_counter()
    _, train_samples, classes = labelled_subset(ds, p.train_split)
    root = check_layout(ds, splits=("val",))
    from torchvision.datasets import ImageFolder

    val = ImageFolder(str(root / ds.splits["val"].img_dir), loader=open_rgb)
    if val.classes != classes:
        raise DatasetError(f"{root}: the val classes are not the train classes")
    dev, cuda = placement.device, placement.accelerator == "cuda"
    precision = p.precision or ("bfloat16" if cuda else "float32")
    autocast = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[precision]
    bb = load_backbone(cell.method, cell.epoch, registry=reg, kind=cell.config["protocol"]["kind"])
    backbone = bb.backbone.to(dev).eval()
    workers = data_workers(placement, p.num_workers)
    xtr, ytr = embed(backbone, train_samples, p, dev, workers, autocast)
    xte, yte = embed(backbone, val.samples, p, dev, workers, autocast)
    t1 = time.perf_counter()
    seen = sorted(set(ytr.tolist()))
    top1_at = {f"{lam:g}": fit_and_score(xtr.numpy(), ytr, xte.numpy(), yte, lam, p) for lam in p.lambdas}
    best = max(top1_at, key=lambda k: top1_at[k])
    return JobResult(
        metrics={"top1": top1_at[best], "top1_at": top1_at},
        timings={"features_s": t1 - t0, "fit_s": time.perf_counter() - t1},
        info={
            "checkpoint": bb.summary(),
            "embedding": f"{backbone.embedding_kind}, L2-normalised",
            "train_split": p.train_split,
            "train_images": len(ytr),
            "train_classes_present": len(seen),
            "classes": len(classes),
            "val_images": len(yte),
            "best_lambda": float(best),
            "precision": precision,
            "solver": "scikit-learn LogisticRegression (lbfgs, multinomial), no intercept",
        },
    )


def recipe_view(cell, reg, ctx) -> dict:
    """The recipe this job runs (what tests/golden/recipes compares with UDI's eval_logistic_regression)."""
    from harness.features import eval_transform

    p = ctx.params
    tf = eval_transform(p.resize, p.crop).transforms
    return {
        "features": "last block's class token after the final norm, L2-normalised",
        "lambdas": list(p.lambdas),
        "adjust_lambda": p.adjust_lambda,
        "intercept": False,
        "penalty": "l2",
        "loss": "multinomial logistic",
        "solver": "lbfgs to convergence",
        "resize": tf[0].size,
        "resize.interpolation": tf[0].interpolation.value,
        "crop": tf[1].size[0],
        "normalize.mean": list(tf[3].mean),
        "normalize.std": list(tf[3].std),
        "result": "every lambda on val (top1_at); the best as top1",
        # the network the method file's state-dict rule reads (the SDD study's: the teacher)
        "checkpoint_key": str(reg.method(cell.method).checkpoint.state_dict.key or "the whole file"),
    }
