"""Jobs: one module per protocol kind, each with `run(cell) -> record`. A job does not know how it
was launched; `execute` runs one, turns any failure into a failed record, and stores it."""
from __future__ import annotations

import importlib
from pathlib import Path

from harness import store
from harness.jobs.common import failed_record

JOBS = {"metrics": "harness.jobs.metrics", "probe": "harness.jobs.probe", "linear": "harness.jobs.segmentation",
        "upernet": "harness.jobs.segmentation", "davis": "harness.jobs.davis", "knn": "harness.jobs.knn",
        "maskrcnn": "harness.jobs.maskrcnn"}


def job_for(kind: str):
    if kind not in JOBS:
        raise NotImplementedError(f"no job for protocol kind '{kind}' yet (available: {', '.join(JOBS)})")
    return importlib.import_module(JOBS[kind])


def work_dir(cell, results: Path | str) -> Path:
    """Where a job keeps state it resumes from after a requeue (training checkpoints, progress)."""
    return Path(results) / cell.suite / "work" / cell.protocol / cell.dataset / cell.method / f"ep{cell.epoch:04d}"


def execute(cell, results: Path | str) -> dict:
    """Run a cell's job and write its record (ok or failed) atomically; returns the record."""
    try:
        record = job_for(cell.config["protocol"]["kind"]).run(cell, work_dir=work_dir(cell, results))
    except Exception as e:  # a job's failure is data: it ends as a failed record with the reason
        record = failed_record(cell, e)
    store.write_record(cell.record_path(Path(results)), record)
    return record
