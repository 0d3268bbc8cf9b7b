"""Records: one JSON file per cell, `results/<suite>/runs/<protocol>/<dataset>/<method>/ep<NNNN>.json`,
written atomically. A cell is done only when its record is sound, says `ok` and carries the config
hash of the current plan.

A record file that cannot be read, or that contradicts itself, is *corrupt*: it is never counted as
done nor silently as "no record"; `plan`, `status` and `collect` name it, and a re-run replaces it.

Record schema (what `harness.jobs.execute` writes):
  suite, protocol, dataset, method, epoch, cell, config_hash, config   identity and resolved config
  status: "ok" | "failed"; on failure: error, traceback
  metrics: {name: number | {sub: number}}   e.g. dse, rankme, mIoU, IoU: {class: value}
  details: {name: list | ...}               e.g. log_sv (spectra), fit ranges
  timings: {total_s, ...}, peak_memory_mb, versions, git_sha, host, slurm_job_id, started, finished
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from harness.atomic import write_json

REPO = Path(__file__).resolve().parents[1]
IDENTITY = ("suite", "protocol", "dataset", "method", "epoch")
_REL = re.compile(r"^(?P<suite>[^/]+)/(?:runs|imported)/(?P<protocol>[^/]+)/(?P<dataset>[^/]+)/(?P<method>[^/]+)/"
                  r"ep(?P<epoch>\d+)\.json$")


def results_root() -> Path:
    """The results folder: $SDD_RESULTS, else the repository's results/ (read at call time)."""
    return Path(os.environ.get("SDD_RESULTS") or REPO / "results")


def cache_root() -> Path:
    """Caches (features, dataset checks): $SDD_CACHE, else <results>/.cache (read at call time)."""
    return Path(os.environ.get("SDD_CACHE") or results_root() / ".cache")


def record_path(results: Path, suite: str, protocol: str, dataset: str, method: str, epoch: int,
                tree: str = "runs") -> Path:
    """A cell's record: `runs/` holds computed ones, `imported/` the ones `sdd import` wrote."""
    return Path(results) / suite / tree / protocol / dataset / method / f"ep{epoch:04d}.json"


def log_path(cell, results: Path, rank: int = 0) -> Path:
    """A cell's own log: everything its job prints or warns (mmengine, mmseg, pycocotools ...)."""
    name = f"ep{cell.epoch:04d}" + (f".rank{rank}" if rank else "") + ".log"
    return Path(results) / cell.suite / "logs" / cell.protocol / cell.dataset / cell.method / name


def identity_of(path: Path, results: Path) -> dict | None:
    """(suite, protocol, dataset, method, epoch) that a record at `path` must hold, from its location."""
    try:
        rel = Path(path).relative_to(results).as_posix()
    except ValueError:
        return None
    m = _REL.match(rel)
    if not m:
        return None
    return {**m.groupdict(), "epoch": int(m.group("epoch"))}


class CorruptRecord(Exception):
    """A record file that exists but cannot be trusted; the message names the file and why."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path}: {why}")
        self.path, self.why = Path(path), why


def write_record(path: Path, record: dict[str, Any]) -> None:
    write_json(path, record)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`; None when there is no file. An unreadable, unparsable or non-object
    file raises CorruptRecord (OSError other than a missing file included: it is never "no record")."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CorruptRecord(path, f"cannot be read ({e.strerror or e})") from None
    try:
        rec = json.loads(text)
    except ValueError as e:
        what = "is empty" if not text.strip() else f"is not valid JSON (truncated?): {e}"
        raise CorruptRecord(path, what) from None
    if not isinstance(rec, dict):
        raise CorruptRecord(path, f"holds a JSON {type(rec).__name__}, not a record object")
    return rec


def check_record(rec: dict, path: Path, results: Path | None = None) -> None:
    """Raise CorruptRecord when a parsed record contradicts itself or its location."""
    status = rec.get("status")
    if status not in ("ok", "failed"):
        raise CorruptRecord(path, f"status is {status!r}, expected 'ok' or 'failed'")
    if status == "ok":
        metrics = rec.get("metrics")
        if not isinstance(metrics, dict) or not metrics:
            raise CorruptRecord(path, "status is 'ok' but it holds no metrics")
    if results is not None:
        want = identity_of(path, results)
        if want is not None:
            got = {k: rec.get(k) for k in IDENTITY}
            if got != want:
                diff = ", ".join(f"{k} {got[k]!r} (file location says {want[k]!r})" for k in IDENTITY
                                 if got[k] != want[k])
                raise CorruptRecord(path, f"holds another cell: {diff}; a copied or moved record")


def read_record(path: Path, results: Path | None = None) -> dict[str, Any] | None:
    """The record at `path` (None when there is none); raises CorruptRecord for a damaged one.
    With `results`, the record's identity is checked against where it sits."""
    rec = read_json(path)
    if rec is not None:
        check_record(rec, path, results)
    return rec


def cell_state(path: Path, config_hash: str, results: Path | None = None,
               checkpoint: dict | None = None) -> tuple[str, str | None]:
    """(state, why): done | failed | stale (a record of another config, or of another checkpoint file
    than `checkpoint`, the fingerprint it has now) | corrupt | todo (no record)."""
    try:
        rec = read_record(path, results)
    except CorruptRecord as e:
        return "corrupt", e.why
    if rec is None:
        return "todo", None
    if rec.get("config_hash") != config_hash:
        return "stale", "the recipe changed since (config hash)"
    used = ((rec.get("inputs") or {}).get("checkpoint") or {}).get("id")
    if checkpoint and used and used != checkpoint["id"]:
        return "stale", "the checkpoint file changed since (size or modification time)"
    return ("done", None) if rec["status"] == "ok" else ("failed", None)


def iter_record_files(results: Path, suite: str, tree: str = "runs") -> list[Path]:
    """Every record file of a suite (`tree`: runs = computed, imported = `sdd import`), in a stable
    order. A folder that cannot be listed raises OSError (a partial listing never passes for the whole)."""
    runs = Path(results) / suite / tree
    if not runs.exists():
        return []
    out = []

    def walk(d: Path, depth: int):
        for entry in sorted(os.scandir(d), key=lambda e: e.name):  # raises PermissionError, unlike glob
            if entry.is_symlink() and not os.path.exists(entry.path):  # e.g. a folder on an unmounted disk
                raise OSError(f"{entry.path} is a link to {os.readlink(entry.path)}, which is not there")
            if depth < 3 and entry.is_dir():
                walk(Path(entry.path), depth + 1)
            elif depth == 3 and entry.is_file() and entry.name.startswith("ep") and entry.name.endswith(".json"):
                out.append(Path(entry.path))

    walk(runs, 0)
    return out
