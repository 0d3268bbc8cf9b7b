"""Tables from a hand-made results.csv: every number checked against a hand computation, the
rendered files against golden files, edge cases, determinism, and `sdd collect` on records."""

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from harness.analysis import build_tables
from harness.analysis.tables import kendall_tables, sdd_table, selection_table
from harness.cli import main
from harness.selection import local_maxima, select_checkpoints

GOLDEN = Path(__file__).parent / "golden"

# Two methods, five checkpoints, one dataset. Hand computations in the comments.
#  A: dse = 1..5 (increasing); mIoU 10, 20, 30, 25, 15
#     pairs i<j: concordant (1,2)(1,3)(1,4)(1,5)(2,3)(2,4), discordant (2,5)(3,4)(3,5)(4,5) -> τ = (6-4)/10 = 0.2
#     best 30 at epoch 30, last 15 -> diff -15
#  B: dse = 5..1 (decreasing); mIoU 10..50 (increasing) -> τ = -1; best = last = 50 at epoch 50 -> diff 0
#  mean τ (DSE λ=1) = (0.2 - 1) / 2 = -0.4
#  W2 ("lower is better"): A w2 = 5..1 -> goodness -w2 = -5..-1 increasing -> τ 0.2 (raw -0.2);
#                          B w2 = 1..5 -> goodness decreasing -> τ -1 (raw 1); mean -0.4
ROWS = []
for method, dse, miou, w2 in (
    ("A", [1, 2, 3, 4, 5], [10, 20, 30, 25, 15], [5, 4, 3, 2, 1]),
    ("B", [5, 4, 3, 2, 1], [10, 20, 30, 40, 50], [1, 2, 3, 4, 5]),
):
    for i, e in enumerate([10, 20, 30, 40, 50]):
        ROWS.append(
            {
                "suite": "hand",
                "protocol": "metrics",
                "dataset": "imagenet",
                "method": method,
                "epoch": e,
                "status": "ok",
                "gpus": 1,
                "wall_s": 90.0,
                "dse": float(dse[i]),
                "dse_separability": float(dse[i]),
                "dse_dim": 0.5,
                "w2": float(w2[i]),
            }
        )
        ROWS.append(
            {
                "suite": "hand",
                "protocol": "linear",
                "dataset": "voc12_aug",
                "method": method,
                "epoch": e,
                "status": "ok",
                "gpus": 1,
                "wall_s": 3600.0,
                "mIoU": float(miou[i]),
            }
        )


@pytest.fixture
def hand(tmp_path):
    d = tmp_path / "hand"
    d.mkdir()
    pd.DataFrame(ROWS).to_csv(d / "results.csv", index=False)
    return d


def test_sdd_table_by_hand(hand):
    t = sdd_table(pd.read_csv(hand / "results.csv")).frame.set_index("method")
    assert t.loc["A", "best"] == 30 and t.loc["A", "best_epoch"] == 30 and t.loc["A", "last"] == 15
    assert t.loc["A", "diff"] == -15 and t.loc["B", "diff"] == 0 and t.loc["B", "best_epoch"] == 50


def test_kendall_by_hand(hand):
    mean, long, _ = kendall_tables(pd.read_csv(hand / "results.csv"))
    mean, long = mean.frame, long.frame
    lt = long.set_index(["metric", "method"])
    assert lt.loc[("DSE (λ=1)", "A"), "tau"] == pytest.approx(0.2)
    assert lt.loc[("DSE (λ=1)", "B"), "tau"] == pytest.approx(-1.0)
    row = mean.set_index("metric").loc["DSE (λ=1)"]
    assert row["VOC"] == pytest.approx(-0.4) and row["n_VOC"] == 2 and row["Avg."] == pytest.approx(-0.4)
    # W2 is lower-is-better: goodness τ = -(raw τ)
    assert lt.loc[("W2", "A"), "tau_raw"] == pytest.approx(-0.2) and lt.loc[("W2", "A"), "tau"] == pytest.approx(0.2)
    assert lt.loc[("W2", "B"), "tau"] == pytest.approx(-1.0)
    # dim is constant -> λ falls back to 1 and DSE(λ) == separability + 0.5: same ranks as λ=1
    assert lt.loc[("DSE", "A"), "tau"] == pytest.approx(0.2)
    # constant dim series: τ undefined, said so, and left out of the mean
    assert math.isnan(lt.loc[("Dimensionality only (RankMe†)", "A"), "tau"])
    assert lt.loc[("Dimensionality only (RankMe†)", "A"), "undefined_because"] == "constant series"
    assert mean.set_index("metric").loc["Dimensionality only (RankMe†)", "n_VOC"] == 0


def test_local_maxima_and_selection_by_hand():
    #            0  1  2  3  4  5  6  7
    values = [1, 3, 2, 2, 5, 4, 4, 6]
    # window ±2: i=1: max(v[0:4]) = 3 ✓; i=4: max(v[2:7]) = 5 ✓; i=7: max(v[5:8]) = 6 ✓; others no
    assert local_maxima(values) == [1, 4, 7]
    assert select_checkpoints([10, 20, 30, 40, 50, 60, 70, 80], values) == [80, 50, 20]
    # plateau: ties all count, and the top-3 order breaks ties by the earlier epoch
    assert local_maxima([2, 2, 1, 0, 0]) == [0, 1]
    assert select_checkpoints([10, 20, 30], [4.0, 4.0, 4.0], top=2) == [10, 20]


def test_selection_table_by_hand(hand):
    t = selection_table(pd.read_csv(hand / "results.csv")).frame.set_index("method")
    # A: DSE 1..5 -> the only local max is the last checkpoint (epoch 50, mIoU 15): gain 0
    assert t.loc["A", "selected_epochs"] == "50" and t.loc["A", "gain"] == 0
    # B: DSE 5..1 -> epoch 10 (mIoU 10) vs last 50: gain -40
    assert t.loc["B", "selected_epochs"] == "10" and t.loc["B", "gain"] == -40


def test_rendered_tables_match_golden_files(hand):
    _, tables, files = build_tables(hand, paper_dir=GOLDEN / "paper")
    for name in ("sdd.md", "sdd.tex", "kendall_tau.md", "kendall_tau.tex", "model_selection.md"):
        got = (hand / "tables" / name).read_text()
        want = (GOLDEN / name).read_text()
        assert got == want, f"{name} differs from tests/golden/{name}"


def test_tables_regenerate_identically(hand, tmp_path):
    build_tables(hand)
    first = {p.name: p.read_bytes() for p in (hand / "tables").iterdir()}
    shutil.rmtree(hand / "tables")
    build_tables(hand)
    assert {p.name: p.read_bytes() for p in (hand / "tables").iterdir()} == first


def test_edge_cases_never_crash(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[0]["dse"] = float("nan")  # a NaN metric
    rows.append(
        {
            "suite": "hand",
            "protocol": "metrics",
            "dataset": "imagenet",
            "method": "C",
            "epoch": 10,
            "status": "ok",
            "dse": 1.0,
            "dse_separability": 1.0,
            "dse_dim": 0.5,
        }
    )
    rows.append(
        {
            "suite": "hand",
            "protocol": "linear",
            "dataset": "voc12_aug",
            "method": "C",
            "epoch": 10,
            "status": "ok",
            "mIoU": 33.0,
        }
    )  # one checkpoint only
    rows.append(
        {
            "suite": "hand",
            "protocol": "linear",
            "dataset": "voc12_aug",
            "method": "C",
            "epoch": 20,
            "status": "failed",
            "error": "boom",
        }
    )
    d = tmp_path / "edge"
    d.mkdir()
    pd.DataFrame(rows).to_csv(d / "results.csv", index=False)
    table, tables, _ = build_tables(d)
    by = {t.name: t for t in tables}
    assert any("one checkpoint only" in n for n in by["sdd"].notes)
    assert any(
        n.startswith("C / voc12_aug: 1 of 2 checkpoints evaluated; 1 failed (ep 20)") and "stays in the means" in n
        for n in by["sdd"].notes
    )
    assert any("fewer than 2 checkpoints" in n for n in by["kendall_tau"].notes)
    long = by["kendall_tau_per_method"].frame.set_index(["metric", "method"])
    assert long.loc[("DSE (λ=1)", "A"), "checkpoints"] == 4  # the NaN checkpoint was left out
    # no segmentation column at all: empty tables with a reason, no crash
    pd.DataFrame([r for r in rows if r["protocol"] == "metrics"]).to_csv(d / "results.csv", index=False)
    table, tables, _ = build_tables(d)
    by = {t.name: t for t in tables}
    assert by["sdd"].frame.empty and by["model_selection"].frame.empty
    assert list(by["kendall_tau"].frame.columns) == ["metric", "orientation", "Avg.", "Avg. 95% CI"]  # no dataset
    # a table without the columns the tables are computed from: refused, never empty tables that read as "no data"
    pd.DataFrame(columns=["protocol"]).to_csv(d / "results.csv", index=False)
    from harness.analysis import TablesError

    with pytest.raises(TablesError, match="lacks the column"):
        build_tables(d)
    pd.DataFrame(columns=["protocol", "dataset", "method", "epoch", "status"]).to_csv(d / "results.csv", index=False)
    build_tables(d)  # an empty but well-formed table gives empty tables


def test_collect_and_tables_cli_on_records(tmp_path, capsys):
    from tests.worlds import synthetic_suite

    n = synthetic_suite(tmp_path, "syn", methods=2, epochs=6)
    # a failed record and a torn file
    bad = tmp_path / "syn/runs/linear/voc12_aug/m000/ep0060.json"
    import json

    rec = json.loads(bad.read_text())
    rec.update(status="failed", error="RuntimeError: out of memory\nmore", metrics={})
    bad.write_text(json.dumps(rec))
    (tmp_path / "syn/runs/linear/voc12_aug/m000/ep0070.json").write_text('{"status": ')
    assert main(["collect", "--suite", "syn", "--results", str(tmp_path)]) == 1  # a torn record: refused
    err = capsys.readouterr().err
    assert "m000/ep0070.json: is not valid JSON" in err and not (tmp_path / "syn/results.csv").exists()
    assert main(["collect", "--suite", "syn", "--results", str(tmp_path), "--skip-corrupt"]) == 0
    out = capsys.readouterr().out
    assert f"collected {n} records ({n - 1} ok, 1 failed)" in out and "left out 1 corrupt record" in out
    table = pd.read_csv(tmp_path / "syn/results.csv")
    assert (
        len(table) == n
        and "IoU.a" in table.columns
        and table["error"].dropna().tolist() == ["RuntimeError: out of memory"]
    )
    assert (tmp_path / "syn/spectra.csv").is_file()
    assert main(["tables", "--suite", "syn", "--results", str(tmp_path), "--figures"]) == 0
    figs = sorted(p.name for p in (tmp_path / "syn/figures").glob("*.png"))
    assert "kendall_tau_heatmap.png" in figs and "trajectory_m000.png" in figs and "spectrum_m001.png" in figs
    report = (tmp_path / "syn/REPORT.md").read_text()
    assert "tables/kendall_tau.md" in report and "figures/kendall_tau_heatmap.png" in report and "τ-b" in report
    assert main(["tables", "--suite", "nothing", "--results", str(tmp_path)]) == 2


def test_collect_reports_missing_cells_of_a_registry_suite(tmp_path, capsys):
    from harness.plan import build_plan
    from harness.registry import load_registry

    planned = build_plan(load_registry(), "udi")
    assert main(["collect", "--suite", "udi", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"missing {len(planned)} of the plan's cells" in out and len(planned) == 48  # 16 protocols x 3 methods
    assert "davis 3, finetune_imagenet 3, linear_cls 3, lowshot_10pct 3, lowshot_1pct 3, lowshot_ft_10pct 3" in out


def test_a_paper_average_that_is_not_its_columns_mean_is_named():
    """The paper's DSE 'Avg.' (0.57) is not the mean of its four columns (0.5575): the side-by-side table
    says so instead of charging the difference to the harness; rows whose Avg. is their mean get no note."""
    from harness.analysis.tables import _paper_average_notes

    paper = pd.read_csv(Path(__file__).resolve().parents[1] / "results" / "paper" / "kendall_tau.csv")
    notes = _paper_average_notes(paper)
    assert len(notes) == 1 and notes[0].startswith("the paper's DSE 'Avg.' 0.57") and "0.5575" in notes[0]
    fixed = paper.copy()
    fixed.loc[(fixed["metric"] == "DSE") & (fixed["dataset"] == "Avg."), "tau"] = 0.56
    assert _paper_average_notes(fixed) == []


def test_classification_table_gives_each_protocol_and_dataset_its_column():
    """Two protocols of one kind (low-shot 1% and 10%) and one protocol on two datasets (CIFAR-10/100)
    never share a column: each value sits under its protocol and dataset, from the final checkpoint."""
    from harness.analysis.tables import classification_table, dense_table

    rows = [
        ("lowshot_1pct", "lowshot", "imagenet", "top1", 40.0),
        ("lowshot_10pct", "lowshot", "imagenet", "top1", 60.0),
        ("linear_cifar10", "linear_cls", "cifar10", "top1_best", 90.0),
        ("linear_cifar10", "linear_cls", "cifar100", "top1_best", 65.0),
    ]
    frame = pd.DataFrame(
        [
            {"status": "ok", "method": "m", "epoch": 100, "protocol": p, "kind": k, "dataset": d, col: v}
            for p, k, d, col, v in rows
        ]
        + [
            {
                "status": "ok",
                "method": "m",
                "epoch": 50,
                "protocol": "lowshot_1pct",
                "kind": "lowshot",
                "dataset": "imagenet",
                "top1": 1.0,
            }
        ]
    )
    t = classification_table(frame).frame.set_index("checkpoint")
    final = t.loc["final"]
    assert final["low-shot top-1 (best lambda) [lowshot_1pct/imagenet]"] == 40.0  # the last epoch, not 50's 1.0
    assert final["low-shot top-1 (best lambda) [lowshot_10pct/imagenet]"] == 60.0
    assert final["linear top-1 (best epoch) [linear_cifar10/cifar100]"] == 65.0
    assert dense_table(frame).frame.empty  # classifiers are not dense protocols
