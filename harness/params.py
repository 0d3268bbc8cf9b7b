"""The typed parameters of each protocol kind (the `params:` of a protocol file).

Every key a protocol file may hold is declared here with its default, and a job reads nothing else:
a misspelt key (`iterz`) is a registry error with the file, line and a "did you mean", never a silent
default. The registry stores the resolved parameters (defaults filled in), so a cell's config hash
covers what actually runs. Data only: pydantic, no torch.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Pair = tuple[int, int]


class P(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Loading(P):
    """Shared by the jobs that read images."""
    num_workers: int | None = Field(default=None, ge=0, description="data-loading workers; default: the cell's CPUs "
                                                                     "but one")
    precision: Literal["float32", "bfloat16", "float16"] | None = Field(
        default=None, description="forward precision; default: bfloat16 (mixed) on GPUs where the recipe allows, "
                                  "float32 on the CPU")


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
    t: float = 2.0
    max_vectors: int = Field(default=10000, ge=2)


class AlphaReqParams(P):
    fit_min_rank: int = Field(default=11, ge=1, description="reptrix's α-ReQ fits ranks 11..100")
    fit_max_rank: int = Field(default=100, ge=2)


class ViewAugment(P):
    crop: int = 224
    scale: tuple[float, float] = (0.2, 1.0)
    flip: float = 0.5
    color_jitter: float = 0.4
    grayscale: float = 0.2


class LidarParams(P):
    num_images: int = Field(default=1000, ge=0, description="0 turns LiDAR off")
    views: int = Field(default=50, ge=2)
    delta: float = 1e-6
    eps: float = 1e-7
    augment: ViewAugment = Field(default_factory=ViewAugment)


class MetricsParams(Loading):
    num_images: int = Field(ge=1, description="images of the fixed, recorded list")
    split: str = "train"
    batch_size: int = Field(default=1024, ge=1, description="DSE batch (images)")
    image_list_seed: int = 0
    resize: int = 256
    crop: int = 224
    forward_batch: int = Field(default=64, ge=1, description="images per forward pass")
    cache: bool = Field(default=False, description="keep the float32 features on disk (re-runs skip the forward "
                                                     "pass; ~0.6-0.8 GB per checkpoint at 2,048 images)")
    tokens_per_image: int = Field(default=16, ge=1)
    dse: DSEParams = Field(default_factory=DSEParams)
    uniformity: UniformityParams = Field(default_factory=UniformityParams)
    alpha_req: AlphaReqParams = Field(default_factory=AlphaReqParams)
    lidar: LidarParams = Field(default_factory=LidarParams)


# --------------------------------------------------------------------------------------------- segmentation

class Schedule(P):
    iters: int = Field(default=40000, ge=1, description="optimizer steps")
    warmup_iters: int = Field(default=1500, ge=0)
    warmup_ratio: float = 1e-6
    min_lr: float = 0.0
    power: float = 1.0


class SegOptimizer(P):
    lr: float = 1e-3
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)


class TestMode(P):
    mode: Literal["whole", "slide"] = "whole"
    crop_size: Pair | None = None
    stride: Pair | None = None
    precision: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="the backbone's precision at evaluation (heads in float32): float32 costs "
                                       "~1% of a probe's forward passes; bfloat16 agreed with it on 99.2-99.9% of "
                                       "pixels in the mini world (docs/gpu.md)")


class SegmentationParams(Loading):
    batch_size: int = Field(default=16, ge=1, description="global batch (over every GPU of the recipe)")
    val_batch_size: int = Field(default=1, ge=1)
    crop_size: Pair = (512, 512)
    train_scale: Pair = (2048, 512)
    test_scale: Pair | None = Field(default=None, description="default: train_scale")
    crop_size_cityscapes: Pair = (512, 1024)
    train_scale_cityscapes: Pair = (2048, 1024)
    test_scale_cityscapes: Pair | None = None
    ratio_range: tuple[float, float] = (0.5, 2.0)
    photometric: bool = True
    photometric_on: Literal["auto", "device", "pipeline"] = Field(
        default="auto", description="where PhotoMetricDistortion runs: 'device' (batched on the cell's device, same "
                                    "distribution), 'pipeline' (mmseg's transform in the data workers), 'auto' (the "
                                    "device on GPUs, the pipeline on CPUs, where OpenCV is faster: make bench)")
    schedule: Schedule = Field(default_factory=Schedule)
    test: TestMode = Field(default_factory=TestMode)
    sync_bn: bool = False
    checkpoint_interval: int = Field(default=1000, ge=1)
    log_interval: int = Field(default=50, ge=1)
    seed: int = 0


class LinearHead(P):
    dropout: float = 0.0


class LinearParams(SegmentationParams):
    optimizer: SegOptimizer = Field(default_factory=SegOptimizer)
    head: LinearHead = Field(default_factory=LinearHead)


class UperNetOptimizer(SegOptimizer):
    lr: float = 1e-4
    weight_decay: float = 0.05
    layer_decay_rate: float = 0.9


class DecodeHead(P):
    channels: int = 384
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)
    dropout: float = 0.1


class AuxiliaryHead(P):
    in_index: int = 2
    channels: int = 256
    num_convs: int = 1
    loss_weight: float = 0.4


class UperNetParams(SegmentationParams):
    optimizer: UperNetOptimizer = Field(default_factory=UperNetOptimizer)
    decode_head: DecodeHead = Field(default_factory=DecodeHead)
    auxiliary_head: AuxiliaryHead = Field(default_factory=AuxiliaryHead)
    neck_rescales: tuple[float, ...] = (4, 2, 1, 0.5)
    drop_path: float = 0.1


# --------------------------------------------------------------------------------------------- others

class DetOptimizer(P):
    """AdamW as ViTDet: no weight decay on norms, biases, position and class tokens; layer-wise lr decay
    for ViT backbones (block i of L: rate^(L - i), embeddings rate^(L + 1))."""
    lr: float = 1e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    layer_decay_rate: float = Field(default=0.7, gt=0, le=1, description="ViTDet's 0.7 for ViT-S/B; 1 turns it off")


class MaskRCNNParams(P):
    num_workers: int | None = Field(default=None, ge=0, description="data-loading workers; default: the cell's CPUs "
                                                                     "but one")
    backend: Literal["auto", "detectron2", "torchvision"] = Field(
        default="auto", description="auto: detectron2 where it can be imported when the plan is made (recorded "
                                    "in the cell's config: one backend per table)")
    vit_scale_factors: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5)
    out_channels: int = 256
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    min_size: int = 800
    max_size: int = 1333
    optimizer: DetOptimizer = Field(default_factory=DetOptimizer)
    iters: int = Field(default=1000, ge=1)
    steps: tuple[int, ...] = Field(default=(), description="lr x gamma at each of these optimizer steps")
    gamma: float = 0.1
    warmup_iters: int = Field(default=0, ge=0, description="linear warm-up from warmup_factor x lr")
    warmup_factor: float = 0.001
    batch_size: int = Field(default=16, ge=1, description="global batch")
    checkpoint_interval: int = Field(default=500, ge=1)
    detections_per_img: int = 100
    score_thresh: float = 0.0
    amp: bool = Field(default=True, description="mixed precision on GPUs (torchvision: bfloat16 autocast; "
                                                "detectron2: its AMP)")
    seed: int = 0


class DavisParams(P):
    split: str = "val"
    short_side: int = 480
    size_multiple: int = 64
    n_last_frames: int = 7
    size_mask_neighborhood: int = 12
    topk: int = 5
    temperature: float = 0.1
    bound_th: float = 0.008
    resnet_layer: int = 3


class KnnParams(Loading):
    k: int = Field(default=20, ge=1)
    temperature: float = 0.07
    resize: int = 256
    crop: int = 224
    batch_size: int = Field(default=64, ge=1)


class ProbeParams(P):
    steps: int = Field(default=3, ge=0)
    sleep_s: float = 0.1
    fail_methods: tuple[str, ...] = ()
    fail_epochs: tuple[int, ...] = ()
    fail_first_runs: int = 0
