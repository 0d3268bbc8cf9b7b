"""Architectures: any timm model by name, plus the ten names the seed methods use as aliases.

Everything the harness needs about an architecture is read from the built model (`ArchFacts`), never from
a table: the embedding dim, the patch size (the stride of a ViT's dense map), the prefix tokens (class +
registers / storage tokens), the depth, whether positions are absolute embeddings or RoPE; for CNNs the
channels and strides of their last four stages (timm's `feature_info`, torchvision's ResNet stages).
The facts are taken from a model built on the meta device (no memory, no weights), once per architecture.

Every backbone is wrapped in `Backbone`, which gives the harness one interface whatever the family:
- `dense(x, layer=None)` -> [B, N, d] tokens of one layer (last by default, with the final norm for
  transformers, the prefix tokens dropped by count); CNNs give their stage outputs.
- `levels(x, indices)` -> list of [B, C, H, W] maps for the downstream heads (ViT: the blocks a protocol
  names, see `scale_blocks`; CNN: the last four stages).
- `net` is the upstream-compatible module: its state-dict keys are the keys the methods' checkpoints use
  once their prefixes are stripped; release layouts go through timm's own converters (checkpoints.py).

Inputs whose sides are not a multiple of a ViT's patch are never cropped silently by the patch embedding
(timm's and DINOv3's drop the remainder pixels): the backbone pads them by the rule its protocol states
(`Backbone.remainder`, set by each job from `kinds.PATCH_REMAINDER`), or refuses them.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from harness.archnames import DEFAULT_LEVELS, ArchError, scale_blocks  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class Alias:
    """One of the seed methods' architecture names: how it is built and what it is."""

    build: Callable[..., nn.Module]
    description: str


def _timm(variant: str, **kw) -> Callable[..., nn.Module]:
    def build(**over):
        return create_timm(variant, **{**kw, **over})

    return build


# what a model's constructor raises for arguments it refuses (timm asserts many of its own)
BUILD_ERRORS = (TypeError, AssertionError, ValueError, RuntimeError, KeyError)


def create_timm(name: str, **kwargs) -> nn.Module:
    """timm's model `name`, never with pretrained weights, without a classifier; ViTs with a dynamic image
    size (positions resampled to the input's grid by timm's `resample_abs_pos_embed`, RoPE computed for it)."""
    import timm

    args = dict(pretrained=False, num_classes=0)
    args.update(kwargs)
    if args.get("pretrained"):
        raise ArchError(f"arch_kwargs for {name}: pretrained=True would download weights; give the file instead")
    try:
        return timm.create_model(name, **{"dynamic_img_size": True, **args})
    except BUILD_ERRORS as e:
        if not isinstance(e, TypeError) or "dynamic_img_size" not in str(e) or "dynamic_img_size" in kwargs:
            raise ArchError(
                f"timm cannot build '{name}' with arch_kwargs {kwargs} ({type(e).__name__}: {e}); fix arch_kwargs"
            ) from None
    try:  # a CNN (or any model without a dynamic image size)
        return timm.create_model(name, **args)
    except BUILD_ERRORS as e:
        raise ArchError(
            f"timm cannot build '{name}' with arch_kwargs {kwargs} ({type(e).__name__}: {e}); fix arch_kwargs"
        ) from None


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


# The seed methods' names. Each is a timm model (with arguments) or a torchvision ResNet, so that the
# 16 seed methods' checkpoints load with the rules their method files give; any other timm name works too.
ALIASES: dict[str, Alias] = {
    "vit_small_patch16": Alias(_timm("vit_small_patch16_224"), "ViT-S/16, 6 heads (DINO, iBOT, Mugs, MAE)"),
    "vit_small_patch16_h12": Alias(
        _timm("vit_small_patch16_224", num_heads=12), "ViT-S/16 with 12 heads (MoCo v3's vit_small)"
    ),
    "vit_small_patch16_2cls": Alias(
        _timm("vit_small_patch16_224", reg_tokens=1),
        "ViT-S/16 with a second class token (UDI), held as timm's register token",
    ),
    "vit_base_patch16": Alias(_timm("vit_base_patch16_224"), "ViT-B/16"),
    "vit_base_patch16_nocls": Alias(
        _timm("vit_base_patch16_224", class_token=False, global_pool="avg", fc_norm=False),
        "ViT-B/16 without class token (I-JEPA)",
    ),
    "resnet50": Alias(_resnet50, "ResNet-50 (torchvision layout)"),
    "resnet18_cifar": Alias(_resnet18_cifar, "ResNet-18 for CIFAR (3x3 stem, no max-pool; the W2 paper's encoders)"),
    "swin_tiny_patch4_window7": Alias(_timm("swin_tiny_patch4_window7_224"), "Swin-T, window 7 (EsViT)"),
    "vit_tiny_test": Alias(_tiny_vit, "tiny ViT for tests and the mini world (d=48, depth 4, patch 16)"),
    "resnet_tiny_test": Alias(_tiny_resnet, "tiny ResNet (BasicBlock x1 per stage) for tests and the mini world"),
}


@dataclass(frozen=True)
class ArchFacts:
    """What the harness needs to know about an architecture, read from the built model."""

    name: str  # as the method file says (an alias or a timm name)
    family: str  # vit | resnet (torchvision) | swin | cnn (any other timm model with feature_info)
    model: str  # the class that implements it
    dim: int  # channels of the last-layer dense features
    stride: int  # stride of the last-layer dense map (a ViT's patch size)
    level_channels: tuple[int, ...]
    level_strides: tuple[int, ...]
    depth: int = 0  # ViT blocks
    patch: int = 0  # ViT patch size
    prefix_tokens: int = 0  # class token + registers / storage tokens, dropped from the dense map by count
    class_token: bool = False
    reg_tokens: int = 0
    positions: str = ""  # ViT: "absolute (grid HxW, resampled to the input)" | "RoPE" | "none"
    token_norm: bool = True  # ViT: a final norm on the tokens (False: timm's fc_norm on the pooled vector only)
    description: str = ""
    params: int = 0

    @property
    def level_indices(self) -> tuple[int, ...]:
        """The default four ViT blocks (`DEFAULT_LEVELS` scaled to the depth); CNNs: none."""
        return scale_blocks(DEFAULT_LEVELS, self.depth) if self.family == "vit" else ()

    @property
    def dense(self) -> bool:
        """Whether the dense protocols can place its features: stage maps at strides 4, 8, 16, 32 (a CNN),
        or a ViT. A CIFAR stem (strides 1-8) cannot be evaluated by them."""
        return self.family == "vit" or tuple(self.level_strides) == (4, 8, 16, 32)

    def summary(self) -> str:
        if self.family == "vit":
            prefix = f"{self.prefix_tokens} prefix token(s)" + (
                f" (class{' + ' if self.class_token and self.reg_tokens else ''}"
                f"{f'{self.reg_tokens} register/storage' if self.reg_tokens else ''})"
                if self.prefix_tokens
                else " (no class token)"
            )
            norm = (
                "" if self.token_norm else ", no final norm on the tokens (its fc_norm acts on the pooled vector only)"
            )
            shape = f"ViT, dim {self.dim}, depth {self.depth}, patch {self.patch}"
            return f"{shape}, {prefix}, positions: {self.positions}{norm}"
        return f"{self.family}, stages {list(self.level_channels)} channels at strides {list(self.level_strides)}" + (
            "" if self.dense else " (not the strides the dense protocols need)"
        )


def build_net(arch: str, **kwargs) -> nn.Module:
    """The upstream-compatible module of `arch` (an alias or a timm name), freshly initialised."""
    from harness.archnames import unknown_arch

    if arch in ALIASES:
        try:
            return ALIASES[arch].build(**kwargs)
        except BUILD_ERRORS as e:
            raise ArchError(
                f"'{arch}' cannot be built with arch_kwargs {kwargs} ({type(e).__name__}: {e}); fix arch_kwargs"
            ) from None
    problem = unknown_arch(arch)
    if problem:
        raise ArchError(problem)
    return create_timm(arch, **kwargs)


def _family(net: nn.Module) -> str:
    import torchvision

    if isinstance(net, torchvision.models.ResNet):
        return "resnet"
    if all(hasattr(net, a) for a in ("blocks", "patch_embed", "num_prefix_tokens", "forward_intermediates")):
        return "vit"
    if type(net).__name__ == "SwinTransformer":
        return "swin"
    if hasattr(net, "feature_info") and hasattr(net, "forward_intermediates"):
        return "cnn"
    raise ArchError(
        f"{type(net).__module__}.{type(net).__name__} is neither a ViT (blocks, patch_embed, prefix tokens) nor a "
        f"CNN with timm's feature_info and forward_intermediates: the harness cannot take its features"
    )


def _kwargs_key(kwargs: dict) -> str:
    return json.dumps(kwargs, sort_keys=True, default=str)


def arch_facts(arch: str, **kwargs) -> ArchFacts:
    """The facts of `arch` built with `kwargs` (cached; built on the meta device, no weights)."""
    return _facts(arch, _kwargs_key(kwargs))


@functools.lru_cache(maxsize=64)
def _facts(arch: str, kwargs_json: str) -> ArchFacts:
    with torch.device("meta"):
        net = build_net(arch, **json.loads(kwargs_json))
        try:
            return facts_of(arch, net)
        except ArchError:
            raise
        except Exception as e:  # a fixed-size model, or one whose features the harness cannot take
            raise ArchError(
                f"{arch}: the harness cannot read its features ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                f"the dense protocols need a ViT with a patch embedding or a CNN whose stages take any input size"
            ) from None


def facts_of(arch: str, net: nn.Module) -> ArchFacts:
    family = _family(net)
    desc = ALIASES[arch].description if arch in ALIASES else f"timm's {arch}"
    # the backbone's parameters (a torchvision ResNet's classifier is never part of it, see Backbone)
    params = sum(p.numel() for n, p in net.named_parameters() if not (family == "resnet" and n.startswith("fc.")))
    model = f"{type(net).__module__}.{type(net).__name__}"
    if family == "vit":
        if type(net.patch_embed).__name__ != "PatchEmbed":  # a hybrid (CNN stem) ViT: its stride is not the patch
            raise ArchError(
                f"{arch}: its patch embedding is a {type(net.patch_embed).__name__}, not a plain PatchEmbed; the "
                f"harness reads a ViT's stride from its patch and cannot place this one's tokens"
            )
        patch = net.patch_embed.patch_size
        patch = patch if isinstance(patch, int) else patch[0]
        if isinstance(net.patch_embed.patch_size, tuple) and len(set(net.patch_embed.patch_size)) != 1:
            raise ArchError(f"{arch}: a non-square patch {net.patch_embed.patch_size} is not supported")
        cls = getattr(net, "cls_token", None) is not None
        prefix = int(net.num_prefix_tokens)
        if getattr(net, "pos_embed", None) is not None:
            grid = "x".join(map(str, net.patch_embed.grid_size))
            positions = f"absolute ({grid} grid, resampled to the input's)"
        elif getattr(net, "rope", None) is not None:
            positions = "RoPE"
        else:
            positions = "none"
        if getattr(net, "rope", None) is not None and getattr(net, "pos_embed", None) is not None:
            positions = f"absolute + RoPE ({grid} grid)"
        dim = int(net.embed_dim)
        token_norm = not isinstance(getattr(net, "norm", None), nn.Identity)
        return ArchFacts(
            arch, family, model, dim, patch, (dim,) * 4, (patch,) * 4, len(net.blocks), patch, prefix, cls,
            prefix - int(cls), positions, token_norm, desc, params,
        )  # fmt: skip
    chans, strides = _stage_facts(net, family)
    return ArchFacts(arch, family, model, chans[-1], strides[-1], chans, strides, description=desc, params=params)


def _stage_facts(net: nn.Module, family: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Channels and strides of the four stages `Backbone.levels` returns, from a forward pass of a
    512-pixel meta tensor (a stem's padding makes sizes uneven; strides are rounded to powers of two)."""
    side = 512
    x = torch.zeros(1, 3, side, side, device=next(net.parameters()).device)
    maps = _run_stages(net, family, x)
    chans = tuple(int(m.shape[1]) for m in maps)
    strides = tuple(2 ** round(math.log2(side / m.shape[-1])) for m in maps)
    return chans, strides


def _run_stages(net: nn.Module, family: str, x: torch.Tensor) -> list[torch.Tensor]:
    if family == "resnet":
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        outs = []
        for stage in (net.layer1, net.layer2, net.layer3, net.layer4):
            x = stage(x)
            outs.append(x)
        return outs
    # timm CNNs and Swin: the last four stages (no final norm), NCHW
    return list(net.forward_intermediates(x, indices=4, norm=False, output_fmt="NCHW", intermediates_only=True))


# How a ViT treats an input whose sides are not a multiple of its patch (a protocol states one, see kinds.py):
# "center": pad evenly on both sides to the next multiple (DINOv2's CenterPadding in its segmentation and depth
# evaluations); "bottom_right": pad at the bottom and the right (detectron2's ImageList padding, so the grid
# stays aligned with the image's origin); "refuse": an error.
REMAINDER_RULES = ("center", "bottom_right", "refuse")


class Backbone(nn.Module):
    """One interface over ViTs and CNNs; `net` holds the upstream-compatible module."""

    def __init__(self, arch: str, net: nn.Module, info: ArchFacts):
        super().__init__()
        self.arch, self.info, self.net = arch, info, net
        self.remainder = "refuse"
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

    # ---- inputs ---------------------------------------------------------------------------
    def fit(self, x: torch.Tensor) -> torch.Tensor:
        """`x` with sides a multiple of the patch, by the backbone's `remainder` rule (ViTs only)."""
        if self.info.family != "vit":
            return x
        p, (h, w) = self.info.patch, x.shape[-2:]
        dh, dw = -h % p, -w % p
        if not (dh or dw):
            return x
        if self.remainder == "center":
            return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))
        if self.remainder == "bottom_right":
            return F.pad(x, (0, dw, 0, dh))
        raise ArchError(
            f"an input of {h}x{w} pixels is not a multiple of the {self.arch}'s patch {p}: its patch embedding would "
            f"drop the last {h % p} rows and {w % p} columns without a word. The protocol must resize to a multiple "
            f"or state a padding rule (harness/kinds.py PATCH_REMAINDER)"
        )

    def grid(self, x: torch.Tensor) -> tuple[int, int]:
        """(h, w) of the dense map of input `x` (after `fit`)."""
        h, w = x.shape[-2:]
        s = self.stride
        return (math.ceil(h / s), math.ceil(w / s)) if self.info.family == "vit" else (h // s, w // s)

    # ---- dense features -------------------------------------------------------------------
    def dense(self, x: torch.Tensor, layer: int | None = None, norm: bool = True) -> torch.Tensor:
        """[B, N, d] tokens of `layer` (None = last; for ViT a block index, for CNNs a stage 1..4)."""
        fam = self.info.family
        if fam == "vit":
            x = self.fit(x)
            last = len(self.net.blocks) - 1
            if layer is None or layer in (-1, last):
                if not norm:  # forward_features applies the final norm; recompute without it
                    return self.net.forward_intermediates(
                        x, indices=[last], norm=False, output_fmt="NLC", intermediates_only=True
                    )[0]
                return self.net.forward_features(x)[:, self.info.prefix_tokens :]
            return self.net.forward_intermediates(
                x, indices=[layer], norm=norm, output_fmt="NLC", intermediates_only=True
            )[0]
        return self._stage_map(x, layer, norm).flatten(2).transpose(1, 2)

    def _stage_map(self, x: torch.Tensor, layer: int | None, norm: bool = True) -> torch.Tensor:
        """[B, C, h, w] output of a CNN / Swin stage (1..4, default the last; Swin's last with its norm)."""
        m = self._stages(x)[(layer or 4) - 1]
        if self.info.family == "swin" and (layer in (None, 4)) and norm:
            m = self.net.norm(m.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return m

    @property
    def embedding_kind(self) -> str:
        """What `dense_and_embedding` returns as the image-level embedding (the paper's, DINO k-NN's)."""
        if self.info.family == "vit" and self.info.class_token:
            return "class token (after the final norm)" if self.info.token_norm else "class token (no final norm)"
        return "global average pool of the last layer"

    def dense_and_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, N, d] last-layer dense tokens, [B, d] image-level embedding) from one forward pass: the
        class token for ViTs that have one, else the mean of the dense tokens (GAP for CNNs and Swin)."""
        if self.info.family == "vit":
            tokens = self.net.forward_features(self.fit(x))
            dense = tokens[:, self.info.prefix_tokens :]
            if self.info.class_token:
                return dense, tokens[:, 0]
            return dense, dense.mean(dim=1)
        dense = self.dense(x)
        return dense, dense.mean(dim=1)

    def class_tokens(self, x: torch.Tensor, n: int = 1, avgpool: bool = False) -> torch.Tensor:
        """DINO's linear-evaluation features: for ViTs with a class token, the class tokens of the last `n`
        blocks after the final norm, concatenated (and with `avgpool`, the mean of the last block's
        normed patch tokens); for the others, the image-level embedding (`embed`: global average pool)."""
        if self.info.family != "vit" or not self.info.class_token:
            return self.embed(x)
        last = len(self.net.blocks)
        outs = self.net.forward_intermediates(  # [(patch tokens, prefix tokens)] of the last n blocks, normed
            self.fit(x),
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
        """[B, d, h, w] form of `dense` (h, w = the input's grid, `grid`)."""
        if self.info.family != "vit":  # the stage's own map (a CIFAR stem's padding makes it 5x5 at 32 px)
            return self._stage_map(x, layer)
        t = self.dense(x, layer)
        h, w = self.grid(x)
        return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)

    # ---- multi-level features -------------------------------------------------------------
    def levels(self, x: torch.Tensor, indices: tuple[int, ...] | None = None) -> list[torch.Tensor]:
        """Four [B, C, H, W] maps for the downstream heads (ViT: the blocks `indices`, default the
        architecture's `level_indices`, at the patch's stride each, without the final norm; the neck
        rescales). CNNs: the last four stages."""
        if self.info.family == "vit":
            return list(
                self.net.forward_intermediates(
                    self.fit(x),
                    indices=list(indices or self.info.level_indices),
                    norm=False,
                    output_fmt="NCHW",
                    intermediates_only=True,
                )
            )
        return self._stages(x)

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        return _run_stages(self.net, self.info.family, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


def build_backbone(arch: str, **kwargs) -> Backbone:
    """A freshly initialised backbone of `arch`, an alias or any timm model name (never downloads weights)."""
    net = build_net(arch, **kwargs)
    return Backbone(arch, net, arch_facts(arch, **kwargs))


def facts_of_method(spec) -> ArchFacts:
    """The architecture facts of a registry method (its `arch` with its `arch_kwargs`)."""
    return arch_facts(spec.arch, **spec.arch_kwargs)
