"""Records: one JSON file per cell, written atomically (temp file + rename in the same directory).

`results/<suite>/runs/<protocol>/<dataset>/<method>/ep<NNNN>.json`. A cell is done only when its
record says `ok` and carries the config hash of the current plan.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

RESULTS = Path(os.environ.get("SDD_RESULTS", Path(__file__).resolve().parents[1] / "results"))


def record_path(results: Path, suite: str, protocol: str, dataset: str, method: str, epoch: int) -> Path:
    return Path(results) / suite / "runs" / protocol / dataset / method / f"ep{epoch:04d}.json"


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Write atomically: readers see the previous file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True, default=str, allow_nan=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors(obj: Any, path: Path) -> None:
    """torch.save atomically (temp file + rename): a killed writer leaves the previous file or none.
    For state the harness writes itself and reads back with weights_only=True."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at `path`, or None if there is none (or it is unreadable, which counts as none)."""
    try:
        with open(path) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def cell_state(path: Path, config_hash: str) -> str:
    """done | failed | stale (ok but for another config) | todo (no record)."""
    rec = read_record(path)
    if rec is None:
        return "todo"
    if rec.get("config_hash") != config_hash:
        return "stale"
    return "done" if rec.get("status") == "ok" else "failed"


# ---------------------------------------------------------------------------------------------
# Record schema (what every job writes; see harness/jobs/common.py):
#   suite, protocol, dataset, method, epoch, cell, config_hash, config   identity and resolved config
#   status: "ok" | "failed"; on failure: error, traceback
#   metrics: {name: number | {sub: number}}   e.g. dse, rankme, mIoU, IoU: {class: value}
#   details: {name: list | ...}               e.g. log_sv (spectra), fit ranges
#   timings: {total_s, ...}, peak_memory_mb, versions, git_sha, host, slurm_job_id, started, finished
# `collect` flattens them into one tidy row per cell (nested metrics as "name.sub" columns).

META_COLUMNS = ["suite", "protocol", "kind", "dataset", "method", "family", "arch", "epoch", "status", "error",
                "config_hash", "gpus", "wall_s", "load_s", "features_s", "metrics_s", "peak_memory_mb",
                "git_sha", "host", "slurm_job_id", "torch"]


def iter_records(results: Path, suite: str):
    """(path, record) for every record file of a suite, in a stable order."""
    runs = Path(results) / suite / "runs"
    for path in sorted(runs.glob("*/*/*/ep*.json")):
        rec = read_record(path)
        if rec is not None:
            yield path, rec


def _number(v):
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    return None


def record_row(rec: dict, methods: dict | None = None, gpus: dict | None = None) -> dict:
    """One tidy row of a record: metadata columns, then every scalar metric ("name.sub" if nested)."""
    cfg_method = (rec.get("config") or {}).get("method") or {}
    spec = (methods or {}).get(rec.get("method"))
    timings = rec.get("timings") or {}
    row = {
        "suite": rec.get("suite"), "protocol": rec.get("protocol"),
        "kind": ((rec.get("config") or {}).get("protocol") or {}).get("kind") or rec.get("protocol"),
        "dataset": rec.get("dataset"),
        "method": rec.get("method"), "family": getattr(spec, "family", None),
        "arch": getattr(spec, "arch", None) or cfg_method.get("arch"), "epoch": rec.get("epoch"),
        "status": rec.get("status"), "error": ((rec.get("error") or "").splitlines() or [None])[0],
        "config_hash": rec.get("config_hash"), "gpus": (gpus or {}).get(rec.get("protocol"), 1),
        "wall_s": timings.get("total_s"), "load_s": timings.get("load_s"), "features_s": timings.get("features_s"),
        "metrics_s": timings.get("metrics_s"), "peak_memory_mb": rec.get("peak_memory_mb"),
        "git_sha": rec.get("git_sha"), "host": rec.get("host"), "slurm_job_id": rec.get("slurm_job_id"),
        "torch": (rec.get("versions") or {}).get("torch"),
    }
    for name, value in sorted((rec.get("metrics") or {}).items()):
        col = name if name not in row else f"metric_{name}"
        if isinstance(value, dict):
            for sub, v in sorted(value.items()):
                if _number(v) is not None:
                    row[f"{col}.{sub}"] = _number(v)
        elif _number(value) is not None:
            row[col] = _number(value)
    return row


def collect(results: Path, suite: str, *, methods: dict | None = None, gpus: dict | None = None):
    """(table, spectra): one row per record, and the singular-value spectra in long form
    (method, epoch, kind, index, log_sv) for the figures."""
    import pandas as pd

    rows, spectra = [], []
    for _, rec in iter_records(results, suite):
        rows.append(record_row(rec, methods, gpus))
        details = rec.get("details") or {}
        for kind in ("log_sv", "log_sv_dense"):
            for i, v in enumerate(details.get(kind) or []):
                spectra.append({"method": rec.get("method"), "epoch": rec.get("epoch"), "kind": kind, "index": i,
                                "log_sv": v})
    table = pd.DataFrame(rows)
    if not table.empty:
        metric_cols = sorted(c for c in table.columns if c not in META_COLUMNS)
        table = table.reindex(columns=META_COLUMNS + metric_cols)
        table = table.sort_values(["protocol", "dataset", "method", "epoch"], kind="stable").reset_index(drop=True)
    spec_df = pd.DataFrame(spectra, columns=["method", "epoch", "kind", "index", "log_sv"])
    return table, spec_df


# ---------------------------------------------------------------------------------------------
# The ledger: one JSON file per suite recording each submission (cell -> job, state, attempts,
# last error, log paths). Read-modify-write under an exclusive file lock, written atomically.

import contextlib  # noqa: E402
import fcntl  # noqa: E402

ACTIVE_STATES = {"SUBMITTED", "PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING",
                 "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "UNKNOWN"}


def ledger_path(results: Path, suite: str) -> Path:
    return Path(results) / suite / "ledger.json"


def read_ledger(results: Path, suite: str) -> dict:
    rec = read_record(ledger_path(results, suite))
    return rec if rec and isinstance(rec.get("cells"), dict) else {"cells": {}}


@contextlib.contextmanager
def ledger(results: Path, suite: str):
    """Locked read-modify-write of a suite's ledger: `with ledger(r, s) as led: led["cells"][id] = ...`."""
    path = ledger_path(results, suite)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = read_ledger(results, suite)
        yield data
        write_record(path, data)
