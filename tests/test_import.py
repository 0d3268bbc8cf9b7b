"""`sdd import` (issue 14): files exactly as the upstream tools write them, imported into a suite, joined
with computed records, and the tables checked against values computed by hand."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from harness.plan import build_plan
from harness.registry import load_registry
from tests import worlds

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = "_3local_clusters_24global_clusters_1th_layer_datapercent_0.001_normalized_bs_1024"
EPOCHS = [10, 20, 30, 40, 50]
# dino: DSE 1..5 while mIoU 10, 20, 30, 25, 15 -> tau = (6 - 4) / 10 = 0.2 (pairs counted by hand as in
# tests/test_analysis.py); best 30 at epoch 30, last 15 -> diff -15.
DINO_DSE, DINO_MIOU = [1.0, 2.0, 3.0, 4.0, 5.0], [10.0, 20.0, 30.0, 25.0, 15.0]
# mocov3: DSE falls 5..1 while mIoU rises -> tau = -1; best = last.
MOCO_DSE, MOCO_MIOU = [5.0, 4.0, 3.0, 2.0, 1.0], [0.10, 0.20, 0.30, 0.40, 0.50]  # 0.x logs hold fractions


@pytest.fixture
def bench(tmp_path, monkeypatch):
    return worlds.registry_with_suite(
        tmp_path,
        monkeypatch,
        "imp",
        "name: imp\ntitle: imported\nmethods: [dino, mocov3]\ngrid:\n"
        "  - {protocol: metrics, datasets: [imagenet], epochs: [10, 20, 30, 40, 50]}\n"
        "  - {protocol: linear, datasets: [voc12_aug], epochs: [10, 20, 30, 40, 50]}\n"
        "  - {protocol: maskrcnn, datasets: [coco_instances], epochs: [50]}\n",
    )


def sdd(bench, *args):
    return main(["--registry", str(bench), *args])


def official_tree(root: Path, dse: list[float]) -> Path:
    """What get_DSE.py writes: one metrics_epoch_<N>.txt per checkpoint, every layer's five numbers."""
    for epoch, v in zip(EPOCHS, dse):
        d = root / "DSE_imagenet-1k" / SETTINGS / f"epoch_{epoch}"
        d.mkdir(parents=True)
        lines = []
        for layer, value in ((10, -v), (11, v)):  # a decoy layer 10 with the opposite trend
            lines += [
                f"Layer {layer} DSE Metric (Original): {value + 0.5:.6f}",
                f"Layer {layer} Inter-class Distance: {1.0 + value:.6f}",
                f"Layer {layer} Intra-class Radius (Image): 0.500000",
                f"Layer {layer} Intra-class Radius (Batch): 0.500000",
                f"Layer {layer} Effective Dimensionality: {0.3 + value / 100:.6f}",
            ]
        (d / f"metrics_epoch_{epoch}.txt").write_text("\n".join(lines) + "\n")
    return root


def mmseg_1x(root: Path, miou: float) -> Path:
    d = root / "20250101_000000" / "vis_data"
    d.mkdir(parents=True)
    lines = [{"lr": 0.001, "loss": 1.2, "step": 50}, {"aAcc": 80.0, "mIoU": miou, "mAcc": 50.0, "step": 40000}]
    (d / "scalars.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return root


VOC_CLASSES = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]


def mmseg_0x(root: Path, miou: float, classes=VOC_CLASSES) -> Path:
    root.mkdir(parents=True)
    per_class = {f"IoU.{c}": (miou if c == "aeroplane" else 0.9) for c in classes}
    lines = [
        {"env_info": "..."},
        {"mode": "train", "iter": 50, "lr": 0.001, "loss": 1.1},
        {"mode": "val", "iter": 40000, "aAcc": 0.8, "mIoU": miou, "mAcc": 0.5, **per_class},
    ]
    (root / "20220101_000000.log.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return root


def spreadsheet(path: Path, dse: list[float]) -> Path:
    """The .xlsx the official README asks for: one row per checkpoint, no epoch column."""
    pd.DataFrame(
        {
            "Layer 11 DSE Metric": [v + 0.5 for v in dse],
            "Layer 11 Inter-class Distance": [1.0 + v for v in dse],
            "Layer 11 Intra-class Radius (Image)": [0.5] * 5,
            "Layer 11 Intra-class Radius (Batch)": [0.5] * 5,
            "Layer 11 Effective Dimensionality": [0.3 + v / 100 for v in dse],
        }
    ).to_excel(path, index=False)
    return path


def import_everything(bench, tmp_path, capsys):
    official_tree(tmp_path / "dse_dino", DINO_DSE)
    assert sdd(bench, "import", str(tmp_path / "dse_dino"), "--suite", "imp", "--method", "dino") == 0
    assert "dse-official" in capsys.readouterr().out
    assert (
        sdd(bench, "import", str(spreadsheet(tmp_path / "moco.xlsx", MOCO_DSE)), "--suite", "imp", "--method", "mocov3")
        == 0
    )
    assert "row i -> epoch (i+1)*10" in capsys.readouterr().out
    for epoch, m in zip(EPOCHS, DINO_MIOU):
        assert (
            sdd(
                bench,
                "import",
                str(mmseg_1x(tmp_path / f"seg_dino_{epoch}", m)),
                "--suite",
                "imp",
                "--method",
                "dino",
                "--epoch",
                str(epoch),
                "--dataset",
                "voc12_aug",
            )
            == 0
        )
    for epoch, m in zip(EPOCHS, MOCO_MIOU):
        assert (
            sdd(
                bench,
                "import",
                str(mmseg_0x(tmp_path / f"seg_moco_{epoch}", m)),
                "--suite",
                "imp",
                "--method",
                "mocov3",
                "--epoch",
                str(epoch),
                "--dataset",
                "voc12_aug",
            )
            == 0
        )
    capsys.readouterr()


def test_upstream_files_give_the_tables_computed_by_hand(bench, tmp_path, capsys):
    import_everything(bench, tmp_path, capsys)
    results = tmp_path / "results"
    rec = json.loads((results / "imp/imported/metrics/imagenet/dino/ep0030.json").read_text())
    src = rec["imported"]["sources"]["dse"]
    assert rec["source"] == "imported" and src["format"] == "dse-official" and len(src["sha256"]) == 64
    assert rec["metrics"]["dse"] == pytest.approx(3.5)  # layer 11, not the decoy layer 10
    assert rec["details"]["official_settings"] == {
        "local_clusters": "3",
        "global_clusters": "24",
        "layers": "1",
        "data_percent": "0.001",
        "normalized": True,
        "batch_size": "1024",
    }
    moco = json.loads((results / "imp/imported/linear/voc12_aug/mocov3/ep0020.json").read_text())
    assert moco["metrics"]["mIoU"] == pytest.approx(20.0) and moco["metrics"]["IoU"]["aeroplane"] == pytest.approx(20.0)
    assert sdd(bench, "collect", "--suite", "imp") == 0
    assert sdd(bench, "tables", "--suite", "imp") == 0
    tables = results / "imp" / "tables"
    tau = pd.read_csv(tables / "kendall_tau_per_method.csv")
    raw = tau[tau["metric"] == "DSE (λ=1)"].set_index("method")["tau"]
    assert raw["dino"] == pytest.approx(0.2) and raw["mocov3"] == pytest.approx(-1.0)
    mean = pd.read_csv(tables / "kendall_tau.csv").set_index("metric")
    assert mean.loc["DSE (λ=1)", "VOC"] == pytest.approx(-0.4)
    assert mean.loc["DSE", "VOC"] == pytest.approx(-0.4)  # λ from the imported components, same ranking here
    sdd_t = pd.read_csv(tables / "sdd.csv").set_index("method")
    assert sdd_t.loc["dino", "best"] == 30 and sdd_t.loc["dino", "diff"] == -15 and sdd_t.loc["mocov3", "diff"] == 0
    sel = pd.read_csv(tables / "model_selection.csv").set_index("method")
    assert str(sel.loc["dino", "selected_epochs"]) == "50"  # DSE's top local maximum: the last epoch


def test_imported_cells_are_never_rerun_and_a_computed_record_wins_unless_asked(bench, tmp_path, capsys):
    from harness import records

    import_everything(bench, tmp_path, capsys)
    results = tmp_path / "results"
    assert sdd(bench, "submit", "--suite", "imp", "--cluster", "example", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "20 imported" in out and "would submit 2" in out  # only the Mask R-CNN cells are left
    cell = next(
        c for c in build_plan(load_registry(bench), "imp", protocols=["linear"], methods=["dino"]) if c.epoch == 50
    )
    records.write_record(
        cell.record_path(results),
        {
            "suite": "imp",
            "protocol": "linear",
            "dataset": "voc12_aug",
            "method": "dino",
            "epoch": 50,
            "status": "ok",
            "config_hash": cell.config_hash,
            "config": cell.config,
            "metrics": {"mIoU": 99.0},
        },
    )
    assert sdd(bench, "collect", "--suite", "imp") == 0 and sdd(bench, "tables", "--suite", "imp") == 0
    sdd_t = pd.read_csv(results / "imp/tables/sdd.csv").set_index("method")
    assert sdd_t.loc["dino", "last"] == 99.0  # the computed record
    assert "the computed one is used" in (results / "imp/tables/sdd.md").read_text()
    assert "linear/voc12_aug/dino/ep0050" in (results / "imp/REPORT.md").read_text()  # the cell is named
    assert sdd(bench, "tables", "--suite", "imp", "--prefer", "imported") == 0
    assert pd.read_csv(results / "imp/tables/sdd.csv").set_index("method").loc["dino", "last"] == 15.0
    capsys.readouterr()
    assert sdd(bench, "import", str(tmp_path / "dse_dino"), "--suite", "imp", "--method", "dino") == 1
    assert "were imported before" in capsys.readouterr().err
    assert sdd(bench, "import", str(tmp_path / "dse_dino"), "--suite", "imp", "--method", "dino", "--replace") == 0


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda f: f.write_text(
                f.read_text().replace("Layer 11 Inter-class Distance: ", "Layer 11 Inter-class Distance ")
            ),
            r"metrics_epoch_20\.txt:7: .* is not 'Layer <L> <quantity>: <value>'",
        ),
        (
            lambda f: f.write_text(
                f.read_text().replace(
                    "Layer 11 Effective Dimensionality: 0.320000", "Layer 11 Effective Dimensionality: nan"
                )
            ),
            r"metrics_epoch_20\.txt:10: 'nan' is not a finite number",
        ),
        (None, r"epoch 55 is not a checkpoint of 'dino'"),  # a file moved to an epoch the method does not have
    ],
)
def test_bad_official_files_never_half_import(bench, tmp_path, capsys, damage, message):
    tree = official_tree(tmp_path / "dse", DINO_DSE)
    f = next(tree.rglob("metrics_epoch_20.txt"))
    if damage is None:
        (f.parent.parent / "epoch_55").mkdir()
        f.rename(f.parent.parent / "epoch_55" / "metrics_epoch_55.txt")
        f.parent.rmdir()
    else:
        damage(f)
    assert sdd(bench, "import", str(tree), "--suite", "imp", "--method", "dino") == 1
    err = capsys.readouterr().err
    import re

    assert re.search(message, err) and "nothing was imported" in err
    assert not (tmp_path / "results" / "imp" / "imported").exists()


def test_bad_tables_never_half_import(bench, tmp_path, capsys):
    f = tmp_path / "scores.csv"
    f.write_text("method,epoch,dse,w2,colour\ndino,10,1.0,0.5,red\n")
    assert sdd(bench, "import", str(f), "--suite", "imp") == 1
    assert "unknown column(s) ['colour']" in capsys.readouterr().err
    f.write_text("method,epoch,dse\ndino,10,1.0\ndino,20,2.0\ndino,10,3.0\n")
    assert sdd(bench, "import", str(f), "--suite", "imp") == 1
    err = capsys.readouterr().err
    assert "row 4, column 'dse': dse of 'dino' epoch 10 (metrics/imagenet) appears twice (also at" in err
    assert "row 2, column 'dse')" in err
    f.write_text("method,epoch,dse\ndino,10,1.0\nbyol,20,2.0\n")
    assert sdd(bench, "import", str(f), "--suite", "imp") == 1
    assert "row 3, column 'dse': method 'byol' is not in suite 'imp'" in capsys.readouterr().err
    assert not (tmp_path / "results" / "imp" / "imported").exists()
    f.write_text("method,epoch,dse\ndino,10,1.0\ndino,20,2.0\n")
    assert sdd(bench, "import", str(f), "--suite", "imp", "--dry-run") == 0
    assert "would import 2 record(s) (csv)" in capsys.readouterr().out
    assert not (tmp_path / "results" / "imp" / "imported").exists()


def test_long_csv_with_raw_dse_only_and_downstream_rows(bench, tmp_path, capsys):
    f = tmp_path / "long.csv"
    rows = ["method,epoch,metric,value"] + [f"dino,{e},dse,{v}" for e, v in zip(EPOCHS, DINO_DSE)]
    f.write_text("\n".join(rows) + "\n")
    assert sdd(bench, "import", str(f), "--suite", "imp") == 0
    wide = tmp_path / "miou.csv"
    wide.write_text(
        "method,epoch,dataset,mIoU\n" + "".join(f"dino,{e},voc12_aug,{m}\n" for e, m in zip(EPOCHS, DINO_MIOU))
    )
    assert sdd(bench, "import", str(wide), "--suite", "imp") == 0
    assert sdd(bench, "collect", "--suite", "imp") == 0 and sdd(bench, "tables", "--suite", "imp") == 0
    md = (tmp_path / "results/imp/tables/kendall_tau.md").read_text()
    assert "DSE: left out for dino: no separability / dimensionality (only the raw DSE is known" in md
    mean = pd.read_csv(tmp_path / "results/imp/tables/kendall_tau.csv").set_index("metric")
    assert mean.loc["DSE (λ=1)", "VOC"] == pytest.approx(0.2) and math.isnan(mean.loc["DSE", "VOC"])


def test_a_detectron2_metrics_json_gives_the_last_evaluation(bench, tmp_path, capsys):
    run = tmp_path / "d2"
    run.mkdir()
    lines = [
        {"iteration": 19, "total_loss": 1.5},
        {
            "iteration": 44999,
            "bbox/AP": 30.1,
            "bbox/AP50": 50.0,
            "bbox/AP75": 31.0,
            "segm/AP": 27.0,
            "segm/AP50": 47.0,
            "segm/AP75": 28.0,
        },
        {
            "iteration": 89999,
            "bbox/AP": 40.5,
            "bbox/AP50": 61.0,
            "bbox/AP75": 44.0,
            "segm/AP": 36.2,
            "segm/AP50": 58.0,
            "segm/AP75": 38.5,
        },
        {"iteration": 90000, "total_loss": 0.4},
    ]
    (run / "metrics.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    args = ["--suite", "imp", "--method", "dino", "--epoch", "50", "--dataset", "coco_instances"]
    assert sdd(bench, "import", str(run), *args) == 1  # two evaluations: which one is not a silent choice
    assert "2 evaluations (at iterations 44999, 89999); say which with --take" in capsys.readouterr().err
    assert sdd(bench, "import", str(run), *args, "--take", "last") == 0
    rec = json.loads((tmp_path / "results/imp/imported/maskrcnn/coco_instances/dino/ep0050.json").read_text())
    assert rec["metrics"]["bbox_AP"] == 40.5 and rec["metrics"]["segm_AP"] == 36.2
    assert rec["imported"]["sources"]["segm_AP"]["line"] == 3
    assert sdd(bench, "import", str(run), *args, "--take", "best", "--replace") == 0  # best by segm AP: the same line
    assert sdd(bench, "import", str(run), *args, "--take", "iter 44999", "--replace") == 0
    rec = json.loads((tmp_path / "results/imp/imported/maskrcnn/coco_instances/dino/ep0050.json").read_text())
    assert rec["metrics"]["segm_AP"] == 27.0 and rec["imported"]["sources"]["segm_AP"]["line"] == 2
