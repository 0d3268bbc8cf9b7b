"""The parts of the Mask R-CNN recipe both backends share (pure torch): the ViT feature pyramids
(`rescale_stage`: UDI/SelfPatch's multi-level pyramid, one block's map rescaled; `simple_stage`: ViTDet's
simple feature pyramid on the last block), the schedule in optimizer steps and its lr factor, and the
backbone's stochastic depth."""

from __future__ import annotations

from torch import nn


class LayerNorm2d(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = nn.LayerNorm(c)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def simple_stage(d: int, s: float, out: int) -> nn.Sequential:
    """ViTDet's simple feature pyramid, one scale of the last block's map: (de)convolutions, then 1x1 and
    3x3 convs with channel LayerNorm."""
    if s == 4.0:
        layers, c = (
            [
                nn.ConvTranspose2d(d, d // 2, 2, 2),
                LayerNorm2d(d // 2),
                nn.GELU(),
                nn.ConvTranspose2d(d // 2, d // 4, 2, 2),
            ],
            d // 4,
        )
    elif s == 2.0:
        layers, c = [nn.ConvTranspose2d(d, d // 2, 2, 2)], d // 2
    elif s == 1.0:
        layers, c = [], d
    else:
        layers, c = [nn.MaxPool2d(2, 2)], d
    layers += [
        nn.Conv2d(c, out, 1, bias=False),
        LayerNorm2d(out),
        nn.Conv2d(out, out, 3, padding=1, bias=False),
        LayerNorm2d(out),
    ]
    return nn.Sequential(*layers)


def rescale_stage(d: int, s: float) -> nn.Module:
    """UDI/SelfPatch's rescaling of one ViT block's map (their backbone's fpn1..fpn4, mmseg's Feature2Pyramid):
    x4: ConvT(2, 2) -> BatchNorm -> GELU -> ConvT(2, 2); x2: ConvT(2, 2); x1: identity; x0.5: max-pool 2.
    Channels stay those of the ViT."""
    if s == 4.0:
        return nn.Sequential(
            nn.ConvTranspose2d(d, d, 2, 2), nn.BatchNorm2d(d), nn.GELU(), nn.ConvTranspose2d(d, d, 2, 2)
        )
    if s == 2.0:
        return nn.ConvTranspose2d(d, d, 2, 2)
    if s == 1.0:
        return nn.Identity()
    if s == 0.5:
        return nn.MaxPool2d(2, 2)
    raise ValueError(f"a ViT level rescales by 4, 2, 1 or 0.5, not {s}")


def resolve_schedule(p, n_train: int) -> dict:
    """The schedule in optimizer steps: `iters`/`steps` as given, or an epoch-based one (`epochs`,
    `step_epochs`) over this training set at the global batch."""
    if p.epochs is None:
        return {
            "iters": p.iters,
            "steps": list(p.steps),
            "warmup_iters": p.warmup_iters,
            "epochs": None,
            "iters_per_epoch": None,
        }
    per_epoch = -(-n_train // p.batch_size)
    return {
        "iters": p.epochs * per_epoch,
        "steps": [e * per_epoch for e in p.step_epochs],
        "warmup_iters": min(p.warmup_iters, p.epochs * per_epoch),
        "epochs": p.epochs,
        "iters_per_epoch": per_epoch,
    }


def drop_path(p, reg, method: str) -> dict | None:
    """Stochastic depth for a fine-tuned ViT or Swin (the recipe's drop_path); None for a CNN."""
    from harness.models.archs import facts_of_method

    family = facts_of_method(reg.method(method)).family
    return {"drop_path_rate": p.drop_path} if family in ("vit", "swin") and p.drop_path else None


def lr_factor(step: int, p, schedule: dict) -> float:
    """Linear warm-up from warmup_factor, then x gamma at each of the steps (detectron2's WarmupMultiStepLR,
    mmdet's step policy with linear warm-up)."""
    f = p.gamma ** sum(step >= s for s in schedule["steps"])
    if step < schedule["warmup_iters"]:
        alpha = step / schedule["warmup_iters"]
        f *= p.warmup_factor * (1 - alpha) + alpha
    return f
