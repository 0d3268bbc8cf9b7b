"""The one optimiser rule of every fine-tuning job (UperNet, Semantic FPN, Mask R-CNN on either backend):
AdamW parameter groups with

- no weight decay on 1-D parameters (norms, biases) and on the position embedding, class and register
  tokens (BEiT, iBOT, UDI/SelfPatch and ViTDet alike);
- layer-wise lr decay for a ViT backbone, ViTDet's rule (`get_vit_lr_decay_rate`): the embeddings are
  layer 0, block i is layer i + 1, anything after the blocks layer depth + 1; a parameter of layer l gets
  lr × rate^(depth + 1 − l). Parameters outside the backbone keep the base lr.

mmengine jobs reach it through `SDDParamGroupsConstructor` (harness.jobs.mm_modules); the torchvision
and detectron2 Mask R-CNN call `param_groups` directly. Pure torch, no framework imports.
"""

from __future__ import annotations

NO_DECAY_TOKENS = ("pos_embed", "cls_token", "reg_token")
EMBEDDINGS = ("pos_embed", "patch_embed", "cls_token", "reg_token")


def vit_depth(model) -> int | None:
    """Blocks of the ViT inside `model` (None for CNN backbones)."""
    depths = [len(m.blocks) for m in model.modules() if hasattr(m, "blocks") and hasattr(m, "patch_embed")]
    return depths[0] if depths else None


def layer_id(name: str, depth: int) -> int:
    """ViTDet's layer of a ViT parameter: embeddings 0, block i -> i + 1, anything after the blocks depth + 1."""
    if ".blocks." in name:
        return int(name.split(".blocks.")[1].split(".")[0]) + 1
    if any(f".{t}" in name or name.startswith(t) for t in EMBEDDINGS):
        return 0
    return depth + 1


def lr_scale(name: str, rate: float, depth: int | None) -> float:
    """The lr multiplier of a backbone parameter (1 for a CNN backbone or rate 1)."""
    if depth is None or rate == 1.0:
        return 1.0
    return rate ** (depth + 1 - layer_id(name, depth))


def no_weight_decay(name: str, param) -> bool:
    return param.ndim <= 1 or any(name.endswith(t) for t in NO_DECAY_TOKENS)


def param_groups(
    model, *, lr: float, weight_decay: float, layer_decay_rate: float = 1.0, backbone_prefix: str = "backbone."
) -> list[dict]:
    """AdamW parameter groups of `model`'s trainable parameters, one per (lr multiplier, decay), in a
    stable order; each group lists its parameter names (`names`) for the record."""
    depth = vit_depth(model)
    groups: dict[tuple, dict] = {}
    for name, q in model.named_parameters():
        if not q.requires_grad:
            continue
        skip_decay = no_weight_decay(name, q)
        scale = (
            lr_scale(name.split(backbone_prefix, 1)[1], layer_decay_rate, depth)
            if name.startswith(backbone_prefix)
            else 1.0
        )
        key = (round(scale, 12), skip_decay)
        g = groups.setdefault(
            key,
            {
                "params": [],
                "names": [],
                "lr": lr * scale,
                "lr_scale": scale,
                "weight_decay": 0.0 if skip_decay else weight_decay,
            },
        )
        g["params"].append(q)
        g["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def describe_groups(optimizer) -> list[dict]:
    """What the record says about each parameter group that ran: lr, decay, size and a few names."""
    return [
        {
            "lr": g.get("initial_lr", g["lr"]),
            "weight_decay": g["weight_decay"],
            "params": len(g["params"]),
            "numel": sum(q.numel() for q in g["params"]),
            "examples": list(g.get("names", []))[:3],
        }
        for g in optimizer.param_groups
    ]


def describe_optimizer(optimizer, p, schedule: dict | None = None) -> dict:
    """What the record says about the optimizer that ran: type, hyper-parameters, every group's lr and
    decay and size (and a few of its parameter names), and the schedule (as resolved, when given)."""
    groups = describe_groups(optimizer)
    return {
        "optimizer": {
            "type": type(optimizer).__name__,
            "lr": p.optimizer.lr,
            "weight_decay": p.optimizer.weight_decay,
            "betas": list(p.optimizer.betas),
            "layer_decay_rate": p.optimizer.layer_decay_rate,
        },
        "param_groups": groups,
        "schedule": {
            **(schedule or {"iters": p.iters, "warmup_iters": p.warmup_iters, "steps": list(p.steps)}),
            "warmup_factor": p.warmup_factor,
            "gamma": p.gamma,
        },
    }
