"""The `micro` suite end to end: mini world, tiny pre-training, submit on the local executor and on
the real local Slurm, collect, tables and figures; skip-done and single-cell re-runs; preflight."""

import json
import math

import pandas as pd
import pytest

from harness.analysis import build_figures, build_tables
from harness.cli import main
from harness.launch import cell_statuses
from harness.registry import load_registry


@pytest.fixture(scope="module")
def mini(mini_world, tmp_path_factory):
    """The session's mini world (tests/conftest.py), with this module's own submitit logs and cache."""
    own = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SDD_MINI_ROOT", str(mini_world))
        mp.setenv("SDD_SUBMITIT", str(own / "submitit"))
        mp.setenv("SDD_CACHE", str(own / "cache"))
        yield mini_world


def wait_done(reg, suite, results, timeout=600):
    import time

    t = time.time()
    while time.time() - t < timeout:
        rows = cell_statuses(reg, suite, results)
        if not any(r["state"] in ("running", "pending") for r in rows):
            return {r["cell"]: r for r in rows}
        time.sleep(2)
    raise AssertionError("suite did not finish")


def check_suite(reg, results, capsys, cells: int = 18, registry: list[str] = ()):
    """Every cell of the micro suite done (18 = 2 methods x (4 metrics + 4 linear + 1 davis), or `cells`),
    collected and tabulated with numbers in their domains."""
    rows = wait_done(reg, "micro", results)
    assert all(r["state"] == "done" for r in rows.values()), [r for r in rows.values() if r["state"] != "done"]
    assert len(rows) == cells
    assert main([*registry, "collect", "--suite", "micro", "--results", str(results)]) == 0
    table, tables, _ = build_tables(results / "micro", protocol="linear_mini")
    figures = build_figures(results / "micro", tables, protocol="linear_mini")
    assert any(f.name == "kendall_tau_heatmap.png" for f in figures)
    lin = table[table["kind"] == "linear"]
    assert ((lin["mIoU"] >= 0) & (lin["mIoU"] <= 100)).all()
    assert len(lin) == sum(c.startswith("linear_mini/") for c in rows)
    met = table[table["kind"] == "metrics"]
    assert all(math.isfinite(v) for v in met["dse"]) and all(0 < v <= 1 for v in met["dse_dim"])
    tau = {t.name: t for t in tables}["kendall_tau_per_method"].frame["tau"].dropna()
    assert len(tau) and ((tau >= -1) & (tau <= 1)).all()
    davis = table[table["kind"] == "davis"]
    assert ((davis["JF_mean"] >= 0) & (davis["JF_mean"] <= 1)).all()
    from harness.analysis import write_report

    report = write_report(results / "micro", table, tables, figures).read_text()
    assert "label-free metrics from the `metrics_mini` protocol" in report  # the protocol that ran, by name


def test_micro_suite_on_the_local_executor(mini, micro_run, tmp_path, capsys):
    from tests.conftest import copy_results

    ran, rc, _, err = micro_run  # `sdd submit --suite micro --cluster local`, once for the session
    assert rc == 0
    results = copy_results(ran, tmp_path / "results")
    reg = load_registry()
    # not a terminal: plain lines saying what it waits for, no bar frames
    assert "suite micro: 18 of 18 cells finished, 0 failed" in err and "\r" not in err, err[-2000:]
    check_suite(reg, results, capsys)
    capsys.readouterr()
    # everything done: a second submit submits nothing
    main(["submit", "--suite", "micro", "--cluster", "local", "--results", str(results)])
    assert "skipped: 18 done; submitted 0" in capsys.readouterr().out
    # deleting one record re-runs exactly that cell
    victim = results / "micro/runs/linear_mini/ade20k/mini_mae/ep0003.json"
    before = json.loads(victim.read_text())["metrics"]["mIoU"]
    victim.unlink()
    main(["submit", "--suite", "micro", "--cluster", "local", "--results", str(results), "--dry-run"])
    assert "skipped: 17 done; would submit 1" in capsys.readouterr().out
    main(["submit", "--suite", "micro", "--cluster", "local", "--results", str(results)])
    assert "submitted 1" in capsys.readouterr().out
    wait_done(reg, "micro", results)
    assert json.loads(victim.read_text())["metrics"]["mIoU"] == pytest.approx(before, abs=1e-6)  # deterministic


def test_guided_grid_on_the_micro_world(mini, tmp_path, capsys):
    results = tmp_path / "results"
    main(["plan", "--suite", "micro", "--guided", "--results", str(results)])
    out = capsys.readouterr().out
    assert "guided grid: 8 cells now" in out and "downstream cells wait" in out
    main(["submit", "--suite", "micro", "--cluster", "inline", "--results", str(results), "--guided"])
    main(["plan", "--suite", "micro", "--guided", "--results", str(results)])
    out = capsys.readouterr().out
    assert "DSE top-3 epochs" in out and "wait" not in out.split("guided grid:")[1]
    from harness.plan import build_plan, guided

    reg = load_registry()
    cells, waiting, selected = guided(reg, build_plan(reg, "micro"), results)
    assert not waiting and set(selected) == {"mini_dino", "mini_mae"}
    for m, sel in selected.items():
        lin = {c.epoch for c in cells if c.method == m and c.protocol == "linear_mini"}
        assert lin == set(sel) | {4} and len(lin) <= 4
    # the tables' model selection (what a full grid reports) picks the same checkpoints as the planner
    from harness.analysis.tables import selections
    from harness.collect import write_collected

    write_collected(reg, "micro", results)
    assert selections(pd.read_csv(results / "micro" / "results.csv")) == selected


@pytest.mark.slurm
def test_reproduce_micro_on_the_real_local_slurm(slurm_cluster, mini, tmp_path, capsys):
    """The micro suite's grid, smaller, through `sdd reproduce` on the real Slurm: every protocol kind of it
    and two checkpoints of each, as job arrays (all 18 cells run on the local executor above; here the
    Slurm path is what is under test, and 18 cells of it cost 160 s)."""
    import shutil
    from pathlib import Path

    bench = tmp_path / "bench"
    shutil.copytree(Path(__file__).resolve().parents[1] / "benchmarks", bench)
    suite = bench / "suites" / "micro.yaml"
    text = suite.read_text().replace("methods: [mini_dino, mini_mae]", "methods: [mini_dino]")
    suite.write_text(text.replace("epochs: [1, 2, 3, 4]", "epochs: [3, 4]"))
    results = tmp_path / "results"
    sdd = ["--registry", str(bench)]
    assert main([*sdd, "reproduce", "--suite", "micro", "--cluster", "local-test", "--results", str(results)]) == 0
    printed = capsys.readouterr().out
    assert "preflight: every dataset and checkpoint" in printed and "submitted 5" in printed
    check_suite(load_registry(bench), results, capsys, cells=5, registry=sdd)
    led = json.loads((results / "micro" / "ledger.json").read_text())["cells"]
    assert all(e["executor"] == "slurm" for e in led.values())


def test_the_mini_world_is_a_world_of_its_own_without_any_variable(mini, tmp_path, capsys, monkeypatch):
    """After the demo made it, the mini world validates and plans with no variable set (its suites' data_root,
    the mini methods under <results>/.mini), and a user's own suite on its datasets works the same way."""
    import shutil

    from harness.registry import ROOT

    for var in ("SDD_MINI_ROOT", "SDD_DATA_ROOT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SDD_RESULTS", str(mini.parent))  # the results root the demo wrote under
    assert main(["validate", "--suite", "micro"]) == 0
    assert "every dataset split and checkpoint file is in place" in capsys.readouterr().out
    assert main(["plan", "--suite", "micro"]) == 0
    bench = tmp_path / "bench"
    shutil.copytree(ROOT / "benchmarks", bench)
    (bench / "suites" / "own.yaml").write_text(
        "name: own\ntitle: my suite on the mini datasets\nmethods: [mini_dino]\n"
        "data_root: ${SDD_MINI_ROOT:-${SDD_RESULTS:-results}/.mini}/data\n"
        "grid:\n  - {protocol: metrics_mini, datasets: [imagenet], epochs: [1, 2]}\n"
        "  - {protocol: linear_mini, datasets: [ade20k], epochs: [2]}\n"
    )
    assert main(["--registry", str(bench), "validate", "--suite", "own"]) == 0
    monkeypatch.setenv("SDD_DATA_ROOT", str(tmp_path / "my_real_data"))  # a user's own data root: no matter
    assert main(["--registry", str(bench), "validate", "--suite", "own"]) == 0


def test_preflight_lists_what_is_missing_and_submits_nothing(mini, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SDD_MINI_ROOT", str(tmp_path / "nowhere"))  # the micro suite's data_root and checkpoints
    results = tmp_path / "results"
    assert main(["reproduce", "--suite", "micro", "--cluster", "local", "--results", str(results)]) == 1
    err = capsys.readouterr().err
    assert "problem(s) before anything is submitted" in err and "does not exist" in err
    assert f"SDD_MINI_ROOT={tmp_path / 'nowhere'}" in err  # the value the path came from is shown
    assert not (results / "micro").exists()
