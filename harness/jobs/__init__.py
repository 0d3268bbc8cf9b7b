"""Jobs: one module per protocol kind (registered in `harness.kinds`), each with
`run(cell, ctx) -> results`. A job does not know how it was launched, and writes no record:
`execute` owns what every job shares (the registry, the work directory, the record's identity,
versions and timings, peak memory, the ok/failed epilogue) and stores the one record of the cell."""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path

from harness import records
from harness.jobs.common import base_record, failed_record, now, peak_memory_mb
from harness.kinds import PROTOCOL_KINDS
from harness.registry import Registry, load_registry


@dataclass(frozen=True)
class JobContext:
    """What `execute` hands a job besides the cell."""
    registry: Registry
    work_dir: Path       # state the job resumes from after a requeue (training checkpoints, progress)
    progress: bool = True


def job_for(kind: str):
    if kind not in PROTOCOL_KINDS:
        raise NotImplementedError(f"no job for protocol kind '{kind}' (registered: {', '.join(PROTOCOL_KINDS)})")
    return importlib.import_module(PROTOCOL_KINDS[kind].job)


def work_dir(cell, results: Path | str) -> Path:
    """Where a cell's job keeps the state it resumes from after a requeue."""
    return Path(results) / cell.suite / "work" / cell.protocol / cell.dataset / cell.method / f"ep{cell.epoch:04d}"


def ok_record(record: dict, results: dict, wall_s: float) -> dict:
    """A job's results folded into its record. A job that returns no metrics has a bug: that is a failure."""
    if not isinstance(results, dict) or not isinstance(results.get("metrics"), dict) or not results["metrics"]:
        raise RuntimeError("the job returned no metrics (a bug in the job; nothing is recorded as ok)")
    reserved = set(record) & set(results)
    if reserved:
        raise RuntimeError(f"the job returned reserved record fields {sorted(reserved)} (a bug in the job)")
    timings = {**(results.get("timings") or {}), "total_s": wall_s}
    return {**record, **results, "status": "ok", "timings": timings, "peak_memory_mb": peak_memory_mb(),
            "finished": now()}


def execute(cell, results: Path | str, *, registry: Registry | None = None, progress: bool = True) -> dict:
    """Run a cell's job and write its record (ok or failed) atomically; returns the record.
    An interrupt (KeyboardInterrupt, SystemExit) writes nothing: the cell stays to do."""
    results = Path(results)
    record = base_record(cell)
    t0 = time.perf_counter()
    try:
        job = job_for(cell.config["protocol"]["kind"])
        reg = registry or load_registry(cell.registry_root or None)
        out = job.run(cell, JobContext(reg, work_dir(cell, results), progress))
        record = ok_record(record, out, time.perf_counter() - t0)
    except Exception as e:  # a job's failure is data: it ends as a failed record with the reason
        record = failed_record(record, e, time.perf_counter() - t0)
    records.write_record(cell.record_path(results), record)
    return record
