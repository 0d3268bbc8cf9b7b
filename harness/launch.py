"""Submit a suite's cells through submitit: one job array per resource profile.

`submit` builds the plan, leaves out done cells and cells already queued, groups the rest by
resource profile (protocol resources, capped and overridden by the cluster profile), and submits
one submitit job array per profile, in chunks of the cluster's array limit. It returns as soon as
the arrays are queued. Every submission goes into the suite's ledger (cell -> job id, state,
attempts, last error, log paths). Jobs know nothing of this: each runs `jobs.execute(cell)` and
writes its record.
"""
from __future__ import annotations

import datetime as dt
import os
import subprocess
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from harness import store
from harness.clusters import ClusterProfile
from harness.plan import Cell, build_plan
from harness.registry import Registry

TERMINAL_FAILED = {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
                   "PREEMPTED", "REVOKED", "LOST"}


@dataclass(frozen=True)
class Profile:
    """What one job array asks for."""
    protocol: str
    gpus: int
    cpus: int
    mem_gb: float
    time_min: int
    partition: str | None
    array_parallelism: int


def profile_for(reg: Registry, cluster: ClusterProfile, protocol: str) -> Profile:
    res = reg.protocol(protocol).resources
    over = cluster.protocols.get(protocol)
    gpus = over.gpus if over and over.gpus is not None else res.gpus
    cpus = over.cpus if over and over.cpus is not None else res.cpus
    mem = over.mem_gb if over and over.mem_gb is not None else float(res.mem_gb)
    if cluster.gpus_per_node is not None:
        gpus = min(gpus, cluster.gpus_per_node)
    if cluster.cpus_per_task is not None:
        cpus = min(cpus, cluster.cpus_per_task)
    if cluster.mem_gb is not None:
        mem = min(mem, cluster.mem_gb)
    return Profile(protocol, gpus, cpus, mem, (over.time_min if over and over.time_min else res.time_min),
                   (over.partition if over and over.partition else cluster.partition),
                   (over.array_parallelism if over and over.array_parallelism else cluster.array_parallelism))


class CellJob:
    """The callable each array task runs. Checkpointable: on preemption or time-out submitit requeues
    it with the same arguments, and the job resumes from what it saved in its work directory."""

    def __call__(self, cell: Cell, results: str) -> str:
        from harness.jobs import execute

        return execute(cell, results)["status"]

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


class CellBatchJob(CellJob):
    """Several cells one after another in one process: the local executor's unit of work. submitit's
    local executor would start every job at once; a few workers each running a share of the cells
    bound the load to `array_parallelism` processes (and import torch once per worker, not per cell)."""

    def __call__(self, cells: list[Cell], results: str, threads: int = 0) -> list[str]:
        if threads:  # workers share the machine: no oversubscription of its cores
            import torch

            torch.set_num_threads(threads)
        return [CellJob()(c, results) for c in cells]


def _executor(cluster: ClusterProfile, prof: Profile, suite: str):
    import submitit

    folder = cluster.logs() / suite / "%j"
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster.executor, slurm_max_num_timeout=cluster.max_num_timeout)
    params = dict(timeout_min=prof.time_min, cpus_per_task=prof.cpus, mem_gb=prof.mem_gb, name=f"sdd-{suite}-{prof.protocol}",
                  slurm_array_parallelism=prof.array_parallelism, slurm_signal_delay_s=cluster.signal_delay_s)
    if cluster.gres:
        params["slurm_gres"] = cluster.gres
    elif prof.gpus:
        params["gpus_per_node"] = prof.gpus
    for key, value in (("slurm_partition", prof.partition), ("slurm_account", cluster.account),
                       ("slurm_qos", cluster.qos), ("slurm_constraint", cluster.constraint)):
        if value:
            params[key] = value
    if cluster.setup:
        params["slurm_setup"] = list(cluster.setup)
    if cluster.sbatch:
        params["slurm_additional_parameters"] = dict(cluster.sbatch)
    ex.update_parameters(**params)
    return ex


# ---------------------------------------------------------------------------------------------
# job states


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    """Slurm state of each job id ('123' or '123_4'), from sacct; {} when sacct is unavailable."""
    if not job_ids:
        return {}
    cmd = ["sacct", "-n", "-X", "-P", "-o", "JobID,State"] + [a for j in sorted(set(job_ids)) for a in ("-j", j)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {}
    if out.returncode:
        return {}
    states = {}
    for line in out.stdout.splitlines():
        if "|" in line:
            jid, state = line.split("|", 1)
            states[jid.strip()] = state.strip().split()[0] if state.strip() else "UNKNOWN"
    return states


def _pid_alive(pid: str) -> bool:
    """A local worker is alive while its process exists and is not a zombie (reaped here if it is ours)."""
    try:
        n = int(pid)
        state = Path(f"/proc/{n}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ValueError, OSError, IndexError):
        return False
    if state == "Z":
        try:
            os.waitpid(n, os.WNOHANG)
        except ChildProcessError:
            pass
        return False
    return True


def _refresh(led: dict) -> dict:
    active = {cid: e for cid, e in led["cells"].items() if e.get("state") in store.ACTIVE_STATES}
    states = sacct_states([e["job_id"] for e in active.values() if e.get("executor") == "slurm"])
    for e in active.values():
        if e.get("executor") == "slurm":
            e["state"] = states.get(e["job_id"], e["state"])
        elif e.get("executor") == "local":
            e["state"] = "RUNNING" if _pid_alive(e["job_id"]) else "COMPLETED"
    return led


def refresh_ledger(results: Path, suite: str, *, write: bool = True) -> dict:
    """Update the state of every active ledger entry (sacct for Slurm, the PID for local jobs);
    `write=False` (dry runs) leaves the ledger file untouched."""
    if not write or not store.ledger_path(results, suite).is_file():
        return _refresh(store.read_ledger(results, suite))
    with store.ledger(results, suite) as led:
        return _refresh(led)


# ---------------------------------------------------------------------------------------------


@dataclass
class Decision:
    submit: list[Cell]
    skipped: dict[str, int]  # reason -> count


def decide(cells: list[Cell], results: Path, suite: str, *, retry_failed: bool, max_attempts: int,
           write: bool = True) -> Decision:
    led = refresh_ledger(results, suite, write=write)["cells"]
    todo, skipped = [], defaultdict(int)
    for c in cells:
        state = store.cell_state(c.record_path(results), c.config_hash)
        entry = led.get(c.id, {})
        if state == "done":
            skipped["done"] += 1
            continue
        if entry.get("state") in store.ACTIVE_STATES and entry.get("config_hash") == c.config_hash:
            skipped["already queued or running"] += 1
            continue
        # a job Slurm ended badly without a record is a failure; a completed job whose record is gone
        # (deleted by hand) is simply to do again
        ended_badly = state == "failed" or (entry.get("state") in TERMINAL_FAILED
                                            and state != "stale" and entry.get("config_hash") == c.config_hash)
        if ended_badly and not retry_failed:
            skipped["failed (use --retry-failed)"] += 1
            continue
        if ended_badly and entry.get("attempts", 0) >= max_attempts:
            skipped[f"failed {max_attempts} times (--max-attempts)"] += 1
            continue
        todo.append(c)
    return Decision(todo, dict(skipped))


def submit(reg: Registry, suite: str, cluster: ClusterProfile, results: Path, *, protocols=None, methods=None,
           dry_run: bool = False, retry_failed: bool = False, max_attempts: int = 3, progress: bool = True,
           guided: bool = False) -> dict:
    """Submit the cells of `suite` that need running; returns a summary (what was submitted where)."""
    results = Path(results)
    cells = build_plan(reg, suite, protocols=protocols, methods=methods)
    waiting = {}
    if guided:
        from harness.plan import guided as guided_cells

        cells, waiting, _ = guided_cells(reg, cells, results)
    d = decide(cells, results, suite, retry_failed=retry_failed, max_attempts=max_attempts, write=not dry_run)
    groups: dict[Profile, list[Cell]] = defaultdict(list)
    for c in d.submit:
        groups[profile_for(reg, cluster, c.protocol)].append(c)
    summary = {"suite": suite, "cluster": cluster.name, "cells": len(cells), "skipped": d.skipped,
               "to_submit": len(d.submit), "arrays": [], "waiting": waiting}
    if dry_run or not d.submit:
        summary["arrays"] = [{"profile": p.__dict__, "cells": len(cs), "job_ids": []} for p, cs in groups.items()]
        return summary
    if cluster.executor == "inline":
        from harness.jobs import execute
        from tqdm.auto import tqdm

        for p, cs in groups.items():
            for c in tqdm(cs, desc=f"{p.protocol} (inline)", disable=not progress):
                execute(c, results)
            summary["arrays"].append({"profile": p.__dict__, "cells": len(cs), "job_ids": ["inline"]})
        return summary
    if cluster.executor == "local":
        todo = [c for _, cs in sorted(groups.items(), key=lambda kv: kv[0].protocol) for c in cs]
        workers = max(1, min(cluster.array_parallelism, len(todo)))
        shares = [todo[i::workers] for i in range(workers)]
        ex = _executor(cluster, Profile("local", 0, 1, 4.0, max(p.time_min for p in groups) * len(todo), None,
                                        workers), suite)
        threads = max(1, (os.cpu_count() or 1) // workers)
        jobs = [ex.submit(CellBatchJob(), share, str(results), threads) for share in shares]
        for share, job in zip(shares, jobs):
            _record_submission(results, suite, cluster, share, [job] * len(share))
        summary["arrays"].append({"profile": {"protocol": "+".join(sorted({p.protocol for p in groups})), "gpus": 0,
                                              "cpus": 1, "mem_gb": 4.0, "time_min": 0, "array_parallelism": workers},
                                  "cells": len(todo), "job_ids": [str(j.job_id) for j in jobs]})
        return summary
    for prof, cs in sorted(groups.items(), key=lambda kv: kv[0].protocol):
        ex = _executor(cluster, prof, suite)
        for start in range(0, len(cs), cluster.array_limit):
            chunk = cs[start:start + cluster.array_limit]
            with ex.batch():
                jobs = [ex.submit(CellJob(), c, str(results)) for c in chunk]
            _record_submission(results, suite, cluster, chunk, jobs)
            summary["arrays"].append({"profile": prof.__dict__, "cells": len(chunk),
                                      "job_ids": sorted({str(j.job_id).split("_")[0] for j in jobs})})
    return summary


def _record_submission(results: Path, suite: str, cluster: ClusterProfile, cells: list[Cell], jobs) -> None:
    when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    with store.ledger(results, suite) as led:
        for c, j in zip(cells, jobs):
            prev = led["cells"].get(c.id, {})
            attempts = (prev.get("attempts", 0) if prev.get("config_hash") == c.config_hash else 0) + 1
            jid = str(j.job_id)
            led["cells"][c.id] = {
                "job_id": jid, "array_job_id": jid.split("_")[0], "array_task_id": jid.split("_")[1] if "_" in jid else None,
                "executor": cluster.executor, "cluster": cluster.name, "state": "SUBMITTED", "attempts": attempts,
                "config_hash": c.config_hash, "submitted": when, "last_error": prev.get("last_error"),
                "log_out": str(j.paths.stdout).replace("%j", jid), "log_err": str(j.paths.stderr).replace("%j", jid),
            }


# ---------------------------------------------------------------------------------------------
# status


def cell_statuses(reg: Registry, suite: str, results: Path, *, protocols=None, methods=None) -> list[dict]:
    """One row per cell: state (done | running | pending | failed | todo), reason and log path."""
    results = Path(results)
    led = refresh_ledger(results, suite)["cells"]
    rows = []
    for c in build_plan(reg, suite, protocols=protocols, methods=methods):
        rec_state = store.cell_state(c.record_path(results), c.config_hash)
        e = led.get(c.id, {}) if led.get(c.id, {}).get("config_hash") == c.config_hash else {}
        slurm_state = e.get("state")
        reason = log = None
        if rec_state == "done":
            state = "done"
        elif slurm_state in store.ACTIVE_STATES:
            state = "running" if slurm_state in ("RUNNING", "COMPLETING") else "pending"
        elif rec_state == "failed" or slurm_state in TERMINAL_FAILED:
            state = "failed"
            rec = store.read_record(c.record_path(results)) or {}
            reason = (rec.get("error") or "").splitlines()[0] if rec.get("error") else \
                f"job {e.get('job_id')} ended {slurm_state} without a record"
            log = e.get("log_err")
        else:
            state = "todo"
        rows.append({"cell": c.id, "protocol": c.protocol, "method": c.method, "state": state, "reason": reason,
                     "log": log, "job_id": e.get("job_id"), "attempts": e.get("attempts", 0)})
    return rows


def status_table(rows: list[dict]) -> list[dict]:
    agg: dict[tuple, dict] = {}
    for r in rows:
        a = agg.setdefault((r["protocol"], r["method"]), {"protocol": r["protocol"], "method": r["method"], "cells": 0,
                                                          "done": 0, "running": 0, "pending": 0, "failed": 0, "todo": 0})
        a["cells"] += 1
        a[r["state"]] += 1
    return [agg[k] for k in sorted(agg)]
