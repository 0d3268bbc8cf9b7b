"""The typed parameters of each protocol kind (the `params:` of a protocol file).

Every key a protocol file may hold is declared here with its default, and a job reads nothing else:
a misspelt key (`iterz`) is a registry error with the file, line and a "did you mean", never a silent
default. The registry stores the resolved parameters (defaults filled in), so a cell's config hash
covers what actually runs. Data only: pydantic, no torch.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Every numeric parameter has a domain (issue 23): a value outside it is a registry error naming the file,
# the line, the key and the domain, before anything runs (`temperature: 0` divides by zero in k-NN).
PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
Positive = Annotated[float, Field(gt=0)]
NonNeg = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]  # a probability or a share
OpenFraction = Annotated[float, Field(ge=0, lt=1)]  # a dropout rate, a momentum (1 would freeze it)
Rate = Annotated[float, Field(gt=0, le=1)]  # a multiplicative factor of at most 1
Pair = tuple[PosInt, PosInt]


def _ordered(lo, hi, what: str) -> None:
    if lo > hi:
        raise ValueError(f"{what}: the first value ({lo}) must not exceed the second ({hi})")


class P(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Loading(P):
    """Shared by the jobs that read images."""

    num_workers: int | None = Field(
        default=None, ge=0, description="data-loading workers; default: the cell's CPUs but one"
    )
    precision: Literal["float32", "bfloat16", "float16"] | None = Field(
        default=None,
        description="forward precision; default: bfloat16 (mixed) on GPUs where the recipe allows, float32 on the CPU",
    )


# --------------------------------------------------------------------------------------------- metrics


class DSEParams(P):
    mode: Literal["parity", "fast"] = "parity"
    local_clusters: int = Field(default=3, ge=1)
    global_clusters: int = Field(default=24, ge=1)
    group_size: int = Field(default=8, ge=1)
    normalize: bool = True
    kmeans_iters: int = Field(default=20, ge=1)
    kmeans_tol: float = Field(default=1e-4, ge=0)
    seed: int = 0


class UniformityParams(P):
    t: Positive = 2.0
    max_vectors: int = Field(default=10000, ge=2)


class AlphaReqParams(P):
    fit_min_rank: int = Field(default=11, ge=1, description="reptrix's α-ReQ fits ranks 11..100")
    fit_max_rank: int = Field(default=100, ge=2)

    @model_validator(mode="after")
    def _range(self):
        if self.fit_min_rank >= self.fit_max_rank:
            raise ValueError(f"fit_min_rank ({self.fit_min_rank}) must be below fit_max_rank ({self.fit_max_rank})")
        return self


class ViewAugment(P):
    crop: PosInt = 224
    scale: tuple[Rate, Rate] = (0.2, 1.0)
    flip: Fraction = 0.5
    color_jitter: NonNeg = 0.4
    grayscale: Fraction = 0.2

    @model_validator(mode="after")
    def _range(self):
        _ordered(*self.scale, "scale")
        return self


class LidarParams(P):
    num_images: int = Field(default=1000, ge=0, description="0 turns LiDAR off")
    views: int = Field(default=50, ge=2)
    delta: Positive = 1e-6
    eps: Positive = 1e-7
    augment: ViewAugment = Field(default_factory=ViewAugment)


class MetricsParams(Loading):
    num_images: int = Field(ge=1, description="images of the fixed, recorded list")
    split: str = "train"
    batch_size: int = Field(default=1024, ge=1, description="DSE batch (images)")
    image_list_seed: int = 0
    resize: PosInt = 256
    crop: PosInt = 224
    forward_batch: int = Field(default=64, ge=1, description="images per forward pass")
    cache: bool = Field(
        default=False,
        description="keep the float32 features on disk (re-runs skip the forward "
        "pass; ~0.6-0.8 GB per checkpoint at 2,048 images)",
    )
    tokens_per_image: int = Field(default=16, ge=1)
    dse: DSEParams = Field(default_factory=DSEParams)
    uniformity: UniformityParams = Field(default_factory=UniformityParams)
    alpha_req: AlphaReqParams = Field(default_factory=AlphaReqParams)
    lidar: LidarParams = Field(default_factory=LidarParams)

    @model_validator(mode="after")
    def _crop(self):
        if self.crop > self.resize:
            raise ValueError(f"crop ({self.crop}) is larger than resize ({self.resize}): the center crop would pad")
        return self


# --------------------------------------------------------------------------------------------- segmentation


class Schedule(P):
    iters: int = Field(default=40000, ge=1, description="optimizer steps")
    warmup_iters: int = Field(default=1500, ge=0)
    warmup_ratio: Rate = 1e-6
    min_lr: NonNeg = 0.0
    power: Positive = 1.0

    @model_validator(mode="after")
    def _warmup(self):
        if self.warmup_iters > self.iters:
            raise ValueError(f"warmup_iters ({self.warmup_iters}) exceeds iters ({self.iters})")
        return self


class SegOptimizer(P):
    lr: Positive = 1e-3
    weight_decay: NonNeg = 1e-4
    betas: tuple[OpenFraction, OpenFraction] = (0.9, 0.999)


class MultiScaleTest(P):
    """A multi-scale (+ flip) test after the single-scale one, both in the record (mmseg's TestTimeAug
    and SegTTAModel: softmax scores averaged over the views)."""

    ratios: tuple[Positive, ...] = Field(min_length=1, description="e.g. [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]")
    flip: bool = True
    resize: Literal["setr", "scale"] = Field(
        default="setr",
        description="'setr': short side max(crop height, ratio x the test scale's short side), no cap on the "
        "long side (iBOT/BEiT's SETR_Resize, setr_multi_scale=True); 'scale': the test scale x ratio, keeping "
        "the aspect ratio (mmseg's MultiScaleFlipAug)",
    )


class TestMode(P):
    mode: Literal["whole", "slide"] = "whole"
    multi_scale: MultiScaleTest | None = Field(
        default=None, description="also test at several scales (+ flip): metrics `<name>_ms` next to the others"
    )
    crop_size: Pair | None = Field(
        default=None,
        description="the slide window; default: the dataset's (its segmentation.slide_crop, else its crop)",
    )
    stride: Pair | None = Field(default=None, description="default: the dataset's, else 2/3 of the window")
    precision: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32",
        description="the backbone's precision at evaluation (heads in float32): float32 costs "
        "~1% of a probe's forward passes; bfloat16 agreed with it on 99.2-99.9% of "
        "pixels in the mini world (docs/gpu.md)",
    )


class SegmentationParams(Loading):
    batch_size: int = Field(default=16, ge=1, description="global batch (over every GPU of the recipe)")
    val_batch_size: int = Field(default=1, ge=1)
    # crop and scale belong to the dataset (its `segmentation:` block, as mmseg's dataset configs): these
    # override them for every dataset of the protocol (the mini world's tiny crops)
    crop_size: Pair | None = Field(default=None, description="default: the dataset's (512x512; Cityscapes 512x1024)")
    train_scale: Pair | None = Field(
        default=None, description="default: the dataset's ((2048, 512); Cityscapes (2048, 1024))"
    )
    test_scale: Pair | None = Field(default=None, description="default: train_scale")
    ratio_range: tuple[Positive, Positive] = (0.5, 2.0)
    photometric: bool = True
    photometric_on: Literal["auto", "device", "pipeline"] = Field(
        default="auto",
        description="where PhotoMetricDistortion runs: 'device' (batched on the cell's device, same "
        "distribution), 'pipeline' (mmseg's transform in the data workers), 'auto' (the "
        "device on GPUs, the pipeline on CPUs, where OpenCV is faster: make bench)",
    )
    schedule: Schedule = Field(default_factory=Schedule)
    test: TestMode = Field(default_factory=TestMode)
    sync_bn: bool = False
    checkpoint_interval: int = Field(default=1000, ge=1)
    log_interval: int = Field(default=50, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _ratio(self):
        _ordered(*self.ratio_range, "ratio_range")
        return self


class LinearHead(P):
    dropout: OpenFraction = 0.0


class LinearParams(SegmentationParams):
    optimizer: SegOptimizer = Field(default_factory=SegOptimizer)
    head: LinearHead = Field(default_factory=LinearHead)


class UperNetOptimizer(SegOptimizer):
    lr: Positive = 1e-4
    weight_decay: NonNeg = 0.05
    layer_decay_rate: Rate = 0.9


class DecodeHead(P):
    channels: PosInt = 384
    pool_scales: tuple[PosInt, ...] = (1, 2, 3, 6)
    dropout: OpenFraction = 0.1


class AuxiliaryHead(P):
    in_index: NonNegInt = 2
    channels: PosInt = 256
    num_convs: PosInt = 1
    loss_weight: NonNeg = 0.4


class ViTBlocks(P):
    """The ViT blocks a multi-level protocol takes, written for a ViT of `vit_levels_depth` blocks and scaled to
    the method's depth by one rule (harness.models.archs.scale_blocks: BEiT's [3, 5, 7, 11] is [7, 11, 15, 23]
    on ViT-L, the evenly spaced [2, 5, 8, 11] is [5, 11, 17, 23])."""

    vit_levels: tuple[NonNegInt, ...] = Field(default=(3, 5, 7, 11), description="0-based ViT blocks")
    vit_levels_depth: PosInt = Field(default=12, description="the depth `vit_levels` are written for")

    def blocks_for(self, depth: int) -> tuple[int, ...]:
        from harness.archnames import scale_blocks

        return scale_blocks(self.vit_levels, depth, self.vit_levels_depth)


class UperNetParams(SegmentationParams, ViTBlocks):
    optimizer: UperNetOptimizer = Field(default_factory=UperNetOptimizer)
    decode_head: DecodeHead = Field(default_factory=DecodeHead)
    auxiliary_head: AuxiliaryHead = Field(default_factory=AuxiliaryHead)
    neck_rescales: tuple[Positive, ...] = (4, 2, 1, 0.5)
    drop_path: OpenFraction = 0.1


class FPNNeck(P):
    out_channels: PosInt = 256


class FPNDecodeHead(P):
    channels: PosInt = 128
    dropout: OpenFraction = 0.1
    feature_strides: tuple[PosInt, ...] = (4, 8, 16, 32)


class SemFPNParams(SegmentationParams, ViTBlocks):
    """Semantic FPN (UDI's / SelfPatch's ADE20K protocol): a fine-tuned backbone's four levels (ViT: the
    blocks `vit_levels`, all at stride 16, not rescaled) under mmseg's FPN neck and FPNHead."""

    optimizer: UperNetOptimizer = Field(
        default_factory=lambda: UperNetOptimizer(lr=6e-5, weight_decay=0.01, layer_decay_rate=1.0)
    )
    vit_levels: tuple[NonNegInt, ...] = Field(default=(2, 5, 8, 11), description="0-based ViT blocks: 3, 6, 9, 12")
    neck: FPNNeck = Field(default_factory=FPNNeck)
    decode_head: FPNDecodeHead = Field(default_factory=FPNDecodeHead)
    drop_path: OpenFraction = 0.1


# --------------------------------------------------------------------------------------------- others


class DetOptimizer(P):
    """AdamW as ViTDet: no weight decay on norms, biases, position and class tokens; layer-wise lr decay
    for ViT backbones (block i of L: rate^(L - i), embeddings rate^(L + 1))."""

    lr: Positive = 1e-4
    weight_decay: NonNeg = 0.05
    betas: tuple[OpenFraction, OpenFraction] = (0.9, 0.999)
    layer_decay_rate: float = Field(default=0.7, gt=0, le=1, description="ViTDet's 0.7 for ViT-S/B; 1 turns it off")


class MaskRCNNParams(ViTBlocks):
    num_workers: int | None = Field(
        default=None, ge=0, description="data-loading workers; default: the cell's CPUs but one"
    )
    backend: Literal["auto", "detectron2", "torchvision"] = Field(
        default="auto",
        description="auto: detectron2 where it can be imported when the plan is made (recorded "
        "in the cell's config: one backend per table)",
    )
    pyramid: Literal["multilevel", "simple"] = Field(
        default="simple",
        description="ViT features: 'multilevel' = the blocks `vit_levels`, each rescaled by `vit_scale_factors` "
        "(UDI/SelfPatch: ConvT-BN-GELU-ConvT, ConvT, identity, max-pool) under an FPN; 'simple' = ViTDet's "
        "simple feature pyramid on the last block",
    )
    vit_scale_factors: tuple[Positive, ...] = (4.0, 2.0, 1.0, 0.5)
    out_channels: PosInt = 256
    anchor_sizes: tuple[PosInt, ...] = (32, 64, 128, 256, 512)
    min_size: PosInt = Field(
        default=800, description="the test scale's short side (and the train one when `train_min_sizes` is empty)"
    )
    train_min_sizes: tuple[PosInt, ...] = Field(
        default=(), description="multi-scale training: a short side drawn per image from these"
    )
    max_size: PosInt = 1333
    crop_policy: Literal["none", "detr"] = Field(
        default="none",
        description="'detr': with probability crop_prob, resize the short side to one of crop_resize_sizes, "
        "crop an absolute size in crop_range, then the multi-scale resize (DETR's AutoAugment branch)",
    )
    crop_prob: Fraction = 0.5
    crop_resize_sizes: tuple[PosInt, ...] = (400, 500, 600)
    crop_range: tuple[PosInt, PosInt] = (384, 600)
    drop_path: OpenFraction = Field(default=0.0, description="the ViT's stochastic depth while fine-tuning")
    optimizer: DetOptimizer = Field(default_factory=DetOptimizer)
    iters: int = Field(default=1000, ge=1, description="optimizer steps (when `epochs` is not set)")
    steps: tuple[PosInt, ...] = Field(default=(), description="lr x gamma at each of these optimizer steps")
    epochs: int | None = Field(
        default=None,
        ge=1,
        description="an epoch-based schedule: iters = epochs x ceil(training images / batch), resolved at run time",
    )
    step_epochs: tuple[PosInt, ...] = Field(default=(), description="with `epochs`: lr x gamma after these epochs")
    gamma: Rate = 0.1
    warmup_iters: int = Field(default=0, ge=0, description="linear warm-up from warmup_factor x lr")
    warmup_factor: Rate = 0.001
    batch_size: int = Field(default=16, ge=1, description="global batch")
    checkpoint_interval: int = Field(default=500, ge=1)
    rpn_post_nms_train: PosInt = Field(default=2000, description="proposals kept after the RPN's NMS in training")
    detections_per_img: PosInt = 100
    score_thresh: OpenFraction = 0.0
    amp: bool = Field(
        default=True, description="mixed precision on GPUs (torchvision: bfloat16 autocast; detectron2: its AMP)"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _schedule(self):
        _ordered(self.min_size, self.max_size, "min_size, max_size")
        _ordered(*self.crop_range, "crop_range")
        late = [s for s in self.steps if s > self.iters]
        if late or list(self.steps) != sorted(self.steps):
            raise ValueError(f"steps {list(self.steps)} must be increasing and within iters ({self.iters})")
        if self.epochs is not None and (
            any(e > self.epochs for e in self.step_epochs) or list(self.step_epochs) != sorted(self.step_epochs)
        ):
            raise ValueError(
                f"step_epochs {list(self.step_epochs)} must be increasing and within epochs ({self.epochs})"
            )
        if self.epochs is None and self.warmup_iters > self.iters:
            raise ValueError(f"warmup_iters ({self.warmup_iters}) exceeds iters ({self.iters})")
        if self.pyramid == "multilevel" and len(self.vit_levels) != len(self.vit_scale_factors):
            raise ValueError(
                f"vit_levels {list(self.vit_levels)} and vit_scale_factors {list(self.vit_scale_factors)} must pair up"
            )
        return self


class DavisParams(P):
    split: str = "val"
    short_side: PosInt = 480
    size_multiple: PosInt = 64
    n_last_frames: PosInt = 7
    size_mask_neighborhood: NonNegInt = 12
    topk: PosInt = 5
    temperature: Positive = 0.1
    bound_th: Annotated[float, Field(gt=0, lt=1)] = 0.008
    resnet_layer: Annotated[int, Field(ge=1, le=4)] = 3


class KnnParams(Loading):
    ks: tuple[PosInt, ...] = Field(
        default=(10, 20, 100, 200), description="every k of one neighbour search (DINO's sweep), each in the record"
    )
    k: int = Field(default=20, ge=1, description="the k the tables read (top1, top5)")
    temperature: Positive = 0.07
    resize: PosInt = 256
    crop: PosInt = 224
    batch_size: int = Field(default=64, ge=1)

    @model_validator(mode="after")
    def _k_swept(self):
        if self.k not in self.ks:
            raise ValueError(f"k ({self.k}) must be one of ks {list(self.ks)}")
        return self


class LinearClsOptimizer(P):
    lr: Positive = Field(default=1e-3, description="base learning rate (scaled by lr_scaling)")
    lr_scaling: Literal["batch/256", "none"] = Field(
        default="batch/256", description="DINO's linear scaling rule: lr x global batch / 256"
    )
    momentum: OpenFraction = 0.9
    weight_decay: NonNeg = 0.0


class LinearClsParams(Loading):
    """A linear classifier on frozen features, trained with augmentation (DINO's eval_linear; the W2
    paper's CIFAR evaluation): SGD, cosine schedule to 0, validated every `val_every` epochs."""

    n_last_blocks: PosInt = Field(
        default=4, description="ViTs with a class token: concatenate the class tokens of the last n blocks"
    )
    avgpool_patchtokens: bool = Field(default=False, description="also the mean of the last block's patch tokens")
    epochs: PosInt = 100
    batch_size: PosInt = Field(default=1024, description="global batch")
    optimizer: LinearClsOptimizer = Field(default_factory=LinearClsOptimizer)
    train_crop: PosInt = Field(default=224, description="RandomResizedCrop size")
    crop_scale: tuple[Fraction, Fraction] = (0.08, 1.0)
    flip: Fraction = 0.5
    resize: PosInt | None = Field(default=256, description="evaluation resize (short side); none: the image as it is")
    crop: PosInt | None = Field(default=224, description="evaluation centre crop; none: no crop")
    normalize: Literal["imagenet", "cifar"] = Field(
        default="imagenet", description="ImageNet's mean/std or the W2 code's CIFAR ones"
    )
    val_every: PosInt = Field(default=1, description="epochs between evaluations (the last is always evaluated)")
    seed: int = 0

    @model_validator(mode="after")
    def _scale(self):
        _ordered(*self.crop_scale, "crop_scale")
        if self.crop_scale[0] <= 0:
            raise ValueError("crop_scale: the smallest crop must be a positive share of the image")
        return self


class LowShotParams(Loading):
    """Logistic regression on frozen, L2-normalised embeddings of a labelled subset (UDI's low-shot
    protocol: SimCLRv2's 1% / 10% ImageNet lists), one fit per regularisation strength."""

    train_split: str = Field(description="the dataset split of the labelled subset (e.g. train_1pct)")
    lambdas: tuple[Positive, ...] = Field(default=(0.01, 0.1, 1.0), min_length=1)
    adjust_lambda: bool = Field(default=True, description="divide lambda by the number of training images (UDI)")
    max_iter: PosInt = Field(
        default=1000, description="lbfgs iterations; a fit that has not converged by then fails the cell"
    )
    tol: Positive = Field(default=1e-4, description="lbfgs's gradient tolerance (scikit-learn's default)")
    resize: PosInt = 256
    crop: PosInt = 224
    batch_size: PosInt = 128


class FinetuneOptimizer(P):
    lr: Positive = Field(description="base learning rate (scaled by lr_scaling)")
    lr_scaling: Literal["batch/512", "none"] = Field(
        default="none",
        description="DeiT's linear scaling rule (UDI's transfer and low-shot scripts): lr x global batch / 512",
    )
    weight_decay: NonNeg = 0.05
    betas: tuple[OpenFraction, OpenFraction] = (0.9, 0.999)
    eps: Positive = 1e-8
    layer_decay_rate: Rate = Field(
        default=1.0, description="ViT layer-wise lr decay (BEiT's rule, harness.jobs.optim); 1: none"
    )
    clip_grad: Positive | None = Field(default=None, description="gradient-norm clipping; none: no clipping")


class FinetuneSchedule(P):
    kind: Literal["cosine_per_step", "cosine_per_epoch"] = Field(
        description="BEiT's cosine_scheduler, a value per step (UDI's ImageNet fine-tuning); timm's CosineLRScheduler "
        "stepped once per epoch with the epoch just trained, as DeiT's loop does (UDI's transfer and low-shot)"
    )
    warmup_epochs: NonNegInt = 5
    warmup_lr: NonNeg = Field(default=1e-6, description="the learning rate the warm-up starts from")
    min_lr: NonNeg = Field(default=1e-5, description="the end of the cosine (above lr, the cosine rises to it)")


class FinetuneAugment(P):
    """timm's create_transform (RandAugment, colour jitter, random erasing) and Mixup / CutMix with label
    smoothing, as UDI's (DeiT's, BEiT's) fine-tuning scripts build them."""

    input_size: PosInt = 224
    color_jitter: NonNeg = 0.4
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    interpolation: Literal["bicubic", "bilinear", "random"] = "bicubic"
    reprob: Fraction = 0.25
    remode: Literal["pixel", "rand", "const"] = "pixel"
    recount: PosInt = 1
    mixup: NonNeg = 0.8
    cutmix: NonNeg = 1.0
    mixup_prob: Fraction = 1.0
    switch_prob: Fraction = 0.5
    mixup_mode: Literal["batch", "pair", "elem"] = "batch"
    smoothing: Fraction = 0.1
    repeated_aug: PosInt = Field(
        default=1,
        description="DeiT's RASampler (timm's RepeatAugSampler): each image this many times per epoch, "
        "the epoch's samples rounded down to a multiple of 256; 1: a plain shuffle",
    )
    normalize: Literal["imagenet", "inception"] = Field(
        default="imagenet", description="timm's IMAGENET_DEFAULT mean/std, or IMAGENET_INCEPTION (0.5, 0.5, 0.5)"
    )


class FinetuneParams(Loading):
    """End-to-end fine-tuning of the whole backbone with a new classification head (UDI's ImageNet
    fine-tuning, transfer learning and low-shot fine-tuning: one training loop, three recipes)."""

    train_split: str = Field(default="train", description="the dataset split trained on (train_1pct: a low-shot list)")
    epochs: PosInt
    batch_size: PosInt = Field(description="global batch")
    drop_path: OpenFraction = 0.1
    head: Literal["new", "projection"] = Field(
        default="new",
        description="a new linear layer on the class token; projection: the first layer of the method's own "
        "projection head (its file's projection_head, from the checkpoint) + GELU + a new linear layer (UDI's "
        "--finetune_head_layer 1)",
    )
    head_init_scale: Positive = Field(default=1.0, description="the new head's initial weights and bias x this")
    optimizer: FinetuneOptimizer
    schedule: FinetuneSchedule
    augment: FinetuneAugment = Field(default_factory=FinetuneAugment)
    eval_resize: PosInt = Field(default=256, description="evaluation: short side resized to this, then centre crop")
    eval_interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    val_every: PosInt = Field(default=1, description="epochs between evaluations (the last is always evaluated)")
    seed: int = 0


class DepthOptimizer(P):
    lr: Positive = Field(default=3e-4, description="the one-cycle schedule's max_lr")
    betas: tuple[OpenFraction, OpenFraction] = Field(
        default=(0.9, 0.99), description="beta1 is the schedule's momentum (0 in the warm-up, then 0.85 -> 0.95)"
    )
    weight_decay: NonNeg = 1e-4
    clip_grad: Positive | None = 35.0


class DepthSchedule(P):
    """DINOv3's WarmupOneCycleLR (dinov3/eval/depth/schedulers.py), stepped every iteration."""

    warmup_iters: NonNegInt = 12800
    div_factor: Positive = 25.0
    final_div_factor: Positive = 1000.0
    momentum: tuple[OpenFraction, OpenFraction] = Field(default=(0.85, 0.95), description="beta1 after the warm-up")


class DepthParams(Loading):
    """A frozen backbone's last-layer patch tokens (after its final norm) into BatchNorm + a 1x1 convolution to
    `bins` channels, read as depth over bins spread linearly between min_depth and max_depth (DINOv3's linear depth
    head), trained with the scale-invariant log loss; scored per image on the evaluation mask, then averaged."""

    iters: PosInt = 38400
    batch_size: PosInt = Field(default=16, description="global batch")
    optimizer: DepthOptimizer = Field(default_factory=DepthOptimizer)
    schedule: DepthSchedule = Field(default_factory=DepthSchedule)
    bins: PosInt = 256
    min_depth: Positive = 0.001
    max_depth: Positive = 10.0
    loss_warmup_iters: NonNegInt = Field(default=100, description="SigLoss without its variance term at first")
    variance_focus: Fraction = Field(default=0.85, description="SigLoss: sqrt(var(g) + (1 - this) * mean(g)^2)")
    fixed_crop: tuple[NonNegInt, NonNegInt, PosInt, PosInt] | None = Field(
        default=(43, 45, 608, 472),
        description="training: the (x1, y1, x2, y2) box kept of a 640x480 image first (NYU's valid area), scaled to "
        "the image's size; none: the whole image",
    )
    train_crop: Pair = Field(default=(416, 544), description="training: a random (height, width) crop")
    rotation: NonNeg = Field(default=2.5, description="training: a random rotation up to this many degrees, p = 0.5")
    flip: Fraction = 0.5
    color_prob: Fraction = Field(default=0.5, description="training: gamma, brightness and colour jitter together")
    brightness: tuple[Positive, Positive] = (0.75, 1.25)
    eval_mask: Literal["eigen", "full"] = Field(
        default="eigen", description="the evaluated pixels: the Eigen crop (rows 45:471, cols 41:601 of 480x640)"
    )
    eval_flip: bool = Field(default=True, description="test-time flip, averaged at the patch grid")
    checkpoint_interval: PosInt = Field(default=1600, description="iterations between saved states (resume)")
    seed: int = 321


class ProbeParams(P):
    steps: int = Field(default=3, ge=0)
    sleep_s: NonNeg = 0.1
    fail_methods: tuple[str, ...] = ()
    fail_epochs: tuple[int, ...] = ()
    fail_first_runs: NonNegInt = 0
