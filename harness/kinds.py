"""The one place a protocol kind and a dataset kind are described.

A protocol kind says which job runs it, the schema of its parameters, its code `version` (part of every
cell's config hash), the dataset splits it reads, its role in the tables, and the metrics it produces:
name, table label, direction (higher / lower / closer to a value), the domain of a valid value, the
column names `sdd import` accepts for it, and whether the Kendall-τ tables use it. The registry,
planner, importer, output checks and tables read these tables; no kind name is written elsewhere except
in the kind's own job module. Data only: no torch, no job imports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from harness import params as P

# What a kind's records are for in the tables.
LABEL_FREE = "label-free"  # metrics computed without labels (DSE, RankMe, ...): the τ tables' x
PROBE = "probe"  # a frozen linear probe's mIoU: the SDD, τ and selection tables' y
DENSE = "dense"  # UDI-style dense protocols: the dense table
IMAGE = "image"  # image-level accuracy (k-NN): the image-level τ table
CLASSIFICATION = "classification"  # trained classifiers on frozen features (linear, low-shot): their table
DEPTH = "depth"  # a frozen probe's depth estimation (RMSE, δ1, ...): the τ table against depth
LAUNCH_TEST = "launch-test"  # reads no data, produces no paper number


@dataclass(frozen=True, kw_only=True)
class Metric:
    """A number a kind's job writes into `metrics` (or that `sdd import` may bring for it)."""

    name: str
    label: str
    direction: str = "higher"  # "higher" | "lower" | "closer to <value>"
    low: float = -math.inf  # the domain of a valid value: outside it, a job fails and an import
    high: float = math.inf  # is refused (e.g. a fraction filed as a percentage)
    aliases: tuple[str, ...] = ()  # further column names `sdd import` reads as this metric
    per_class: bool = False  # a {class: value} mapping (each value in the domain)
    tau: bool = False  # a row of the Kendall-τ tables (label-free kinds)
    dense_table: bool = False  # a column of its role's final/selected table (dense or classification kinds)
    optional: bool = False  # written only when the protocol asks (e.g. the multi-scale test): no empty column
    tau_target: bool = False  # a target its role's τ table ranks the label-free metrics against (depth: RMSE, δ1)

    @property
    def target(self) -> float | None:
        """For "closer to <value>": the value."""
        return float(self.direction.split()[-1]) if self.direction.startswith("closer to") else None

    def goodness(self, value: float) -> float:
        """The value oriented so that higher is better (what the τ tables rank by)."""
        if self.direction == "lower":
            return -value
        if self.target is not None:
            return -abs(value - self.target)
        return value

    def in_domain(self, value: float) -> bool:
        return math.isfinite(value) and self.low <= value <= self.high

    def domain_text(self) -> str:
        if self.low == -math.inf and self.high == math.inf:
            return "a finite number"
        if self.high == math.inf:
            return f"a finite number >= {self.low:g}"
        if self.low == -math.inf:
            return f"a finite number <= {self.high:g}"
        return f"a number in [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True, kw_only=True)
class ProtocolKind:
    job: str  # module with `run(cell, ctx) -> JobResult` (imported only when a cell runs)
    params: type  # the schema of its protocol files' `params` (harness.params)
    splits: tuple[str, ...]  # the dataset splits the job reads (checked by the preflight)
    role: str
    metrics: tuple[Metric, ...] = ()
    # Bumped by a code change that alters what the job computes (a bug fix, a new default that is not a
    # parameter): it is part of every cell's config hash, so exactly this kind's records become stale,
    # and `sdd plan` / `status` say "code version changed".
    version: int = 1
    # resolved when the plan is made, so that it is part of the cell's identity: param -> resolver name
    # (harness.plan.PLAN_TIME_RESOLVERS)
    plan_time: tuple[tuple[str, str], ...] = ()
    # parameters that name further dataset splits the job reads (e.g. a low-shot subset)
    split_params: tuple[str, ...] = ()
    # What a ViT does with an input whose sides are not a multiple of its patch (harness.models.archs
    # REMAINDER_RULES); never the silent crop of the patch embedding. "center": DINOv2's CenterPadding
    # (facebookresearch/dinov2, dinov2/eval/segmentation/models/backbones/vision_transformer.py, and its depth
    # evaluation): pad evenly to the next multiple. Image-level crops (224) are multiples of 14 and 16 already.
    patch_remainder: str = "center"
    # Parameters added after records existed, with the value that computes what the kind computed before they
    # existed: at that value, and for the architectures records could be made of then (the aliases), they are
    # left out of the cell's config hash, so those records stay current (harness.plan.resolved_config). The
    # value "depth" stands for the method's ViT depth (blocks written for it are taken as they are). Any other
    # value, or architecture, is hashed like every parameter.
    added_params: tuple[tuple[str, Any], ...] = ()
    # the ViT patch the kind's feature pyramid is built for (None: any patch): its strides are fixed
    vit_patch: int | None = None
    # fields of the method file the kind's jobs read besides its architecture and checkpoint rule: part of its
    # cells' config (and hash) only, so that declaring one changes no other kind's cells
    method_fields: tuple[str, ...] = ()

    def splits_for(self, params) -> tuple[str, ...]:
        """The dataset splits a protocol of this kind reads: the kind's own and those its parameters name."""
        get = params.get if isinstance(params, dict) else lambda n: getattr(params, n, None)
        named = tuple(v for v in (get(n) for n in self.split_params) if isinstance(v, str))
        return tuple(dict.fromkeys(named + self.splits))

    def metric(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)

    def metric_for_column(self, column: str) -> Metric | None:
        """The metric an import column names (its name or an alias, case-insensitive)."""
        c = column.strip().lower()
        return next((m for m in self.metrics if c == m.name.lower() or c in m.aliases), None)


SEGMENTATION_METRICS = (
    Metric(name="mIoU", label="mIoU", aliases=("miou",), low=0.0, high=100.0, dense_table=True),
    Metric(name="aAcc", label="aAcc", aliases=("aacc",), low=0.0, high=100.0, dense_table=True),
    Metric(name="mAcc", label="mAcc", aliases=("macc",), low=0.0, high=100.0, dense_table=True),
    Metric(name="IoU", label="IoU per class", per_class=True, low=0.0, high=100.0),
    # the multi-scale (+ flip) test, when the protocol's test.multi_scale asks for it
    Metric(name="mIoU_ms", label="mIoU ms+flip", low=0.0, high=100.0, dense_table=True, optional=True),
    Metric(name="aAcc_ms", label="aAcc ms+flip", low=0.0, high=100.0, optional=True),
    Metric(name="mAcc_ms", label="mAcc ms+flip", low=0.0, high=100.0, optional=True),
    Metric(name="IoU_ms", label="IoU per class ms+flip", per_class=True, low=0.0, high=100.0, optional=True),
)

PROTOCOL_KINDS: dict[str, ProtocolKind] = {
    "metrics": ProtocolKind(
        job="harness.jobs.metrics",
        params=P.MetricsParams,
        splits=(),
        split_params=("split",),
        role=LABEL_FREE,
        metrics=(
            # `dse_lambda` (DSE with the paper's λ) is computed by the tables from separability and dim
            # the NeurIPS camera-ready of the SDD paper calls the estimator DQE (arXiv 2510.17299 v1: DSE)
            Metric(name="dse", label="DSE (λ=1)", tau=True, aliases=("dse metric (original)", "dse metric", "dqe")),
            Metric(name="dse_separability", label="Separability only", tau=True),
            Metric(
                name="dse_dim",
                label="Dimensionality only (RankMe†)",
                low=0.0,
                high=1.0,
                tau=True,
                aliases=("effective dimensionality",),
            ),
            Metric(name="dse_inter", label="inter-class distance", low=0.0, aliases=("inter-class distance",)),
            Metric(
                name="dse_intra_image",
                label="intra-class radius (image)",
                low=0.0,
                aliases=("intra-class radius (image)",),
            ),
            Metric(
                name="dse_intra_batch",
                label="intra-class radius (batch)",
                low=0.0,
                aliases=("intra-class radius (batch)",),
            ),
            Metric(name="dense_rankme", label="dense RankMe", low=0.0, high=1.0),
            Metric(name="rankme", label="RankMe", low=0.0, tau=True),
            Metric(name="effective_rank", label="effective rank", low=0.0),
            Metric(name="alpha_req", label="α-ReQ", direction="closer to 1", low=0.0, tau=True),
            Metric(name="lidar", label="LiDAR", low=0.0, tau=True),
            Metric(name="w2", label="W2", direction="lower", low=0.0, tau=True),
            Metric(name="neg_w2", label="−W2", high=0.0),
            Metric(name="neg_lu", label="−L_U", low=0.0, tau=True),
            Metric(name="collapsed_dims", label="collapsed dimensions", low=0.0),
            Metric(name="collapsed_dims_dense", label="collapsed dimensions (dense)", low=0.0),
        ),
    ),
    "linear": ProtocolKind(
        job="harness.jobs.segmentation",
        params=P.LinearParams,
        splits=("train", "val"),
        role=PROBE,
        metrics=SEGMENTATION_METRICS,
    ),
    # version 2: the optimiser's one rule (no weight decay on any 1-D parameter, as BEiT and iBOT)
    "upernet": ProtocolKind(
        job="harness.jobs.segmentation",
        params=P.UperNetParams,
        splits=("train", "val"),
        role=DENSE,
        version=2,
        # the blocks were the architecture's before a protocol stated them (BEiT's four, scaled to the depth)
        added_params=(("vit_levels", [3, 5, 7, 11]), ("vit_levels_depth", 12)),
        metrics=tuple(Metric(**{**m.__dict__, "label": f"UperNet {m.label}"}) for m in SEGMENTATION_METRICS),
    ),
    "semfpn": ProtocolKind(
        job="harness.jobs.segmentation",
        params=P.SemFPNParams,
        splits=("train", "val"),
        role=DENSE,
        # its whole-image test feeds ADE20K's resized images (long sides not a multiple of 16) to the ViT; UDI's
        # ViT pads them at the bottom and the right (eval_semantic_segmentation/backbone/vitdeit.py l.210,
        # PatchEmbed padding='corner', mmcv's AdaptivePadding)
        patch_remainder="bottom_right",
        added_params=(("vit_levels_depth", "depth"),),
        metrics=tuple(
            Metric(
                **{
                    **m.__dict__,
                    "label": f"SemFPN {m.label}",
                    "dense_table": m.dense_table and m.name in ("mIoU", "mIoU_ms"),
                }
            )
            for m in SEGMENTATION_METRICS
        ),
    ),
    "maskrcnn": ProtocolKind(
        job="harness.jobs.maskrcnn",
        params=P.MaskRCNNParams,
        splits=("train", "val"),
        role=DENSE,
        plan_time=(("backend", "maskrcnn_backend"),),
        # detectron2's ImageList pads at the bottom and the right; the grid stays aligned with the image's origin
        patch_remainder="bottom_right",
        added_params=(("vit_levels_depth", "depth"),),
        # the pyramids rescale the ViT's map x4, x2, x1, x0.5 into strides 4-32, which anchors and RoI pooling assume
        vit_patch=16,
        # version 2: per-epoch sampling without replacement, the multi-level pyramid, the test size set apart
        version=2,
        metrics=tuple(
            Metric(
                name=f"{task}_{name}",
                label=f"{label}{'' if name == 'AP' else name[2:]}",
                low=0.0,
                high=100.0,
                aliases=((f"{task}/{name}".lower(),) + (("ap",) if (task, name) == ("segm", "AP") else ())),
                dense_table=name == "AP",
            )
            for task, label in (("bbox", "AP^bb"), ("segm", "AP^mk"))
            for name in ("AP", "AP50", "AP75", "APs", "APm", "APl")
        )
        + (Metric(name="detections", label="detections on val", low=0.0),),
    ),
    "davis": ProtocolKind(
        job="harness.jobs.davis",
        params=P.DavisParams,
        splits=(),
        split_params=("split",),
        role=DENSE,
        # the job resizes each frame to a multiple of the patch (DINO's read_frame: a multiple of 64, which
        # patches 8 and 16 divide; for other patches, of the patch itself), so nothing is left to pad
        patch_remainder="refuse",
        metrics=(
            Metric(
                name="JF_mean", label="J&F", low=0.0, high=1.0, aliases=("j&f", "jf_mean", "j&f-mean"), dense_table=True
            ),
            Metric(name="J_mean", label="J", low=0.0, high=1.0),
            Metric(name="J_recall", label="J recall", low=0.0, high=1.0),
            Metric(name="J_decay", label="J decay", low=-1.0, high=1.0),
            Metric(name="F_mean", label="F", low=0.0, high=1.0),
            Metric(name="F_recall", label="F recall", low=0.0, high=1.0),
            Metric(name="F_decay", label="F decay", low=-1.0, high=1.0),
            Metric(name="objects", label="objects", low=1.0),
        ),
    ),
    "knn": ProtocolKind(
        job="harness.jobs.knn",
        params=P.KnnParams,
        splits=("train", "val"),
        role=IMAGE,
        metrics=(
            Metric(name="top1", label="k-NN top-1", low=0.0, high=100.0),
            Metric(name="top5", label="k-NN top-5", low=0.0, high=100.0),
            # DINO's sweep: every k of the protocol's `ks`, from the one neighbour search ({k: accuracy})
            Metric(name="top1_at", label="k-NN top-1 by k", low=0.0, high=100.0, per_class=True),
            Metric(name="top5_at", label="k-NN top-5 by k", low=0.0, high=100.0, per_class=True),
        ),
    ),
    "linear_cls": ProtocolKind(
        job="harness.jobs.linear_cls",
        params=P.LinearClsParams,
        splits=("train", "val"),
        role=CLASSIFICATION,
        metrics=(
            Metric(name="top1", label="linear top-1", low=0.0, high=100.0),
            Metric(name="top5", label="linear top-5", low=0.0, high=100.0),
            # what DINO and the W2 code print as the result: the best validated epoch
            Metric(name="top1_best", label="linear top-1 (best epoch)", low=0.0, high=100.0, dense_table=True),
        ),
    ),
    "lowshot": ProtocolKind(
        job="harness.jobs.lowshot",
        params=P.LowShotParams,
        splits=("val",),
        split_params=("train_split",),
        role=CLASSIFICATION,
        metrics=(
            # UDI prints every lambda; the table reads the best, as the papers report
            Metric(name="top1", label="low-shot top-1 (best lambda)", low=0.0, high=100.0, dense_table=True),
            Metric(name="top1_at", label="low-shot top-1 by lambda", low=0.0, high=100.0, per_class=True),
        ),
    ),
    # the whole backbone trained with a new head (UDI's ImageNet fine-tuning, transfer learning, low-shot
    # fine-tuning): the grid's most expensive cells (harness.plan prices them from their epochs and images)
    "finetune": ProtocolKind(
        job="harness.jobs.finetune",
        params=P.FinetuneParams,
        splits=("val",),
        split_params=("train_split",),
        role=CLASSIFICATION,
        method_fields=("projection_head",),  # `head: projection` starts from the method's own projection layer
        metrics=(
            Metric(name="top1", label="fine-tuned top-1 (last epoch)", low=0.0, high=100.0),
            Metric(name="top5", label="fine-tuned top-5 (last epoch)", low=0.0, high=100.0),
            # what UDI's scripts print as the result (max_accuracy): the best validated epoch
            Metric(
                name="top1_best",
                label="fine-tuned top-1",
                low=0.0,
                high=100.0,
                dense_table=True,
                aliases=("max_accuracy", "max accuracy"),  # the name the sources' logs give it
            ),
            Metric(name="best_epoch", label="epoch of the best top-1", low=0.0),
        ),
    ),
    # a frozen backbone with a linear depth head (DINOv3's NYU linear depth evaluation); the metrics as the depth
    # toolboxes define them, each with its direction, so the τ table against depth orients them like any other
    "depth_linear": ProtocolKind(
        job="harness.jobs.depth",
        params=P.DepthParams,
        splits=("train", "val"),
        role=DEPTH,
        metrics=(
            Metric(name="rmse", label="RMSE (m)", direction="lower", low=0.0, tau_target=True, dense_table=True),
            Metric(name="abs_rel", label="AbsRel", direction="lower", low=0.0, aliases=("absrel", "abs rel")),
            Metric(name="log10", label="log10", direction="lower", low=0.0),
            Metric(name="rmse_log", label="RMSE log", direction="lower", low=0.0),
            Metric(
                name="delta1", label="δ1", low=0.0, high=1.0, tau_target=True, dense_table=True, aliases=("a1", "d1")
            ),
            Metric(name="delta2", label="δ2", low=0.0, high=1.0, aliases=("a2", "d2")),
            Metric(name="delta3", label="δ3", low=0.0, high=1.0, aliases=("a3", "d3")),
        ),
    ),
    "probe": ProtocolKind(
        job="harness.jobs.probe",
        params=P.ProbeParams,
        splits=(),
        role=LAUNCH_TEST,
        patch_remainder="refuse",
        metrics=(Metric(name="steps", label="steps", low=0.0),),
    ),
}


def kinds_with(role: str) -> tuple[str, ...]:
    return tuple(k for k, v in PROTOCOL_KINDS.items() if v.role == role)


# The kind whose records hold the label-free metrics (DSE, RankMe, ...): the guided planner and the
# tables join the downstream results against it.
METRICS_KIND = kinds_with(LABEL_FREE)[0]
# The τ tables' rows, in order: DSE with the paper's λ first (derived by the tables), then the kind's own.
TAU_ROWS: tuple[Metric, ...] = (Metric(name="dse_lambda", label="DSE", tau=True),) + tuple(
    m for m in PROTOCOL_KINDS[METRICS_KIND].metrics if m.tau
)


@dataclass(frozen=True)
class DatasetKind:
    nested: bool  # images (and annotation maps) sit in one sub-folder per class / city / sequence


DATASET_KINDS: dict[str, DatasetKind] = {
    "imagenet": DatasetKind(nested=True),
    "coco_stuff164k": DatasetKind(nested=False),
    "voc12_aug": DatasetKind(nested=False),
    "ade20k": DatasetKind(nested=False),
    "cityscapes": DatasetKind(nested=True),
    "davis2017": DatasetKind(nested=True),
    "coco_instances": DatasetKind(nested=False),
    "cifar10": DatasetKind(nested=False),  # pickled batches (the split's `files`), read by datasets.read_cifar
    "cifar100": DatasetKind(nested=False),
    # the fine-grained datasets of UDI's transfer learning, read as its eval_transfer_learning/dataset.py reads
    # them (harness.datasets.classification_samples): .mat / .json annotations beside the image folders
    "flowers102": DatasetKind(nested=False),
    "stanford_cars": DatasetKind(nested=False),
    "inat2018": DatasetKind(nested=True),
    "inat2019": DatasetKind(nested=True),
    # NYU Depth v2 as the depth toolboxes' BTS split: <scene>/rgb_XXXXX.jpg + sync_depth_XXXXX.png (16-bit mm),
    # listed by nyu_train.txt / nyu_test.txt ("rgb depth focal"); read by harness.datasets.depth_pairs
    "nyu_depth_v2": DatasetKind(nested=True),
}
