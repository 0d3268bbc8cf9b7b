"""Numbers a researcher can trust (issue 22): imports that join cleanly and say where they stand, a full
grid that stays full, staleness that follows content and says why. Each case failed on the code before."""

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from harness import records
from harness.cli import main
from harness.plan import build_plan
from harness.registry import load_registry
from tests import worlds

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = [10, 20, 30, 40, 50]
SUITE = """name: trust
title: computed and imported
methods: [dino, mocov3]
grid:
  - {protocol: metrics, datasets: [imagenet], epochs: [10, 20, 30, 40, 50]}
  - {protocol: linear, datasets: [voc12_aug, ade20k], epochs: [10, 20, 30, 40, 50]}
"""


@pytest.fixture
def bench(tmp_path, monkeypatch):
    return worlds.registry_with_suite(tmp_path, monkeypatch, "trust", SUITE)


def sdd(bench, *args):
    return main(["--registry", str(bench), *args])


def computed(bench, results, protocol, dataset, method, epoch, metrics, status="ok"):
    """A computed record of the current plan's cell, as `execute` writes it (without running a job)."""
    cell = next(
        c
        for c in build_plan(load_registry(bench), "trust", protocols=[protocol], methods=[method])
        if c.dataset == dataset and c.epoch == epoch
    )
    rec = {
        "suite": "trust",
        "protocol": protocol,
        "dataset": dataset,
        "method": method,
        "epoch": epoch,
        "cell": cell.id,
        "status": status,
        "config_hash": cell.config_hash,
        "config": cell.config,
        "metrics": metrics if status == "ok" else None,
        "error": None if status == "ok" else "RuntimeError: boom",
        "timings": {"total_s": 10.0},
        "placement": {"accelerator": "cpu", "gpus": 0, "world_size": 1},
    }
    records.write_record(cell.record_path(results), rec)


def full_world(bench, results, methods=("dino", "mocov3"), skip=()):
    """Metrics (with the estimator's components, RankMe, W2) and mIoU on both datasets, every epoch."""
    for k, method in enumerate(methods):
        for i, e in enumerate(EPOCHS):
            q = 1 - ((i - 2 - k) / 3) ** 2  # peaks mid-training
            computed(
                bench,
                results,
                "metrics",
                "imagenet",
                method,
                e,
                {
                    "dse": q + 0.5,
                    "dse_separability": q,
                    "dse_dim": 0.5 + q / 10 + i / 100,
                    "rankme": 10 + q + i / 10,
                    "w2": 1 - q / 2,
                },
            )
            for d in ("voc12_aug", "ade20k"):
                if (method, d, e) not in skip:
                    computed(bench, results, "linear", d, method, e, {"mIoU": 40 + 10 * q + i / 10})


def tables(bench):
    assert sdd(bench, "collect", "--suite", "trust") == 0
    assert sdd(bench, "tables", "--suite", "trust") == 0


def test_an_ordinary_import_beside_computed_metrics_builds_every_table(bench, tmp_path, capsys):
    """`method,epoch,dse` for three epochs of a method with computed metrics crashed `sdd tables` in
    statistics.pstdev (a NaN component): now every table builds and the notes say what is left out."""
    results = tmp_path / "results"
    full_world(bench, results)
    f = tmp_path / "dse.csv"
    f.write_text("method,epoch,dse\nmocov3,30,1.1\nmocov3,40,1.2\nmocov3,50,1.3\n")
    assert sdd(bench, "import", str(f), "--suite", "trust") == 0
    for prefer in ("computed", "imported"):
        assert sdd(bench, "collect", "--suite", "trust") == 0
        assert sdd(bench, "tables", "--suite", "trust", "--prefer", prefer) == 0, capsys.readouterr().err
    mean = pd.read_csv(results / "trust/tables/kendall_tau.csv").set_index("metric")
    assert mean.loc["DSE", "n_VOC"] == 2  # mocov3's λ over its two computed checkpoints with components
    md = (results / "trust/tables/kendall_tau.md").read_text()
    assert "ⁱ" in md and "mocov3/ep0030" in md  # the τ from imported values is marked and its cells named


def test_dse_and_w2_from_two_files_merge_into_one_record_and_replace_replaces_one_metric(bench, tmp_path, capsys):
    results = tmp_path / "results"
    official = tmp_path / "official"
    settings = "_3local_clusters_24global_clusters_1th_layer_datapercent_0.001_normalized_bs_1024"
    for e in EPOCHS:
        d = official / "DSE_imagenet-1k" / settings / f"epoch_{e}"
        d.mkdir(parents=True)
        (d / f"metrics_epoch_{e}.txt").write_text(
            f"Layer 11 DSE Metric (Original): {e / 10}\nLayer 11 Inter-class Distance: 2.0\n"
            "Layer 11 Intra-class Radius (Image): 0.5\nLayer 11 Intra-class Radius (Batch): 0.5\n"
            "Layer 11 Effective Dimensionality: 0.4\n"
        )
    assert sdd(bench, "import", str(official), "--suite", "trust", "--method", "dino") == 0
    w2 = tmp_path / "w2.csv"
    w2.write_text("method,epoch,w2\n" + "".join(f"dino,{e},{1 + e / 100}\n" for e in EPOCHS))
    assert sdd(bench, "import", str(w2), "--suite", "trust") == 0
    assert "merged into earlier imports, which keep: dse" in capsys.readouterr().out
    rec = json.loads((results / "trust/imported/metrics/imagenet/dino/ep0030.json").read_text())
    assert rec["metrics"]["dse"] == 3.0 and rec["metrics"]["w2"] == pytest.approx(1.3)
    src = rec["imported"]["sources"]
    assert src["dse"]["file"].endswith("metrics_epoch_30.txt") and src["dse"]["line"] == 1
    assert src["w2"]["file"] == str(w2) and src["w2"]["row"] == 4 and len(src["w2"]["sha256"]) == 64
    assert src["dse_separability"] == {"derived_from": ["dse_inter", "dse_intra_image", "dse_intra_batch"]}
    # the same metric again: refused, naming it and its earlier file
    assert sdd(bench, "import", str(w2), "--suite", "trust") == 1
    err = capsys.readouterr().err
    assert "w2 of metrics/imagenet/dino/ep0010 were imported before (from " + str(w2) in err
    w2.write_text("method,epoch,w2\n" + "".join(f"dino,{e},{2 + e / 100}\n" for e in EPOCHS))
    assert sdd(bench, "import", str(w2), "--suite", "trust", "--replace") == 0
    rec = json.loads((results / "trust/imported/metrics/imagenet/dino/ep0030.json").read_text())
    assert rec["metrics"]["w2"] == pytest.approx(2.3) and rec["metrics"]["dse"] == 3.0  # only w2 replaced


def test_one_failed_cell_leaves_its_method_in_the_tau_means(bench, tmp_path):
    results = tmp_path / "results"
    full_world(bench, results, skip={("mocov3", "ade20k", 20)})
    computed(bench, results, "linear", "ade20k", "mocov3", 20, None, status="failed")
    tables(bench)
    mean = pd.read_csv(results / "trust/tables/kendall_tau.csv").set_index("metric")
    assert mean.loc["RankMe", "n_ADE20k"] == 2  # both methods, not the other one alone
    long = pd.read_csv(results / "trust/tables/kendall_tau_per_method.csv")
    moco = long[(long["method"] == "mocov3") & (long["dataset"] == "ade20k") & (long["metric"] == "RankMe")].iloc[0]
    assert moco["grid"] == "full" and moco["checkpoints"] == 4
    md = (results / "trust/tables/kendall_tau.md").read_text()
    assert "mocov3 / ade20k: 4 of 5 checkpoints evaluated; 1 failed (ep 20)" in md


def test_imported_numbers_are_marked_and_named_and_the_grid_rules_hold_for_them(bench, tmp_path, capsys):
    results = tmp_path / "results"
    full_world(bench, results, skip={("dino", "voc12_aug", 20)})
    f = tmp_path / "voc.csv"
    f.write_text("method,epoch,dataset,mIoU\ndino,20,voc12_aug,70.0\n")
    assert sdd(bench, "import", str(f), "--suite", "trust") == 0
    tables(bench)
    sdd_md = (results / "trust/tables/sdd.md").read_text()
    row = next(line for line in sdd_md.splitlines() if line.startswith("| dino | voc12_aug"))
    assert "| 70.00ⁱ | 20 |" in row and "| -24.04ⁱ |" in row  # best and diff (and the delta from the paper) marked
    assert f"linear/voc12_aug/dino/ep0020; files: {f}" in sdd_md
    assert (
        pd.read_csv(results / "trust/tables/sdd.csv").set_index("method").loc["dino"].iloc[0]["imported"]
        == "best,diff,delta_diff"
    )
    report = (results / "trust/REPORT.md").read_text()
    assert report.count("computed and an imported record") == 0  # no cell has both here
    # epochs outside the grid: refused, or recorded as such and kept out of the tables
    f.write_text("method,epoch,dataset,mIoU\ndino,60,voc12_aug,99.0\n")
    assert sdd(bench, "import", str(f), "--suite", "trust") == 1
    assert "epoch 60 of 'dino' is not in suite 'trust''s grid for linear/voc12_aug" in capsys.readouterr().err
    assert sdd(bench, "import", str(f), "--suite", "trust", "--allow-outside-grid") == 0
    tables(bench)
    assert (
        pd.read_csv(results / "trust/tables/sdd.csv")
        .set_index(["method", "dataset"])
        .loc[("dino", "voc12_aug"), "best"]
        == 70.0
    )
    assert "outside the suite's grid left out" in (results / "trust/REPORT.md").read_text()
    assert sdd(bench, "tables", "--suite", "trust", "--include-outside-grid") == 0
    assert (
        pd.read_csv(results / "trust/tables/sdd.csv")
        .set_index(["method", "dataset"])
        .loc[("dino", "voc12_aug"), "best"]
        == 99.0
    )


def test_an_mmseg_run_needs_its_protocol_and_its_evaluation_named(bench, tmp_path, capsys):
    (bench / "suites" / "two.yaml").write_text(
        SUITE.replace("name: trust", "name: two")
        + ("  - {protocol: linear_mini, datasets: [voc12_aug], epochs: [10]}\n")
    )
    run = tmp_path / "mm" / "20250101_000000" / "vis_data"
    run.mkdir(parents=True)
    (run / "scalars.json").write_text(
        "\n".join(
            json.dumps(x)
            for x in (
                {"loss": 1.0, "step": 10},
                {"mIoU": 40.0, "aAcc": 80.0, "mAcc": 50.0, "step": 20000},
                {"mIoU": 45.0, "aAcc": 81.0, "mAcc": 51.0, "step": 40000},
            )
        )
        + "\n"
    )
    args = [
        "import",
        str(tmp_path / "mm"),
        "--suite",
        "two",
        "--method",
        "dino",
        "--epoch",
        "10",
        "--dataset",
        "voc12_aug",
    ]
    assert sdd(bench, *args) == 1
    assert (
        "runs 2 protocols an mmseg run's mIoU could belong to (linear, linear_mini); give --protocol"
        in capsys.readouterr().err
    )
    assert sdd(bench, *args, "--protocol", "linear") == 1
    assert "2 evaluations (at iterations 20000, 40000); say which with --take" in capsys.readouterr().err
    assert sdd(bench, *args, "--protocol", "linear", "--take", "best") == 0
    rec = json.loads((tmp_path / "results/two/imported/linear/voc12_aug/dino/ep0010.json").read_text())
    assert rec["metrics"]["mIoU"] == 45.0 and rec["imported"]["sources"]["mIoU"]["line"] == 3
    # a metric its protocol does not produce is refused
    f = tmp_path / "wrong.csv"
    f.write_text("method,epoch,mIoU\ndino,10,50.0\n")
    assert sdd(bench, "import", str(f), "--suite", "two", "--protocol", "metrics") == 1
    assert "column 'mIoU' is not a metric of protocol 'metrics'" in capsys.readouterr().err


def test_the_last_checkpoint_of_an_import_is_the_grids_last(bench, tmp_path):
    results = tmp_path / "results"
    f = tmp_path / "part.csv"
    f.write_text("method,epoch,dataset,mIoU\n" + "".join(f"dino,{e},voc12_aug,{40 + e / 10}\n" for e in (10, 20, 30)))
    assert sdd(bench, "import", str(f), "--suite", "trust") == 0
    tables(bench)
    row = pd.read_csv(results / "trust/tables/sdd.csv").set_index("method").loc["dino"]
    assert row["last_epoch"] == 50 and pd.isna(row["last"]) and pd.isna(row["diff"])
    assert "the last checkpoint (ep 50) has no mIoU" in (results / "trust/tables/sdd.md").read_text()


# --------------------------------------------------------------------------------------------- staleness


def content_world(tmp_path, monkeypatch, ckpts: Path):
    data = worlds.imagefolder(tmp_path / "imagenet")
    monkeypatch.setenv("SDD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SDD_CKPT_ROOT", str(ckpts))
    bench = worlds.tiny_registry(tmp_path, data, ckpts)
    f = bench / "methods" / "tinyvit.yaml"
    f.write_text(f.read_text().replace(f"dir: {ckpts}/tinyvit", "dir: ${SDD_CKPT_ROOT}/tinyvit"))
    return bench


def test_copies_and_touches_keep_cells_done_and_a_rewrite_is_stale_with_its_reason(tmp_path, monkeypatch, capsys):
    from harness.jobs import execute

    ckpts = tmp_path / "ck"
    bench = content_world(tmp_path, monkeypatch, ckpts)
    worlds.dino_checkpoint(ckpts, "tinyvit", "vit_tiny_test", 1, seed=1)
    reg = load_registry(bench)
    cell = next(c for c in build_plan(reg, "tiny", methods=["tinyvit"]) if c.epoch == 1)
    results = tmp_path / "results"
    assert execute(cell, results, registry=reg)["status"] == "ok"
    # the results and the checkpoints copied elsewhere without their times (cp -r, rsync without -t)
    moved_results, moved_ckpts = tmp_path / "copy" / "results", tmp_path / "copy" / "ck"
    shutil.copytree(results, moved_results, copy_function=shutil.copy)
    shutil.copytree(ckpts, moved_ckpts, copy_function=shutil.copy)
    monkeypatch.setenv("SDD_CKPT_ROOT", str(moved_ckpts))
    moved = next(c for c in build_plan(load_registry(bench), "tiny", methods=["tinyvit"]) if c.epoch == 1)
    assert moved.state(moved_results)[0] == "done"
    path = moved_ckpts / "tinyvit" / "checkpoint0001.pth"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # touch
    assert moved.state(moved_results)[0] == "done"
    worlds.dino_checkpoint(moved_ckpts, "tinyvit", "vit_tiny_test", 1, seed=7)  # retrained: other bytes
    state, why = moved.state(moved_results)
    assert state == "stale" and why.startswith("the checkpoint's content changed (sha256 ")
    capsys.readouterr()
    assert main(["--registry", str(bench), "plan", "--suite", "tiny", "--results", str(moved_results)]) == 0
    out = capsys.readouterr().out
    assert "1 stale cell(s) will run again" in out and "the checkpoint's content changed" in out
    assert main(["--registry", str(bench), "plan", "--suite", "tiny", "--cells", "--results", str(moved_results)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "tinyvit/ep0001" in x)
    assert line.startswith("stale") and "content changed (sha256" in line
    assert main(["--registry", str(bench), "status", "--suite", "tiny", "--results", str(moved_results)]) == 0
    assert "the checkpoint's content changed" in capsys.readouterr().out
    assert (
        main(
            [
                "--registry",
                str(bench),
                "submit",
                "--suite",
                "tiny",
                "--cluster",
                "inline",
                "--dry-run",
                "--results",
                str(moved_results),
            ]
        )
        == 0
    )
    assert "of which 1 stale" in capsys.readouterr().out


def test_a_recipe_or_code_version_change_says_which(tmp_path, monkeypatch):
    import dataclasses

    from harness import kinds

    ckpts = tmp_path / "ck"
    bench = content_world(tmp_path, monkeypatch, ckpts)
    reg = load_registry(bench)
    cell = next(c for c in build_plan(reg, "tiny", methods=["tinyvit"]) if c.epoch == 1)
    results = tmp_path / "results"
    records.write_record(
        cell.record_path(results),
        {
            "suite": "tiny",
            "protocol": "metrics",
            "dataset": "imagenet",
            "method": "tinyvit",
            "epoch": 1,
            "status": "ok",
            "config_hash": cell.config_hash,
            "config": cell.config,
            "metrics": {"dse": 1.0},
        },
    )
    assert cell.state(results)[0] == "done"
    p = bench / "protocols" / "metrics.yaml"
    p.write_text(p.read_text().replace("num_images: 24", "num_images: 20"))
    changed = next(c for c in build_plan(load_registry(bench), "tiny", methods=["tinyvit"]) if c.epoch == 1)
    state, why = changed.state(results)
    assert state == "stale" and why == "recipe changed: protocol.params.num_images 24 -> 20"
    p.write_text(p.read_text().replace("num_images: 20", "num_images: 24"))
    monkeypatch.setitem(
        kinds.PROTOCOL_KINDS, "metrics", dataclasses.replace(kinds.PROTOCOL_KINDS["metrics"], version=2)
    )
    bumped = next(c for c in build_plan(load_registry(bench), "tiny", methods=["tinyvit"]) if c.epoch == 1)
    state, why = bumped.state(results)
    assert state == "stale" and why == "code version changed (kind metrics: 1 -> 2)"


def test_tables_print_no_library_warning(tmp_path):
    """`sdd tables` printed pandas' PerformanceWarning (a frame built column by column)."""
    import warnings

    from harness.analysis import build_tables

    worlds.synthetic_suite(tmp_path, "syn", methods=3, epochs=6)
    from harness.collect import collect

    t = collect(tmp_path, "syn").table
    lin = t["protocol"] == "linear"  # ADE20K's 150 per-class IoU columns, as a real results.csv has them
    t = pd.concat([t, pd.DataFrame({f"IoU.class{i}": t["mIoU"].where(lin) for i in range(150)})], axis=1)
    t.drop(columns=["device", "gpus", "world_size"]).to_csv(tmp_path / "syn" / "results.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_tables(tmp_path / "syn")
