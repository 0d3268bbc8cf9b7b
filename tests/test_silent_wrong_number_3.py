"""No silent wrong number, round 3 (issue 30): around the cells. Files are written through one atomic
writer (a full disk or an interrupt leaves the previous files, a multi-file write is all or nothing, a
reader refuses a file that is not what its writer recorded), writers of a suite hold its lock, writes never
leave the suite's own folder, the monitor's history is its records, and a failure is reported for its own
cause. Each class is tried with the issue's trigger and another of the same class. (Caches, imports' parsing,
checkpoint metadata and suite grids: tests/test_caches_and_grids.py, tests/test_import_parsing.py,
tests/test_checkpoint_metadata.py.)"""

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from tests import worlds

ROOT = Path(__file__).resolve().parents[1]


def child_env() -> dict:
    """This process's environment (as the test's monkeypatch left it) for a child `sdd`."""
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def sdd_process(*args, limit_bytes: int | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`sdd ARGS` in a process of its own; `limit_bytes`: the largest file it may write (`ulimit -f`)."""

    def limit():
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run(
        [sys.executable, "-m", "harness", *map(str, args)],
        capture_output=True,
        text=True,
        env={**child_env(), **(env or {})},
        preexec_fn=limit,
        timeout=300,
    )


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (but the suite folders' owner markers) and its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".sdd-suite"
    }


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.tmp")]


@pytest.fixture
def syn(tmp_path):
    """A made-up study's records, collected and tabulated once: (results root, suite folder)."""
    worlds.synthetic_suite(tmp_path, "syn", methods=3, epochs=8)
    assert main(["collect", "--suite", "syn", "--results", str(tmp_path)]) == 0
    assert main(["tables", "--suite", "syn", "--results", str(tmp_path)]) == 0
    return tmp_path, tmp_path / "syn"


# ------------------------------------------------------------------------------ 1. files written in place


def test_collect_on_a_full_disk_leaves_the_previous_results_and_says_so(syn):
    results, d = syn
    before = tree_bytes(d)
    worlds.synthetic_suite(results, "syn", methods=6, epochs=8, seed=1)  # more records: a larger results.csv
    got = sdd_process("collect", "--suite", "syn", "--results", results, limit_bytes=len(before["results.csv"]) // 2)
    assert got.returncode != 0 and "Traceback" not in got.stderr
    assert "results.csv" in got.stderr and "full" in got.stderr
    after = tree_bytes(d)
    assert after["results.csv"] == before["results.csv"] and after["collected.json"] == before["collected.json"]
    assert not temporaries(d)
    # the tables still build, from the complete previous table
    assert main(["tables", "--suite", "syn", "--results", str(results)]) == 0
    n = len(pd.read_csv(d / "results.csv"))
    assert f"{n} records" in (d / "REPORT.md").read_text() and n < len(list((d / "runs").rglob("ep*.json")))


def test_a_results_csv_cut_short_or_changed_is_never_tabulated(syn, capsys):
    results, d = syn
    tables = tree_bytes(d / "tables")
    csv = d / "results.csv"
    text = csv.read_bytes()
    csv.write_bytes(text[: len(text) * 2 // 3])  # cut mid-row, as a full disk under another tool leaves it
    assert main(["tables", "--suite", "syn", "--results", str(results)]) == 1
    err = capsys.readouterr().err
    assert f"{csv} is not what `sdd collect` wrote" in err and "sdd collect --suite syn" in err
    assert tree_bytes(d / "tables") == tables
    # another trigger of the class: the spectra file changed behind collect's back
    csv.write_bytes(text)
    (d / "spectra.csv").write_text("method,epoch,kind,index,log_sv\nm000,1,log_sv,0,1.0\n")
    assert main(["tables", "--suite", "syn", "--results", str(results)]) == 1
    assert "spectra.csv is not what `sdd collect` wrote" in capsys.readouterr().err


def test_a_tables_run_on_a_full_disk_changes_no_table(syn):
    results, d = syn
    before = {**tree_bytes(d / "tables"), "REPORT.md": (d / "REPORT.md").read_bytes()}
    worlds.synthetic_suite(results, "syn", methods=3, epochs=8, seed=7)  # other numbers: every table changes
    assert main(["collect", "--suite", "syn", "--results", str(results)]) == 0
    biggest = max(len(b) for b in before.values())
    got = sdd_process("tables", "--suite", "syn", "--results", results, limit_bytes=biggest // 2)
    assert got.returncode != 0 and "Traceback" not in got.stderr and "full" in got.stderr
    assert {**tree_bytes(d / "tables"), "REPORT.md": (d / "REPORT.md").read_bytes()} == before
    assert not temporaries(d)
    assert main(["tables", "--suite", "syn", "--results", str(results)]) == 0  # with room: all of them change
    after = tree_bytes(d / "tables")
    assert after["kendall_tau_per_method.md"] != before["kendall_tau_per_method.md"]


def test_a_multi_file_write_that_dies_half_way_is_finished_by_the_next_writer(tmp_path, monkeypatch):
    from harness import atomic
    from harness.suitedir import suite_lock

    d = tmp_path / "s"
    d.mkdir()
    (d / "a.json").write_text('{"old": 1}')
    real_apply = atomic._apply

    def dies_after_one_rename(root, plan):
        real_apply(root, {"replace": plan["replace"][:1], "remove": []})
        raise SystemExit("killed")  # the process ends between two renames; its journal stays

    monkeypatch.setattr(atomic, "_apply", dies_after_one_rename)
    files = atomic.FileSet(d)
    files.json(d / "a.json", {"new": 1})
    files.json(d / "b.json", {"new": 2})
    with pytest.raises(SystemExit):
        files.commit()
    monkeypatch.setattr(atomic, "_apply", real_apply)
    assert json.loads((d / "a.json").read_text()) == {"new": 1} and not (d / "b.json").exists()
    assert list(d.glob(atomic.JOURNAL_GLOB))
    with suite_lock(tmp_path, "s", "test"):  # the next writer of the suite finishes the commit
        pass
    assert json.loads((d / "b.json").read_text()) == {"new": 2} and not list(d.glob(atomic.JOURNAL_GLOB))


# ------------------------------------------------------------------------------ imports: all or nothing


@pytest.fixture
def imp(tmp_path, monkeypatch):
    """A registry whose suite `imp` holds 2 methods x 24 epochs of metrics, and two files of numbers for
    all 48 cells: DSE in one, W2 in the other."""
    epochs = list(range(10, 250, 10))
    bench = worlds.registry_with_suite(
        tmp_path,
        monkeypatch,
        "imp",
        f"name: imp\ntitle: imported\nmethods: [dino, mocov3]\ngrid:\n"
        f"  - {{protocol: metrics, datasets: [imagenet], epochs: {epochs}}}\n",
    )
    rows = [(m, e) for m in ("dino", "mocov3") for e in epochs]
    dse, w2 = tmp_path / "dse.csv", tmp_path / "w2.csv"
    dse.write_text("method,epoch,dse\n" + "".join(f"{m},{e},{e / 100:.2f}\n" for m, e in rows))
    w2.write_text("method,epoch,w2\n" + "".join(f"{m},{e},{1 - e / 1000:.3f}\n" for m, e in rows))
    return bench, tmp_path / "results", dse, w2


def imported_metrics(results: Path) -> dict[str, set]:
    out = {}
    for f in sorted((results / "imp" / "imported").rglob("ep*.json")):
        rec = json.loads(f.read_text())
        out[f"{rec['method']}/{rec['epoch']}"] = set(rec["metrics"])
    return out


def test_an_interrupted_import_writes_nothing_and_the_same_command_then_imports_all(imp, monkeypatch, capsys):
    from harness import atomic

    bench, results, dse, _ = imp
    calls = {"n": 0}
    real = atomic.FileSet.bytes

    def interrupted(self, path, data):
        calls["n"] += 1
        if calls["n"] == 30:
            raise KeyboardInterrupt
        return real(self, path, data)

    monkeypatch.setattr(atomic.FileSet, "bytes", interrupted)
    assert main(["--registry", str(bench), "import", str(dse), "--suite", "imp"]) == 130
    out = capsys.readouterr().out
    assert "imported 48" not in out
    assert imported_metrics(results) == {} and not temporaries(results)
    monkeypatch.setattr(atomic.FileSet, "bytes", real)
    assert main(["--registry", str(bench), "import", str(dse), "--suite", "imp"]) == 0  # "run it again" works
    assert "imported 48 record(s)" in capsys.readouterr().out and len(imported_metrics(results)) == 48


def test_an_import_on_a_full_disk_writes_no_record(imp):
    bench, results, dse, _ = imp
    got = sdd_process("--registry", bench, "import", dse, "--suite", "imp", limit_bytes=700)
    assert got.returncode != 0 and "Traceback" not in got.stderr and "full" in got.stderr
    assert imported_metrics(results) == {} and not temporaries(results)


# ------------------------------------------------------------------------------ 2. writers that race


def run_overlapping(first, second, slow_down, monkeypatch) -> list:
    """`first()` and `second()` in two threads, `second` started while `first` is inside `slow_down` (a
    module attribute, a function: made to pause 1 s in the first thread), as two commands started together
    overlap. Returns their return values."""
    import threading

    module, name = slow_down
    real = getattr(module, name)
    inside = threading.Event()

    def paused(*args, **kwargs):
        out = real(*args, **kwargs)
        if threading.current_thread().name == "first":
            inside.set()
            time.sleep(1.0)
        return out

    monkeypatch.setattr(module, name, paused)
    got = {}
    a = threading.Thread(target=lambda: got.__setitem__("a", first()), name="first")
    b = threading.Thread(target=lambda: got.__setitem__("b", second()), name="second")
    a.start()
    assert inside.wait(60)
    b.start()
    a.join(120)
    b.join(120)
    return [got.get("a"), got.get("b")]


def test_two_imports_into_the_same_cells_at_once_keep_both_metrics(imp, monkeypatch):
    from harness import importer

    bench, results, dse, w2 = imp
    rcs = run_overlapping(  # the second import runs while the first has read the records and not yet written
        lambda: main(["--registry", str(bench), "import", str(dse), "--suite", "imp"]),
        lambda: main(["--registry", str(bench), "import", str(w2), "--suite", "imp"]),
        (importer, "_write_items"),
        monkeypatch,
    )
    assert rcs == [0, 0]
    got = imported_metrics(results)
    assert len(got) == 48 and all({"dse", "w2"} <= m for m in got.values()), got


def test_a_writer_waits_for_the_lock_and_names_its_holder(syn, capsys, monkeypatch):
    results, d = syn
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from harness.suitedir import suite_lock\n"
            f"with suite_lock({str(results)!r}, 'syn', 'sdd import my.csv --suite syn'):\n"
            "    print('held', flush=True); time.sleep(60)",
        ],
        env=child_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("SDD_LOCK_WAIT_S", "0.5")
        for cmd in ("collect", "tables"):
            assert main([cmd, "--suite", "syn", "--results", str(results)]) == 2
            err = capsys.readouterr().err
            assert "is being written by `sdd import my.csv --suite syn`" in err and f"PID {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
    assert main(["collect", "--suite", "syn", "--results", str(results)]) == 0  # released with its process


def test_two_submits_of_one_suite_started_together_run_each_cell_once(tmp_path, monkeypatch, capsys):
    from harness import launch, ledger
    from tests.test_slurm import make_registry

    bench = make_registry(tmp_path, "{steps: 2, sleep_s: 0.05}", methods="[dino, mae]", epochs="[10, 20]")
    results = tmp_path / "results"
    argv = ["--registry", str(bench), "submit", "--suite", "probe", "--cluster", "inline", "--results", str(results)]
    rcs = run_overlapping(lambda: main(argv), lambda: main(argv), (launch, "decide"), monkeypatch)
    assert rcs == [0, 0]
    logs = sorted((results / "probe" / "logs").rglob("ep*.log"))
    assert len(logs) == 4
    for log in logs:
        assert log.read_text().count("job finished") == 1, log
    led = ledger.read_ledger(results, "probe")["cells"]
    assert sorted(e["attempts"] for e in led.values()) == [1, 1, 1, 1]  # each claimed once


# ------------------------------------------------------------------------------ 7. paths into another suite


def test_a_suite_folder_linked_to_another_suites_is_refused_and_loses_nothing(tmp_path, capsys):
    from tests.test_slurm import make_registry

    bench = make_registry(tmp_path, "{steps: 1, sleep_s: 0.0}", methods="[dino]", epochs="[10]")
    (bench / "suites" / "other.yaml").write_text(
        (bench / "suites" / "probe.yaml").read_text().replace("name: probe", "name: other")
    )
    results = tmp_path / "results"
    sdd = ["--registry", str(bench)]
    assert main([*sdd, "submit", "--suite", "probe", "--cluster", "inline", "--results", str(results)]) == 0
    before = tree_bytes(results / "probe" / "runs")
    (results / "other").symlink_to(results / "probe")  # the whole folder
    for cmd in (["submit", "--cluster", "inline"], ["collect"]):
        assert main([*sdd, cmd[0], "--suite", "other", *cmd[1:], "--results", str(results)]) == 2
        err = capsys.readouterr().err
        assert "holds the results of suite 'probe', not of suite 'other'" in err and "nothing was written" in err
    (results / "other").unlink()
    (results / "other" / "runs").parent.mkdir()
    (results / "other" / "runs").symlink_to(results / "probe" / "runs")  # another trigger: only its runs/
    assert main([*sdd, "submit", "--suite", "other", "--cluster", "inline", "--results", str(results)]) == 2
    assert "holds the results of suite 'probe'" in capsys.readouterr().err
    assert tree_bytes(results / "probe" / "runs") == before


@pytest.fixture
def read_only(tmp_path):
    """A folder on a file system mounted read-only (as root: chmod does not stop root)."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root): the read-only results folder is not tried")
    yield mnt
    subprocess.run(["umount", str(mnt)], capture_output=True)


def test_a_read_only_results_folder_gives_messages_not_tracebacks(tmp_path, read_only, capsys):
    from tests.test_slurm import make_registry

    bench = make_registry(tmp_path, "{steps: 1, sleep_s: 0.0}", methods="[dino]", epochs="[10]")
    sdd = ["--registry", str(bench)]
    assert main([*sdd, "submit", "--suite", "probe", "--cluster", "inline", "--results", str(read_only)]) == 0
    assert main([*sdd, "collect", "--suite", "probe", "--results", str(read_only)]) == 0
    subprocess.run(["mount", "-o", "remount,ro", str(read_only)], check=True)
    capsys.readouterr()
    assert main([*sdd, "status", "--suite", "probe", "--results", str(read_only)]) == 0  # reads; says it cannot write
    out, err = capsys.readouterr()
    assert "note:" in err and "not writable" in err and "Traceback" not in err and "probe" in out
    for cmd in ("collect", "tables"):
        assert main([*sdd, cmd, "--suite", "probe", "--results", str(read_only)]) == 2
        err = capsys.readouterr().err
        assert str(read_only / "probe") in err and "not writable" in err and "SDD_RESULTS" in err


# ------------------------------------------------------------------------------ 8. the monitor's history


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """test_monitor's tiny world with five epochs: (registry, results root, model_at(seed) -> a trained model)."""
    import torch

    from harness.mini import generate
    from harness.registry import load_registry
    from tests.test_monitor import Trainee, train_a_little

    data = tmp_path / "data"
    generate.imagenet(data / "imagenet-1k", classes=4, train=8, val=2)
    bench = worlds.tiny_registry(tmp_path, data / "imagenet-1k", tmp_path / "ck", num_images=16, lidar_images=4)
    m = bench / "methods" / "tinyvit.yaml"
    m.write_text(m.read_text().replace("epochs: [1, 2]", "epochs: [1, 2, 3, 4, 5]"))
    monkeypatch.setenv("SDD_BENCHMARKS", str(bench))

    def model_at(seed: int):
        torch.manual_seed(seed)
        model = Trainee()
        train_a_little(model, seed=seed)
        return model

    return load_registry(bench), tmp_path / "results", model_at


RULE = {"keep_prefix": "backbone."}


def test_the_monitors_history_is_its_records_across_resumes_and_restarts(tiny):
    from harness.analysis.tables import selections
    from harness.collect import collect
    from harness.monitor import DSEMonitor

    reg, results, model_at = tiny
    mon = DSEMonitor("tiny", "tinyvit", rule=RULE, registry=reg, results=results)
    for epoch in (1, 2, 3, 4):
        mon.step(model_at(epoch), epoch)
    for epoch in (3, 4):  # a resume from epoch 2 re-scores 3 and 4 with another model
        mon.step(model_at(epoch + 10), epoch)
    by_records = selections(collect(results, "tiny").table)["tinyvit"]
    assert sorted(mon.history) == [1, 2, 3, 4] and mon.selected() == by_records
    again = DSEMonitor("tiny", "tinyvit", rule=RULE, registry=reg, results=results)  # a restart knows the records
    assert again.selected() == by_records
    again.step(model_at(5), 5)
    assert sorted(again.history) == [1, 2, 3, 4, 5]
    assert again.selected() == selections(collect(results, "tiny").table)["tinyvit"]


def test_a_monitor_never_mixes_its_run_with_records_computed_from_files(tiny):
    from harness import records
    from harness.monitor import DSEMonitor, MonitorError

    reg, results, model_at = tiny
    mon = DSEMonitor("tiny", "tinyvit", rule=RULE, registry=reg, results=results)
    mon.step(model_at(1), 1)
    path = next((results / "tiny" / "runs").rglob("ep0001.json"))
    rec = json.loads(path.read_text())
    rec.pop("source")
    rec["inputs"]["checkpoint"] = {"path": "/ckpt/ep1.pth", "size": 10, "sha256": "ab" * 32}  # from a file
    records.write_record(path, rec)
    before = path.read_bytes()
    with pytest.raises(MonitorError, match="computed from checkpoint files .*replace=True"):
        DSEMonitor("tiny", "tinyvit", rule=RULE, registry=reg, results=results)
    assert path.read_bytes() == before
    replacing = DSEMonitor("tiny", "tinyvit", rule=RULE, registry=reg, results=results, replace=True)
    replacing.step(model_at(1), 1)
    assert json.loads(path.read_text())["source"] == "live"


def test_submit_never_replaces_a_live_record(tiny, capsys):
    """A monitored epoch has no checkpoint file: a later submit leaves its record (not 'checkpoint not found');
    --replace-live recomputes only where a checkpoint file exists."""
    from harness.clusters import load_cluster
    from harness.launch import submit
    from harness.monitor import DSEMonitor
    from harness.plan import build_plan

    reg, results, model_at = tiny
    mon = DSEMonitor("tiny", "tinyvit", rule=RULE, registry=reg, results=results)
    mon.step(model_at(1), 1)
    cells = [c for c in build_plan(reg, "tiny") if c.epoch == 1 and c.protocol == mon.protocol]
    path = cells[0].record_path(results)
    before = path.read_bytes()
    for replace_live in (False, True):
        s = submit(
            reg,
            "tiny",
            load_cluster("inline"),
            results,
            protocols=[mon.protocol],
            methods=["tinyvit"],
            replace_live=replace_live,
        )
        assert cells[0].id not in s["submitted"]
        assert path.read_bytes() == before
    assert str(cells[0].state(results)[0]) == "live"


# ------------------------------------------------------------------------------ 9. causes reported wrong


def test_a_cell_that_failed_for_want_of_a_gpu_is_failed_for_that_reason(tmp_path, capsys, monkeypatch):
    """(The submit on this machine is refused first: tests/test_distributed.py. Here the cell ran where no GPU
    was, as on a Slurm node of the wrong partition, while its checkpoint is there.)"""
    from harness.jobs import execute
    from harness.plan import build_plan
    from harness.registry import load_registry
    from tests.test_slurm import make_registry

    bench = make_registry(tmp_path, "{steps: 1, sleep_s: 0.0}", methods="[dino]", epochs="[10]")
    p = bench / "protocols" / "probe.yaml"
    p.write_text(p.read_text().replace("gpus: 0", "gpus: 1"))
    results = tmp_path / "results"
    ck = tmp_path / "ck" / "dino"
    ck.mkdir(parents=True)
    (ck / "checkpoint0010.pth").write_bytes(b"x")  # the checkpoint is there: it is not the cause
    monkeypatch.setenv("SDD_CKPT_ROOT", str(tmp_path / "ck"))
    reg = load_registry(bench)
    execute(build_plan(reg, "probe")[0], results, registry=reg)
    assert main(["--registry", str(bench), "status", "--suite", "probe", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "stale" not in out and "checkpoint was not there" not in out
    assert "1 failed cell(s)" in out and "DeviceError" in out


def test_a_tables_run_removes_the_tables_of_a_protocol_that_left_and_names_failed_cells(syn):
    results, d = syn
    (d / "tables" / "sdd__linear_old.md").write_text("an old protocol's table\n")
    rec_path = next((d / "runs").rglob("ep0030.json"))
    rec = json.loads(rec_path.read_text())
    rec.update(status="failed", error="DeviceError: the protocol asks for 1 GPU; this machine shows none")
    rec.pop("metrics")
    rec_path.write_text(json.dumps(rec))
    assert main(["collect", "--suite", "syn", "--results", str(results)]) == 0
    assert main(["tables", "--suite", "syn", "--results", str(results)]) == 0
    assert not (d / "tables" / "sdd__linear_old.md").exists()
    report = (d / "REPORT.md").read_text()
    assert "## Failed cells (1" in report and "DeviceError: the protocol asks for 1 GPU" in report
    assert f"/{rec['method']}/ep0030" in report
    assert pd.read_csv(d / "results.csv")["status"].eq("failed").sum() == 1


def test_a_resume_folder_holds_its_data_and_refuses_state_trained_on_other_data(tmp_path):
    from harness.jobs import claim_work_dir

    work = tmp_path / "work"
    mine = {"cell": "c", "config_hash": "h", "checkpoint": "k", "data": "d1"}
    claim_work_dir(work, mine)
    claim_work_dir(work, mine)  # the same run resumes
    with pytest.raises(RuntimeError, match="data: 'd1' there, 'd2' here"):
        claim_work_dir(work, {**mine, "data": "d2"})
    older = tmp_path / "older"  # a folder claimed before the data was part of a run's identity
    claim_work_dir(older, {k: v for k, v in mine.items() if k != "data"})
    claim_work_dir(older, mine)
