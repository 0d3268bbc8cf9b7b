"""No silent wrong number, round 2 (issue 23): outputs are checked as well as inputs, every parameter has
a domain, one cell has one record, damaged splits are named, results follow their data. Each class is
tried with the trigger the issue names and with another one."""

import json
import math
import os
import re
import shutil
import time

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from harness.cli import main
from harness.jobs import OutputCheckError, check_outputs, execute
from harness.plan import build_plan
from harness.registry import RegistryError, load_registry
from tests import seg_world, worlds


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return seg_world.data_world(tmp_path_factory.mktemp("data"))


@pytest.fixture
def seg(tmp_path, data, monkeypatch):
    mine = tmp_path / "data"
    shutil.copytree(data, mine)
    monkeypatch.setenv("SDD_DATA_ROOT", str(mine))
    monkeypatch.setenv("SDD_CACHE", str(tmp_path / "cache"))
    ck = tmp_path / "ck"
    worlds.dino_checkpoint(ck, "tinyvit", "vit_tiny_test", 1, seed=1)
    return seg_world.seg_registry(tmp_path, mine, ck, iters=12), mine, ck


def one(reg, protocol, dataset="ade20k", suite="seg", method="tinyvit"):
    return next(c for c in build_plan(reg, suite, protocols=[protocol], methods=[method]) if c.dataset == dataset)


# --------------------------------------------------------------------------------------------- 1. outputs


def test_a_probe_whose_loss_goes_nan_fails_naming_the_iteration(seg, tmp_path):
    bench, _, _ = seg
    p = bench / "protocols" / "linear_tiny.yaml"
    p.write_text(p.read_text().replace("optimizer: {lr: 0.01}", "optimizer: {lr: 1.0e+12}"))
    rec = execute(one(load_registry(bench), "linear_tiny"), tmp_path / "results")
    assert rec["status"] == "failed" and rec.get("metrics") is None
    assert "the training loss is not finite at iteration" in rec["error"] and "lr" in rec["error"]


@pytest.mark.parametrize(
    "kind, metrics, undefined, message",
    [
        ("linear", {"mIoU": 47.0, "IoU": {"a": 0.47}}, {}, None),  # a fine result
        ("linear", {"mIoU": float("nan"), "IoU": {}}, {}, "mIoU = nan is outside its domain"),
        ("linear", {"mIoU": 147.0}, {}, "mIoU = 147.0 is outside its domain, a number in [0, 100]"),
        ("linear", {"mIoU": 40.0, "IoU": {"a": float("inf")}}, {}, "IoU of 1 class(es) outside"),
        ("knn", {"top1": 50.0, "top5": float("inf")}, {}, "top5 = inf"),
        ("maskrcnn", {"bbox_AP": float("nan")}, {"bbox_AP": "no ground truth"}, None),  # undefined, with a reason
        ("maskrcnn", {"bbox_AP": float("nan")}, {}, "bbox_AP = nan"),
        ("davis", {"JF_mean": 1.7}, {}, "JF_mean = 1.7 is outside its domain, a number in [0, 1]"),
        ("metrics", {"dse": 1.0, "w2": -0.5}, {}, "w2 = -0.5 is outside its domain"),
        ("metrics", {"dse": 1.0, "made_up": 3.0}, {}, "made_up is not a metric of kind metrics"),
    ],
)
def test_every_job_result_is_checked_against_its_kinds_metrics(kind, metrics, undefined, message):
    results = {"metrics": metrics, "undefined_metrics": undefined}
    if message is None:
        check_outputs(kind, results)
    else:
        with pytest.raises(OutputCheckError, match=re.escape(message)):
            check_outputs(kind, results)


def test_a_constant_predictor_is_named_in_the_record():
    from harness.jobs.mm_modules import SDDIoUMetric

    metric = SDDIoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = {"classes": ("wall", "sky", "tree")}
    # (intersect, union, predicted, label) per class: everything predicted as 'sky'
    batch = (
        torch.tensor([0.0, 50.0, 0.0]),
        torch.tensor([40.0, 100.0, 10.0]),
        torch.tensor([0.0, 100.0, 0.0]),
        torch.tensor([40.0, 50.0, 10.0]),
    )
    out = metric.compute_metrics([batch])
    assert out["_pred.dominant_class"] == "sky" and out["_pred.dominant_share"] == 1.0 and out["_pred.classes"] == 1


def knn_world(tmp_path, monkeypatch, scale=1.0, temperature=0.07, k=20):
    from harness.mini import generate

    data = tmp_path / "kdata"
    generate.imagenet(data / "imagenet-1k", classes=4, train=10, val=4)
    monkeypatch.setenv("SDD_DATA_ROOT", str(data))
    ck = tmp_path / "kck"
    path = worlds.dino_checkpoint(ck, "tinyvit", "vit_tiny_test", 1, seed=1)
    if scale != 1.0:  # finite weights whose activations overflow: non-finite features from a sound file
        obj = torch.load(path, weights_only=True)
        obj["teacher"] = {
            k_: (v * scale if k_.endswith("patch_embed.proj.weight") else v) for k_, v in obj["teacher"].items()
        }
        torch.save(obj, path)
    bench = worlds.tiny_registry(tmp_path, data / "imagenet-1k", ck)
    (bench / "datasets" / "imagenet.yaml").write_text(
        f"name: imagenet\ntitle: mini\nkind: imagenet\nroot: {data / 'imagenet-1k'}\ntask: classification\n"
        "img_suffix: .JPEG\nsplits:\n  train: {img_dir: train}\n  val: {img_dir: val}\n"
    )
    (bench / "protocols" / "knn_tiny.yaml").write_text(
        f"name: knn_tiny\nkind: knn\ntitle: tiny knn\ndatasets: [imagenet]\n"
        f"params: {{ks: [{k}], k: {k}, temperature: {temperature}, "
        "resize: 72, crop: 64, batch_size: 16}\nresources: {gpus: 0, cpus: 1, mem_gb: 2, time_min: 5, gpu_hours: 0.0}\n"
    )
    (bench / "suites" / "k.yaml").write_text(
        "name: k\ntitle: k\nmethods: [tinyvit]\ngrid:\n  - {protocol: knn_tiny, datasets: [imagenet]}\n"
    )
    return bench


def test_knn_from_non_finite_features_fails_naming_them(tmp_path, monkeypatch):
    bench = knn_world(tmp_path, monkeypatch, scale=1e38)
    rec = execute(one(load_registry(bench), "knn_tiny", "imagenet", suite="k"), tmp_path / "results")
    assert rec["status"] == "failed" and "the embeddings of" in rec["error"] and "NaN or inf" in rec["error"]


def test_knn_k_beyond_the_training_images_fails_and_a_small_temperature_does_not_overflow(tmp_path, monkeypatch):
    bench = knn_world(tmp_path, monkeypatch, k=41)  # 40 training images
    rec = execute(one(load_registry(bench), "knn_tiny", "imagenet", suite="k"), tmp_path / "results")
    assert rec["status"] == "failed" and "k = 41 neighbours, but the training split has 40 images" in rec["error"]
    from harness.jobs.knn import knn_classify

    train = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=1)
    votes = knn_classify(train, torch.tensor([0, 0, 1]), torch.tensor([[0.6, 0.8]]), classes=2, k=3, temperature=1e-4)
    assert torch.isfinite(votes).all() and votes[0].argmax() == 1  # exp(1/1e-4) would be inf


def test_davis_propagation_is_finite_at_a_small_temperature():
    from harness.jobs.davis import propagate

    torch.manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    seg = torch.nn.functional.one_hot(torch.randint(0, 3, (4, 4)), 3).permute(2, 0, 1).float()
    for t in (0.1, 1e-4):
        soft = propagate(f, [f], [seg], 4, 4, topk=5, temperature=t, mask=None)
        assert torch.isfinite(soft).all()
    # the same weights as DINO's exp(sim / T) where that does not overflow
    src = f @ f.T / 0.1
    aff = torch.exp(src)
    kth = torch.topk(aff, 5, dim=0).values.min(dim=0).values
    aff = torch.where(aff < kth, 0, aff)
    aff = aff / aff.sum(0, keepdim=True)
    want = (seg.reshape(3, -1) @ aff).reshape(3, 4, 4)
    assert torch.allclose(propagate(f, [f], [seg], 4, 4, topk=5, temperature=0.1, mask=None), want, atol=1e-6)


# --------------------------------------------------------------------------------------------- 2. domains


@pytest.mark.parametrize(
    "protocol, old, new, message",
    [
        ("knn_mini", "temperature: 0.07", "temperature: 0", "params.temperature: Input should be greater than 0"),
        ("davis_mini", "temperature: 0.1", "temperature: -0.1", "params.temperature: Input should be greater than 0"),
        (
            "linear_mini",
            "schedule: {iters: 80",
            "schedule: {iters: 0",
            "params.schedule.iters: Input should be greater than or equal to 1",
        ),
        (
            "upernet_mini",
            "layer_decay_rate: 0.9",
            "layer_decay_rate: 1.5",
            "layer_decay_rate: Input should be less than or equal to 1",
        ),
        (
            "metrics_mini",
            "tokens_per_image: 8",
            "tokens_per_image: 0",
            "tokens_per_image: Input should be greater than or equal to 1",
        ),
    ],
)
def test_a_parameter_outside_its_domain_is_a_registry_error_with_file_and_line(tmp_path, protocol, old, new, message):
    from harness.registry import ROOT

    bench = tmp_path / "bench"
    shutil.copytree(ROOT / "benchmarks", bench)
    p = bench / "protocols" / f"{protocol}.yaml"
    assert old in p.read_text(), (protocol, old)
    p.write_text(p.read_text().replace(old, new))
    with pytest.raises(RegistryError) as e:
        load_registry(bench)
    text = str(e.value)
    assert f"{protocol}.yaml:" in text and message in text
    assert "unknown protocol" not in text  # the suites that use it do not add noise


def test_cross_field_domains(tmp_path):
    from pydantic import ValidationError

    from harness.params import MaskRCNNParams, SegmentationParams, ViewAugment

    for bad in (
        lambda: ViewAugment(scale=(0.9, 0.2)),
        lambda: SegmentationParams(ratio_range=(2.0, 0.5)),
        lambda: MaskRCNNParams(iters=100, steps=(80, 120)),
        lambda: MaskRCNNParams(min_size=900, max_size=800),
    ):
        with pytest.raises(ValidationError):
            bad()


# --------------------------------------------------------------------------------------------- 3. one record


def test_backup_copies_of_a_record_are_stray_files_never_rows(tmp_path, capsys):
    worlds.synthetic_suite(tmp_path, "syn", methods=1, epochs=3)
    cell_dir = tmp_path / "syn" / "runs" / "linear" / "ade20k" / "m000"
    real = json.loads((cell_dir / "ep0010.json").read_text())
    for name, miou in (("ep0010-old.json", 99.0), ("ep10.json", 98.0), ("ep00010.json", 97.0)):
        (cell_dir / name).write_text(json.dumps({**real, "metrics": {"mIoU": miou}}))
    from harness.collect import collect

    got = collect(tmp_path, "syn")
    rows = got.table[(got.table["protocol"] == "linear") & (got.table["dataset"] == "ade20k")]
    assert len(rows) == 3 and rows["mIoU"].max() < 90  # the real records only
    assert sorted(os.path.basename(p) for p in got.stray) == ["ep00010.json", "ep0010-old.json", "ep10.json"]


def test_a_duplicated_row_in_results_csv_is_an_error(tmp_path):
    from harness.analysis import TablesError, build_tables
    from harness.collect import collect

    worlds.synthetic_suite(tmp_path, "syn", methods=2, epochs=3)
    t = collect(tmp_path, "syn").table
    t = pd.concat([t, t.iloc[[5]]])  # a hand-edited table with one cell twice
    t.to_csv(tmp_path / "syn" / "results.csv", index=False)
    with pytest.raises(TablesError, match="rows for 1 cell"):
        build_tables(tmp_path / "syn")


# --------------------------------------------------------------------------------------------- 4. imports


@pytest.mark.parametrize(
    "text, message",
    [
        ("method,epoch,dse\ndino,10,1.0\ndino,10,2.0\n", "dse of 'dino' epoch 10 (metrics/imagenet) appears twice"),
        ("method,epoch,metric,value\ndino,10,w2,1.0\ndino,10,w2,1.5\n", "w2 of 'dino' epoch 10"),
        ("method,epoch,dse\ndino,10.5,1.0\n", "epoch '10.5' is not a whole number"),
        ("method,epoch,dse\ndino,10,nan\n", "'nan' is not a finite number"),
        ("method,epoch,DSE,dse\ndino,10,1.0,2.0\n", "columns 'DSE' and 'dse' differ only in case"),
        (
            "method,epoch,dataset,mIoU\ndino,10,voc12_aug,147\n",
            "mIoU = 147.0 is outside its domain, a number in [0, 100]",
        ),
        ("method,epoch,dse_dim\ndino,10,3.0\n", "dse_dim = 3.0 is outside its domain"),
    ],
)
def test_imports_refuse_what_they_should(tmp_path, monkeypatch, capsys, text, message):
    from harness.registry import ROOT

    monkeypatch.setenv("SDD_RESULTS", str(tmp_path / "results"))
    bench = tmp_path / "bench"
    shutil.copytree(ROOT / "benchmarks", bench)
    (bench / "suites" / "imp.yaml").write_text(
        "name: imp\ntitle: i\nmethods: [dino]\ngrid:\n  - {protocol: metrics, datasets: [imagenet], epochs: [10, 20]}\n"
        "  - {protocol: linear, datasets: [voc12_aug], epochs: [10, 20]}\n"
    )
    f = tmp_path / "in.csv"
    f.write_text(text)
    assert main(["--registry", str(bench), "import", str(f), "--suite", "imp"]) == 1
    err = capsys.readouterr().err
    assert message in err and "nothing was imported" in err
    assert not (tmp_path / "results" / "imp" / "imported").exists()  # (the suite's folder holds only its lock)


# --------------------------------------------------------------------------------------------- 5. splits


def test_a_split_list_naming_an_image_twice_is_refused(seg, tmp_path):
    bench, mine, _ = seg
    voc = next(mine.rglob("VOC2012"))
    lst = next(p for p in voc.rglob("*.txt") if "val" in p.name)
    lines = lst.read_text().splitlines()
    lst.write_text("\n".join(lines + [lines[0]]) + "\n")
    rec = execute(one(load_registry(bench), "linear_tiny", "voc12_aug"), tmp_path / "results")
    assert rec["status"] == "failed" and "listed twice" in rec["error"] and f"'{lines[0]}'" in rec["error"]


def test_a_davis_sequence_with_a_missing_middle_frame_is_refused(tmp_path, monkeypatch):
    from harness.datasets import DatasetError, davis_sequences, root_of
    from harness.mini import generate
    from harness.registry import ROOT

    data = tmp_path / "d"
    generate.davis2017(data / "DAVIS", sequences=2, frames=8, size=(64, 96))
    monkeypatch.setenv("SDD_DATA_ROOT", str(data))
    ds = load_registry(ROOT / "benchmarks").dataset("davis2017")
    root = root_of(ds)
    seq = sorted((root / ds.splits["val"].img_dir).iterdir())[0]
    frame = sorted(seq.iterdir())[3]
    frame.unlink()  # the frame and its annotation: no unpaired file to notice
    (root / ds.splits["val"].ann_dir / seq.name / (frame.stem + ds.seg_map_suffix)).unlink()
    with pytest.raises(DatasetError, match=f"frame\\(s\\) {int(frame.stem)} missing between"):
        davis_sequences(ds, root, "val")


@pytest.mark.parametrize("mode", ["I;16", "CMYK", "P", "RGBA", "LA", "F"])
def test_every_image_mode_is_decoded_right_or_refused(tmp_path, mode):
    from harness.datasets import DatasetError, _image_size, open_rgb

    grey = np.full((8, 8), 100, np.uint8)
    path = tmp_path / f"img_{mode.replace(';', '')}.{'tif' if mode in ('F', 'CMYK') else 'png'}"
    if mode == "I;16":
        Image.fromarray((grey.astype(np.uint16) * 256)).save(path)  # 16-bit: 100 * 256 = 25600
    elif mode == "F":
        Image.fromarray(grey.astype(np.float32)).save(path)
    else:
        Image.fromarray(np.stack([grey] * 3, -1)).convert(mode).save(path)
    if mode == "F":
        with pytest.raises(DatasetError, match="mode F cannot be read as 8-bit RGB"):
            open_rgb(path)
        assert "cannot be read" in _image_size(path)[1]
        return
    px = np.asarray(open_rgb(path))
    assert px.shape == (8, 8, 3) and _image_size(path)[1] is None
    assert abs(int(px.mean()) - 100) <= 3, (mode, px.mean())  # 16-bit scaled, not clipped to white


def test_an_ade_label_map_may_hold_the_ignore_index(tmp_path):
    from harness.datasets import _label_problems
    from harness.registry import ROOT

    ds = load_registry(ROOT / "benchmarks").dataset("ade20k")
    img, ann = tmp_path / "a.jpg", tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    lab = np.ones((8, 8), np.uint8)
    lab[0, 0] = 255  # "ignore" in mmseg, kept so by reduce_zero_label
    Image.fromarray(lab).save(ann)
    assert _label_problems(ds, img, ann) == []
    lab[0, 1] = 200  # class 199 of 150: out of range
    Image.fromarray(lab).save(ann)
    assert "label values [199]" in _label_problems(ds, img, ann)[0]


# --------------------------------------------------------------------------------------------- 6. data changes


def test_a_record_follows_the_data_it_read(seg, tmp_path, capsys):
    bench, mine, _ = seg
    reg = load_registry(bench)
    c = one(reg, "linear_tiny")
    results = tmp_path / "results"
    rec = execute(c, results)
    assert rec["status"] == "ok" and set(rec["inputs"]["data"]) == {"train", "val"}
    assert c.state(results)[0] == "done"
    # the dataset copied elsewhere: the same files, the same fingerprint
    moved = tmp_path / "moved"
    shutil.copytree(mine, moved, copy_function=shutil.copy)
    os.environ["SDD_DATA_ROOT"] = str(moved)
    assert c.state(results)[0] == "done"
    # one label map fixed (another size): stale, with the reason
    ann = sorted((moved / "ade" / "ADEChallengeData2016" / "annotations" / "validation").glob("*.png"))[0]
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(ann)
    from harness.datasets import forget_fingerprints

    forget_fingerprints()  # a new command would list the split afresh (a running one: within a minute)
    state, why = c.state(results)
    assert state == "stale" and why.startswith("the data it read changed: dataset 'ade20k' split 'val'")
    # a data root that is not there: not done, and not re-run either until it is fixed
    os.environ["SDD_DATA_ROOT"] = str(tmp_path / "nowhere")
    state, why = c.state(results)
    assert state == "stale" and why.startswith("its data is not found here") and "SDD_DATA_ROOT=" in why
    assert (
        main(
            [
                "--registry",
                str(bench),
                "submit",
                "--suite",
                "seg",
                "--cluster",
                "inline",
                "--protocol",
                "linear_tiny",
                "--method",
                "tinyvit",
                "--dry-run",
                "--results",
                str(results),
            ]
        )
        == 0
    )
    assert "stale, its data is not found here" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------- 8. names


@pytest.mark.parametrize("kind, name", [("suites", ".."), ("methods", "."), ("suites", "a b")])
def test_names_that_cannot_be_a_path_segment_are_refused(tmp_path, kind, name):
    from harness.registry import ROOT

    bench = tmp_path / "bench"
    shutil.copytree(ROOT / "benchmarks", bench)
    (bench / kind / f"{name}.yaml").write_text(f"name: '{name}'\n")
    with pytest.raises(RegistryError, match="cannot be a name"):
        load_registry(bench)


def test_a_suite_that_would_run_a_cell_twice_is_refused(tmp_path):
    from harness.registry import ROOT

    bench = tmp_path / "bench"
    shutil.copytree(ROOT / "benchmarks", bench)
    (bench / "suites" / "dup.yaml").write_text(
        "name: dup\ntitle: d\nmethods: [dino, mocov3, dino]\ngrid:\n  - {protocol: metrics, datasets: [imagenet]}\n"
        "  - {protocol: metrics, datasets: [imagenet], epochs: last}\n"
        "  - {protocol: linear, datasets: [ade20k, ade20k]}\n"
    )
    with pytest.raises(RegistryError) as e:
        load_registry(bench)
    text = str(e.value)
    assert "method 'dino' is listed twice" in text and "dataset 'ade20k' is listed twice" in text
    assert "metrics on imagenet for dino is already in grid.0" in text


# --------------------------------------------------------------------------------------------- 9. hangs


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    from harness.registry import ROOT

    bench = tmp_path / "bench"
    shutil.copytree(ROOT / "benchmarks", bench)
    lines = ["name: bomb", "title: x", "methods: [dino]", "a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    (bench / "suites" / "bomb.yaml").write_text("\n".join(lines + ["grid: []"]) + "\n")
    t = time.perf_counter()
    with pytest.raises(RegistryError, match="anchors and aliases"):
        load_registry(bench)
    assert time.perf_counter() - t < 30  # bounded (it used to grow to gigabytes)


def test_a_reused_pid_is_not_a_running_worker():
    import subprocess

    from harness.ledger import _pid_alive, process_identity

    me = process_identity(os.getpid())
    assert me and _pid_alive(str(os.getpid()), me)
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert _pid_alive(str(child.pid), process_identity(child.pid))
        assert not _pid_alive(str(child.pid), me)  # alive, but another process than the worker recorded
    finally:
        child.kill()
        child.wait()


# --------------------------------------------------------------------------------------------- 10. messages


def test_tables_where_every_probe_failed_say_so(tmp_path, capsys):
    worlds.synthetic_suite(tmp_path, "syn", methods=1, epochs=3)
    for f in (tmp_path / "syn" / "runs" / "linear").rglob("ep*.json"):
        rec = json.loads(f.read_text())
        f.write_text(
            json.dumps({**rec, "status": "failed", "metrics": None, "error": "RuntimeError: CUDA out of memory"})
        )
    assert main(["collect", "--suite", "syn", "--results", str(tmp_path)]) == 0
    assert main(["tables", "--suite", "syn", "--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "every linear cell failed (12 of 12)" in err and "CUDA out of memory" in err


def test_an_ok_record_with_a_nan_metric_is_named_as_such(tmp_path):
    from harness.analysis.tables import sdd_table
    from harness.collect import collect

    worlds.synthetic_suite(tmp_path, "syn", methods=1, epochs=4)
    t = collect(tmp_path, "syn").table
    t.loc[(t["protocol"] == "linear") & (t["dataset"] == "ade20k") & (t["epoch"] == 20), "mIoU"] = math.nan
    notes = " ".join(sdd_table(t).notes)
    assert "1 mIoU not a number (ep 20)" in notes and "without a record" not in notes


def test_a_ledger_entry_that_is_not_an_object_names_the_ledger_and_the_repair(tmp_path, capsys):
    worlds.synthetic_suite(tmp_path, "syn", methods=1, epochs=2)
    (tmp_path / "syn" / "ledger.json").write_text(json.dumps({"cells": {"linear/ade20k/m000/ep0010": "oops"}}))
    assert main(["status", "--suite", "micro", "--results", str(tmp_path)]) in (0, 2)
    from harness.ledger import LedgerError, read_ledger

    with pytest.raises(LedgerError, match="not objects .*--repair-ledger"):
        read_ledger(tmp_path, "syn")


def test_a_symlink_loop_checkpoint_is_named_as_a_broken_link(tmp_path, monkeypatch):
    from harness.models.checkpoints import CheckpointError, load_backbone

    data = worlds.imagefolder(tmp_path / "imagenet")
    ck = tmp_path / "ck"
    bench = worlds.tiny_registry(tmp_path, data, ck)
    (ck / "tinyvit").mkdir(parents=True)
    link = ck / "tinyvit" / "checkpoint0001.pth"
    os.symlink(link, link)  # a link to itself
    with pytest.raises(CheckpointError, match="symbolic link .* cannot be followed \\(a loop of links\\)"):
        load_backbone("tinyvit", 1, registry=load_registry(bench))


def test_an_empty_class_folder_names_its_path(tmp_path, monkeypatch):
    bench = knn_world(tmp_path, monkeypatch)
    empty = tmp_path / "kdata" / "imagenet-1k" / "val" / "n99999999"
    empty.mkdir()
    rec = execute(one(load_registry(bench), "knn_tiny", "imagenet", suite="k"), tmp_path / "results")
    assert rec["status"] == "failed" and str(empty.parent) in rec["error"] and "n99999999" in rec["error"]
