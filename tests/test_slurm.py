"""The launch path on a real single-node Slurm cluster (started by the tests on loopback, as root):
arrays, skip-done, failures, scancel, requeue with resume, slurmd restarts; plus local/inline
executors and crash-safe record writing."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import ledger, records
from harness.cli import main
from harness.jobs.probe import expected_value
from harness.plan import build_plan
from harness.registry import load_registry

ROOT = Path(__file__).resolve().parents[1]
SLURM_DIR = Path(os.environ.get("SDD_SLURM_DIR", "/tmp/sdd-slurm"))


def make_registry(tmp: Path, params: str, methods="[dino, mae, byol]", epochs="[10, 20, 30]", extra_grid="") -> Path:
    bench = tmp / "bench"
    shutil.copytree(ROOT / "benchmarks", bench)
    (bench / "protocols" / "probe.yaml").write_text(
        "name: probe\nkind: probe\ntitle: probe\n"
        f"params: {params}\n"
        "resources: {gpus: 0, cpus: 1, mem_gb: 1, time_min: 5, gpu_hours: 0.0}\n"
    )
    (bench / "protocols" / "probe_big.yaml").write_text(
        "name: probe_big\nkind: probe\ntitle: probe with more memory\nparams: {steps: 2, sleep_s: 0.1}\n"
        "resources: {gpus: 0, cpus: 1, mem_gb: 2, time_min: 5, gpu_hours: 0.0}\n"
    )
    (bench / "suites" / "probe.yaml").write_text(
        f"name: probe\ntitle: probe\nmethods: {methods}\ngrid:\n"
        f"  - protocol: probe\n    datasets: [imagenet]\n    epochs: {epochs}\n{extra_grid}"
    )
    return bench


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("SDD_SUBMITIT", str(tmp_path / "submitit"))  # a fresh log folder per test
    return tmp_path


def sdd(bench, *args):
    return main(["--registry", str(bench), *args])


def wait_for(pred, timeout=180, every=1.0, what="condition"):
    t = time.time()
    while time.time() - t < timeout:
        if pred():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def states(bench, results, suite="probe"):
    from harness.launch import cell_statuses

    return {r["cell"]: r for r in cell_statuses(load_registry(bench), suite, results)}


def all_done(bench, results):
    return lambda: all(r["state"] == "done" for r in states(bench, results).values())


def no_active(bench, results):
    return lambda: not any(r["state"] in ("running", "pending") for r in states(bench, results).values())


def probe_state(bench, results, cid="probe/imagenet/dino/ep0010"):
    """Where a probe cell keeps its progress (the work folder bound to its config and checkpoint)."""
    from harness.jobs import work_dir

    cell = next(c for c in build_plan(load_registry(bench), "probe") if c.id == cid)
    return work_dir(cell, results) / "probe_state.json"


def check_records(results, bench, steps):
    """Every cell has exactly one complete ok record with the value its work must produce."""
    cells = states(bench, results)
    for cid in cells:
        proto, ds, method, ep = cid.split("/")
        path = results / "probe" / "runs" / proto / ds / method / f"{ep}.json"
        rec = json.loads(path.read_text())
        assert rec["status"] == "ok" and rec["value"] == expected_value(method, int(ep[2:]), steps), cid
    leftovers = [  # (the tree's owner marker, harness.suitedir, is no leftover)
        p
        for p in (results / "probe" / "runs").rglob("*")
        if p.is_file() and not p.name.endswith(".json") and p.name != ".sdd-suite"
    ]
    assert not leftovers, leftovers


def sacct_state(job_id):
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True)
    return out.stdout.strip().split("\n")[0].split(" ")[0] if out.stdout.strip() else ""


# ---------------------------------------------------------------------------------------------


@pytest.mark.slurm
def test_arrays_land_every_record_and_resubmit_is_a_noop(slurm_cluster, env, capsys):
    bench = make_registry(
        env,
        "{steps: 3, sleep_s: 0.1}",
        extra_grid="  - protocol: probe_big\n    datasets: [imagenet]\n    epochs: [10]\n",
    )
    results = env / "results"
    assert sdd(bench, "submit", "--suite", "probe", "--cluster", "local-test", "--results", str(results)) == 0
    out = capsys.readouterr().out
    assert "submitted 12" in out
    rows = {x.split()[0]: x.split() for x in out.splitlines() if x.strip().startswith("probe")}
    assert set(rows) == {"probe", "probe_big"}  # two profiles, one row each
    assert rows["probe"][1] == "9" and rows["probe_big"][1] == "3" and rows["probe_big"][6] == "2G"
    led = ledger.read_ledger(results, "probe")["cells"]
    assert len({e["array_job_id"] for e in led.values()}) == 2  # one array per resource profile
    wait_for(lambda: all(r["state"] == "done" for r in states(bench, results).values()), what="all records")
    rec = json.loads((results / "probe/runs/probe/imagenet/mae/ep0020.json").read_text())
    assert rec["slurm_job_id"] and rec["slurm_array_task_id"] is not None and rec["runs"] == 1
    assert sdd(bench, "submit", "--suite", "probe", "--cluster", "local-test", "--results", str(results)) == 0
    assert "skipped: 12 done; submitted 0" in capsys.readouterr().out
    assert sdd(bench, "status", "--suite", "probe", "--results", str(results)) == 0
    assert "total                 12    12" in capsys.readouterr().out


@pytest.mark.slurm
def test_a_raising_cell_is_a_failed_record_and_retry_completes(slurm_cluster, env, capsys):
    bench = make_registry(env, "{steps: 2, sleep_s: 0.1, fail_methods: [mae], fail_epochs: [20], fail_first_runs: 1}")
    results = env / "results"
    sdd(bench, "submit", "--suite", "probe", "--cluster", "local-test", "--results", str(results))
    wait_for(no_active(bench, results), what="the array to finish")
    st = states(bench, results)
    bad = st["probe/imagenet/mae/ep0020"]
    assert bad["state"] == "failed" and "asked to fail" in bad["reason"] and bad["log"].endswith("_log.err")
    assert sum(r["state"] == "done" for r in st.values()) == 8
    rec = json.loads((results / "probe/runs/probe/imagenet/mae/ep0020.json").read_text())
    assert rec["status"] == "failed" and "Traceback" in rec["traceback"] and "RuntimeError" in rec["error"]
    capsys.readouterr()
    sdd(bench, "status", "--suite", "probe", "--results", str(results))
    out = capsys.readouterr().out
    assert "1 failed cell(s)" in out and "log: " in out and "--retry-failed" in out
    sdd(bench, "submit", "--suite", "probe", "--cluster", "local-test", "--results", str(results))
    assert "1 failed (use --retry-failed)" in capsys.readouterr().out
    sdd(bench, "submit", "--suite", "probe", "--cluster", "local-test", "--results", str(results), "--retry-failed")
    assert "submitted 1" in capsys.readouterr().out
    wait_for(all_done(bench, results), what="the retried cell")
    assert ledger.read_ledger(results, "probe")["cells"]["probe/imagenet/mae/ep0020"]["attempts"] == 2
    check_records(results, bench, steps=2)


@pytest.mark.slurm
def test_scancel_mid_run_then_retry_resumes_from_saved_progress(slurm_cluster, env, capsys):
    bench = make_registry(env, "{steps: 30, sleep_s: 0.5}", methods="[dino]", epochs="[10]")
    results = env / "results"
    sdd(bench, "submit", "--suite", "probe", "--cluster", "local-test", "--results", str(results))
    job = ledger.read_ledger(results, "probe")["cells"]["probe/imagenet/dino/ep0010"]["job_id"]
    work = probe_state(bench, results)
    wait_for(lambda: work.is_file() and json.loads(work.read_text())["step"] >= 3, what="some progress")
    subprocess.run(["scancel", job], check=True)
    wait_for(lambda: sacct_state(job).startswith("CANCELLED"), what="the cancellation")
    st = states(bench, results)["probe/imagenet/dino/ep0010"]
    assert st["state"] == "failed" and "CANCELLED" in st["reason"]
    assert not (results / "probe/runs/probe/imagenet/dino/ep0010.json").exists()  # nothing partial
    sdd(bench, "submit", "--suite", "probe", "--cluster", "local-test", "--results", str(results), "--retry-failed")
    wait_for(all_done(bench, results), what="the resubmitted cell")
    rec = json.loads((results / "probe/runs/probe/imagenet/dino/ep0010.json").read_text())
    assert rec["runs"] == 2 and rec["resumed_from_step"] >= 3
    check_records(results, bench, steps=30)


@pytest.mark.slurm
def test_scontrol_requeue_resumes_from_saved_state(slurm_cluster, env):
    bench = make_registry(env, "{steps: 24, sleep_s: 0.5}", methods="[dino]", epochs="[10]")
    results = env / "results"
    sdd(bench, "submit", "--suite", "probe", "--cluster", "local-test", "--results", str(results))
    job = ledger.read_ledger(results, "probe")["cells"]["probe/imagenet/dino/ep0010"]["job_id"]
    work = probe_state(bench, results)
    wait_for(lambda: work.is_file() and json.loads(work.read_text())["step"] >= 3, what="some progress")
    subprocess.run(["scontrol", "requeue", job], check=True)
    wait_for(all_done(bench, results), timeout=240, what="the requeued job")
    rec = json.loads((results / "probe/runs/probe/imagenet/dino/ep0010.json").read_text())
    assert rec["runs"] == 2 and rec["resumed_from_step"] >= 3
    check_records(results, bench, steps=24)


@pytest.mark.slurm
def test_slurmd_stopped_and_restarted_while_an_array_runs(slurm_cluster, env):
    bench = make_registry(env, "{steps: 8, sleep_s: 0.5}", methods="[dino, mae]", epochs="[10, 20, 30]")
    results = env / "results"
    sdd(bench, "submit", "--suite", "probe", "--cluster", "local-test", "--results", str(results))
    wait_for(lambda: any(r["state"] == "running" for r in states(bench, results).values()), what="a running task")
    pid = int((SLURM_DIR / "run" / "slurmd.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    time.sleep(4)
    out = subprocess.run(["bash", str(ROOT / "slurm/local/up.sh")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    wait_for(no_active(bench, results), timeout=300, what="the array after the restart")
    sdd(bench, "submit", "--suite", "probe", "--cluster", "local-test", "--results", str(results), "--retry-failed")
    wait_for(all_done(bench, results), timeout=300, what="every cell")
    check_records(results, bench, steps=8)


# ---------------------------------------------------------------------------------------------


def test_local_and_inline_executors(env, capsys):
    bench = make_registry(env, "{steps: 2, sleep_s: 0.05}", methods="[dino]", epochs="[10, 20]")
    results = env / "results"
    assert (
        sdd(bench, "submit", "--suite", "probe", "--cluster", "inline", "--results", str(results), "--method", "dino")
        == 0
    )
    assert sum(r["state"] == "done" for r in states(bench, results).values()) == 2
    shutil.rmtree(results)
    assert sdd(bench, "submit", "--suite", "probe", "--cluster", "local", "--results", str(results)) == 0
    wait_for(all_done(bench, results), timeout=120, what="local executor jobs")
    check_records(results, bench, steps=2)


def test_a_failing_sacct_shows_states_as_unknown_with_the_reason(env, capsys, monkeypatch):
    """sacct that cannot run leaves the ledger as it was, shows the cells as unknown with a warning,
    never submits them twice, and `status --watch` ends instead of waiting forever."""
    bench = make_registry(env, "{steps: 1, sleep_s: 0.01}", methods="[dino]", epochs="[10, 20]")
    results = env / "results"
    cid = "probe/imagenet/dino/ep0010"
    cell = next(c for c in build_plan(load_registry(bench), "probe") if c.id == cid)
    with ledger.ledger(results, "probe") as led:
        led["cells"][cid] = {
            "job_id": "4242_0",
            "executor": "slurm",
            "state": "PENDING",
            "attempts": 1,
            "config_hash": cell.config_hash,
            "log_err": None,
        }
    empty = env / "nobin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # as on a login node without Slurm's client tools
    assert sdd(bench, "status", "--suite", "probe", "--results", str(results)) == 0
    out, err = capsys.readouterr()
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert "unknown" in out.splitlines()[0] and total.split()[1:] == ["2", "0", "0", "0", "1", "0", "1"]
    assert "state of 1 Slurm job(s) is unknown: sacct is not installed" in err
    assert ledger.read_ledger(results, "probe")["cells"][cid]["state"] == "PENDING"
    assert sdd(bench, "status", "--suite", "probe", "--results", str(results), "--watch", "0.01") == 1
    assert "gave up after 3 refreshes" in capsys.readouterr().err
    assert sdd(bench, "submit", "--suite", "probe", "--cluster", "inline", "--results", str(results)) == 0
    out = capsys.readouterr().out
    assert "1 already queued or running (state unknown)" in out and "submitted 1" in out


def test_an_unreadable_ledger_stops_with_its_name_and_repair_keeps_it(env, capsys):
    bench = make_registry(env, "{steps: 1, sleep_s: 0.01}", methods="[dino]", epochs="[10, 20]")
    results = env / "results"
    assert (
        sdd(bench, "submit", "--suite", "probe", "--cluster", "inline", "--results", str(results), "--method", "dino")
        == 0
    )
    path = ledger.ledger_path(results, "probe")
    path.write_text('{"cells": {"probe/imag')  # torn by a full disk, say
    capsys.readouterr()
    for args in (("status",), ("submit", "--cluster", "inline")):
        assert sdd(bench, *args, "--suite", "probe", "--results", str(results)) == 2
        err = capsys.readouterr().err
        assert f"the ledger {path} is unreadable" in err and "--repair-ledger" in err
        assert path.read_text() == '{"cells": {"probe/imag'  # nothing overwritten
    assert sdd(bench, "status", "--suite", "probe", "--results", str(results), "--repair-ledger") == 0
    assert "rebuilt from 2 record(s)" in capsys.readouterr().out
    kept = list(path.parent.glob("ledger.json.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_text() == '{"cells": {"probe/imag'
    assert set(ledger.read_ledger(results, "probe")["cells"]) == {
        "probe/imagenet/dino/ep0010",
        "probe/imagenet/dino/ep0020",
    }


def test_corrupt_records_are_named_everywhere_and_rerun(env, capsys):
    """A torn record, an ok record without metrics and a record copied to another cell's file are
    corrupt: plan, status and collect name them, collect refuses to write, and a re-run replaces them."""
    bench = make_registry(env, "{steps: 1, sleep_s: 0.01}", methods="[dino, mae]", epochs="[10, 20]")
    results = env / "results"
    assert sdd(bench, "submit", "--suite", "probe", "--cluster", "inline", "--results", str(results)) == 0
    runs = results / "probe" / "runs" / "probe" / "imagenet"
    (runs / "dino" / "ep0010.json").write_text('{"status": "ok", "metr')
    rec = json.loads((runs / "dino" / "ep0020.json").read_text())
    (runs / "dino" / "ep0020.json").write_text(json.dumps({**rec, "metrics": {}}))
    shutil.copy(runs / "mae" / "ep0010.json", runs / "mae" / "ep0020.json")
    capsys.readouterr()
    assert sdd(bench, "plan", "--suite", "probe", "--results", str(results)) == 0
    out = capsys.readouterr().out
    assert "3 corrupt record(s)" in out and "not valid JSON" in out and "holds no metrics" in out
    assert "epoch 10 (file location says 20)" in out
    assert sdd(bench, "status", "--suite", "probe", "--results", str(results)) == 0
    out = capsys.readouterr().out
    assert (
        "3 corrupt record(s)" in out and next(x for x in out.splitlines() if x.startswith("total")).split()[-2] == "3"
    )
    before = (results / "probe" / "results.csv").exists()
    assert sdd(bench, "collect", "--suite", "probe", "--results", str(results)) == 1
    assert "3 record(s) of suite 'probe' are corrupt" in capsys.readouterr().err
    assert (results / "probe" / "results.csv").exists() == before
    assert sdd(bench, "submit", "--suite", "probe", "--cluster", "inline", "--results", str(results)) == 0
    assert "submitted 3" in capsys.readouterr().out
    check_records(results, bench, steps=1)
    assert sdd(bench, "collect", "--suite", "probe", "--results", str(results)) == 0


def test_dry_run_submits_nothing(env, capsys):
    bench = make_registry(env, "{steps: 2, sleep_s: 0.05}")
    results = env / "results"
    assert sdd(bench, "submit", "--suite", "probe", "--cluster", "example", "--results", str(results), "--dry-run") == 0
    out = capsys.readouterr().out
    assert "would submit 9" in out and "(dry run)" in out and not (results / "probe" / "ledger.json").exists()


WRITER = r"""
import sys, json
from harness.records import write_record
path = sys.argv[1]
i = 0
while True:
    i += 1
    write_record(path, {"status": "ok", "i": i, "payload": "x" * 200000, "metrics": {"i": i}})
"""


def test_sigkill_while_writing_leaves_previous_record_or_none(tmp_path):
    path = tmp_path / "runs" / "ep0001.json"
    for trial in range(12):
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
        time.sleep(0.05 + 0.03 * trial)
        p.send_signal(signal.SIGKILL)
        p.wait()
        if path.exists():
            rec = json.loads(path.read_text())  # never partial: always parses
            assert rec["status"] == "ok" and len(rec["payload"]) == 200000
    assert records.read_record(path) is not None


@pytest.mark.slurm
def test_preemption_signal_checkpoints_requeues_and_resumes(slurm_cluster, env):
    """SIGTERM + USR2, as Slurm preempts: submitit calls CellJob.checkpoint, the task is requeued,
    and the job continues from the progress it saved."""
    bench = make_registry(env, "{steps: 24, sleep_s: 0.5}", methods="[dino]", epochs="[10]")
    results = env / "results"
    sdd(bench, "submit", "--suite", "probe", "--cluster", "local-test", "--results", str(results))
    entry = ledger.read_ledger(results, "probe")["cells"]["probe/imagenet/dino/ep0010"]
    work = probe_state(bench, results)
    wait_for(lambda: work.is_file() and json.loads(work.read_text())["step"] >= 3, what="some progress")
    logs = [Path(entry["log_err"]), Path(entry["log_out"])]

    def said(text):
        return lambda: any(p.is_file() and text in p.read_text() for p in logs)

    # one signal after the other has been handled, as Slurm spaces them (sent back to back, on a loaded
    # machine the second could reach the step before the first was handled, and the step was cancelled)
    subprocess.run(["scancel", entry["job_id"], "--signal", "SIGTERM"], check=True)
    wait_for(said("Bypassing signal SIGTERM"), timeout=60, what="the job to bypass SIGTERM")
    subprocess.run(["scancel", entry["job_id"], "--signal", "USR2"], check=True)
    wait_for(all_done(bench, results), timeout=240, what="the preempted job")
    rec = json.loads((results / "probe/runs/probe/imagenet/dino/ep0010.json").read_text())
    assert rec["runs"] == 2 and rec["resumed_from_step"] >= 3
    assert "Calling checkpoint method" in Path(entry["log_err"]).read_text() + Path(entry["log_out"]).read_text()


@pytest.mark.slurm
def test_groups_larger_than_the_array_limit_are_split(slurm_cluster, env):
    from harness.clusters import load_cluster
    from harness.launch import submit

    bench = make_registry(env, "{steps: 1, sleep_s: 0.05}")
    results = env / "results"
    profile = load_cluster("local-test").model_copy(update={"array_limit": 4})
    s = submit(load_registry(bench), "probe", profile, results, progress=False)
    assert [a["cells"] for a in s["arrays"]] == [4, 4, 1]
    assert len({jid for a in s["arrays"] for jid in a["job_ids"]}) == 3
    wait_for(all_done(bench, results), what="three arrays")
    check_records(results, bench, steps=1)
