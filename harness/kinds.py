"""The one registration point for protocol kinds and dataset kinds.

Adding a protocol kind is one entry in `PROTOCOL_KINDS` (and its job module); adding a dataset kind is
one entry in `DATASET_KINDS`. Everything else (the registry's validation, the job dispatch, the
preflight's split checks, the layout checks) reads these tables. Data only: no torch, no job imports.
"""
from __future__ import annotations

from dataclasses import dataclass

from harness import params as P


@dataclass(frozen=True)
class ProtocolKind:
    job: str                 # module with `run(cell, ctx) -> results` (imported only when a cell runs)
    splits: tuple[str, ...]  # the dataset splits the job reads (checked by the preflight)
    params: type             # the schema of its protocol files' `params` (harness.params)


PROTOCOL_KINDS: dict[str, ProtocolKind] = {
    "metrics": ProtocolKind("harness.jobs.metrics", ("train",), P.MetricsParams),
    "linear": ProtocolKind("harness.jobs.segmentation", ("train", "val"), P.LinearParams),
    "upernet": ProtocolKind("harness.jobs.segmentation", ("train", "val"), P.UperNetParams),
    "maskrcnn": ProtocolKind("harness.jobs.maskrcnn", ("train", "val"), P.MaskRCNNParams),
    "davis": ProtocolKind("harness.jobs.davis", ("val",), P.DavisParams),
    "knn": ProtocolKind("harness.jobs.knn", ("train", "val"), P.KnnParams),
    "probe": ProtocolKind("harness.jobs.probe", (), P.ProbeParams),  # launch tests: sleeps, reads no data
}

# The protocol kind whose records hold the label-free metrics (DSE, RankMe, ...): the guided planner
# and the tables join the downstream results against it.
METRICS_KIND = "metrics"


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
}
