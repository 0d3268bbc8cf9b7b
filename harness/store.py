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
