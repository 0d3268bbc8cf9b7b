"""A tiny SSL trainer for the mini world: three objectives in the spirit of the paper's families,
a checkpoint after every epoch **in each method's own file format**, so the mini methods' registry
entries use the same adapter rules as the real DINO, MoCo v3 and MAE.

- dino  (self-distillation): student/teacher ViT + DINO head, centring and sharpening, EMA teacher;
        `checkpoint{epoch:04d}.pth` with `student` (module.backbone.*), `teacher` (backbone.*, head.*),
        `optimizer`, `epoch`, `args`, `dino_loss`.
- mocov3 (contrastive): base and momentum encoder (+ projector head), predictor, InfoNCE;
        `checkpoint_{epoch:04d}.pth.tar` with `state_dict` (module.base_encoder.*, module.momentum_encoder.*,
        module.predictor.*), `optimizer`, `epoch`, `arch`.
- mae   (masked modelling): ViT encoder on 25% of the patches + a light decoder reconstructing the
        normalised pixels of the masked ones; `checkpoint-{epoch}.pth` with `model` (encoder keys at top
        level + decoder_*), `epoch` = 0-based loop index, `args`.
- directclr (dimensional collapse): no projector, InfoNCE on a fixed sub-vector of the representation;
        `checkpoint-ep{epoch:04d}.pth` with main.py's resumable `model` (module.backbone.*), `optimizer`, `epoch`.
`--dse-beta` adds the DSE regulariser (loss - beta * DSE of the student's dense tokens), `--w2-lambda` the
W2 uniformity loss (loss + lambda * W2 of the projector outputs), `--gram-weight` DINOv3's Gram anchoring
(loss + w * Gram loss of the student's patch tokens against a frozen copy of the --resume checkpoint);
`--resume CKPT --resume-epoch E` continues a run from one of its checkpoints (weights, teacher / momentum
encoder, optimizer) up to `--epochs`, the
interventions' starting point (harness/mini/interventions.py).
The learning rate warms up over the first epoch and then stays constant (`--schedule constant`, the
mini world's default): late checkpoints keep moving, as in the long schedules the paper studies, where
a cosine decay to zero over a few epochs would freeze them (docs/demo.md). The teacher / momentum
encoder follows at `--momentum` (0.99: a 0.996 teacher barely leaves its initialisation in a few
hundred steps, and mini DINO's head stayed collapsed at loss ≈ log 64).
Training is cached: an existing final checkpoint with the same settings is not retrained.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from harness.atomic import save_tensors, write_json
from harness.models.archs import build_backbone

ARCH = "vit_tiny_test"


def _views(size: int):
    from torchvision import transforms as T

    from harness.datasets import IMAGENET_MEAN, IMAGENET_STD

    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.35, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.3, 0.3, 0.2, 0.05)], p=0.8),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class TwoViews:
    def __init__(self, tf):
        self.tf = tf

    def __call__(self, im):
        return self.tf(im), self.tf(im)


def mlp(i, h, o, bn=False):
    layers = [nn.Linear(i, h)] + ([nn.BatchNorm1d(h)] if bn else []) + [nn.GELU(), nn.Linear(h, o)]
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    def __init__(self, d, out=64, hidden=96, bottleneck=32):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, bottleneck)
        )
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out, bias=False))

    def forward(self, x):
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


def _cls(bb, x):
    return bb.net.forward_features(x)[:, 0]


def _ema(student, teacher, m):
    with torch.no_grad():
        for ps, pt in zip(student.parameters(), teacher.parameters()):
            pt.mul_(m).add_(ps.detach(), alpha=1 - m)


def _state(module, prefix):
    sd = module.state_dict()
    out = {}
    for k, v in sd.items():
        # weight_norm parametrization keys -> the original weight_g / weight_v names DINO checkpoints carry
        k = k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        )
        out[prefix + k] = v
    return out


def _load(module, sd, prefix, what):
    """The inverse of `_state`: every key of `module` from `sd[prefix + key]` (weight_g / weight_v back to the
    weight_norm parametrization), all of them required."""
    own = {}
    missing = []
    for k in module.state_dict():
        stored = prefix + k.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        )
        if stored in sd:
            own[k] = sd[stored]
        else:
            missing.append(stored)
    if missing:
        raise ResumeError(f"{what}: {len(missing)} key(s) missing, e.g. {missing[:3]}")
    module.load_state_dict(own, strict=True)


class ResumeError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------


class DINO:
    file = "checkpoint{epoch:04d}.pth"
    epoch_offset = 0  # the checkpoint's `epoch` + this = the epochs done

    def __init__(self, args):
        self.student = build_backbone(ARCH)
        self.s_head = DINOHead(self.student.dim)
        self.teacher, self.t_head = copy.deepcopy(self.student), copy.deepcopy(self.s_head)
        for p in list(self.teacher.parameters()) + list(self.t_head.parameters()):
            p.requires_grad_(False)
        self.center = torch.zeros(1, 64)
        self.params = list(self.student.parameters()) + list(self.s_head.parameters())

    def loss(self, v1, v2):
        s = [self.s_head(_cls(self.student, v)) / 0.1 for v in (v1, v2)]
        with torch.no_grad():
            t = [self.t_head(_cls(self.teacher, v)) for v in (v1, v2)]
            tp = [F.softmax((x - self.center) / 0.04, dim=-1) for x in t]
            self.center = 0.9 * self.center + 0.1 * torch.cat(t).mean(dim=0, keepdim=True)
        return sum(-(tp[i] * F.log_softmax(s[1 - i], dim=-1)).sum(-1).mean() for i in range(2)) / 2

    def after_step(self, m):
        _ema(self.student, self.teacher, m)
        _ema(self.s_head, self.t_head, m)

    def tokens(self, v):
        return self.student.dense(v)

    def checkpoint(self, epoch, opt, args):
        return {
            "student": {**_state(self.student.net, "module.backbone."), **_state(self.s_head, "module.head.")},
            "teacher": {**_state(self.teacher.net, "backbone."), **_state(self.t_head, "head.")},
            "optimizer": opt.state_dict(),
            "epoch": epoch,
            "args": argparse.Namespace(**vars(args)),
            "dino_loss": {"center": self.center.clone()},
        }

    def restore(self, ck, where):
        _load(self.student.net, ck["student"], "module.backbone.", f"{where}: student backbone")
        _load(self.s_head, ck["student"], "module.head.", f"{where}: student head")
        _load(self.teacher.net, ck["teacher"], "backbone.", f"{where}: teacher backbone")
        _load(self.t_head, ck["teacher"], "head.", f"{where}: teacher head")
        self.center = ck["dino_loss"]["center"].clone()


class MoCoV3:
    file = "checkpoint_{epoch:04d}.pth.tar"
    epoch_offset = 0

    def __init__(self, args):
        self.base = build_backbone(ARCH)
        d = self.base.dim
        self.base_head = mlp(d, 96, 32, bn=True)
        self.predictor = mlp(32, 96, 32, bn=True)
        self.mom, self.mom_head = copy.deepcopy(self.base), copy.deepcopy(self.base_head)
        for p in list(self.mom.parameters()) + list(self.mom_head.parameters()):
            p.requires_grad_(False)
        self.params = (
            list(self.base.parameters()) + list(self.base_head.parameters()) + list(self.predictor.parameters())
        )

    def _nce(self, q, k):
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        logits = q @ k.T / 0.2
        return F.cross_entropy(logits, torch.arange(len(q))) * 2 * 0.2

    def loss(self, v1, v2):
        z1, z2 = (self.base_head(_cls(self.base, v)) for v in (v1, v2))
        self.projections = torch.cat([z1, z2])  # what W2 regularises (WassersteinSSL: the projector outputs)
        q1, q2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            k1, k2 = (self.mom_head(_cls(self.mom, v)) for v in (v1, v2))
        return self._nce(q1, k2) + self._nce(q2, k1)

    def after_step(self, m):
        _ema(self.base, self.mom, m)
        _ema(self.base_head, self.mom_head, m)

    def tokens(self, v):
        return self.base.dense(v)

    def checkpoint(self, epoch, opt, args):
        return {
            "epoch": epoch,
            "arch": ARCH,
            "optimizer": opt.state_dict(),
            "state_dict": {
                **_state(self.base.net, "module.base_encoder."),
                **_state(self.base_head, "module.base_encoder.head."),
                **_state(self.mom.net, "module.momentum_encoder."),
                **_state(self.mom_head, "module.momentum_encoder.head."),
                **_state(self.predictor, "module.predictor."),
            },
        }

    def restore(self, ck, where):
        sd = ck["state_dict"]
        _load(self.base.net, sd, "module.base_encoder.", f"{where}: base encoder")
        _load(self.base_head, sd, "module.base_encoder.head.", f"{where}: base projector")
        _load(self.mom.net, sd, "module.momentum_encoder.", f"{where}: momentum encoder")
        _load(self.mom_head, sd, "module.momentum_encoder.head.", f"{where}: momentum projector")
        _load(self.predictor, sd, "module.predictor.", f"{where}: predictor")


class MAE:
    file = "checkpoint-{epoch}.pth"
    epoch_offset = 1  # MAE stores the 0-based loop index

    def __init__(self, args):
        self.enc = build_backbone(ARCH)
        d, self.patch = self.enc.dim, 16
        self.dec = nn.ModuleDict(
            {
                "decoder_embed": nn.Linear(d, 32),
                # a transformer block: masked tokens must see the visible ones
                "decoder_blocks": nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0, batch_first=True, norm_first=True),
                "decoder_norm": nn.LayerNorm(32),
                "decoder_pred": nn.Linear(32, 3 * 16 * 16),
            }
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 32))
        self.decoder_pos = nn.Parameter(torch.randn(1, 64, 32) * 0.02)
        self.params = list(self.enc.parameters()) + list(self.dec.parameters()) + [self.mask_token, self.decoder_pos]

    def loss(self, v1, v2):
        x = v1
        b = x.shape[0]
        net = self.enc.net
        tokens = net.patch_embed(x)  # [B, N, d] (dynamic size -> NHWC for timm; flatten)
        if tokens.ndim == 4:
            tokens = tokens.flatten(1, 2)
        n = tokens.shape[1]
        pos = net.pos_embed[:, 1:] if net.pos_embed.shape[1] == n + 1 else net.pos_embed
        if pos.shape[1] != n:  # interpolate the grid of a smaller crop
            g, gn = int(math.sqrt(pos.shape[1])), int(math.sqrt(n))
            pos = (
                F.interpolate(
                    pos.reshape(1, g, g, -1).permute(0, 3, 1, 2), size=(gn, gn), mode="bicubic", align_corners=False
                )
                .permute(0, 2, 3, 1)
                .reshape(1, n, -1)
            )
        tokens = tokens + pos
        keep = max(1, n // 4)
        order = torch.rand(b, n).argsort(dim=1)
        vis = order[:, :keep]
        xv = torch.gather(tokens, 1, vis[..., None].expand(-1, -1, tokens.shape[-1]))
        cls = (net.cls_token + net.pos_embed[:, :1]).expand(b, -1, -1)
        h = net.blocks(torch.cat([cls, xv], dim=1))
        h = net.norm(h)[:, 1:]
        e = self.dec["decoder_embed"](h)
        full = self.mask_token.expand(b, n, -1).clone()
        full.scatter_(1, vis[..., None].expand(-1, -1, e.shape[-1]), e)
        full = full + self.decoder_pos[:, :n]
        pred = self.dec["decoder_pred"](self.dec["decoder_norm"](self.dec["decoder_blocks"](full)))
        target = F.unfold(x, self.patch, stride=self.patch).transpose(1, 2)  # [B, N, 3*16*16]
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        masked = torch.ones(b, n, dtype=torch.bool)
        masked.scatter_(1, vis, False)
        return ((pred - target) ** 2).mean(-1)[masked].mean()

    def after_step(self, m):
        pass

    def tokens(self, v):
        return self.enc.dense(v)

    def checkpoint(self, epoch, opt, args):
        dec = {k: v for k, v in self.dec.state_dict().items()}
        return {
            "model": {
                **self.enc.net.state_dict(),
                **dec,
                "mask_token": self.mask_token.data,
                "decoder_pos_embed": self.decoder_pos.data,
            },
            "optimizer": opt.state_dict(),
            "epoch": epoch - 1,
            "args": argparse.Namespace(**vars(args)),
        }

    def restore(self, ck, where):
        sd = ck["model"]
        _load(self.enc.net, sd, "", f"{where}: encoder")
        _load(self.dec, sd, "", f"{where}: decoder")
        self.mask_token.data.copy_(sd["mask_token"])
        self.decoder_pos.data.copy_(sd["decoder_pos_embed"])


class DirectCLR:
    """DirectCLR (facebookresearch/directclr directclr/main.py, mode "directclr"): no projector; InfoNCE
    (temperature 0.1, both directions halved) on the first `DIM` dimensions of the representation itself,
    both views through the same backbone with gradient. The official `--dim 360` of ResNet-50's 2,048 is
    scaled to the tiny ViT's 48 dimensions (8). The official online linear head (trained on detached
    features, so it never reaches the backbone) is left out. Saved as main.py's resumable checkpoint
    (`model` with module.backbone.*, `optimizer`, `epoch` = epochs done), one file per epoch."""

    file = "checkpoint-ep{epoch:04d}.pth"
    epoch_offset = 0
    DIM = 8

    def __init__(self, args):
        self.backbone = build_backbone(ARCH)
        self.params = list(self.backbone.parameters())

    @staticmethod
    def _info_nce(a, b, temperature=0.1):
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        return F.cross_entropy(a @ b.T / temperature, torch.arange(len(a)))

    def loss(self, v1, v2):
        r1, r2 = _cls(self.backbone, v1), _cls(self.backbone, v2)
        z1, z2 = r1[:, : self.DIM], r2[:, : self.DIM]
        self.projections = torch.cat([r1, r2])
        return self._info_nce(z1, z2) / 2 + self._info_nce(z2, z1) / 2

    def after_step(self, m):
        pass

    def tokens(self, v):
        return self.backbone.dense(v)

    def checkpoint(self, epoch, opt, args):
        return {"epoch": epoch, "model": _state(self.backbone.net, "module.backbone."), "optimizer": opt.state_dict()}

    def restore(self, ck, where):
        _load(self.backbone.net, ck["model"], "module.backbone.", f"{where}: backbone")


OBJECTIVES = {"dino": DINO, "mocov3": MoCoV3, "mae": MAE, "directclr": DirectCLR}


# options added after the mini world's first checkpoints: at their defaults they stay out of the hash, so
# the cached runs (and every record computed from them) stay current
_LATER_DEFAULTS = {"w2_lambda": 0.0, "resume": "", "resume_epoch": 0, "gram_weight": 0.0}


def settings_hash(args) -> str:
    keep = {
        k: v
        for k, v in vars(args).items()
        if k not in ("out", "data", "quiet") and not (k in _LATER_DEFAULTS and v == _LATER_DEFAULTS[k])
    }
    if args.resume and Path(args.resume).is_file():  # a resumed run is its checkpoint's: retrained when that changes
        keep["resume_sha256"] = hashlib.sha256(Path(args.resume).read_bytes()).hexdigest()
    if args.data and Path(args.data).is_dir():  # and its images': other images under the same --data retrain
        from harness.datasets import stat_stamp

        root = Path(args.data)
        keep["data"] = stat_stamp(sorted(f for f in root.rglob("*") if f.is_file()), root)
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:12]


def _resume(args, model, opt) -> None:
    """Restore `model` and `opt` from --resume, which must hold --resume-epoch and this objective's keys."""
    from harness.models.checkpoints import epoch_value, safe_load

    offset = OBJECTIVES[args.objective].epoch_offset
    ck = safe_load(args.resume)
    stored = ck.get("epoch") if isinstance(ck, dict) else None
    try:  # read whatever its type (np.int64, "9", tensor([8, 8])), as the harness reads checkpoints
        held = None if stored is None else epoch_value(stored) + offset
    except ValueError as e:
        raise ResumeError(f"{args.resume}: its 'epoch' field is no epoch ({e})") from None
    if held != args.resume_epoch:
        raise ResumeError(
            f"{args.resume} holds epoch {held}, not --resume-epoch {args.resume_epoch}: pass the checkpoint's own epoch"
        )
    try:
        model.restore(ck, args.resume)
        opt.load_state_dict(ck["optimizer"])  # AdamW's moments too: a resumed run, not a fresh fine-tune
    except (KeyError, ValueError, RuntimeError) as e:
        raise ResumeError(
            f"{args.resume}: not a {args.objective} checkpoint of this pre-trainer ({type(e).__name__}: {e}); "
            f"--objective must be the one that wrote it"
        ) from None


def _regularisers(args):
    """(DSELoss or None, W2Loss or None) from --dse-beta and --w2-lambda."""
    dse = w2 = None
    if args.dse_beta > 0:
        from harness.metrics.dse_loss import DSELoss

        dse = DSELoss(seed=args.seed)
    if args.w2_lambda > 0:
        if args.objective not in ("mocov3", "directclr"):
            raise ResumeError(f"--w2-lambda: objective {args.objective!r} has no projector outputs to regularise")
        from harness.metrics.w2_loss import W2Loss

        w2 = W2Loss()
    return dse, w2


def _gram_teacher(args, model):
    """DINOv3's Gram anchoring (harness.metrics.gram_loss): the teacher is a frozen copy of the model as the run
    resumed it (the checkpoint --resume names: in the interventions, the DSE-selected one), never updated, as
    DINOv3's high-resolution stage keeps its Gram teacher fixed (rep_update: false)."""
    if args.gram_weight <= 0:
        return None, None
    if not args.resume:
        raise ResumeError("--gram-weight: Gram anchoring needs --resume (its teacher is the checkpoint resumed from)")
    from harness.metrics.gram_loss import GramLoss

    teacher = copy.deepcopy(model)
    for module in vars(teacher).values():
        if isinstance(module, nn.Module):
            module.requires_grad_(False).eval()
    return teacher, GramLoss()


def train(args) -> Path:
    from torchvision.datasets import ImageFolder
    from tqdm.auto import tqdm

    out = Path(args.out)
    obj_cls = OBJECTIVES[args.objective]
    marker = out / "TRAINED.json"
    h = settings_hash(args)
    if marker.is_file() and json.loads(marker.read_text()).get("settings") == h:
        return out  # cached
    torch.manual_seed(args.seed)
    model = obj_cls(args)
    first = 1
    if args.resume:
        first = args.resume_epoch + 1
        if first > args.epochs:
            raise ResumeError(
                f"--resume-epoch {args.resume_epoch} leaves nothing to train up to --epochs {args.epochs}"
            )
    ds = ImageFolder(str(Path(args.data) / "train"), transform=TwoViews(_views(args.size)))
    loader = torch.utils.data.DataLoader(
        ds, batch_size=args.batch_size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(args.seed)
    )
    opt = torch.optim.AdamW(model.params, lr=args.lr, weight_decay=0.04)
    if args.resume:
        _resume(args, model, opt)
    dse, w2 = _regularisers(args)
    gram_teacher, gram = _gram_teacher(args, model)
    t0 = time.time()
    steps = args.epochs * len(loader)
    bar = tqdm(
        total=steps,
        desc=f"pretrain {args.name or args.objective}",
        disable=args.quiet or not sys.stderr.isatty(),
        leave=False,
    )
    step = (first - 1) * len(loader)  # a resumed run continues the schedule (its warm-up is done)
    bar.update(step)
    for epoch in range(first, args.epochs + 1):
        for (v1, v2), _ in loader:
            if args.schedule == "constant":
                lr = args.lr * min(1.0, (step + 1) / len(loader))
            else:
                lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            for g in opt.param_groups:
                g["lr"] = lr
            loss = model.loss(v1, v2)
            if dse is not None:
                loss = loss - args.dse_beta * dse(model.tokens(v1))
            if w2 is not None:  # WassersteinSSL: + lambda * W2 of both views' normalised projector outputs
                loss = loss + args.w2_lambda * w2(model.projections)
            if gram is not None:  # DINOv3: + w * MSE of the patch tokens' cosine Gram matrices, student vs teacher
                with torch.no_grad():
                    anchor = gram_teacher.tokens(v1)
                loss = loss + args.gram_weight * gram(model.tokens(v1), anchor)
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.after_step(args.momentum)
            step += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
        save_tensors(model.checkpoint(epoch, opt, args), out / obj_cls.file.format(epoch=epoch))
    bar.close()
    trained = step - (first - 1) * len(loader)
    seconds = time.time() - t0
    write_json(
        marker,
        {
            "settings": h,
            "epochs": args.epochs,
            "seconds": round(seconds, 1),
            "steps": trained,  # this run's optimizer steps (a resumed run: those after its checkpoint)
            "seconds_per_step": round(seconds / trained, 5) if trained else None,
        },
    )
    return out


def parser():
    ap = argparse.ArgumentParser(description="tiny SSL pre-training for the mini world")
    ap.add_argument("--objective", choices=list(OBJECTIVES), required=True)
    ap.add_argument("--data", required=True, help="ImageFolder root with train/<class>/")
    ap.add_argument("--out", required=True, help="checkpoint directory")
    ap.add_argument("--name", default="")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dse-beta", type=float, default=0.0, help="train with loss - beta * DSE")
    ap.add_argument(
        "--w2-lambda", type=float, default=0.0, help="train with loss + lambda * W2 of the projector outputs"
    )
    ap.add_argument(
        "--gram-weight",
        type=float,
        default=0.0,
        help="train with loss + w * Gram anchoring of the patch tokens to the --resume checkpoint (DINOv3)",
    )
    ap.add_argument("--resume", default="", help="a checkpoint of this objective (its own format) to continue from")
    ap.add_argument("--resume-epoch", type=int, default=0, help="the epoch of --resume; training continues after it")
    ap.add_argument(
        "--schedule",
        choices=["constant", "cosine"],
        default="constant",
        help="constant after a one-epoch warm-up, or cosine decay from the first step to zero at the end",
    )
    ap.add_argument("--momentum", type=float, default=0.99, help="EMA of the teacher / momentum encoder")
    ap.add_argument("--quiet", action="store_true")
    return ap


def main(argv=None):
    train(parser().parse_args(argv))


if __name__ == "__main__":
    main()
