"""What every record carries: the cell, its resolved config and hash, versions, git sha, host, Slurm
job id, timings, peak memory; on failure the error and the traceback tail. Used by `execute` only."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import traceback
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from harness.records import now  # noqa: F401 (the jobs' timestamps)

ROOT = Path(__file__).resolve().parents[2]


@lru_cache(maxsize=1)
def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5)
        sha = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "timm", "numpy", "scipy", "mmsegmentation", "mmengine", "submitit"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def base_record(cell) -> dict:
    return {
        "suite": cell.suite,
        "protocol": cell.protocol,
        "dataset": cell.dataset,
        "method": cell.method,
        "epoch": cell.epoch,
        "cell": cell.id,
        "config_hash": cell.config_hash,
        "config": cell.config,
        "versions": versions(),
        "git_sha": git_sha(),
        "host": platform.node(),
        "slurm_job_id": os.environ.get("SLURM_ARRAY_JOB_ID", os.environ.get("SLURM_JOB_ID")),
        "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "started": now(),
    }


def failed_record(record: dict, error: BaseException, wall_s: float) -> dict:
    tb = traceback.format_exception(type(error), error, error.__traceback__)
    return {
        **record,
        "status": "failed",
        "error": f"{type(error).__name__}: {error}",
        "traceback": "".join(tb)[-4000:],
        "timings": {"total_s": wall_s},
        "finished": now(),
        "peak_memory_mb": peak_memory_mb(),
    }


def require_finite(t, what: str) -> None:
    """Raise naming `what` (and how many values) when a tensor a job computed holds NaN or inf: a number
    computed from it would be an ok record with a wrong value."""
    import torch

    if t.is_floating_point() and not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise FloatingPointError(f"{what}: {bad} of {t.numel()} values are NaN or inf")


@dataclass(kw_only=True)
class JobResult:
    """What every job returns: its metrics (the names its kind declares in harness/kinds.py), and what the
    record says besides. `undefined_metrics` gives the reason of each NaN metric; `library_logs` the paths of
    logs a library kept on its own; `info` the job's own fields (checkpoint summary, batch, precision, ...).
    A rank other than 0 of a multi-process cell returns empty metrics: rank 0 writes the record."""

    metrics: dict
    timings: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    undefined_metrics: dict = field(default_factory=dict)
    library_logs: list = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def record_fields(self) -> dict:
        """The fields it adds to the record (the job's own `info` at the top level, as records always had)."""
        out = {**self.info, "metrics": self.metrics, "timings": self.timings}
        for name in ("details", "undefined_metrics", "library_logs"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        return out
