"""`sdd import` of numbers the suite does not produce (issue 34, point 3): an mIoU of a probe the suite does
not run goes under that protocol of the registry, marked as outside the suite and kept apart in the tables;
a protocol chosen by kind is said; `--allow-outside-grid` also admits an epoch the method file does not list."""

import json
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from harness.plan import build_plan
from harness.registry import load_registry
from tests import worlds

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = [10, 20, 30, 40, 50]
OWN_MIOU = [40.0, 45.0, 50.0, 48.0, 44.0]  # "from my own earlier probe" (the full `linear` recipe): best 50 at 30
MINI_MIOU = [20.0, 22.0, 24.0, 26.0, 28.0]  # the suite's own linear_mini: best = last = 28


@pytest.fixture
def bench(tmp_path, monkeypatch):
    return worlds.registry_with_suite(
        tmp_path,
        monkeypatch,
        "own",
        "name: own\ntitle: own\nmethods: [dino]\ngrid:\n"
        "  - {protocol: metrics, datasets: [imagenet], epochs: [10, 20, 30, 40, 50]}\n"
        "  - {protocol: linear_mini, datasets: [voc12_aug], epochs: [10, 20, 30, 40, 50]}\n",
    )


def sdd(bench, *args):
    return main(["--registry", str(bench), *args])


def miou_csv(path: Path, values, epochs=EPOCHS) -> Path:
    path.write_text(
        "method,epoch,dataset,mIoU\n" + "".join(f"dino,{e},voc12_aug,{v}\n" for e, v in zip(epochs, values))
    )
    return path


def dse_csv(path: Path) -> Path:
    rows = [f"dino,{e},{i + 1}.0,{1.0 + i},0.5,0.5,0.3" for i, e in enumerate(EPOCHS)]
    path.write_text("method,epoch,dse,dse_inter,dse_intra_image,dse_intra_batch,dse_dim\n" + "\n".join(rows) + "\n")
    return path


def table(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def mmseg_run(root: Path, miou: float) -> Path:
    d = root / "20250101_000000" / "vis_data"
    d.mkdir(parents=True)
    (d / "scalars.json").write_text(json.dumps({"aAcc": 80.0, "mIoU": miou, "mAcc": 50.0, "step": 40000}) + "\n")
    return root


def imported(tmp_path, protocol: str, epoch: int) -> Path:
    return tmp_path / "results" / "own" / "imported" / protocol / "voc12_aug" / "dino" / f"ep{epoch:04d}.json"


def test_an_miou_of_a_probe_the_suite_does_not_run_is_kept_apart_and_marked(bench, tmp_path, capsys):
    assert sdd(bench, "import", str(dse_csv(tmp_path / "dse.csv")), "--suite", "own") == 0
    own = miou_csv(tmp_path / "own.csv", OWN_MIOU)
    assert sdd(bench, "import", str(own), "--suite", "own", "--protocol", "linear") == 0
    out = capsys.readouterr().out
    assert "linear/voc12_aug/dino: epochs 10..50" in out
    assert "protocol linear is not run by suite own: recorded as outside the suite, never planned or run" in out
    rec = json.loads(imported(tmp_path, "linear", 30).read_text())
    assert rec["imported"]["outside_suite"] is True and rec["imported"]["outside_grid"] is False
    assert rec["metrics"]["mIoU"] == 50.0 and rec["source"] == "imported"
    assert rec["config"]["protocol"] == {"name": "linear", "kind": "linear"}
    # the suite's own probe, by kind: said, with how to name another protocol
    mini = miou_csv(tmp_path / "mini.csv", MINI_MIOU)
    assert sdd(bench, "import", str(mini), "--suite", "own") == 0
    out = capsys.readouterr().out
    assert "note: mini.csv: mIoU filed under protocol 'linear_mini', the one protocol of suite 'own'" in out
    assert "--protocol P" in out
    assert "outside the suite" not in out.split("note:")[-1].split("\n", 1)[1]  # the records themselves: inside
    assert "outside_suite" not in json.loads(imported(tmp_path, "linear_mini", 30).read_text())["imported"]

    # the plan and status count the suite's cells only: linear is neither planned, nor imported, nor to do
    reg = load_registry(bench)
    assert {c.protocol for c in build_plan(reg, "own")} == {"metrics", "linear_mini"}
    assert sdd(bench, "plan", "--suite", "own") == 0
    plan_out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in plan_out.splitlines() if line.split()}
    assert "linear" not in rows and rows["total"][1] == "10" and rows["linear_mini"][7] == "5"  # 5 imported
    assert sdd(bench, "status", "--suite", "own") == 0
    assert not any(line.startswith("linear ") for line in capsys.readouterr().out.splitlines())

    # collect: no recipe to be current with and no last epoch of the grid for the protocol outside the suite
    assert sdd(bench, "collect", "--suite", "own") == 0
    t = pd.read_csv(tmp_path / "results" / "own" / "results.csv")
    lin = t[t["protocol"] == "linear"]
    assert len(lin) == 5 and lin["current"].isna().all() and lin["last_epoch"].isna().all()
    assert not lin["outside_grid"].astype(bool).any()
    assert (t.loc[t["protocol"] == "linear_mini", "last_epoch"] == 50).all()

    # the tables: one set per probe protocol, never the two mixed
    assert sdd(bench, "tables", "--suite", "own") == 0
    tables = tmp_path / "results" / "own" / "tables"
    lin_sdd = pd.read_csv(tables / "sdd__linear.csv").set_index("method").loc["dino"]
    mini_sdd = pd.read_csv(tables / "sdd__linear_mini.csv").set_index("method").loc["dino"]
    assert (lin_sdd["best"], lin_sdd["best_epoch"], lin_sdd["last"]) == (50.0, 30, 44.0)
    assert (mini_sdd["best"], mini_sdd["best_epoch"], mini_sdd["last"]) == (28.0, 50, 28.0)
    assert set(lin_sdd["imported"].split(",")) >= {"best", "last", "diff"}  # marked as imported numbers
    assert not (tables / "sdd.csv").exists()


def test_an_mmseg_run_of_another_probe_and_the_protocol_chosen_by_kind(bench, tmp_path, capsys):
    run = mmseg_run(tmp_path / "mm", 47.5)
    args = ["import", str(run), "--suite", "own", "--method", "dino", "--epoch", "20", "--dataset", "voc12_aug"]
    assert sdd(bench, *args, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "note: the mmseg run's mIoU filed under protocol 'linear_mini'" in out and "--protocol P" in out
    assert "would import 1 record(s)" in out and "linear_mini/voc12_aug/dino: epochs 20" in out
    assert not (tmp_path / "results" / "own" / "imported").exists()
    assert sdd(bench, *args, "--protocol", "linear") == 0
    out = capsys.readouterr().out
    assert "note:" not in out and "protocol linear is not run by suite own" in out
    rec = json.loads(imported(tmp_path, "linear", 20).read_text())
    assert rec["metrics"]["mIoU"] == 47.5 and rec["imported"]["outside_suite"] is True
    assert not imported(tmp_path, "linear_mini", 20).exists()


@pytest.mark.parametrize(
    "file, extra, message",
    [
        # label-free and image-level tables read one series per method: numbers of another protocol would mix in
        ("dse", ["--protocol", "metrics_fast"], "protocol 'metrics_fast' (kind metrics) is not run by suite 'own'"),
        ("knn", ["--protocol", "knn"], "protocol 'knn' (kind knn) is not run by suite 'own', and the tables read"),
        ("miou", ["--protocol", "linearr"], "nor a protocol of the registry (did you mean 'linear'?)"),
        ("miou", ["--protocol", "semfpn"], "protocol 'semfpn' takes ade20k"),  # a dataset the protocol does not take
        ("miou", ["--protocol", "maskrcnn"], "column 'mIoU' is not a metric of protocol 'maskrcnn'"),
        ("mmseg", ["--protocol", "maskrcnn"], "--protocol maskrcnn is of kind maskrcnn; an mmseg run's mIoU belong"),
        ("mmseg", ["--protocol", "metrics_fast"], "--protocol metrics_fast: protocol 'metrics_fast' (kind metrics)"),
    ],
)
def test_what_no_protocol_outside_the_suite_can_take(bench, tmp_path, capsys, file, extra, message):
    path = {
        "dse": lambda: dse_csv(tmp_path / "dse.csv"),
        "knn": lambda: table(tmp_path / "knn.csv", "method,epoch,dataset,top1\ndino,10,imagenet,50\n"),
        "miou": lambda: miou_csv(tmp_path / "own.csv", OWN_MIOU),
        "mmseg": lambda: mmseg_run(tmp_path / "mm", 47.5),
    }[file]()
    more = ["--method", "dino", "--epoch", "20", "--dataset", "voc12_aug"] if file == "mmseg" else []
    assert sdd(bench, "import", str(path), "--suite", "own", *more, *extra) == 1
    err = capsys.readouterr().err
    assert message in err and "nothing was imported" in err
    assert not (tmp_path / "results" / "own" / "imported").exists()


def test_allow_outside_grid_admits_an_epoch_the_method_file_does_not_list(bench, tmp_path, capsys):
    assert sdd(bench, "import", str(dse_csv(tmp_path / "dse.csv")), "--suite", "own") == 0
    assert sdd(bench, "import", str(miou_csv(tmp_path / "mini.csv", MINI_MIOU)), "--suite", "own") == 0
    capsys.readouterr()
    odd = miou_csv(tmp_path / "odd.csv", [99.0], epochs=[35])  # dino's checkpoints are 10, 20, ... 800
    assert sdd(bench, "import", str(odd), "--suite", "own") == 1
    err = capsys.readouterr().err
    assert "epoch 35 is not a checkpoint of 'dino' (10..800 in" in err
    assert (
        "--allow-outside-grid records it as outside the grid (kept out of the tables unless --include-outside-grid)"
        in err
    )
    assert sdd(bench, "import", str(odd), "--suite", "own", "--allow-outside-grid") == 0
    out = capsys.readouterr().out
    assert "outside the method file's epochs, recorded as outside the grid" in out and "epochs 35" in out
    rec = json.loads(imported(tmp_path, "linear_mini", 35).read_text())
    assert rec["imported"]["outside_grid"] is True
    assert rec["imported"]["outside_grid_why"].startswith("epoch 35 is not a checkpoint of 'dino'")
    # an epoch the method has but the suite's grid does not: the same flag, said as such
    late = miou_csv(tmp_path / "late.csv", [98.0], epochs=[60])
    assert sdd(bench, "import", str(late), "--suite", "own", "--allow-outside-grid", "--dry-run") == 0
    assert "outside the suite's grid, recorded as outside the grid" in capsys.readouterr().out
    # an epoch outside the method's list of a protocol outside the suite: the same rule
    assert sdd(bench, "import", str(odd), "--suite", "own", "--protocol", "linear") == 1
    assert "epoch 35 is not a checkpoint of 'dino'" in capsys.readouterr().err
    # the tables leave it out (named) unless asked
    assert sdd(bench, "collect", "--suite", "own") == 0
    assert sdd(bench, "tables", "--suite", "own") == 0
    sdd_csv = tmp_path / "results" / "own" / "tables" / "sdd.csv"
    assert pd.read_csv(sdd_csv).set_index("method").loc["dino", "best"] == 28.0
    report = (tmp_path / "results" / "own" / "REPORT.md").read_text()
    assert "outside the suite's grid left out" in report and "linear_mini/voc12_aug/dino/ep0035" in report
    assert sdd(bench, "tables", "--suite", "own", "--include-outside-grid") == 0
    row = pd.read_csv(sdd_csv).set_index("method").loc["dino"]
    assert (row["best"], row["best_epoch"]) == (99.0, 35)
