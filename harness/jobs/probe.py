"""The `probe` job: real but tiny work for testing the launch path (Slurm arrays, failures,
cancellation, requeue). It advances in `steps` steps of `sleep_s` seconds, saving its progress in
the cell's work directory after each one, so a requeued or preempted run resumes where it stopped.

Params: steps, sleep_s, fail_methods (raise for these methods), fail_epochs (restrict to epochs),
fail_first_runs (raise only during the first N runs of a cell: a transient failure)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from harness.atomic import write_json
from harness.jobs.common import JobResult


def expected_value(method: str, epoch: int, steps: int) -> str:
    h = hashlib.sha256(f"{method}:{epoch}".encode())
    for i in range(steps):
        h.update(str(i).encode())
    return h.hexdigest()[:16]


def run(cell, ctx) -> dict:
    params = ctx.params
    steps, sleep_s = params.steps, params.sleep_s
    work = Path(ctx.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    state_file = work / "probe_state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {"step": 0, "runs": 0, "digest": None}
    state["runs"] += 1
    start_step = state["step"]
    write_json(state_file, state)
    fail_epochs = params.fail_epochs
    transient = params.fail_first_runs
    if (
        cell.method in params.fail_methods
        and (not fail_epochs or cell.epoch in fail_epochs)
        and (not transient or state["runs"] <= transient)
    ):
        raise RuntimeError(f"probe: cell {cell.id} was asked to fail (fail_methods, run {state['runs']})")
    h = hashlib.sha256(f"{cell.method}:{cell.epoch}".encode())
    for i in range(state["step"]):
        h.update(str(i).encode())
    t0 = time.perf_counter()
    for i in range(state["step"], steps):
        time.sleep(sleep_s)
        h.update(str(i).encode())
        state["step"] = i + 1
        write_json(state_file, state)
    return JobResult(
        metrics={"steps": steps},
        timings={"steps_s": time.perf_counter() - t0},
        info={"value": h.hexdigest()[:16], "runs": state["runs"], "resumed_from_step": start_step},
    )
