"""What runs is what the protocol file and the published recipe say (issue 13)."""

import shutil
from pathlib import Path

import pytest

from harness.plan import build_plan
from harness.registry import RegistryError, load_registry
from tests import worlds

ROOT = Path(__file__).resolve().parents[1]


def copy_registry(tmp_path) -> Path:
    bench = tmp_path / "bench"
    shutil.copytree(ROOT / "benchmarks", bench)
    return bench


def test_a_misspelt_protocol_parameter_is_a_registry_error_with_file_line_and_fix(tmp_path):
    bench = copy_registry(tmp_path)
    p = bench / "protocols" / "linear.yaml"
    p.write_text(p.read_text().replace("iters: 40000", "iterz: 40000"))
    with pytest.raises(RegistryError) as e:
        load_registry(bench)
    msg = str(e.value)
    line = next(i for i, text in enumerate(p.read_text().splitlines(), 1) if "iterz" in text)
    assert f"linear.yaml:{line}: params.schedule.iterz: unknown key 'iterz'" in msg and "Did you mean 'iters'?" in msg
    p.write_text(p.read_text().replace("iterz: 40000", "iters: many"))
    with pytest.raises(RegistryError, match=r"params.schedule.iters: .*valid integer"):
        load_registry(bench)


def test_every_shipped_protocol_key_is_read_and_defaults_live_in_the_schema(registry):
    from harness.kinds import PROTOCOL_KINDS

    for p in registry.protocols.values():  # resolved: every schema field present, nothing else
        schema = PROTOCOL_KINDS[p.kind].params
        assert set(p.params) == set(schema.model_fields), p.name
    lin = registry.protocol("linear").params
    assert (
        lin["schedule"]["iters"] == 40000 and lin["num_workers"] is None and lin["train_scale"] is None
    )  # the dataset's


def test_the_config_hash_covers_resolved_parameters_and_the_backend_that_will_run(tmp_path):
    from harness.plan import detectron2_backend

    bench = copy_registry(tmp_path)
    hashes = lambda: {c.id: c.config_hash for c in build_plan(load_registry(bench), "udi", protocols=["maskrcnn"])}
    before = hashes()
    p = bench / "protocols" / "maskrcnn.yaml"
    p.write_text(p.read_text().replace("  detections_per_img: 100", "  detections_per_img: 100\n  score_thresh: 0.0"))
    assert hashes() == before  # stating a default changes nothing: the hash is of the resolved parameters
    p.write_text(p.read_text().replace("backend: auto", f"backend: {detectron2_backend()}"))
    assert hashes() == before  # `auto` is resolved when planning: the same backend, the same cells
    other = "torchvision" if detectron2_backend() == "detectron2" else "detectron2"
    p.write_text(p.read_text().replace(f"backend: {detectron2_backend()}", f"backend: {other}"))
    assert all(before[k] != v for k, v in hashes().items())  # another backend, other cells


def test_cityscapes_probes_run_at_cityscapes_scale(registry):
    from harness.jobs.segmentation import _scales
    from harness.params import LinearParams

    p = LinearParams.model_validate(registry.protocol("linear").params)
    crop, scale, test = _scales(registry.dataset("cityscapes"), p)
    assert crop == (512, 1024) and scale == (2048, 1024) and test == (2048, 1024)
    assert _scales(registry.dataset("ade20k"), p) == ((512, 512), (2048, 512), (2048, 512))
    # the sliding window is the dataset's too: Cityscapes' 512x1024 window strided 341x683, ADE20K's 512 by 341
    from harness.jobs.segmentation import _test_mode

    assert _test_mode(registry.dataset("cityscapes"), p, crop) == dict(
        mode="slide", crop_size=(512, 1024), stride=(341, 683)
    )
    assert _test_mode(registry.dataset("ade20k"), p, (512, 512)) == dict(
        mode="slide", crop_size=(512, 512), stride=(341, 341)
    )


MASKRCNN = """name: maskrcnn_tiny
kind: maskrcnn
title: tiny Mask R-CNN
datasets: [coco_instances]
params: {backend: torchvision, iters: 12, batch_size: 2, min_size: 96, max_size: 96, anchor_sizes: [8, 16, 32, 64, 128],
  out_channels: 16, optimizer: {lr: 0.001, weight_decay: 0.05, layer_decay_rate: 0.7}, warmup_iters: 4,
  warmup_factor: 0.001, steps: [8], gamma: 0.1, checkpoint_interval: 100}
resources: {gpus: 0, cpus: 1, mem_gb: 2, time_min: 5, gpu_hours: 0.0}
"""


def test_mask_rcnn_trains_with_the_published_optimizer_and_schedule(tmp_path, monkeypatch):
    """AdamW, no decay on norms, biases, position and class tokens, ViTDet's layer-wise lr decay,
    linear warm-up, x0.1 at the step: read back from the optimizer that ran (torchvision backend)."""
    from harness.jobs import execute
    from harness.mini import generate

    data = tmp_path / "data"
    generate.coco_instances(data / "coco", train=6, val=2, size=96)
    monkeypatch.setenv("SDD_DATA_ROOT", str(data))
    ck = tmp_path / "ck"
    worlds.dino_checkpoint(ck, "tinyvit", "vit_tiny_test", 1, seed=1)
    bench = worlds.tiny_registry(tmp_path, data, ck)
    (bench / "protocols" / "maskrcnn_tiny.yaml").write_text(MASKRCNN)
    (bench / "suites" / "det.yaml").write_text(
        "name: det\ntitle: det\nmethods: [tinyvit]\ngrid:\n"
        "  - protocol: maskrcnn_tiny\n    datasets: [coco_instances]\n    epochs: [1]\n"
    )
    rec = execute(build_plan(load_registry(bench), "det")[0], tmp_path / "results")
    assert rec["status"] == "ok", rec.get("traceback")
    assert (
        rec["optimizer"]["type"] == "AdamW" and rec["schedule"]["steps"] == [8] and rec["schedule"]["warmup_iters"] == 4
    )
    groups = rec["param_groups"]
    no_decay = [g for g in groups if g["weight_decay"] == 0.0]
    names = [n for g in no_decay for n in g["examples"]]
    assert no_decay and all(g["weight_decay"] in (0.0, 0.05) for g in groups)
    assert any("pos_embed" in n or "cls_token" in n or ".norm" in n or "bias" in n for n in names)
    depth = 3  # vit_tiny_test
    lrs = sorted({round(g["lr"], 12) for g in groups})
    assert round(0.001 * 0.7 ** (depth + 1), 12) in lrs and 0.001 in lrs  # embeddings and the heads
    # after 12 steps: past the warm-up and one x0.1 step
    assert max(rec["final_lrs"]) == pytest.approx(0.001 * 0.1)


def hand_rows(epochs=(10, 20, 30, 40, 50), miou_epochs=None, method="A"):
    rows = []
    for i, e in enumerate(epochs):
        rows.append(
            {
                "suite": "s",
                "protocol": "metrics",
                "kind": "metrics",
                "dataset": "imagenet",
                "method": method,
                "epoch": e,
                "status": "ok",
                "dse": float(i),
                "dse_separability": float(i),
                "dse_dim": 0.5 + i / 10,
                "config_hash": "h",
                "current": True,
            }
        )
    for i, e in enumerate(miou_epochs or epochs):
        rows.append(
            {
                "suite": "s",
                "protocol": "linear",
                "kind": "linear",
                "dataset": "voc12_aug",
                "method": method,
                "epoch": e,
                "status": "ok",
                "mIoU": 10.0 + 10 * i,
                "config_hash": "h",
                "current": True,
            }
        )
    return rows


def test_tables_leave_out_stale_records_unless_asked(tmp_path):
    import pandas as pd

    from harness.analysis import build_tables

    d = tmp_path / "s"
    d.mkdir()
    rows = hand_rows()
    rows[-1].update(current=False, mIoU=99.0)  # ep 50's probe is of an older recipe
    pd.DataFrame(rows).to_csv(d / "results.csv", index=False)
    _, tables, _ = build_tables(d)
    sdd = next(t for t in tables if t.name == "sdd")
    assert sdd.frame.iloc[0]["best"] == 40.0 and any("1 stale record(s)" in n and "ep0050" in n for n in sdd.context)
    assert pd.isna(sdd.frame.iloc[0]["last"])  # the last checkpoint's mIoU is gone: no silent shift to ep 40
    assert any("the last checkpoint (ep 50) has no mIoU" in n for n in sdd.notes)
    _, tables, _ = build_tables(d, include_stale=True)
    assert next(t for t in tables if t.name == "sdd").frame.iloc[0]["best"] == 99.0


def test_a_full_grid_with_missing_cells_stays_full_and_the_guided_grid_is_marked_and_not_averaged():
    """Issue 22: only the grid the plan did not ask for (the DSE-guided one) is kept out of the means; a full
    grid with cells not run (or failed) keeps its method in the means and the notes name what is missing."""
    import pandas as pd

    from harness.analysis.tables import kendall_tables, sdd_table, selections

    table = pd.DataFrame(hand_rows(method="A") + hand_rows(method="B", miou_epochs=(10, 30, 50)))
    mean, long, _ = kendall_tables(table)
    long = long.frame
    assert set(long["grid"]) == {"full"}
    row = mean.frame.set_index("metric").loc["DSE (λ=1)"]
    assert row["n_VOC"] == 2  # B stays in the mean
    assert any(
        n.startswith("B / voc12_aug: 3 of 5 checkpoints evaluated; 2 without a record (ep 20, 40)") for n in mean.notes
    )
    # B's downstream checkpoints are exactly its DSE selection and its last one: the DSE-guided grid
    sel = selections(table)["B"]
    guided = sorted(set(sel) | {50})
    table = pd.DataFrame(hand_rows(method="A") + hand_rows(method="B", miou_epochs=tuple(guided)))
    mean, long, _ = kendall_tables(table)
    long = long.frame
    assert set(long.loc[long["method"] == "B", "grid"]) == {"guided"} and set(
        long.loc[long["method"] == "A", "grid"]
    ) == {"full"}
    row = mean.frame.set_index("metric").loc["DSE (λ=1)"]
    assert row["n_VOC"] == 1 and row["VOC"] == pytest.approx(1.0)  # A alone
    assert any("DSE-guided grid" in n for n in mean.notes) and any(
        "Avg. = the mean of the per-dataset columns: VOC" in n for n in mean.notes
    )
    assert sdd_table(table).frame.set_index("method").loc["B", "grid"] == "guided"


def test_image_level_metrics_read_the_class_token_and_the_dense_ones_float32_patch_tokens(tmp_path, monkeypatch):
    import torch

    from harness.jobs import execute
    from harness.metrics import compute_all
    from harness.metrics.spectrum import rankme

    data = worlds.imagefolder(tmp_path / "imagenet")
    monkeypatch.setenv("SDD_CACHE", str(tmp_path / "cache"))
    reg = load_registry(worlds.tiny_registry(tmp_path, data, tmp_path / "ck"))
    worlds.dino_checkpoint(tmp_path / "ck", "tinyvit", "vit_tiny_test", 1, seed=1)
    worlds.dino_checkpoint(tmp_path / "ck", "tinyres", "resnet_tiny_test", 1, seed=2)
    recs = {c.method: execute(c, tmp_path / "results") for c in build_plan(reg, "tiny") if c.epoch == 1}
    vit, res = recs["tinyvit"], recs["tinyres"]
    assert vit["status"] == "ok" and vit["embeddings"]["image_level"] == "class token (after the final norm)"
    assert res["embeddings"]["image_level"] == "global average pool of the last layer"
    cached = torch.load(next((tmp_path / "cache" / "features").glob("tinyvit_*.pt")), weights_only=True)
    dense, emb = cached["features"], cached["embeddings"]
    assert dense.dtype == emb.dtype == torch.float32 and vit["features"]["dtype"] == "float32"
    assert vit["metrics"]["rankme"] == pytest.approx(rankme(emb))  # the class tokens ...
    assert abs(rankme(dense.mean(dim=1)) - vit["metrics"]["rankme"]) > 1e-3  # ... not the mean patch token
    params = reg.protocol("metrics").params
    again = compute_all(
        dense, {k: v for k, v in params.items() if k not in ("lidar",)} | {"lidar": {"num_images": 0}}, embeddings=emb
    )[0]
    assert again["dse"] == vit["metrics"]["dse"]  # DSE from the float32 patch tokens, bit for bit


def test_the_image_level_tau_table_joins_dse_and_rankme_with_knn_top1():
    import pandas as pd

    from harness.analysis.tables import image_level_tau_table

    rows = hand_rows()
    for i, e in enumerate((10, 20, 30, 40, 50)):
        rows[i]["rankme"] = float(5 - i)  # falls while top-1 rises: τ = -1
        rows.append(
            {
                "suite": "s",
                "protocol": "knn",
                "kind": "knn",
                "dataset": "imagenet",
                "method": "A",
                "epoch": e,
                "status": "ok",
                "top1": 50.0 + i,
                "config_hash": "h",
                "current": True,
            }
        )
    t = image_level_tau_table(pd.DataFrame(rows)).frame.set_index("metric")
    assert t.loc["DSE", "tau"] == pytest.approx(1.0) and t.loc["RankMe", "tau"] == pytest.approx(-1.0)
    assert t.loc["DSE", "paper"] == 0.86 and t.loc["RankMe", "paper"] == 0.79


def test_efficiency_times_dse_alone_and_alpha_req_fits_reptrix_ranks(registry):
    import pandas as pd

    from harness.analysis.tables import efficiency_table

    rows = hand_rows()
    for r in rows:
        r.update(device="cuda", gpus=1, world_size=1, wall_s=3600.0 if r["protocol"] == "linear" else 100.0)
        if r["protocol"] == "metrics":
            r["dse_s"] = 18.0  # checkpoint + dense features + DSE; LiDAR's views are the other 82 s
    eff = efficiency_table(pd.DataFrame(rows)).frame.iloc[0]
    assert eff["dse_gpu_h"] == pytest.approx(5 * 18 / 3600) and eff["supervised_gpu_h"] == pytest.approx(5.0)
    assert registry.protocol("metrics").params["alpha_req"]["fit_min_rank"] == 11


def test_the_preflight_checks_every_split_any_protocol_of_the_suite_reads(tmp_path, monkeypatch):
    from harness.cli import preflight
    from harness.mini import generate

    data = tmp_path / "data"
    generate.imagenet(data / "imagenet-1k", classes=2, train=4, val=1, size=32)
    for f in (data / "imagenet-1k" / "val").rglob("*.JPEG"):  # k-NN reads val; the metrics job does not
        f.unlink()
    monkeypatch.setenv("SDD_DATA_ROOT", str(data))
    bench = copy_registry(tmp_path)
    (bench / "suites" / "pf.yaml").write_text(
        "name: pf\ntitle: pf\nmethods: [mini_dino]\ngrid:\n"
        "  - protocol: metrics_mini\n    datasets: [imagenet]\n"
        "  - protocol: knn_mini\n    datasets: [imagenet]\n"
    )
    problems = "\n".join(preflight(load_registry(bench), "pf"))
    assert "imagenet-1k/val" in problems and "no image files" in problems
