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
from enum import StrEnum
from pathlib import Path
from typing import Any

from harness.atomic import write_json
from harness.errors import HarnessError
from harness.paths import REPO, cache_root, results_root  # noqa: F401 (re-exported)

IDENTITY = ("suite", "protocol", "dataset", "method", "epoch")
_REL = re.compile(
    r"^(?P<suite>[^/]+)/(?:runs|imported)/(?P<protocol>[^/]+)/(?P<dataset>[^/]+)/(?P<method>[^/]+)/"
    r"ep(?P<epoch>\d+)\.json$"
)


def now() -> str:
    """A record's timestamps: UTC, ISO 8601, to the second."""
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def cell_id(protocol: str, dataset: str, method: str, epoch: int) -> str:
    """A cell's name everywhere it is shown or keyed: `<protocol>/<dataset>/<method>/ep<NNNN>`."""
    return f"{protocol}/{dataset}/{method}/ep{int(epoch):04d}"


def record_path(
    results: Path, suite: str, protocol: str, dataset: str, method: str, epoch: int, tree: str = "runs"
) -> Path:
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


class CorruptRecord(HarnessError):
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
                diff = ", ".join(
                    f"{k} {got[k]!r} (file location says {want[k]!r})" for k in IDENTITY if got[k] != want[k]
                )
                raise CorruptRecord(path, f"holds another cell: {diff}; a copied or moved record")


def read_record(path: Path, results: Path | None = None) -> dict[str, Any] | None:
    """The record at `path` (None when there is none); raises CorruptRecord for a damaged one.
    With `results`, the record's identity is checked against where it sits."""
    rec = read_json(path)
    if rec is not None:
        check_record(rec, path, results)
    return rec


class CellState(StrEnum):
    """Where a cell stands (in the order `sdd status` shows them). `done`, `imported`, `failed`, `corrupt`,
    `stale` and `todo` come from its record; `launch` adds what the scheduler says."""

    DONE = "done"  # an ok record of the current recipe, code version, checkpoint and data
    IMPORTED = "imported"  # no computed record, an imported one (`sdd import`): never run again
    RUNNING = "running"
    PENDING = "pending"
    UNKNOWN = "unknown"  # queued, but the scheduler could not be asked
    LIVE = "live"  # the DSE monitor's record, measured while training: never re-run (--replace-live)
    FAILED = "failed"  # a failed record of the current recipe
    CORRUPT = "corrupt"  # a record that cannot be trusted: to run again
    STALE = "stale"  # a record of another recipe, code version, checkpoint content or data: to run again
    TODO = "todo"  # no record


def _short(v: Any) -> str:
    text = json.dumps(v, sort_keys=True, default=str) if not isinstance(v, str) else v
    return text if len(text) <= 40 else text[:37] + "..."


def config_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted keys where two resolved configs differ, each with its old and new value."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in old:
                out.append(f"{key} added ({_short(new[k])})")
            elif k not in new:
                out.append(f"{key} removed (was {_short(old[k])})")
            else:
                out += config_changes(old[k], new[k], key)
        return out
    return [] if old == new else [f"{prefix} {_short(old)} -> {_short(new)}"]


def stale_recipe_reason(old_config: Any, new_config: dict | None) -> str:
    """Why a record of another config hash is stale, in words: the code version or the recipe's keys."""
    if not isinstance(old_config, dict) or new_config is None:
        return "recipe changed (config hash; the record holds no config to compare)"
    changes = config_changes(old_config, new_config)
    version = [c for c in changes if c.startswith("protocol.version")]
    recipe = [c for c in changes if not c.startswith("protocol.version")]
    kind = (new_config.get("protocol") or {}).get("kind", "?")
    parts = []
    if version:
        old_v = (old_config.get("protocol") or {}).get("version", "none")
        parts.append(f"code version changed (kind {kind}: {old_v} -> {new_config['protocol'].get('version')})")
    if recipe:
        parts.append(
            "recipe changed: " + "; ".join(recipe[:4]) + (f"; +{len(recipe) - 4} more" if len(recipe) > 4 else "")
        )
    return ", ".join(parts) or "recipe changed (config hash)"


def cell_state(
    path: Path,
    config_hash: str,
    results: Path | None = None,
    *,
    config: dict | None = None,
    checkpoint_file: Path | str | None = None,
    data_check=None,
) -> tuple[CellState, str | None]:
    """(state, why) of a cell from its computed record: done | live (the monitor's) | failed (why: the error) |
    stale (a record of another config hash -- recipe or code version --, or of other checkpoint content than
    `checkpoint_file` holds now) | corrupt | todo (no record). `why` says what changed (the config's keys, the
    checkpoint's digest, the data: `data_check(record's inputs.data)` gives the reason the data it read is not
    what is there now)."""
    try:
        rec = read_record(path, results)
    except CorruptRecord as e:
        return CellState.CORRUPT, e.why
    if rec is None:
        return CellState.TODO, None
    if is_live(rec):  # measured during training: no file may hold that model any more
        if rec.get("config_hash") != config_hash:
            return CellState.LIVE, "measured during training under another recipe: " + stale_recipe_reason(
                rec.get("config"), config
            )
        return CellState.LIVE, None
    if rec.get("config_hash") != config_hash:
        return CellState.STALE, stale_recipe_reason(rec.get("config"), config)
    if checkpoint_file:
        from harness.fingerprint import same_content

        recorded = (rec.get("inputs") or {}).get("checkpoint") or {}
        if recorded.get("size") is not None or recorded.get("sha256"):
            same, why = same_content(recorded, checkpoint_file)
            if same is False:
                return CellState.STALE, why
        elif rec["status"] == "failed" and recorded.get("path") and Path(checkpoint_file).is_file():
            # only a job that looked for its checkpoint and found none records a path without content;
            # one that failed before (no GPU, a registry error) stays failed for its own reason
            return CellState.STALE, "the checkpoint was not there when the cell ran; it is now"
    data = (rec.get("inputs") or {}).get("data")
    if data_check is not None and data:
        why = data_check(data)
        if why:
            return CellState.STALE, why
    if rec["status"] == "ok":
        return CellState.DONE, None
    return CellState.FAILED, (str(rec.get("error") or "").splitlines() or ["no error recorded"])[0]


def is_live(rec: dict) -> bool:
    """A record the DSE monitor wrote from a training model (`harness.monitor`), not from a checkpoint file."""
    return rec.get("source") == "live" or bool(((rec.get("inputs") or {}).get("checkpoint") or {}).get("live"))


_CANONICAL = re.compile(r"^ep(\d{4,})\.json$")


def _walk_cells(results: Path, suite: str, tree: str):
    """(path, is_canonical) of every file in the cell folders of a suite's tree, in a stable order. A
    folder that cannot be listed raises OSError (a partial listing never passes for the whole)."""
    runs = Path(results) / suite / tree
    if not runs.exists():
        return

    def walk(d: Path, depth: int):
        for entry in sorted(os.scandir(d), key=lambda e: e.name):  # raises PermissionError, unlike glob
            if entry.name == ".sdd-suite":  # the tree's owner (harness.suitedir), not a record
                continue
            if entry.is_symlink() and not os.path.exists(entry.path):  # e.g. a folder on an unmounted disk
                raise OSError(f"{entry.path} is a link to {os.readlink(entry.path)}, which is not there")
            if depth < 3 and entry.is_dir():
                yield from walk(Path(entry.path), depth + 1)
            elif depth == 3 and entry.is_file() and not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
                m = _CANONICAL.match(entry.name)  # ep0001.json is a record; ep01.json, ep0001-old.json are not
                yield Path(entry.path), m is not None and entry.name == f"ep{int(m.group(1)):04d}.json"
            elif depth < 3 and entry.is_file():
                yield Path(entry.path), False

    yield from walk(runs, 0)


def iter_record_files(results: Path, suite: str, tree: str = "runs") -> list[Path]:
    """Every record file of a suite (`tree`: runs = computed, imported = `sdd import`): only files with the
    canonical name `ep<NNNN>.json` inside a cell folder; anything else there is a stray file."""
    return [p for p, canonical in _walk_cells(results, suite, tree) if canonical]


def stray_files(results: Path, suite: str) -> list[Path]:
    """Files in a suite's record trees that are not records (a backup `ep0001-old.json`, a hand-made
    `ep01.json`, a file outside a cell folder): never read as results, named by `collect` and `plan`."""
    return [p for tree in ("runs", "imported") for p, canonical in _walk_cells(results, suite, tree) if not canonical]
