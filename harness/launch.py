"""Submit a suite's cells, and report their status.

`submit` builds the plan, leaves out done cells and cells already queued, groups the rest by
resource profile (protocol resources, capped and overridden by the cluster profile), and hands them
to the cluster's executor, one small function each:
- `slurm`: one submitit job array per profile, in chunks of the cluster's array limit; returns as soon
  as the arrays are queued;
- `local`: a few submitit local workers on this machine (`array_parallelism`), each running a share of
  the cells one after another;
- `inline`: every cell in this process, one after another (debugging).
Every submission goes into the suite's ledger (`harness.ledger`). Jobs know nothing of this: each
runs `jobs.execute(cell)` and writes its record.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from harness import ledger
from harness.clusters import ClusterProfile
from harness.datasets import DATA_NOT_FOUND
from harness.ledger import ACTIVE_STATES, TERMINAL_FAILED
from harness.plan import Cell, build_plan
from harness.records import CellState, log_path
from harness.registry import Registry, RegistryError


@dataclass(frozen=True, kw_only=True)
class Profile:
    """What one job array asks for, per cell: `gpus` in all (one process each), spread over `nodes`
    nodes of `tasks` processes; `cpus` per process, `mem_gb` per node."""

    protocol: str
    gpus: int
    cpus: int
    mem_gb: float
    time_min: int
    partition: str | None
    array_parallelism: int
    tasks: int = 1
    nodes: int = 1
    recipe_gpus: int = 0  # what the protocol asks for, before the cluster's cap

    @property
    def world_size(self) -> int:
        return self.tasks * self.nodes

    def note(self) -> str | None:
        """What a cap does to the recipe: the same global batch by gradient accumulation, longer cells."""
        if self.recipe_gpus > self.gpus > 0:
            k = self.recipe_gpus / self.gpus
            return (
                f"capped to {self.gpus} of the recipe's {self.recipe_gpus} GPUs per cell: the same global batch "
                f"by {k:g}x gradient accumulation, about {k:g}x the wall time per cell (time limit scaled)"
            )
        return None


def profile_for(reg: Registry, cluster: ClusterProfile, protocol: str) -> Profile:
    res = reg.protocol(protocol).resources
    over = cluster.protocols.get(protocol)
    recipe = over.gpus if over and over.gpus is not None else res.gpus
    cpus = over.cpus if over and over.cpus is not None else res.cpus
    mem = over.mem_gb if over and over.mem_gb is not None else float(res.mem_gb)
    time_min = over.time_min if over and over.time_min else res.time_min
    gpus = min(recipe, cluster.max_gpus_per_cell) if cluster.max_gpus_per_cell and recipe else recipe
    world = gpus or res.processes or 1
    nodes = 1
    if gpus and cluster.gpus_per_node and gpus > cluster.gpus_per_node:
        if gpus % cluster.gpus_per_node:
            raise RegistryError(
                f"protocol '{protocol}' asks for {gpus} GPUs, not a multiple of the {cluster.gpus_per_node} "
                f"GPUs per node of cluster profile '{cluster.name}' ({cluster.source}); set "
                f"max_gpus_per_cell or a per-protocol gpus override"
            )
        nodes = gpus // cluster.gpus_per_node
    if gpus and recipe > gpus:
        time_min = int(time_min * recipe / gpus + 0.5)  # accumulation: more steps per device
    cpus = max(1, -(-cpus // world))  # the cell's CPUs shared by its processes
    if cluster.cpus_per_task is not None:
        cpus = min(cpus, cluster.cpus_per_task)
    mem = mem / nodes
    if cluster.mem_gb is not None:
        mem = min(mem, cluster.mem_gb)
    return Profile(
        protocol=protocol,
        gpus=gpus,
        cpus=cpus,
        mem_gb=mem,
        time_min=time_min,
        partition=over.partition if over and over.partition else cluster.partition,
        array_parallelism=over.array_parallelism if over and over.array_parallelism else cluster.array_parallelism,
        tasks=world // nodes,
        nodes=nodes,
        recipe_gpus=recipe,
    )


class CellJob:
    """The callable each array task runs. Checkpointable: on preemption or time-out submitit requeues
    it with the same arguments, and the job resumes from what it saved in its work directory."""

    def __call__(self, cell: Cell, results: str) -> str:
        import submitit

        from harness.jobs import execute, watch_termination

        watch_termination()
        if submitit.JobEnvironment().num_tasks > 1:  # one process per GPU: torch.distributed from submitit's env
            submitit.helpers.TorchDistributedEnvironment().export()
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
    params = dict(
        timeout_min=prof.time_min,
        cpus_per_task=prof.cpus,
        mem_gb=prof.mem_gb,
        name=f"sdd-{suite}-{prof.protocol}",
        slurm_array_parallelism=prof.array_parallelism,
        slurm_signal_delay_s=cluster.signal_delay_s,
        tasks_per_node=prof.tasks,
        nodes=prof.nodes,
    )
    if cluster.gres:
        params["slurm_gres"] = cluster.gres
    elif prof.gpus:
        params["gpus_per_node"] = prof.gpus // prof.nodes
    for key, value in (
        ("slurm_partition", prof.partition),
        ("slurm_account", cluster.account),
        ("slurm_qos", cluster.qos),
        ("slurm_constraint", cluster.constraint),
    ):
        if value:
            params[key] = value
    if cluster.setup:
        params["slurm_setup"] = list(cluster.setup)
    if cluster.sbatch:
        params["slurm_additional_parameters"] = dict(cluster.sbatch)
    ex.update_parameters(**params)
    return ex


# ---------------------------------------------------------------------------------------------


@dataclass
class Decision:
    submit: list[Cell]
    skipped: dict[str, int]  # reason -> count
    warning: str | None = None
    stale: dict[str, str] | None = None  # cell id -> why its record no longer counts (to run again)


def decide(
    cells: list[Cell],
    results: Path,
    suite: str,
    *,
    retry_failed: bool,
    max_attempts: int,
    write: bool = True,
    replace_live: bool = False,
) -> Decision:
    ref = ledger.refresh(results, suite, write=write)
    led = ref.ledger["cells"]
    todo, skipped, stale = [], defaultdict(int), {}
    for c in cells:
        state, why = c.state(results)
        if state == CellState.STALE and (why or "").startswith(
            DATA_NOT_FOUND
        ):  # a wrong data root: fix it, never re-run
            skipped[f"stale, {DATA_NOT_FOUND} (fix SDD_DATA_ROOT or the suite's data_root)"] += 1
            stale[c.id] = why
            continue
        if state == CellState.STALE:
            stale[c.id] = why or "?"
        entry = led.get(c.id, {})
        if state in (CellState.DONE, CellState.IMPORTED):  # an imported record is never run again
            skipped[state] += 1
            continue
        if state == CellState.LIVE and not (replace_live and c.checkpoint_file and Path(c.checkpoint_file).is_file()):
            # the DSE measured during training: no checkpoint may hold that model, and a file's number is
            # another source; only --replace-live recomputes it, from a checkpoint file that exists
            skipped["live (the monitor's record; --replace-live recomputes it from its checkpoint file)"] += 1
            continue
        if entry.get("state") in ACTIVE_STATES and entry.get("config_hash") == c.config_hash:
            # also when sacct could not tell: never submit a cell twice on a guess
            skipped["already queued or running" + (" (state unknown)" if c.id in ref.unknown else "")] += 1
            continue
        # a job Slurm ended badly without a record is a failure; a completed job whose record is gone
        # (deleted by hand) or corrupt is simply to do again
        ended_badly = state == CellState.FAILED or (
            entry.get("state") in TERMINAL_FAILED
            and state == CellState.TODO
            and entry.get("config_hash") == c.config_hash
        )
        if ended_badly and not retry_failed:
            skipped["failed (use --retry-failed)"] += 1
            continue
        if ended_badly and entry.get("attempts", 0) >= max_attempts:
            skipped[f"failed {max_attempts} times (--max-attempts)"] += 1
            continue
        todo.append(c)
    return Decision(todo, dict(skipped), ref.warning, stale)


def _array_summary(prof: "Profile", cells: int, job_ids: list[str]) -> dict:
    return {"profile": prof.__dict__, "cells": cells, "job_ids": job_ids, "note": prof.note()}


def submit_inline(groups: dict, cluster: ClusterProfile, suite: str, results: Path, progress: bool) -> list[dict]:
    """Every cell in this process, one after another."""
    import sys

    from tqdm.auto import tqdm

    from harness.jobs import execute

    arrays = []
    for prof, cs in sorted(groups.items(), key=lambda kv: kv[0].protocol):
        failed = 0
        for c in tqdm(cs, desc=f"{prof.protocol} (inline)", disable=not (progress and sys.stderr.isatty())):
            failed += execute(c, results, progress=progress)["status"] != "ok"
        arrays.append({**_array_summary(prof, len(cs), ["inline"]), "failed": failed})
    return arrays


def _local_executor(cluster: ClusterProfile, prof: Profile, suite: str, gpus: list[int]):
    """submitit's local executor (this machine): `gpus` are the GPU indices its processes see (none:
    CUDA hidden, so a CPU cell cannot drift onto a GPU)."""
    import submitit

    ex = submitit.LocalExecutor(folder=cluster.logs() / suite / "%j")
    ex.update_parameters(
        timeout_min=prof.time_min,
        tasks_per_node=prof.tasks,
        gpus_per_node=len(gpus),
        visible_gpus=gpus,
        name=f"sdd-{suite}-{prof.protocol}",
    )
    return ex


def visible_gpus() -> int:
    """GPUs this machine shows to its processes (CUDA_VISIBLE_DEVICES respected)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cpu_versions(reg: Registry, protocol: str) -> list[str]:
    """The CPU-sized protocols that scale `protocol` down (`miniature_of`), e.g. linear -> linear_mini."""
    return sorted(name for name, p in reg.protocols.items() if p.miniature_of == protocol and p.resources.gpus == 0)


def gpu_steer(reg: Registry, protocols, where: str) -> str | None:
    """What to say when `protocols` (names) include GPU protocols and `where` has no GPU: which ones, and the
    CPU-sized protocols to run instead (or a cluster). None when none of them needs a GPU."""
    gpu = sorted({p for p in protocols if reg.protocol(p).resources.gpus > 0})
    if not gpu:
        return None
    alts = [f"{p} -> {', '.join(cpu_versions(reg, p)) or '(no CPU-sized version)'}" for p in gpu]
    return (
        f"{len(gpu)} protocol(s) of this grid need GPUs ({', '.join(gpu)}) and {where} shows none. Run them on a "
        f"cluster with GPUs (`sdd submit --cluster <profile>`, slurm/clusters/), or use their CPU-sized versions "
        f"in your suite's grid on this machine: {'; '.join(alts)} (`sdd ls protocols`)"
    )


def check_gpus_here(reg: Registry, cluster: ClusterProfile, groups: dict) -> None:
    """The local and inline executors run on this machine: GPU protocols where it has no GPU are refused
    before any cell runs (each would end as a failed record), naming the CPU-sized protocols."""
    if cluster.executor not in ("local", "inline"):
        return
    gpu = [p.protocol for p in groups if p.gpus]
    if gpu and not visible_gpus():
        from harness.device import DeviceError

        raise DeviceError(
            (gpu_steer(reg, gpu, "this machine") or "")
            + "; nothing was submitted (`--protocol` picks the protocols to run)"
        )


def submit_local(groups: dict, cluster: ClusterProfile, suite: str, results: Path, progress: bool) -> list[dict]:
    """This machine, through submitit's local executor:
    - one-process CPU cells: `array_parallelism` workers, each running a share of them, GPUs hidden;
    - one-process GPU cells: one worker per visible GPU, that GPU only;
    - multi-process cells (a gloo world on the CPU, or several GPUs): one local job each with one task
      per process (GPU cells capped to the GPUs there are, with gradient accumulation)."""
    job_of: dict[str, str] = {}  # cell id -> the local job that runs it
    by_protocol = sorted(groups.items(), key=lambda kv: kv[0].protocol)
    single_cpu = [c for p, cs in by_protocol if p.world_size == 1 and not p.gpus for c in cs]
    single_gpu = [c for p, cs in by_protocol if p.world_size == 1 and p.gpus for c in cs]
    multi = [(p, c) for p, cs in by_protocol if p.world_size > 1 for c in cs]
    n_gpus = visible_gpus() if single_gpu or any(p.gpus for p, _ in multi) else 0
    if (single_gpu or any(p.gpus for p, _ in multi)) and not n_gpus:
        n_gpus = 1  # no GPU here: the cells run, and each ends as a failed record saying so
    # a worker's time limit covers its whole share, one cell after another
    time_min = sum(p.time_min * len(cs) for p, cs in groups.items())
    for cells, workers, gpu in ((single_cpu, cluster.array_parallelism, False), (single_gpu, n_gpus, True)):
        if not cells:
            continue
        workers = max(1, min(workers, len(cells)))
        shares = [cells[i::workers] for i in range(workers)]
        worker = Profile(
            protocol="local-worker",
            gpus=int(gpu),
            cpus=1,
            mem_gb=4.0,
            time_min=time_min,
            partition=None,
            array_parallelism=workers,
        )
        for i, share in enumerate(shares):
            ex = _local_executor(cluster, worker, suite, [i % n_gpus] if gpu else [])
            job = ex.submit(CellBatchJob(), share, str(results), 0 if gpu else max(1, (os.cpu_count() or 1) // workers))
            ledger.record_submission(results, suite, cluster.executor, cluster.name, share, [job] * len(share))
            job_of.update((c.id, str(job.job_id)) for c in share)
    for prof, c in multi:
        tasks = min(prof.world_size, n_gpus) if prof.gpus else prof.world_size
        local = Profile(
            protocol=prof.protocol,
            gpus=tasks if prof.gpus else 0,
            cpus=1,
            mem_gb=prof.mem_gb,
            time_min=prof.time_min,
            partition=None,
            array_parallelism=1,
            tasks=tasks,
            recipe_gpus=prof.recipe_gpus,
        )
        ex = _local_executor(cluster, local, suite, list(range(tasks)) if prof.gpus else [])
        job = ex.submit(CellJob(), c, str(results))
        ledger.record_submission(results, suite, cluster.executor, cluster.name, [c], [job])
        job_of[c.id] = str(job.job_id)
    # one line per protocol profile, as the dry run shows them, with the local jobs that run its cells
    return [_array_summary(prof, len(cs), sorted({job_of[c.id] for c in cs})) for prof, cs in by_protocol]


def submit_slurm(groups: dict, cluster: ClusterProfile, suite: str, results: Path, progress: bool) -> list[dict]:
    """One submitit job array per resource profile, in chunks of the cluster's array limit."""
    arrays = []
    for prof, cs in sorted(groups.items(), key=lambda kv: kv[0].protocol):
        ex = _executor(cluster, prof, suite)
        for start in range(0, len(cs), cluster.array_limit):
            chunk = cs[start : start + cluster.array_limit]
            with ex.batch():
                jobs = [ex.submit(CellJob(), c, str(results)) for c in chunk]
            ledger.record_submission(results, suite, cluster.executor, cluster.name, chunk, jobs)
            arrays.append(_array_summary(prof, len(chunk), sorted({str(j.job_id).split("_")[0] for j in jobs})))
    return arrays


EXECUTORS = {"local": submit_local, "slurm": submit_slurm}  # inline: `submit` runs the claimed cells itself


def submit(
    reg: Registry,
    suite: str,
    cluster: ClusterProfile,
    results: Path,
    *,
    protocols=None,
    methods=None,
    dry_run: bool = False,
    retry_failed: bool = False,
    max_attempts: int = 3,
    progress: bool = True,
    guided: bool = False,
    replace_live: bool = False,
) -> dict:
    """Submit the cells of `suite` that need running; returns a summary (what was submitted where).

    Deciding which cells to run and claiming them in the ledger happen under the suite's lock, so two
    submits started together never run a cell twice: the second sees the first one's cells queued.
    Inline cells are claimed (as running in this process) and run after the lock is released."""
    import contextlib

    from harness.suitedir import suite_lock

    results = Path(results)
    # a dry run writes nothing: it takes no lock
    held = contextlib.nullcontext() if dry_run else suite_lock(results, suite, f"sdd submit --suite {suite}")
    with held:
        summary = _submit(
            reg,
            suite,
            cluster,
            results,
            protocols=protocols,
            methods=methods,
            dry_run=dry_run,
            retry_failed=retry_failed,
            max_attempts=max_attempts,
            progress=progress,
            guided=guided,
            replace_live=replace_live,
        )
    if cluster.executor == "inline" and summary.get("_groups"):
        try:
            summary["arrays"] = submit_inline(summary["_groups"], cluster, suite, results, progress)
        finally:
            ledger.release_claims(results, suite, summary["submitted"])
    summary.pop("_groups", None)
    return summary


def _submit(
    reg: Registry, suite: str, cluster: ClusterProfile, results: Path, *, protocols, methods, dry_run: bool,
    retry_failed: bool, max_attempts: int, progress: bool, guided: bool, replace_live: bool
) -> dict:  # fmt: skip
    """`submit`'s decisions and claims (under its lock), with `submit`'s keyword options."""
    cells = build_plan(reg, suite, protocols=protocols, methods=methods)
    waiting = {}
    if guided:
        from harness.plan import guided as guided_cells

        cells, waiting, _ = guided_cells(reg, cells, results)
    d = decide(
        cells,
        results,
        suite,
        retry_failed=retry_failed,
        max_attempts=max_attempts,
        write=not dry_run,
        replace_live=replace_live,
    )
    groups: dict[Profile, list[Cell]] = defaultdict(list)
    for c in d.submit:
        groups[profile_for(reg, cluster, c.protocol)].append(c)
    summary = {
        "suite": suite,
        "cluster": cluster.name,
        "executor": cluster.executor,
        "cells": len(cells),
        "skipped": d.skipped,
        "to_submit": len(d.submit),
        "arrays": [],
        "waiting": waiting,
        "warning": d.warning,
        "submitted": [c.id for c in d.submit],
        "stale": d.stale or {},
    }
    if not dry_run:
        check_gpus_here(reg, cluster, groups)
    if dry_run or not d.submit:
        summary["arrays"] = [
            _array_summary(p, len(cs), []) for p, cs in sorted(groups.items(), key=lambda kv: kv[0].protocol)
        ]
        return summary
    if cluster.executor == "inline":  # claimed now, under the lock; run by `submit` once it is released
        ledger.claim_inline(results, suite, cluster.name, d.submit)
        summary["_groups"] = dict(groups)
        return summary
    summary["arrays"] = EXECUTORS[cluster.executor](groups, cluster, suite, results, progress)
    return summary


# ---------------------------------------------------------------------------------------------
# status

STATES = tuple(CellState)  # the columns of `sdd status`, in this order


def cell_statuses(
    reg: Registry, suite: str, results: Path, *, protocols=None, methods=None, refresh: "ledger.Refresh | None" = None
) -> list[dict]:
    """One row per cell: state (done | running | pending | unknown | failed | corrupt | stale | todo), reason
    and log path. `unknown`: queued, but the scheduler could not be asked (the reason is in the row)."""
    results = Path(results)
    ref = refresh or ledger.refresh(results, suite)
    led = ref.ledger["cells"]
    rows = []
    for c in build_plan(reg, suite, protocols=protocols, methods=methods):
        rec_state, why = c.state(results)
        e = led.get(c.id, {}) if led.get(c.id, {}).get("config_hash") == c.config_hash else {}
        slurm_state = e.get("state")
        reason = log = None
        if rec_state in (CellState.DONE, CellState.IMPORTED, CellState.LIVE):
            state, reason = rec_state, why
        elif slurm_state in ACTIVE_STATES and c.id in ref.unknown:
            state, reason = CellState.UNKNOWN, ref.warning
        elif slurm_state in ACTIVE_STATES:
            state = CellState.RUNNING if slurm_state in ("RUNNING", "COMPLETING") else CellState.PENDING
        elif rec_state == CellState.CORRUPT:
            state, reason = CellState.CORRUPT, f"record {c.record_path(results)}: {why}"
        elif rec_state == CellState.STALE:  # a record of another recipe or checkpoint: to run again, as `plan` says
            state, reason = CellState.STALE, why
        elif rec_state == CellState.FAILED or (slurm_state in TERMINAL_FAILED and rec_state == CellState.TODO):
            state = CellState.FAILED
            rec = {}
            if rec_state == CellState.FAILED:
                from harness.records import read_record

                rec = read_record(c.record_path(results), results) or {}
            reason = (
                (rec.get("error") or "").splitlines()[0]
                if rec.get("error")
                else f"job {e.get('job_id')} ended {slurm_state} without a record"
            )
            log = e.get("log_err") or rec.get("log")  # the scheduler's log (the traceback), else the cell's own
        else:
            state = CellState.TODO
        rows.append(
            {
                "cell": c.id,
                "protocol": c.protocol,
                "method": c.method,
                "state": state,
                "reason": reason,
                "log": log,
                "cell_log": str(log_path(c, results)) if state == CellState.FAILED else None,
                "job_id": e.get("job_id"),
                "attempts": e.get("attempts", 0),
            }
        )
    return rows


QUEUED = (CellState.RUNNING, CellState.PENDING, CellState.UNKNOWN)


def _waiting_for(rows: dict) -> str:
    """What is still to finish, by protocol: 'linear_mini 3 running, 9 queued'."""
    by: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in rows.values():
        if r["state"] == CellState.RUNNING:
            by[r["protocol"]][0] += 1
        elif r["state"] in (CellState.PENDING, CellState.UNKNOWN):
            by[r["protocol"]][1] += 1
    return "; ".join(
        f"{p} " + ", ".join(x for x in (f"{run} running" if run else "", f"{q} queued" if q else "") if x)
        for p, (run, q) in sorted(by.items())
    )


def wait(
    reg: Registry, suite: str, results: Path, *, cells: set[str] | None = None, poll: float = 2.0, progress: bool = True
) -> dict[str, dict]:
    """Block until none of `cells` (default: the suite's) is queued or running. On a terminal a progress
    bar counts the finished ones and says what it waits for; redirected to a file, one plain line each
    time the counts change (at most every `quiet_s` seconds), never the bar's frames."""
    import sys

    from tqdm.auto import tqdm

    def rows():
        out = {r["cell"]: r for r in cell_statuses(reg, suite, results)}
        return {k: v for k, v in out.items() if cells is None or k in cells}

    now = rows()
    tty = progress and sys.stderr.isatty()
    bar = tqdm(total=len(now), desc=f"suite {suite}", unit="cell", disable=not tty)
    last_line, last_t, quiet_s = None, 0.0, 30.0
    while True:
        done = sum(r["state"] not in QUEUED for r in now.values())
        failed = sum(r["state"] in (CellState.FAILED, CellState.CORRUPT) for r in now.values())
        waiting = _waiting_for(now)
        if tty:
            bar.n = done
            bar.set_postfix_str(f"failed {failed}" + (f"; waiting for {waiting}" if waiting else ""), refresh=False)
            bar.refresh()
        elif progress:
            line = f"suite {suite}: {done} of {len(now)} cells finished, {failed} failed" + (
                f"; waiting for {waiting}" if waiting else ""
            )
            if line != last_line and (time.monotonic() - last_t >= quiet_s or last_line is None or not waiting):
                print(line, file=sys.stderr, flush=True)
                last_line, last_t = line, time.monotonic()
        if not waiting:
            break
        time.sleep(poll)
        now = rows()
    bar.close()
    return now


def status_table(rows: list[dict]) -> list[dict]:
    agg: dict[tuple, dict] = {}
    for r in rows:
        a = agg.setdefault(
            (r["protocol"], r["method"]),
            {"protocol": r["protocol"], "method": r["method"], "cells": 0, **dict.fromkeys(STATES, 0)},
        )
        a["cells"] += 1
        a[r["state"]] += 1
    return [agg[k] for k in sorted(agg)]
