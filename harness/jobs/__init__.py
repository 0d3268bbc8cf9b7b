"""Jobs: one module per protocol kind (registered in `harness.kinds`), each with
`run(cell, ctx) -> results`. A job does not know how it was launched, and writes no record:
`execute` owns what every job shares (the registry, the work directory, the record's identity,
versions and timings, peak memory, the ok/failed epilogue) and stores the one record of the cell."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import records
from harness.atomic import write_json
from harness.device import (
    BatchPlan,
    DeviceError,
    Placement,
    batch_plan,
    dist_env,
    init_distributed,
    resolve,
)
from harness.errors import HarnessError
from harness.fingerprint import file_fingerprint
from harness.jobs.common import JobResult, base_record, failed_record, now, peak_memory_mb
from harness.kinds import PROTOCOL_KINDS
from harness.records import log_path
from harness.registry import Registry, RegistryError, Resources, load_registry


@dataclass
class JobContext:
    """What `execute` hands a job besides the cell: the registry, where it runs (`placement`: device,
    world size, rank, CPUs) and the recipe's resources (`resources`: the GPUs it plans for, which set
    the global batch). `work_dir` (state the job resumes from after a requeue) is created and claimed
    for this run when a job first asks for it; only rank 0 writes into it."""

    registry: Registry
    work: Path
    identity: dict
    placement: Placement
    resources: Resources
    params: Any = None  # the protocol's typed parameters (harness.params), as resolved in the cell's config
    progress: bool = True
    _claimed: bool = False

    def batch(self, global_batch: int) -> BatchPlan:
        """Per-device batch and gradient accumulation keeping the recipe's global batch here."""
        return batch_plan(global_batch, self.resources.world_size, self.placement.world_size)

    @property
    def work_dir(self) -> Path:
        if not self._claimed:
            self.work.mkdir(parents=True, exist_ok=True)
            claim_work_dir(self.work, self.identity)
            self._claimed = True
        return self.work


def data_inputs(reg: Registry, cell, params) -> dict:
    """The fingerprints of the dataset splits the cell's job reads (`harness.datasets.split_fingerprint`):
    when they change later, the record is stale. A split that cannot be listed here is left to the job,
    which fails saying why."""
    from harness.datasets import DatasetError, split_fingerprint

    splits = PROTOCOL_KINDS[cell.config["protocol"]["kind"]].splits_for(params)
    if not splits:
        return {}
    ds = reg.dataset(cell.dataset, cell.suite)
    out = {}
    for split in splits:
        try:
            out[split] = split_fingerprint(ds, split)
        except (DatasetError, KeyError, RegistryError):
            pass
    return out


def _check_arch_fits(reg: Registry, cell, kind: str) -> None:
    """A dense protocol places features by their stride: an architecture without the usual strides (a
    CIFAR ResNet's 3x3 stem) would give a number from misplaced features, so the cell fails instead."""
    from harness.kinds import DENSE, PROBE
    from harness.models.archs import facts_of_method

    facts = facts_of_method(reg.method(cell.method))
    if PROTOCOL_KINDS[kind].role in (DENSE, PROBE) and not facts.dense:
        raise ValueError(
            f"method '{cell.method}' is a {facts.name} ({facts.description}; {facts.summary()}): the {kind} protocol "
            f"needs stage maps at strides 4-32 and cannot evaluate it; use the image-level protocols (linear_cls, knn)"
        )
    patch = PROTOCOL_KINDS[kind].vit_patch
    if patch and facts.family == "vit" and facts.patch != patch:
        # the pyramid rescales the ViT's map into fixed strides; at another patch they are at other strides, and
        # the anchors and RoI pooling (which take them as fixed) would read misplaced features
        raise ValueError(
            f"method '{cell.method}' is a ViT with patch {facts.patch} ({facts.name}): the {kind} protocols build "
            f"their pyramid for patch {patch} (strides 4, 8, 16, 32 from the x4, x2, x1, x0.5 rescales), so its "
            f"anchors and RoI pooling would read misplaced features. Evaluate it with the segmentation, DAVIS and "
            f"image-level protocols"
        )


def _checkpoint_file(reg: Registry, cell) -> Path | None:
    try:
        return reg.method(cell.method).checkpoint_file(cell.epoch)
    except RegistryError:  # SDD_CKPT_ROOT unset: the job's own loading says so, where it needs one
        return None


_TERMINATING: dict = {"signal": None}


def watch_termination() -> None:
    """Note a SIGTERM (Slurm's scancel, preemption, the time limit) before passing it on to the handler
    already installed (submitit's). A job that then fails, e.g. because its data-loader workers were
    killed, was stopped, not broken: it writes no failed record (the scheduler's state says what
    happened, and its saved progress is resumed by the next run)."""
    import signal

    previous = signal.getsignal(signal.SIGTERM)

    def note(signum, frame):
        _TERMINATING["signal"] = signum
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, note)


@contextlib.contextmanager
def cell_log(path: Path):
    """Send this process's Python-level output (print, warnings, logging handlers made meanwhile) to the
    cell's log file, so that a terminal shows progress and failures, not the libraries' chatter."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as f:
        f.write(f"==== {now()} ====\n")
        with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            yield


def job_for(kind: str):
    if kind not in PROTOCOL_KINDS:
        raise NotImplementedError(f"no job for protocol kind '{kind}' (registered: {', '.join(PROTOCOL_KINDS)})")
    return importlib.import_module(PROTOCOL_KINDS[kind].job)


def work_dir(cell, results: Path | str, checkpoint: dict | None = None) -> Path:
    """Where a cell's job keeps the state it resumes from after a requeue. The folder is bound to the
    cell's config hash and its checkpoint's fingerprint: a changed recipe or an overwritten checkpoint
    starts fresh instead of resuming another run's state."""
    fp = checkpoint if checkpoint is not None else cell.checkpoint_fingerprint()
    base = Path(results) / cell.suite / "work" / cell.protocol / cell.dataset / cell.method / f"ep{cell.epoch:04d}"
    return base / f"{cell.config_hash}-{fp['id'] if fp else 'nockpt'}"


def _data_id(data: dict) -> str | None:
    """What identifies the dataset splits a job reads, for its work folder: a preempted job resumed after its
    data changed must not continue from state trained on the old data."""
    if not data:
        return None
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def claim_work_dir(work: Path, identity: dict) -> None:
    """The work folder says whose state it holds (`cell.json`); resuming from another run's is refused."""
    stamp = work / "cell.json"
    try:
        held = records.read_json(stamp)
    except records.CorruptRecord as e:
        raise RuntimeError(f"{e}; the work folder {work} cannot be trusted: delete it to start this cell afresh")
    if held is not None and "data" not in held:  # a folder claimed before data was part of the identity
        held = {**held, "data": identity.get("data")}
    if held is None:
        write_json(stamp, identity)
    elif held != identity:
        diff = ", ".join(
            f"{k}: {held.get(k)!r} there, {identity[k]!r} here" for k in identity if held.get(k) != identity[k]
        )
        raise RuntimeError(
            f"the work folder {work} holds the state of another run ({diff}); nothing was resumed "
            f"from it: delete it to start this cell afresh"
        )


def _summary_line(out) -> str:
    """The cell log's last line: the job's metrics and where a library kept its own log."""
    if not isinstance(out, dict):
        return "job finished"
    scalars = {k: v for k, v in (out.get("metrics") or {}).items() if isinstance(v, (int, float))}
    text = "job finished: " + (", ".join(f"{k}={v:.4g}" for k, v in list(scalars.items())[:12]) or "no scalar metrics")
    for path in out.get("library_logs") or []:
        text += f"\nlibrary log: {path}"
    return text


class OutputCheckError(HarnessError):
    """A job computed something its kind says cannot be a result (a NaN, a value outside its domain)."""


def check_outputs(kind: str, results: dict) -> None:
    """Every metric a job returns is one its kind declares (harness.kinds), a finite number in the
    metric's domain -- or NaN with the reason in `undefined_metrics` (COCOeval's -1), or, per class, NaN
    for a class absent from the ground truth and the predictions. Anything else fails the cell, naming
    the metric and the value: an ok record never holds a number that cannot be one."""
    import math

    declared = PROTOCOL_KINDS[kind]
    undefined = results.get("undefined_metrics") or {}
    bad = []
    for name, value in results["metrics"].items():
        m = declared.metric(name)
        if m is None:
            bad.append(
                f"{name} is not a metric of kind {kind} (harness/kinds.py declares "
                f"{', '.join(x.name for x in declared.metrics)})"
            )
            continue
        if m.per_class:
            wrong = (
                {
                    c: v
                    for c, v in (value or {}).items()
                    if not (isinstance(v, (int, float)) and (math.isnan(v) or m.in_domain(v)))
                }
                if isinstance(value, dict)
                else {"(all)": value}
            )
            if wrong:
                bad.append(
                    f"{name} of {len(wrong)} class(es) outside {m.domain_text()}: "
                    + ", ".join(f"{c}={v!r}" for c, v in list(wrong.items())[:4])
                )
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            bad.append(f"{name} = {value!r} is not a number")
        elif math.isnan(value) and name in undefined:
            continue  # undefined, with the reason recorded beside it
        elif not m.in_domain(value):
            bad.append(f"{name} = {value!r} is outside its domain, {m.domain_text()}")
    if bad:
        raise OutputCheckError("the job's results fail their checks (nothing is recorded as ok): " + "; ".join(bad))


def ok_record(record: dict, results: dict, wall_s: float) -> dict:
    """A job's results folded into its record. A job that returns no metrics has a bug: that is a failure."""
    if not isinstance(results, dict) or not isinstance(results.get("metrics"), dict) or not results["metrics"]:
        raise RuntimeError("the job returned no metrics (a bug in the job; nothing is recorded as ok)")
    check_outputs(record["config"]["protocol"]["kind"], results)
    reserved = set(record) & set(results)
    if reserved:
        raise RuntimeError(f"the job returned reserved record fields {sorted(reserved)} (a bug in the job)")
    timings = {**(results.get("timings") or {}), "total_s": wall_s}
    return {
        **record,
        **results,
        "status": "ok",
        "timings": timings,
        "peak_memory_mb": peak_memory_mb(),
        "finished": now(),
    }


def execute(cell, results: Path | str, *, registry: Registry | None = None, progress: bool = True) -> dict:
    """Run a cell's job and write its record (ok or failed) atomically; returns the record.

    The device is decided here, before the job starts (`harness.device.resolve`), and a multi-process
    cell's process group is set up here; every rank runs the job, rank 0 alone writes the record.
    An interrupt (KeyboardInterrupt, SystemExit) writes nothing: the cell stays to do."""
    from harness.suitedir import checked_suite_dir

    results = Path(results)
    checked_suite_dir(results, cell.suite)  # never a record into another suite's folder (a link): nothing written
    record = base_record(cell)
    t0 = time.perf_counter()
    try:
        rank = dist_env()[1]
    except (DeviceError, ValueError):
        rank = 0
    own_group = False
    try:
        kind = cell.config["protocol"]["kind"]
        if kind not in PROTOCOL_KINDS:
            raise NotImplementedError(f"no job for protocol kind '{kind}' (registered: {', '.join(PROTOCOL_KINDS)})")
        reg = registry or load_registry(cell.registry_root or None)
        _check_arch_fits(reg, cell, kind)  # before any device is taken: a registry-level mismatch
        resources = reg.protocol(cell.protocol).resources
        placement = resolve(resources.gpus, cpus=resources.cpus)
        record["placement"] = placement.record()
        if placement.distributed and placement.accelerator == "cpu":  # the processes share the cores
            import torch

            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", placement.world_size))
            torch.set_num_threads(max(1, placement.cpus // local_world))
        own_group = init_distributed(placement)
        path = _checkpoint_file(reg, cell)  # resolved where the job runs
        checkpoint = file_fingerprint(path) if path else None
        record["inputs"] = {"checkpoint": {"path": str(path) if path else None, **(checkpoint or {})}}
        params = PROTOCOL_KINDS[kind].params.model_validate(cell.config["protocol"]["params"])
        record["inputs"]["data"] = data_inputs(reg, cell, params)
        identity = {  # whose state a resumed job continues: this recipe, checkpoint and data, or none
            "cell": cell.id,
            "config_hash": cell.config_hash,
            "checkpoint": (checkpoint or {}).get("id"),
            "data": _data_id(record["inputs"]["data"]),
        }
        ctx = JobContext(reg, work_dir(cell, results, checkpoint), identity, placement, resources, params, progress)
        log = log_path(cell, results, placement.rank)
        record["log"] = str(log)
        with cell_log(log):  # the job's module too: its libraries' import-time warnings go to the log
            result = job_for(kind).run(cell, ctx)
            if not isinstance(result, JobResult):
                raise TypeError(f"the {kind} job returned {type(result).__name__}, not a JobResult (a bug in the job)")
            out = result.record_fields()
            print(_summary_line(out))
        if placement.is_main:  # the other ranks' results are rank 0's; they write nothing
            record = ok_record(record, out, time.perf_counter() - t0)
    except Exception as e:  # a job's failure is data: it ends as a failed record with the reason
        if _TERMINATING["signal"] is not None:
            raise  # stopped from outside, not broken: nothing is written, the cell stays to do
        record = failed_record(record, e, time.perf_counter() - t0)
    finally:
        if own_group:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank == 0:
        records.write_record(cell.record_path(results), record)
    return record
