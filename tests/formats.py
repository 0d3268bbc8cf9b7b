"""Checkpoint files in each SSL method's *own* format, written from a backbone's weights.

Written from what the upstream training codes save (file name, nesting, key prefixes, the
projector / predictor / teacher-student extras, bookkeeping such as `args` and optimizer state),
independently of the registry rules that read them back: a registry rule that picks the wrong
network (student instead of teacher, target instead of context encoder) or strips the wrong prefix
fails the identity check, because every other network carries different tensors.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

G = torch.Generator().manual_seed(0)


def rand(*shape):
    return torch.randn(*shape, generator=G)


def other(sd):
    """The same layout with different values: a student, an online or a target network."""
    return {k: (v + 1.0 if v.is_floating_point() else v.clone()) for k, v in sd.items()}


def prefixed(prefix, sd):
    return {prefix + k: v for k, v in sd.items()}


def optimizer_state():
    return {
        "state": {0: {"step": torch.tensor(10.0), "exp_avg": rand(4)}},
        "param_groups": [{"lr": 1e-3, "params": [0]}],
    }


def dino_head(prefix, d=384, out=256):
    return {
        f"{prefix}mlp.0.weight": rand(64, d),
        f"{prefix}mlp.0.bias": rand(64),
        f"{prefix}mlp.2.weight": rand(64, 64),
        f"{prefix}last_layer.weight_g": rand(out, 1),
        f"{prefix}last_layer.weight_v": rand(out, 32),
    }


def args_ns(**kw):
    return argparse.Namespace(arch="vit_small", patch_size=16, lr=5e-4, output_dir="/tmp/out", **kw)


def _resnet_fc(prefix):
    return {
        f"{prefix}fc.0.weight": rand(64, 2048),
        f"{prefix}fc.1.running_mean": rand(64),
        f"{prefix}fc.3.weight": rand(32, 64),
    }


# --- one writer per method: (net_sd, dir, epoch) -> path --------------------------------------------


def dino(sd, d, epoch):
    obj = {
        "student": {**prefixed("module.backbone.", other(sd)), **dino_head("module.head.")},
        "teacher": {**prefixed("backbone.", sd), **dino_head("head.")},
        "optimizer": optimizer_state(),
        "epoch": epoch,
        "args": args_ns(),
        "dino_loss": {"center": rand(1, 256)},
        "fp16_scaler": {"scale": 65536.0, "growth_factor": 2.0},
    }
    return _save(obj, d / f"checkpoint{epoch:04d}.pth")


def ibot(sd, d, epoch):
    student = {
        **prefixed("module.backbone.", other(sd)),
        "module.backbone.masked_embed": rand(1, 384),
        **dino_head("module.head."),
    }
    teacher = {**prefixed("backbone.", sd), **dino_head("head."), "head.last_layer2.weight_g": rand(256, 1)}
    obj = {
        "student": student,
        "teacher": teacher,
        "optimizer": optimizer_state(),
        "epoch": epoch,
        "args": args_ns(),
        "ibot_loss": {"center": rand(1, 256), "center2": rand(1, 256)},
    }
    return _save(obj, d / f"checkpoint{epoch:04d}.pth")


def mugs(sd, d, epoch):
    relation = {
        "backbone.relation_blocks.0.norm1.weight": rand(384),
        "backbone.relation_blocks.0.attn.qkv.weight": rand(1152, 384),
    }
    heads = {
        "instance_head.projector.0.weight": rand(64, 384),
        "local_group_head.projector.0.weight": rand(64, 384),
        "group_head.projector.0.weight": rand(64, 384),
        "group_head.last_layer.weight_g": rand(256, 1),
    }
    obj = {
        "student": {**prefixed("module.", {**prefixed("backbone.", other(sd)), **heads})},
        "teacher": {**prefixed("backbone.", sd), **relation, **heads},
        "optimizer": optimizer_state(),
        "epoch": epoch,
        "args": args_ns(),
        "student_mem": rand(16, 384),
        "teacher_mem": rand(16, 384),
        "instance_loss": {"center": rand(1, 256)},
    }
    return _save(obj, d / f"checkpoint{epoch:04d}.pth")


def mae(sd, d, epoch):
    decoder = {
        "mask_token": rand(1, 1, 256),
        "decoder_embed.weight": rand(256, 384),
        "decoder_pos_embed": rand(1, 197, 256),
        "decoder_blocks.0.norm1.weight": rand(256),
        "decoder_norm.weight": rand(256),
        "decoder_pred.weight": rand(768, 256),
    }
    # main_pretrain.py: checkpoint-{epoch}.pth with the 0-based loop index, and 'epoch' = that index
    obj = {
        "model": {**sd, **decoder},
        "optimizer": optimizer_state(),
        "epoch": epoch - 1,
        "scaler": {"scale": 65536.0},
        "args": args_ns(mask_ratio=0.75),
    }
    return _save(obj, d / f"checkpoint-{epoch}.pth")


def mocov3(sd, d, epoch):
    head = lambda p: {
        f"{p}head.0.weight": rand(64, 384),
        f"{p}head.1.running_mean": rand(64),
        f"{p}head.3.weight": rand(32, 64),
    }
    state = {
        **prefixed("module.base_encoder.", other(sd)),
        **head("module.base_encoder."),
        **prefixed("module.momentum_encoder.", sd),
        **head("module.momentum_encoder."),
        "module.predictor.0.weight": rand(64, 32),
    }
    obj = {
        "epoch": epoch,
        "arch": "vit_small",
        "state_dict": state,
        "optimizer": optimizer_state(),
        "scaler": {"scale": 65536.0},
    }
    return _save(obj, d / f"checkpoint_{epoch:04d}.pth.tar")


def ijepa(sd, d, epoch):
    predictor = {
        "module.predictor_embed.weight": rand(384, 768),
        "module.mask_token": rand(1, 1, 384),
        "module.predictor_blocks.0.norm1.weight": rand(384),
        "module.predictor_proj.weight": rand(768, 384),
    }
    obj = {
        "encoder": prefixed("module.", sd),
        "predictor": predictor,
        "target_encoder": prefixed("module.", other(sd)),
        "opt": optimizer_state(),
        "scaler": None,
        "epoch": epoch,
        "loss": 0.42,
        "batch_size": 128,
        "world_size": 16,
        "lr": 1e-3,
    }
    return _save(obj, d / f"ijepa-ep{epoch}.pth.tar")


def to_original_swin(sd, n_stages=4):
    """timm's Swin layout -> the original (EsViT) one: PatchMerging at the end of stage i, not the
    start of stage i+1; relative_position_index stored as a buffer."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
        out[k] = v
        if k.endswith("attn.relative_position_bias_table"):
            out[k.replace("relative_position_bias_table", "relative_position_index")] = torch.zeros(
                49, 49, dtype=torch.long
            )
    return out


def esvit(sd, d, epoch):
    orig = to_original_swin(sd)
    heads = {**dino_head("head.", d=768), **dino_head("head_dense.", d=768)}
    obj = {
        "student": prefixed("module.", {**other(orig), **heads}),
        "teacher": {**orig, **heads},
        "optimizer": optimizer_state(),
        "epoch": epoch,
        "args": args_ns(),
        "dino_loss": {"center": rand(1, 256)},
    }
    return _save(obj, d / f"checkpoint{epoch:04d}.pth")


def simsiam(sd, d, epoch):
    state = {
        **prefixed("module.encoder.", sd),
        **_resnet_fc("module.encoder."),
        "module.predictor.0.weight": rand(64, 32),
        "module.predictor.3.weight": rand(32, 64),
    }
    return _save(
        {"epoch": epoch, "arch": "resnet50", "state_dict": state, "optimizer": optimizer_state()},
        d / f"checkpoint_{epoch:04d}.pth.tar",
    )


def mec(sd, d, epoch):
    state = {
        **prefixed("module.encoder.", sd),
        **_resnet_fc("module.encoder."),
        **prefixed("module.teacher.", other(sd)),
        "module.predictor.0.weight": rand(64, 32),
    }
    return _save(
        {"epoch": epoch, "arch": "resnet50", "state_dict": state, "optimizer": optimizer_state()},
        d / f"checkpoint_{epoch:04d}.pth.tar",
    )


def resa(sd, d, epoch):
    state = {
        **prefixed("module.encoder.", sd),
        **_resnet_fc("module.encoder."),
        **prefixed("module.momentum_encoder.", other(sd)),
    }
    return _save(
        {"epoch": epoch, "arch": "resnet50", "state_dict": state, "optimizer": optimizer_state()},
        d / f"checkpoint_{epoch:04d}.pth.tar",
    )


def densecl(sd, d, epoch):
    # mmcv runner checkpoint: meta + state_dict; `backbone` aliases the query encoder's backbone
    state = {
        **prefixed("encoder_q.0.", sd),
        "encoder_q.1.mlp.0.weight": rand(64, 2048),
        **prefixed("encoder_k.0.", other(sd)),
        **prefixed("backbone.", sd),
        "queue": rand(128, 64),
        "queue_ptr": torch.zeros(1, dtype=torch.long),
        "queue2": rand(128, 64),
    }
    obj = {
        "meta": {"epoch": epoch, "iter": epoch * 100, "mmcv_version": "1.0.3", "time": "Tue Jan 5 2021"},
        "state_dict": state,
        "optimizer": optimizer_state(),
    }
    return _save(obj, d / f"epoch_{epoch}.pth")


def swav(sd, d, epoch, *, wrapped=True):
    state = {
        **prefixed("module.", sd),
        "module.projection_head.0.weight": rand(64, 2048),
        "module.prototypes.weight": rand(100, 32),
    }
    obj = {"epoch": epoch, "state_dict": state, "optimizer": optimizer_state()} if wrapped else state
    return _save(obj, d / f"ckp-{epoch}.pth")


def vicreg(sd, d, epoch):
    state = {
        **prefixed("module.backbone.", sd),
        "module.projector.0.weight": rand(64, 2048),
        "module.projector.1.running_mean": rand(64),
    }
    return _save({"epoch": epoch, "model": state, "optimizer": optimizer_state()}, d / f"model_{epoch}.pth")


def vicregl(sd, d, epoch):
    state = {
        **prefixed("module.backbone.", sd),
        "module.projector.0.weight": rand(64, 2048),
        "module.maps_projector.0.weight": rand(64, 2048),
        "module.classifier.weight": rand(10, 2048),
    }
    return _save({"epoch": epoch, "model": state, "optimizer": optimizer_state()}, d / f"model_{epoch}.pth")


def byol(sd, d, epoch):
    # yaox12/BYOL-PyTorch: encoder = nn.Sequential(*list(resnet.children())[:-1]) -> numbered keys
    import torchvision

    r = torchvision.models.resnet50(weights=None)
    r.load_state_dict(sd, strict=False)
    enc = torch.nn.Sequential(*list(r.children())[:-1]).state_dict()
    proj = lambda p: {
        f"{p}projetion.l1.weight": rand(64, 2048),
        f"{p}projetion.bn1.running_mean": rand(64),
        f"{p}projetion.l2.weight": rand(32, 64),
    }
    model = {
        **prefixed("module.online_network.encoder.", other(enc)),
        **proj("module.online_network."),
        **prefixed("module.target_network.encoder.", enc),
        **proj("module.target_network."),
        "module.predictor.predictor.l1.weight": rand(64, 32),
    }
    obj = {
        "config": {"model": {"backbone": {"type": "resnet50"}}},
        "epoch": epoch,
        "steps": epoch * 10,
        "model": model,
        "optimizer": optimizer_state(),
        "amp": None,
    }
    return _save(obj, d / f"resnet50_{epoch}.pth.tar")


def barlowtwins(sd, d, epoch):
    state = {
        **prefixed("module.backbone.", sd),
        "module.projector.0.weight": rand(64, 2048),
        "module.bn.running_mean": rand(32),
        "module.bn.running_var": rand(32),
    }
    return _save({"epoch": epoch, "model": state, "optimizer": optimizer_state()}, d / f"checkpoint_{epoch}.pth")


def udi(sd, d, epoch):
    # UDI keeps both class tokens in one [1, 2, d] parameter; timm holds them as cls + register token
    vit = {k: v for k, v in sd.items() if k not in ("cls_token", "reg_token")}
    vit["cls_token"] = torch.cat([sd["cls_token"], sd["reg_token"]], dim=1)
    srs = {
        "backbone.attn.qkv.weight": rand(1152, 384),
        "backbone.attn.proj.weight": rand(384, 384),
        "backbone.norm1.weight": rand(384),
    }
    heads = {**dino_head("head.0."), **dino_head("head.1."), **dino_head("head.2.")}
    obj = {
        "student": prefixed("module.", {**prefixed("backbone.backbone.", other(vit)), **srs, **heads}),
        "teacher": {**prefixed("backbone.backbone.", vit), **srs, **heads},
        "optimizer": optimizer_state(),
        "epoch": epoch,
        "args": args_ns(number_cls_token=2),
        "udi_loss": {"center": rand(1, 256)},
    }
    return _save(obj, d / f"checkpoint{epoch:04d}.pth")


def _w2_parts(prefix: str, sd) -> dict:
    """One W2 PartialEncoder / Encoder: the CIFAR ResNet-18 under `backbone.` and its 3-layer projector."""
    return {
        **prefixed(f"{prefix}backbone.", sd),
        f"{prefix}projector.0.weight": rand(64, 512),
        f"{prefix}projector.1.running_mean": rand(64),
        f"{prefix}projector.6.weight": rand(32, 64),
    }


def _w2_save(state, d, model_name, epoch) -> Path:
    # model.py: torch.save(self.state_dict(), f"{saver_dir}/{save_name_pre}_{epoch}_model.pth"), a bare dict
    names = {
        "BYOLplus": "BYOLplus_12_CIFAR-10_2048_256_2048_256_500_0.2_0.2",
        "MoCoplus": "MoCoplus_12_CIFAR-10_2048_256_256_500_4096_0.2_0.2_0.2",
        "BarlowTwinsplus": "BarlowTwinsplus_12_CIFAR-10_2048_256_256_500_0.005_0.2_0.2",
    }
    linear = {"projector.fc.weight": rand(10, 512), "projector.fc.bias": rand(10)}  # LinearProjector
    return _save({**state, **linear}, d / f"{names[model_name]}_{epoch}_model.pth")


def w2_byol(sd, d, epoch):
    state = {
        **_w2_parts("encoder.online_encoder.", sd),
        **_w2_parts("encoder.target_encoder.", other(sd)),  # the EMA copy: other values
        "encoder.predictor.0.weight": rand(64, 32),
        "encoder.predictor.3.bias": rand(32),
    }
    return _w2_save(state, d, "BYOLplus", epoch)


def w2_mocov2(sd, d, epoch):
    state = {
        **_w2_parts("encoder_q.", sd),
        **_w2_parts("encoder_k.", other(sd)),
        "queue.queue": rand(16, 32),
        "queue.queue_ptr": torch.zeros(1, dtype=torch.long),
    }
    return _w2_save(state, d, "MoCoplus", epoch)


def w2_barlowtwins(sd, d, epoch):
    return _w2_save({**_w2_parts("encoder.", sd), "encoder.bn.running_mean": rand(32)}, d, "BarlowTwinsplus", epoch)


def directclr(sd, d, epoch, *, released=True):
    """The released file as spectrum.py reads it ({'backbone', 'projector'}), or main.py's resumable
    checkpoint.pth ({'epoch', 'model': the DDP model's state_dict, 'optimizer'}) under the same name."""
    if released:
        obj = {"backbone": dict(sd), "projector": {"weight": rand(128, 2048)}}
    else:
        model = {
            **prefixed("module.backbone.", sd),
            "module.online_head.weight": rand(1000, 2048),
            "module.online_head.bias": rand(1000),
            "module.projector.weight": rand(128, 2048),
        }
        obj = {"epoch": epoch, "model": model, "optimizer": optimizer_state()}
    return _save(obj, d / f"directclr-resnet50-ep{epoch}.pth")


def _dinov2_hub(sd, d, name):
    """The hub file of a DINOv2 backbone whose timm-layout weights are `sd`: mask_token added; with registers,
    timm's reg_token saved as register_tokens and a position for the class token put back in front of the
    patch positions (zero here, so timm's cls_token + pos_embed[:, 0] gives back exactly `sd`'s class token)."""
    out = dict(sd)
    out["mask_token"] = torch.zeros(1, sd["cls_token"].shape[-1])
    if "reg_token" in out:
        out["register_tokens"] = out.pop("reg_token")
        out["pos_embed"] = torch.cat([torch.zeros_like(sd["cls_token"]), sd["pos_embed"]], dim=1)
    return _save(out, d / name)


def dinov2_vits14(sd, d, epoch):
    return _dinov2_hub(sd, d, "dinov2_vits14_pretrain.pth")


def dinov2_vits14_reg4(sd, d, epoch):
    return _dinov2_hub(sd, d, "dinov2_vits14_reg4_pretrain.pth")


def _dinov3_hub(sd, d, name):
    """The hub file of a DINOv3 backbone whose timm-layout (`_qkvb`) weights are `sd`: storage_tokens, ls1/ls2
    gamma, one qkv bias with the key's third (masked to 0 upstream) random, the NaN bias_mask buffers, the
    RoPE periods and the mask token, as dinov3's model saves them."""
    out = {}
    for k, v in sd.items():
        if k.endswith("attn.q_bias"):
            k_part = rand(*v.shape)  # never used: LinearKMaskedBias multiplies it by 0
            out[k.replace("q_bias", "qkv.bias")] = torch.cat([v, k_part, sd[k.replace("q_bias", "v_bias")]])
            out[k.replace("q_bias", "qkv.bias_mask")] = torch.full((3 * v.shape[0],), float("nan"))
        elif k.endswith("attn.v_bias"):
            continue
        else:
            out[
                k.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma").replace("reg_token", "storage_tokens")
            ] = v
    dim = sd["cls_token"].shape[-1]
    heads = 6 if dim == 384 else 12
    out["rope_embed.periods"] = 100.0 ** (2 * torch.arange(dim // heads // 4) / (dim // heads // 2))
    out["mask_token"] = torch.zeros(1, dim)
    return _save(out, d / name)


def dinov3_vits16(sd, d, epoch):
    return _dinov3_hub(sd, d, "dinov3_vits16_pretrain_lvd1689m-08c60483.pth")


def dinov3_vitb16(sd, d, epoch):
    return _dinov3_hub(sd, d, "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth")


def _save(obj, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


WRITERS = {
    f.__name__: f
    for f in (
        dino,
        ibot,
        mugs,
        mae,
        mocov3,
        ijepa,
        esvit,
        simsiam,
        mec,
        resa,
        densecl,
        swav,
        vicreg,
        vicregl,
        byol,
        barlowtwins,
        udi,
        w2_byol,
        w2_mocov2,
        w2_barlowtwins,
        directclr,
        dinov2_vits14,
        dinov2_vits14_reg4,
        dinov3_vits16,
        dinov3_vitb16,
    )
}


# ---- release files: the flat state dicts the DINOv2 / DINOv3 hub code loads (strict=True) -----------------
def _release_blocks(d: int, depth: int, *, bias_mask: bool) -> dict:
    """blocks.N.* of dinov2/dinov3's Block (layers/block.py: norm1, attn, ls1, norm2, mlp, ls2; attention
    qkv as one Linear(d, 3d), its bias masked by a `bias_mask` buffer in DINOv3's LinearKMaskedBias)."""
    out = {}
    for i in range(depth):
        b = f"blocks.{i}."
        out.update(
            {
                b + "norm1.weight": 1 + 0.1 * rand(d),
                b + "norm1.bias": 0.1 * rand(d),
                b + "attn.qkv.weight": 0.05 * rand(3 * d, d),
                b + "attn.qkv.bias": 0.1 * rand(3 * d),
                b + "attn.proj.weight": 0.05 * rand(d, d),
                b + "attn.proj.bias": 0.1 * rand(d),
                b + "ls1.gamma": 0.1 + 0.05 * rand(d),
                b + "norm2.weight": 1 + 0.1 * rand(d),
                b + "norm2.bias": 0.1 * rand(d),
                b + "mlp.fc1.weight": 0.05 * rand(4 * d, d),
                b + "mlp.fc1.bias": 0.1 * rand(4 * d),
                b + "mlp.fc2.weight": 0.05 * rand(d, 4 * d),
                b + "mlp.fc2.bias": 0.1 * rand(d),
                b + "ls2.gamma": 0.1 + 0.05 * rand(d),
            }
        )
        if bias_mask:  # NaN until init_weights fills it; a released file may carry either (never to reach a model)
            out[b + "attn.qkv.bias_mask"] = torch.full((3 * d,), float("nan"))
    return out


def dinov2_release(d: int = 384, depth: int = 12, patch: int = 14, grid: int = 37, registers: int = 0) -> dict:
    """dinov2_vits14[_reg4]_pretrain.pth as DinoVisionTransformer saves it (dinov2/models/vision_transformer.py
    l.110-115, l.166-169): cls_token [1, 1, d], pos_embed [1, 1 + grid^2, d] (img 518 / patch 14 = 37),
    mask_token [1, d], register_tokens [1, R, d] with registers, patch_embed.proj, blocks, norm."""
    sd = {
        "cls_token": 0.1 * rand(1, 1, d),
        "pos_embed": 0.1 * rand(1, 1 + grid * grid, d),
        "mask_token": torch.zeros(1, d),
        "patch_embed.proj.weight": 0.05 * rand(d, 3, patch, patch),
        "patch_embed.proj.bias": 0.1 * rand(d),
        **_release_blocks(d, depth, bias_mask=False),
        "norm.weight": 1 + 0.1 * rand(d),
        "norm.bias": 0.1 * rand(d),
    }
    if registers:
        sd["register_tokens"] = 0.1 * rand(1, registers, d)
    return sd


def dinov3_release(d: int = 384, depth: int = 12, patch: int = 16, storage: int = 4, heads: int = 6) -> dict:
    """dinov3_vits16_pretrain_lvd1689m-*.pth as dinov3's DinoVisionTransformer saves it
    (dinov3/models/vision_transformer.py l.112-180): cls_token, storage_tokens [1, 4, d], mask_token [1, d],
    patch_embed.proj, rope_embed.periods [head_dim / 4] (layers/rope_position_encoding.py l.50-54; no
    pos_embed), blocks with attn.qkv.bias_mask (NaN-filled, layers/attention.py l.36), norm."""
    head_dim = d // heads
    return {
        "cls_token": 0.1 * rand(1, 1, d),
        "storage_tokens": 0.1 * rand(1, storage, d),
        "mask_token": torch.zeros(1, d),
        "patch_embed.proj.weight": 0.05 * rand(d, 3, patch, patch),
        "patch_embed.proj.bias": 0.1 * rand(d),
        "rope_embed.periods": 100.0 ** (2 * torch.arange(head_dim // 4) / (head_dim // 2)),
        **_release_blocks(d, depth, bias_mask=True),
        "norm.weight": 1 + 0.1 * rand(d),
        "norm.bias": 0.1 * rand(d),
    }
