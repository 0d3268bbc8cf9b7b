"""The ledger: one JSON file per suite recording each submission (cell -> job id, executor, state,
attempts, last error, log paths), and the job states it tracks (Slurm's, from `sacct`; a local
worker's, from its PID).

Read-modify-write under the suite's lock (`harness.suitedir`), written atomically. An unreadable ledger is an error
that names the file, never an empty ledger that would then overwrite it; `repair` moves it aside and
rebuilds what the records tell.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from harness import records
from harness.atomic import write_json
from harness.errors import HarnessError
from harness.suitedir import suite_lock

ACTIVE_STATES = {
    "SUBMITTED",
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "CONFIGURING",
    "COMPLETING",
    "RESIZING",
    "SUSPENDED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "SIGNALING",
    "STAGE_OUT",
    "UNKNOWN",
}
TERMINAL_FAILED = {
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
    "REVOKED",
    "LOST",
}


class LedgerError(HarnessError):
    """The ledger file exists but cannot be used; the message names it and the way out."""


def ledger_path(results: Path, suite: str) -> Path:
    return Path(results) / suite / "ledger.json"


def read_ledger(results: Path, suite: str) -> dict:
    path = ledger_path(results, suite)
    try:
        data = records.read_json(path)
    except records.CorruptRecord as e:
        raise LedgerError(
            f"the ledger {path} is unreadable ({e.why}); nothing was changed. "
            f"`sdd status --suite {suite} --repair-ledger` moves it aside and rebuilds it "
            f"from the records"
        ) from None
    if data is None:
        return {"cells": {}}
    fix = (
        f"nothing was changed. `sdd status --suite {suite} --repair-ledger` moves it aside and rebuilds it from "
        f"the records"
    )
    if not isinstance(data.get("cells"), dict):
        raise LedgerError(f"the ledger {path} has no 'cells' mapping; {fix}")
    bad = [cid for cid, e in data["cells"].items() if not isinstance(e, dict)]
    if bad:
        raise LedgerError(
            f"the ledger {path} holds {len(bad)} entr{'y' if len(bad) == 1 else 'ies'} that are not "
            f"objects (e.g. '{bad[0]}': {str(data['cells'][bad[0]])[:60]!r}); {fix}"
        )
    return data


@contextlib.contextmanager
def ledger(results: Path, suite: str):
    """Locked read-modify-write of a suite's ledger: `with ledger(r, s) as led: led["cells"][id] = ...`."""
    with suite_lock(results, suite, "the ledger"):
        data = read_ledger(results, suite)
        yield data
        write_json(ledger_path(results, suite), data)


def repair(results: Path, suite: str) -> tuple[Path | None, int]:
    """Move an unreadable ledger aside (kept, never deleted) and rebuild one from the suite's records:
    each sound record becomes a finished entry. Returns (where the old file went, entries rebuilt).
    Jobs still queued have no record yet: they are not in the rebuilt ledger."""
    path = ledger_path(results, suite)
    moved = None
    with suite_lock(results, suite, "sdd status --repair-ledger"):
        if path.exists():
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            moved = path.with_name(f"ledger.json.corrupt-{stamp}")
            os.replace(path, moved)
        cells = {}
        for f in records.iter_record_files(results, suite):
            try:
                rec = records.read_record(f, results)
            except records.CorruptRecord:
                continue
            cid = rec.get("cell") or records.cell_id(rec["protocol"], rec["dataset"], rec["method"], rec["epoch"])
            jid = str(rec.get("slurm_job_id") or "unknown")
            cells[cid] = {
                "job_id": jid,
                "array_job_id": jid,
                "array_task_id": rec.get("slurm_array_task_id"),
                "executor": "slurm" if rec.get("slurm_job_id") else "unknown",
                "cluster": None,
                "state": "COMPLETED" if rec["status"] == "ok" else "FAILED",
                "attempts": 1,
                "config_hash": rec.get("config_hash"),
                "submitted": rec.get("started"),
                "last_error": rec.get("error"),
                "log_out": None,
                "log_err": None,
                "rebuilt": True,
            }
        if cells or moved:
            write_json(path, {"cells": cells})
    return moved, len(cells)


# ---------------------------------------------------------------------------------------------
# job states


@dataclass
class Refresh:
    """The outcome of asking the scheduler: `unknown` holds the cells whose state could not be
    learnt (their ledger entries are left as they were), with the reason in `warning`."""

    ledger: dict
    unknown: set[str] = field(default_factory=set)
    warning: str | None = None


class SacctError(Exception):
    pass


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    """Slurm state of each job id ('123' or '123_4'), from sacct; raises SacctError saying why not."""
    if not job_ids:
        return {}
    cmd = ["sacct", "-n", "-X", "-P", "-o", "JobID,State"] + [a for j in sorted(set(job_ids)) for a in ("-j", j)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise SacctError("sacct is not installed or not on PATH") from None
    except (OSError, subprocess.SubprocessError) as e:
        raise SacctError(f"sacct could not run: {e}") from None
    if out.returncode:
        raise SacctError(f"sacct exited {out.returncode}: {(out.stderr or out.stdout).strip()[:300]}")
    states = {}
    for line in out.stdout.splitlines():
        if "|" in line:
            jid, state = line.split("|", 1)
            states[jid.strip()] = state.strip().split()[0] if state.strip() else "UNKNOWN"
    return states


def process_identity(pid) -> str | None:
    """What tells a process from a later one given the same PID: the boot and the process's start time
    (clock ticks after boot, /proc/<pid>/stat field 22). None when there is no such process."""
    try:
        fields = Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}:{fields[19]}"
    except (ValueError, OSError, IndexError):
        return None


def _pid_alive(pid: str, identity: str | None = None) -> bool:
    """A local worker is alive while its process exists, is the process that was started (not another one
    that was given its PID since: `identity`), and is not a zombie (reaped here if it is ours)."""
    try:
        n = int(pid)
        state = Path(f"/proc/{n}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ValueError, OSError, IndexError):
        return False
    if identity is not None and process_identity(n) != identity:
        return False  # the PID was reused: the worker is gone
    if state == "Z":
        try:
            os.waitpid(n, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


def _refresh(led: dict) -> Refresh:
    active = {cid: e for cid, e in led["cells"].items() if e.get("state") in ACTIVE_STATES}
    slurm = {cid: e for cid, e in active.items() if e.get("executor") == "slurm"}
    out = Refresh(led)
    try:
        states = sacct_states([e["job_id"] for e in slurm.values()])
    except SacctError as e:
        states = None
        out.unknown = set(slurm)
        out.warning = f"the state of {len(slurm)} Slurm job(s) is unknown: {e}"
    for cid, e in active.items():
        if e.get("executor") == "slurm" and states is not None:
            e["state"] = states.get(e["job_id"], e["state"])
        elif e.get("executor") in ("local", "inline"):
            e["state"] = "RUNNING" if _pid_alive(e["job_id"], e.get("process")) else "COMPLETED"
    return out


def refresh(results: Path, suite: str, *, write: bool = True) -> Refresh:
    """Update the state of every active entry (sacct for Slurm, the PID for local workers);
    `write=False` (dry runs) leaves the ledger file untouched."""
    if not write or not ledger_path(results, suite).is_file():
        return _refresh(read_ledger(results, suite))
    with ledger(results, suite) as led:
        return _refresh(led)


def record_submission(results: Path, suite: str, executor: str, cluster: str, cells, jobs) -> None:
    """One ledger entry per submitted cell (`jobs`: submitit jobs, in the order of `cells`)."""
    when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    with ledger(results, suite) as led:
        for c, j in zip(cells, jobs):
            prev = led["cells"].get(c.id, {})
            attempts = (prev.get("attempts", 0) if prev.get("config_hash") == c.config_hash else 0) + 1
            jid = str(j.job_id)
            led["cells"][c.id] = {
                "job_id": jid,
                "array_job_id": jid.split("_")[0],
                "array_task_id": jid.split("_")[1] if "_" in jid else None,
                "executor": executor,
                "cluster": cluster,
                "state": "SUBMITTED",
                "attempts": attempts,
                "config_hash": c.config_hash,
                "submitted": when,
                "last_error": prev.get("last_error"),
                "log_out": str(j.paths.stdout).replace("%j", jid),
                "log_err": str(j.paths.stderr).replace("%j", jid),
            }
            if executor == "local":  # a PID alone may be given to another process later
                led["cells"][c.id]["process"] = process_identity(jid)


def claim_inline(results: Path, suite: str, cluster: str, cells) -> None:
    """Claim `cells` for this process (the inline executor runs them itself): entries running under this
    PID, so another submit leaves them alone while it lives; `release_claims` ends them."""
    when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    pid = str(os.getpid())
    with ledger(results, suite) as led:
        for c in cells:
            prev = led["cells"].get(c.id, {})
            attempts = (prev.get("attempts", 0) if prev.get("config_hash") == c.config_hash else 0) + 1
            led["cells"][c.id] = {
                "job_id": pid,
                "array_job_id": pid,
                "array_task_id": None,
                "executor": "inline",
                "cluster": cluster,
                "state": "RUNNING",
                "attempts": attempts,
                "config_hash": c.config_hash,
                "submitted": when,
                "last_error": prev.get("last_error"),
                "log_out": None,
                "log_err": None,
                "process": process_identity(pid),
            }


def release_claims(results: Path, suite: str, cell_ids) -> None:
    """This process is done with the cells it claimed (run, failed or interrupted: their records say which)."""
    ids = set(cell_ids)
    with ledger(results, suite) as led:
        for cid in ids:
            e = led["cells"].get(cid)
            if e and e.get("executor") == "inline" and e.get("job_id") == str(os.getpid()):
                e["state"] = "COMPLETED"
