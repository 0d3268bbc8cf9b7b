"""Architecture factory: the backbones of the SDD study, built on timm and torchvision.

Every backbone is wrapped in `Backbone`, which gives the harness one interface whatever the family:
- `dense(x, layer=None)` -> [B, N, d] tokens of one layer (last by default, with the method's final
  norm for transformers, class/register tokens dropped); ResNets give post-ReLU stage outputs.
- `levels(x)` -> list of [B, C, H, W] maps for the downstream heads (ViT blocks 4/6/8/12 at stride 16,
  ResNet C2-C5, Swin stages 1-4).
- `net` is the wrapped upstream-compatible module: its state-dict keys are the keys the methods'
  checkpoints use once their prefixes are stripped, so loading never needs a hand-written key map
  (Swin goes through timm's own converter).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class ArchInfo:
    family: str  # vit | resnet | swin
    build: Callable[..., nn.Module]
    dim: int  # channels of the last-layer dense features
    stride: int  # stride of the last-layer dense map
    level_indices: tuple[int, ...] = ()  # ViT blocks (0-based) feeding the heads
    level_channels: tuple[int, ...] = ()
    description: str = ""
    defaults: dict = field(default_factory=dict)
    # False for an encoder whose stage maps are not at the usual strides (a CIFAR stem): the dense
    # protocols (segmentation, detection, DAVIS), which place features by stride, refuse it
    dense: bool = True


def _timm_vit(variant: str, **kw):
    import timm

    def build(**over):
        args = dict(pretrained=False, num_classes=0, dynamic_img_size=True, **kw)
        args.update(over)
        return timm.create_model(variant, **args)

    return build


def _tiny_vit(**over):
    from timm.models.vision_transformer import VisionTransformer

    args = dict(img_size=64, patch_size=16, embed_dim=48, depth=4, num_heads=3, num_classes=0, dynamic_img_size=True)
    args.update(over)
    return VisionTransformer(**args)


def _resnet50(**over):
    import torchvision

    return torchvision.models.resnet50(weights=None, **over)


def _resnet18_cifar(**over):
    """ResNet-18 for 32x32 images as the W2 code builds it (statsle/WassersteinSSL code/*/module.py): a
    3x3 stride-1 stem (padding 2) and no max-pool, so the last stage is at stride 8."""
    import torchvision

    net = torchvision.models.resnet18(weights=None, **over)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
    net.maxpool = nn.Identity()
    return net


def _tiny_resnet(**over):
    from torchvision.models.resnet import BasicBlock, ResNet

    return ResNet(BasicBlock, [1, 1, 1, 1], **over)


def _swin_tiny(**over):
    import timm

    args = dict(pretrained=False, num_classes=0)
    args.update(over)
    return timm.create_model("swin_tiny_patch4_window7_224", **args)


ARCHS: dict[str, ArchInfo] = {
    "vit_small_patch16": ArchInfo(
        "vit",
        _timm_vit("vit_small_patch16_224"),
        384,
        16,
        (3, 5, 7, 11),
        (384,) * 4,
        "ViT-S/16, 6 heads (DINO, iBOT, Mugs, MAE)",
    ),
    "vit_small_patch16_h12": ArchInfo(
        "vit",
        _timm_vit("vit_small_patch16_224", num_heads=12),
        384,
        16,
        (3, 5, 7, 11),
        (384,) * 4,
        "ViT-S/16 with 12 heads (MoCo v3's vit_small)",
    ),
    "vit_small_patch16_2cls": ArchInfo(
        "vit",
        _timm_vit("vit_small_patch16_224", reg_tokens=1),
        384,
        16,
        (3, 5, 7, 11),
        (384,) * 4,
        "ViT-S/16 with a second class token (UDI), held as timm's register token",
    ),
    "vit_base_patch16": ArchInfo(
        "vit", _timm_vit("vit_base_patch16_224"), 768, 16, (3, 5, 7, 11), (768,) * 4, "ViT-B/16"
    ),
    "vit_base_patch16_nocls": ArchInfo(
        "vit",
        _timm_vit("vit_base_patch16_224", class_token=False, global_pool="avg", fc_norm=False),
        768,
        16,
        (3, 5, 7, 11),
        (768,) * 4,
        "ViT-B/16 without class token (I-JEPA)",
    ),
    "resnet50": ArchInfo("resnet", _resnet50, 2048, 32, (), (256, 512, 1024, 2048), "ResNet-50 (torchvision)"),
    "resnet18_cifar": ArchInfo(
        "resnet",
        _resnet18_cifar,
        512,
        8,
        (),
        (64, 128, 256, 512),
        "ResNet-18 for CIFAR (3x3 stem, no max-pool; the W2 paper's encoders)",
        dense=False,
    ),
    "swin_tiny_patch4_window7": ArchInfo(
        "swin", _swin_tiny, 768, 32, (), (96, 192, 384, 768), "Swin-T, window 7 (EsViT)"
    ),
    "vit_tiny_test": ArchInfo(
        "vit",
        _tiny_vit,
        48,
        16,
        (0, 1, 2, 3),
        (48,) * 4,
        "tiny ViT for tests and the mini world (d=48, depth 4, patch 16)",
    ),
    "resnet_tiny_test": ArchInfo(
        "resnet",
        _tiny_resnet,
        512,
        32,
        (),
        (64, 128, 256, 512),
        "tiny ResNet (BasicBlock x1 per stage) for tests and the mini world",
    ),
}


class Backbone(nn.Module):
    """One interface over ViT / ResNet / Swin; `net` holds the upstream-compatible module."""

    def __init__(self, arch: str, net: nn.Module, info: ArchInfo):
        super().__init__()
        self.arch, self.info, self.net = arch, info, net
        if info.family == "resnet":
            net.fc = nn.Identity()  # the classifier is never part of an SSL backbone

    @property
    def dim(self) -> int:
        return self.info.dim

    @property
    def stride(self) -> int:
        return self.info.stride

    @property
    def level_channels(self) -> tuple[int, ...]:
        return self.info.level_channels

    def required_keys(self) -> set[str]:
        """State-dict keys a checkpoint must provide. BN batch counters are bookkeeping, not weights."""
        return {k for k in self.net.state_dict() if not k.endswith("num_batches_tracked")}

    # ---- dense features -------------------------------------------------------------------
    def dense(self, x: torch.Tensor, layer: int | None = None, norm: bool = True) -> torch.Tensor:
        """[B, N, d] tokens of `layer` (None = last; for ViT a block index, for ResNet/Swin a stage 1..4)."""
        fam = self.info.family
        if fam == "vit":
            last = len(self.net.blocks) - 1
            if layer is None or layer in (-1, last):
                tokens = self.net.forward_features(x)
                if not norm:  # forward_features applies the final norm; recompute without it
                    return self.net.forward_intermediates(
                        x, indices=[last], norm=False, output_fmt="NLC", intermediates_only=True
                    )[0]
                return tokens[:, self.net.num_prefix_tokens :]
            return self.net.forward_intermediates(
                x, indices=[layer], norm=norm, output_fmt="NLC", intermediates_only=True
            )[0]
        return self._stage_map(x, layer, norm).flatten(2).transpose(1, 2)

    def _stage_map(self, x: torch.Tensor, layer: int | None, norm: bool = True) -> torch.Tensor:
        """[B, C, h, w] output of a ResNet / Swin stage (1..4, default the last; Swin's last with its norm)."""
        m = self._stages(x)[(layer or 4) - 1]
        if self.info.family == "swin" and (layer in (None, 4)) and norm:
            m = self.net.norm(m.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return m

    @property
    def embedding_kind(self) -> str:
        """What `dense_and_embedding` returns as the image-level embedding (the paper's, DINO k-NN's)."""
        if self.info.family == "vit" and getattr(self.net, "cls_token", None) is not None:
            return "class token (after the final norm)"
        return "global average pool of the last layer"

    def dense_and_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, N, d] last-layer dense tokens, [B, d] image-level embedding) from one forward pass: the
        class token for ViTs that have one, else the mean of the dense tokens (GAP for CNNs and Swin)."""
        if self.info.family == "vit":
            tokens = self.net.forward_features(x)
            dense = tokens[:, self.net.num_prefix_tokens :]
            if getattr(self.net, "cls_token", None) is not None:
                return dense, tokens[:, 0]
            return dense, dense.mean(dim=1)
        dense = self.dense(x)
        return dense, dense.mean(dim=1)

    def class_tokens(self, x: torch.Tensor, n: int = 1, avgpool: bool = False) -> torch.Tensor:
        """DINO's linear-evaluation features: for ViTs with a class token, the class tokens of the last `n`
        blocks after the final norm, concatenated (and with `avgpool`, the mean of the last block's
        normed patch tokens); for the others, the image-level embedding (`embed`: global average pool)."""
        if self.info.family != "vit" or getattr(self.net, "cls_token", None) is None:
            return self.embed(x)
        last = len(self.net.blocks)
        outs = self.net.forward_intermediates(  # [(patch tokens, prefix tokens)] of the last n blocks, normed
            x,
            indices=list(range(last - n, last)),
            norm=True,
            return_prefix_tokens=True,
            output_fmt="NLC",
            intermediates_only=True,
        )
        feats = [prefix[:, 0] for _, prefix in outs]
        if avgpool:
            feats.append(outs[-1][0].mean(dim=1))
        return torch.cat(feats, dim=-1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """[B, d] image-level embedding (see `dense_and_embedding`)."""
        return self.dense_and_embedding(x)[1]

    def dense_map(self, x: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """[B, d, h, w] form of `dense` (h, w = input size / stride)."""
        if self.info.family != "vit":  # the stage's own map (a CIFAR stem's padding makes it 5x5 at 32 px)
            return self._stage_map(x, layer)
        t = self.dense(x, layer)
        h, w = x.shape[-2] // self.stride, x.shape[-1] // self.stride
        return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)

    # ---- multi-level features -------------------------------------------------------------
    def levels(self, x: torch.Tensor, indices: tuple[int, ...] | None = None) -> list[torch.Tensor]:
        """Four [B, C, H, W] maps for the downstream heads (ViT: the blocks `indices`, default the
        architecture's `level_indices`, at stride 16 each, without the final norm; the neck rescales)."""
        if self.info.family == "vit":
            return list(
                self.net.forward_intermediates(
                    x,
                    indices=list(indices or self.info.level_indices),
                    norm=False,
                    output_fmt="NCHW",
                    intermediates_only=True,
                )
            )
        return self._stages(x)

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.info.family == "resnet":
            n = self.net
            x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
            outs = []
            for stage in (n.layer1, n.layer2, n.layer3, n.layer4):
                x = stage(x)
                outs.append(x)
            return outs
        # swin: timm returns the stage outputs (no final norm) in NCHW
        return list(
            self.net.forward_intermediates(x, indices=4, norm=False, output_fmt="NCHW", intermediates_only=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


def build_backbone(arch: str, **kwargs) -> Backbone:
    """A freshly initialised backbone of a registry architecture (never downloads weights)."""
    if arch not in ARCHS:
        import difflib

        close = difflib.get_close_matches(arch, ARCHS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown architecture '{arch}'; expected one of: {', '.join(ARCHS)}.{hint}")
    info = ARCHS[arch]
    return Backbone(arch, info.build(**kwargs), info)
