"""Cluster profiles (`slurm/clusters/<name>.yaml`): where and how cells are submitted.

Two names are built in: `local` (submitit's local executor: `array_parallelism` worker processes on
this machine, each running a share of the cells one after another) and `inline` (in this process,
one cell after another; for debugging). Any other name is a file;
`slurm/clusters/example.yaml` documents every field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from harness.registry import (
    ROOT,
    RegistryError,
    Spec,
    did_you_mean,
    expand_env,
    load_spec_model,
)

CLUSTERS = ROOT / "slurm" / "clusters"


class ProtocolOverride(Spec):
    gpus: int | None = Field(default=None, ge=0)
    cpus: int | None = Field(default=None, ge=1)
    mem_gb: float | None = Field(default=None, gt=0)
    time_min: int | None = Field(default=None, ge=1)
    partition: str | None = None
    array_parallelism: int | None = Field(default=None, ge=1)


class ClusterProfile(Spec):
    name: str
    executor: Literal["slurm", "local", "inline"] = "slurm"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_node: int | None = Field(
        default=None, ge=1, description="GPUs in one node: a cell asking for more spans several nodes"
    )
    max_gpus_per_cell: int | None = Field(
        default=None,
        ge=1,
        description="cap on GPUs per cell: a recipe asking for "
        "more runs on this many with gradient accumulation (same global batch)",
    )
    gres: str | None = Field(
        default=None, description="e.g. 'gpu:a100:1': a literal --gres per node instead of --gpus-per-node"
    )
    cpus_per_task: int | None = Field(default=None, ge=1, description="cap on CPUs per process (task)")
    mem_gb: float | None = Field(default=None, gt=0, description="cap on memory per node")
    array_limit: int = Field(default=1000, ge=1, description="largest array the cluster accepts (MaxArraySize)")
    array_parallelism: int = Field(default=64, ge=1, description="tasks of one array running at once")
    signal_delay_s: int = Field(default=120, ge=1, description="USR2 this long before the time limit")
    max_num_timeout: int = Field(default=3, ge=0, description="requeues after time-outs / preemptions")
    protocols: dict[str, ProtocolOverride] = Field(default_factory=dict, description="per-protocol overrides")
    sbatch: dict[str, Any] = Field(default_factory=dict, description="extra #SBATCH options, e.g. {exclusive: true}")
    setup: tuple[str, ...] = Field(default=(), description="shell lines run before each job (module load ...)")
    log_folder: str | None = Field(
        default=None,
        description="submitit logs; ${VAR} expanded; default: $SDD_SUBMITIT, else <results root>/.submitit",
    )
    source: str = Field(default="", exclude=True)

    def __hash__(self):
        return hash(self.model_dump_json())

    def logs(self) -> Path:
        if self.log_folder is None:  # with the records, unless SDD_SUBMITIT says otherwise
            import os

            from harness.records import results_root

            return Path(os.environ.get("SDD_SUBMITIT") or results_root() / ".submitit")
        path = Path(expand_env(self.log_folder, source=self.source, key="log_folder"))
        return path if path.is_absolute() else ROOT / path


BUILTIN = {
    # local: as many workers as GPUs (one GPU each) on a GPU machine, else `array_parallelism` CPU workers
    "local": ClusterProfile(name="local", executor="local", array_parallelism=2, source="(built in)"),
    "inline": ClusterProfile(name="inline", executor="inline", source="(built in)"),
}


def load_cluster(name: str, directory: Path = CLUSTERS) -> ClusterProfile:
    if name in BUILTIN:
        return BUILTIN[name]
    path = Path(directory) / f"{name}.yaml"
    if not path.is_file():
        known = sorted([p.stem for p in Path(directory).glob("*.yaml")] + list(BUILTIN))
        raise RegistryError(
            f"unknown cluster profile '{name}'.{did_you_mean(name, known)} "
            f"Known: {', '.join(known)} (files under {directory})"
        )
    return load_spec_model(path, ClusterProfile)
