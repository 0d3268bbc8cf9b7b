"""The first hour's tables (issue 34): an import beside computed metrics merged metric by metric, a
per-epoch table of a run without probes, no PerformanceWarning from a wide results.csv with imports,
whole-number epoch ticks, and SDD notes that do not contradict each other."""

import warnings
from pathlib import Path

import pandas as pd
import pytest
from scipy.stats import kendalltau

from harness import records
from harness.analysis import build_tables, prefer_source
from harness.cli import main
from harness.plan import build_plan
from harness.registry import load_registry
from harness.selection import dse_normalised, select_checkpoints
from tests import worlds

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = [10, 20, 30, 40, 50]
SUITE = """name: hour
title: computed metrics and an imported DSE
methods: [dino, mocov3]
grid:
  - {protocol: metrics, datasets: [imagenet], epochs: [10, 20, 30, 40, 50]}
  - {protocol: linear, datasets: [voc12_aug], epochs: [10, 20, 30, 40, 50]}
"""


@pytest.fixture
def bench(tmp_path, monkeypatch):
    return worlds.registry_with_suite(tmp_path, monkeypatch, "hour", SUITE)


def sdd(bench, *args):
    return main(["--registry", str(bench), *args])


def computed(bench, results, protocol, dataset, method, epoch, metrics):
    """A computed record of the current plan's cell, as `execute` writes it (without running a job)."""
    cell = next(
        c
        for c in build_plan(load_registry(bench), "hour", protocols=[protocol], methods=[method])
        if c.dataset == dataset and c.epoch == epoch
    )
    rec = {
        "suite": "hour",
        "protocol": protocol,
        "dataset": dataset,
        "method": method,
        "epoch": epoch,
        "cell": cell.id,
        "status": "ok",
        "config_hash": cell.config_hash,
        "config": cell.config,
        "metrics": metrics,
        "timings": {"total_s": 10.0},
        "placement": {"accelerator": "cpu", "gpus": 0, "world_size": 1},
    }
    records.write_record(cell.record_path(results), rec)


def quality(i: int, k: int) -> float:
    return 1 - ((i - 2 - k) / 3) ** 2  # peaks mid-training


def world(bench, results) -> dict[str, list[float]]:
    """Computed metrics (DSE and its components, RankMe, W2) and mIoU for both methods; returns the mIoU."""
    miou = {}
    for k, method in enumerate(("dino", "mocov3")):
        miou[method] = []
        for i, e in enumerate(EPOCHS):
            q = quality(i, k)
            metrics = {"dse": q + 0.5, "dse_separability": q, "dse_dim": 0.5 + q / 10 + i / 100}
            computed(
                bench,
                results,
                "metrics",
                "imagenet",
                method,
                e,
                {**metrics, "rankme": 10 + q + i / 10, "w2": 1 - q / 2},
            )
            miou[method].append(40 + 10 * q + i / 10)
            computed(bench, results, "linear", "voc12_aug", method, e, {"mIoU": miou[method][-1]})
    return miou


def test_an_imported_dse_beside_computed_metrics_is_merged_metric_by_metric(bench, tmp_path, capsys):
    """An imported DSE replaced the whole computed metrics record: RankMe and W2 vanished from the τ table
    ("its records have no 'rankme'") and model selection was empty. Now each metric is taken from the
    preferred source where it has one, else from the other."""
    results = tmp_path / "results"
    miou = world(bench, results)
    imported = [2.0, 1.9, 1.8, 1.7, 1.6]  # a DSE that falls: another τ than the computed one
    f = tmp_path / "dse.csv"
    f.write_text("method,epoch,dse\n" + "".join(f"mocov3,{e},{v}\n" for e, v in zip(EPOCHS, imported)))
    assert sdd(bench, "import", str(f), "--suite", "hour") == 0
    assert sdd(bench, "collect", "--suite", "hour") == 0
    tables = results / "hour" / "tables"

    assert sdd(bench, "tables", "--suite", "hour", "--prefer", "imported") == 0, capsys.readouterr().err
    long = pd.read_csv(tables / "kendall_tau_per_method.csv")
    moco = long[long["method"] == "mocov3"].set_index("metric")
    assert {"RankMe", "W2", "DSE", "DSE (λ=1)"} <= set(moco.index)  # the computed metrics stay
    assert moco.loc["DSE (λ=1)", "tau"] == pytest.approx(kendalltau(imported, miou["mocov3"]).statistic)
    assert moco.loc["DSE (λ=1)", "imported"] == "tau_raw,tau"  # marked: its τ is of imported values
    assert pd.isna(moco.loc["RankMe", "imported"]) and pd.isna(moco.loc["DSE", "imported"])  # computed ones: not
    mean_md = (tables / "kendall_tau.md").read_text()
    assert "its records have no 'rankme'" not in mean_md
    selection = pd.read_csv(tables / "model_selection.csv").set_index("method")
    assert "mocov3" in selection.index  # λ from the computed components: a selection
    report = (results / "hour" / "REPORT.md").read_text()
    assert "merged metric by metric" in report and "from the import: dse" in report
    assert "metrics/imagenet/mocov3/ep0010" in report

    assert sdd(bench, "tables", "--suite", "hour", "--prefer", "computed") == 0, capsys.readouterr().err
    long = pd.read_csv(tables / "kendall_tau_per_method.csv")
    moco = long[long["method"] == "mocov3"].set_index("metric")
    dse = [quality(i, 1) + 0.5 for i in range(5)]
    assert moco.loc["DSE (λ=1)", "tau"] == pytest.approx(kendalltau(dse, miou["mocov3"]).statistic)
    assert "imported" not in long.columns  # nothing shown came from the import
    report = (results / "hour" / "REPORT.md").read_text()
    assert "the computed one is used" in report and "the import's dse not used" in report


def _row(source, status="ok", **metrics):
    cell = {"protocol": "metrics", "dataset": "imagenet", "method": "m", "epoch": 10, "status": status}
    return cell | {"source": source, "wall_s": 5.0 if source == "computed" else None, "import_files": None} | metrics


def test_prefer_source_merges_sound_pairs_and_takes_a_failed_pair_whole():
    table = pd.DataFrame(
        [
            _row("computed", dse=1.0, rankme=7.0),
            _row("imported", dse=2.0) | {"import_files": "a.csv"},
            _row("computed", status="failed") | {"epoch": 20},
            _row("imported", dse=3.0) | {"epoch": 20, "import_files": "b.csv"},
        ]
    )
    merged, context = prefer_source(table, "imported")
    one = merged[merged["epoch"] == 10].iloc[0]
    assert len(merged) == 2 and one["dse"] == 2.0 and one["rankme"] == 7.0
    assert one["source"] == "computed" and one["wall_s"] == 5.0  # the metadata of what ran
    assert one["imported_metrics"] == "dse" and one["import_files"] == "a.csv"
    assert merged[merged["epoch"] == 20].iloc[0]["source"] == "imported"  # one failed: the preferred, whole
    assert any("one of them failed" in line for line in context)
    merged, context = prefer_source(table, "computed")
    one = merged[merged["epoch"] == 10].iloc[0]
    assert one["dse"] == 1.0 and one["rankme"] == 7.0 and pd.isna(one["imported_metrics"])
    assert merged[merged["epoch"] == 20].iloc[0]["status"] == "failed"
    assert any("the import's dse not used" in line for line in context)


def label_free_world(results: Path, suite: str, epochs, methods=("m000", "m001")) -> None:
    """Only metrics records (a monitored run without probes)."""
    from tests.worlds import synthetic_suite

    synthetic_suite(results, suite, methods=len(methods), epochs=epochs, datasets=())


def test_a_run_with_only_label_free_metrics_has_a_per_epoch_table(tmp_path, capsys):
    label_free_world(tmp_path, "lf", epochs=8)
    assert main(["collect", "--suite", "lf", "--results", str(tmp_path)]) == 0
    assert main(["tables", "--suite", "lf", "--results", str(tmp_path)]) == 0, capsys.readouterr().err
    t = pd.read_csv(tmp_path / "lf/tables/label_free.csv")
    assert len(t) == 16 and list(t.columns[:2]) == ["method", "epoch"]
    assert {"DSE", "DSE (λ=1)", "Separability only", "RankMe", "W2", "dse_top3"} <= set(t.columns)
    results = pd.read_csv(tmp_path / "lf/results.csv")
    for method, g in results.groupby("method"):
        g = g.sort_values("epoch")
        dse = dse_normalised(g["dse_separability"].tolist(), g["dse_dim"].tolist())
        want = select_checkpoints(g["epoch"].astype(int).tolist(), dse)
        mine = t[(t["method"] == method) & t["dse_top3"].notna()].sort_values("dse_top3")
        assert mine["epoch"].tolist() == want  # the model-selection rule, ranked
        assert t.loc[t["method"] == method, "DSE"].to_numpy() == pytest.approx(dse, rel=1e-5)  # CSV: 6 digits
    report = (tmp_path / "lf/REPORT.md").read_text()
    assert "(tables/label_free.md)" in report
    assert "| dse_top3 |" in (tmp_path / "lf/tables/label_free.md").read_text()


def test_imported_values_are_marked_per_metric_in_the_label_free_table(bench, tmp_path, capsys):
    results = tmp_path / "results"
    world(bench, results)
    f = tmp_path / "dse.csv"
    f.write_text("method,epoch,dse\nmocov3,30,1.7\n")
    assert sdd(bench, "import", str(f), "--suite", "hour") == 0
    assert sdd(bench, "collect", "--suite", "hour") == 0
    assert sdd(bench, "tables", "--suite", "hour", "--prefer", "imported") == 0, capsys.readouterr().err
    t = pd.read_csv(results / "hour/tables/label_free.csv")
    row = t[(t["method"] == "mocov3") & (t["epoch"] == 30)].iloc[0]
    assert row["DSE (λ=1)"] == pytest.approx(1.7) and row["imported"] == "DSE (λ=1)"  # RankMe etc. unmarked
    assert t["imported"].notna().sum() == 1


def test_tables_print_no_performance_warning_once_imports_exist(tmp_path):
    """A wide results.csv (per-class IoU) read by pandas one block per column, then a column added when a
    computed and an imported record of a cell meet: pandas' PerformanceWarning on every `sdd tables`."""
    rows = []
    for source, miou in (("computed", 40.0), ("imported", 41.0)):
        for e in (10, 20, 30):
            rows.append(
                {
                    "protocol": "linear",
                    "dataset": "voc12_aug",
                    "method": "m",
                    "epoch": e,
                    "status": "ok",
                    "source": source,
                    "mIoU": miou + e,
                    **({f"IoU.c{i}": float(i) for i in range(150)} if source == "computed" else {}),
                }
            )
            rows.append(rows[-1] | {"protocol": "metrics", "dataset": "imagenet", "dse": e / 10, "mIoU": None})
    d = tmp_path / "wide"
    d.mkdir()
    pd.DataFrame(rows).to_csv(d / "results.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.PerformanceWarning)
        build_tables(d, prefer="imported")


def _tick_labels(monkeypatch):
    from harness.analysis import figures

    seen: dict[str, list[str]] = {}

    def save(fig, out, name):
        fig.canvas.draw()
        ax = fig.axes[0]
        lo, hi = ax.get_xlim()
        seen[name] = [t.get_text() for t, x in zip(ax.get_xticklabels(), ax.get_xticks()) if lo <= x <= hi]
        return []

    monkeypatch.setattr(figures, "_save", save)
    return figures, seen


def test_figures_of_a_three_epoch_run_have_whole_epoch_ticks(tmp_path, monkeypatch):
    rows = []
    for e in (1, 2, 3):
        metrics = {"dse": 1 + e / 10, "dse_separability": e / 10, "dse_dim": 0.5, "dse_inter": 1.0, "rankme": 9.0 + e}
        rows.append(
            {"protocol": "metrics", "dataset": "imagenet", "method": "m", "epoch": e, "status": "ok", **metrics}
        )
        rows.append(
            {"protocol": "linear", "dataset": "voc12_aug", "method": "m", "epoch": e, "status": "ok", "mIoU": 30.0 + e}
        )
    table = pd.DataFrame(rows)
    figures, seen = _tick_labels(monkeypatch)
    figures.trajectories(table, tmp_path, "linear")
    figures.dse_components(table, tmp_path)
    assert set(seen) == {"trajectory_m", "dse_components_m"}
    for name, labels in seen.items():
        assert labels and all(s.replace("−", "-").lstrip("-").isdigit() for s in labels), (name, labels)


def test_sdd_notes_do_not_say_best_is_last_when_the_last_has_no_miou(tmp_path):
    rows = []
    for method, probed in (("early", [10]), ("late", [50])):
        for e in EPOCHS:
            rows.append(
                {
                    "protocol": "metrics",
                    "dataset": "imagenet",
                    "method": method,
                    "epoch": e,
                    "status": "ok",
                    "dse": e / 10,
                    "dse_separability": e / 10,
                    "dse_dim": 0.5,
                    "last_epoch": 50,
                }
            )
        for e in probed:
            rows.append(
                {
                    "protocol": "linear",
                    "dataset": "voc12_aug",
                    "method": method,
                    "epoch": e,
                    "status": "ok",
                    "mIoU": 30.0,
                    "last_epoch": 50,
                }
            )
    d = tmp_path / "one"
    d.mkdir()
    pd.DataFrame(rows).to_csv(d / "results.csv", index=False)
    _, tables, _ = build_tables(d)
    notes = next(t for t in tables if t.name == "sdd").notes
    early = [n for n in notes if n.startswith("early / ")]
    assert any("has no mIoU" in n for n in early) and not any("best = last" in n for n in early), early
    assert any("best = last" in n for n in notes if n.startswith("late / "))  # its one checkpoint is the last
