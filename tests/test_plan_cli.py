"""`sdd plan` on the real registry, cell identity and skip-done, and the other CLI commands."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import records
from harness.cli import main
from harness.plan import build_plan, cell_states
from harness.registry import load_registry

ROOT = Path(__file__).resolve().parents[1]


def expected_sdd_counts():
    """Cells per protocol computed straight from the YAML files (not through harness.plan)."""
    suite = yaml.safe_load((ROOT / "benchmarks/suites/sdd.yaml").read_text())
    n_epochs = {}
    for m in suite["methods"]:
        eps = yaml.safe_load((ROOT / f"benchmarks/methods/{m}.yaml").read_text())["checkpoint"]["epochs"]
        n_epochs[m] = len(range(eps["start"], eps["stop"] + 1, eps["step"])) if isinstance(eps, dict) else len(eps)
    return {e["protocol"]: len(e["datasets"]) * sum(n_epochs.values()) for e in suite["grid"]}, len(suite["methods"])


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=ROOT)


def test_sdd_plan_prints_the_grid_with_counts(tmp_path):
    counts, n_methods = expected_sdd_counts()
    assert n_methods == 16 and counts == {"metrics": 1170, "linear": 4680}
    out = run_cli("plan", "--suite", "sdd", "--results", str(tmp_path))
    assert out.returncode == 0, out.stderr
    for proto, n in counts.items():
        row = next(x for x in out.stdout.splitlines() if x.startswith(proto + " "))
        cols = row.split()
        assert cols[3] == f"{n:,}" and cols[7] == f"{n:,}"  # cells, todo
    total = next(x for x in out.stdout.splitlines() if x.startswith("total"))
    assert f"{sum(counts.values()):,}" in total
    gpu = 1170 * 0.025 + 4680 * 2.43
    assert f"{gpu:,.2f}" in total
    assert re.search(r"^dino\s+10\.\.800 step 10 \(80\)\s+400", out.stdout, re.M)
    assert re.search(r"^densecl\s+10\.\.200 step 10 \(20\)\s+100", out.stdout, re.M)


def test_plan_filters_and_cell_listing(tmp_path):
    out = run_cli(
        "plan", "--suite", "sdd", "--protocol", "metrics", "--method", "vicregl", "--cells", "--results", str(tmp_path)
    )
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 32 and lines[0].split() == ["state", "cell", "config", "why"]
    assert lines[2].startswith("todo   metrics/imagenet/vicregl/ep0010")
    bad = run_cli("plan", "--suite", "sdd", "--method", "vicreg1")
    assert bad.returncode == 2 and "unknown method 'vicreg1'" in bad.stderr and "Did you mean" in bad.stderr


def test_done_failed_stale_states(tmp_path, registry):
    cells = build_plan(registry, "sdd", protocols=["metrics"], methods=["dino"])
    a, b, c = cells[:3]

    def ident(x):
        return {"suite": x.suite, "protocol": x.protocol, "dataset": x.dataset, "method": x.method, "epoch": x.epoch}

    records.write_record(
        a.record_path(tmp_path), {**ident(a), "status": "ok", "config_hash": a.config_hash, "metrics": {"dse": 1.0}}
    )
    records.write_record(
        b.record_path(tmp_path), {**ident(b), "status": "failed", "config_hash": b.config_hash, "error": "x"}
    )
    records.write_record(
        c.record_path(tmp_path), {**ident(c), "status": "ok", "config_hash": "0" * 16, "metrics": {"dse": 1.0}}
    )
    states = cell_states(cells, tmp_path)
    assert [states[x.id] for x in (a, b, c)] == ["done", "failed", "stale"]
    assert list(states.values()).count("todo") == len(cells) - 3
    assert a.record_path(tmp_path) == tmp_path / "sdd/runs/metrics/imagenet/dino/ep0010.json"
    out = run_cli("plan", "--suite", "sdd", "--method", "dino", "--results", str(tmp_path))
    row = next(x for x in out.stdout.splitlines() if x.startswith("metrics "))
    assert row.split()[4:8] == ["1", "1", "1", "77"]


def test_changing_a_hyper_parameter_reruns_exactly_its_cells(tmp_path, registry):
    before = {c.id: c.config_hash for c in build_plan(registry, "sdd")}
    bench = tmp_path / "b"
    shutil.copytree(ROOT / "benchmarks", bench)
    p = bench / "protocols" / "linear.yaml"
    p.write_text(p.read_text().replace("iters: 40000", "iters: 20000"))
    m = bench / "methods" / "dino.yaml"  # documentation fields do not change identities
    m.write_text(m.read_text().replace("Teacher weights", "The teacher weights"))
    after = {c.id: c.config_hash for c in build_plan(load_registry(bench), "sdd")}
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {k for k in before if k.startswith("linear/")}


def test_records_are_written_atomically_and_a_torn_one_is_corrupt(tmp_path):
    path = tmp_path / "a" / "ep0001.json"
    records.write_record(path, {"status": "ok", "value": float("nan"), "n": 1, "metrics": {"x": 1}})
    records.write_record(path, {"status": "ok", "n": 2, "metrics": {"x": 1}})
    assert records.read_record(path)["n"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["ep0001.json"]
    path.write_text('{"status": "ok", "n"')  # a torn file is corrupt: never "no record", never done
    with pytest.raises(records.CorruptRecord, match="not valid JSON"):
        records.read_record(path)
    assert records.cell_state(path, "h")[0] == "corrupt"


def test_ls_validate_and_demo(capsys, monkeypatch):
    assert main(["ls", "methods"]) == 0
    out = capsys.readouterr().out
    n_methods = len(list((ROOT / "benchmarks" / "methods").glob("*.yaml")))
    n_datasets = len(list((ROOT / "benchmarks" / "datasets").glob("*.yaml")))
    assert "byol" in out and "resnet50_{epoch}.pth.tar" in out and len(out.splitlines()) == 2 + n_methods
    assert main(["ls", "datasets"]) == 0 and "coco_stuff164k" in capsys.readouterr().out
    assert main(["ls", "suites"]) == 0 and "sdd" in capsys.readouterr().out
    monkeypatch.delenv("SDD_CKPT_ROOT", raising=False)
    assert main(["validate"]) == 0
    out = capsys.readouterr().out
    assert f"OK ({n_methods} methods, {n_datasets} datasets" in out and "SDD_CKPT_ROOT" in out
    assert main(["validate", "--paths", "--strict"]) == 1
    assert "env var unset: SDD_CKPT_ROOT" in capsys.readouterr().out


def test_validate_reports_a_broken_registry(tmp_path):
    bench = tmp_path / "b"
    shutil.copytree(ROOT / "benchmarks", bench)
    (bench / "methods" / "dino.yaml").write_text(
        (bench / "methods" / "dino.yaml").read_text().replace("arch:", "archh:")
    )
    out = run_cli("--registry", str(bench), "validate")
    assert out.returncode == 2
    assert "dino.yaml:6: archh: unknown key 'archh'" in out.stderr and "Did you mean 'arch'?" in out.stderr
