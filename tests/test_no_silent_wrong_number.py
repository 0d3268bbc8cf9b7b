"""Damaged or changed inputs give the right number for what they are, or a failure that names the input
(issue 17). Each case makes its damage here, runs the real job, and asserts the outcome."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from harness.jobs import execute
from harness.plan import build_plan, cell_states
from harness.registry import load_registry
from tests import seg_world, worlds


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return seg_world.data_world(tmp_path_factory.mktemp("data"))


@pytest.fixture
def world(tmp_path, data, monkeypatch):
    """A private copy of the generated data (tests damage it) and tiny DINO-format checkpoints."""
    mine = tmp_path / "data"
    shutil.copytree(data, mine)
    monkeypatch.setenv("SDD_DATA_ROOT", str(mine))
    ck = tmp_path / "ck"
    worlds.dino_checkpoint(ck, "tinyvit", "vit_tiny_test", 1, seed=1)
    worlds.dino_checkpoint(ck, "tinyvit", "vit_tiny_test", 2, seed=2)
    bench = seg_world.seg_registry(tmp_path, mine, ck)
    return bench, mine, ck


def cell(reg, protocol, dataset="ade20k", method="tinyvit", epoch=1, suite="seg"):
    return next(
        c
        for c in build_plan(reg, suite, protocols=[protocol], methods=[method])
        if c.dataset == dataset and c.epoch == epoch
    )


def test_a_changed_recipe_starts_fresh_instead_of_resuming_the_old_run(world, tmp_path):
    bench, _, _ = world
    results = tmp_path / "results"
    first = execute(cell(load_registry(bench), "linear_tiny"), results)
    assert first["status"] == "ok" and first["iters"] == 30
    p = bench / "protocols" / "linear_tiny.yaml"
    p.write_text(p.read_text().replace("iters: 30", "iters: 20"))
    reg = load_registry(bench)
    c = cell(reg, "linear_tiny")
    assert cell_states([c], results)[c.id] == "stale"
    rec = execute(c, results)
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["iters"] == 20 and rec["resumed_from_iter"] == 0 and rec["timings"]["iters_per_s"] > 0


def metrics_world(tmp_path, monkeypatch):
    """The tiny metrics registry over generated images, with one tinyvit checkpoint (epoch 1)."""
    data = worlds.imagefolder(tmp_path / "imagenet")
    ck = tmp_path / "ck"
    monkeypatch.setenv("SDD_CACHE", str(tmp_path / "cache"))
    reg = load_registry(worlds.tiny_registry(tmp_path, data, ck))
    return reg, ck, worlds.dino_checkpoint(ck, "tinyvit", "vit_tiny_test", 1, seed=1)


def test_an_overwritten_checkpoint_is_no_longer_done_and_its_features_are_recomputed(tmp_path, monkeypatch):
    reg, ck, path = metrics_world(tmp_path, monkeypatch)
    c = cell(reg, "metrics", "imagenet", suite="tiny")
    results = tmp_path / "results"
    old = execute(c, results)
    assert old["status"] == "ok" and old["features"]["cache"] == "miss"
    assert cell_states([c], results)[c.id] == "done"
    worlds.dino_checkpoint(ck, "tinyvit", "vit_tiny_test", 1, seed=7)  # retrained, same file name
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert cell_states([c], results)[c.id] == "stale"
    new = execute(c, results)
    assert new["status"] == "ok" and new["features"]["cache"] == "miss"
    assert new["metrics"]["dse"] != old["metrics"]["dse"]
    assert new["inputs"]["checkpoint"]["id"] != old["inputs"]["checkpoint"]["id"]
    # the feature cache also follows the state-dict rule: the student of the same file is another encoder
    sd = torch.load(path, weights_only=True)
    torch.manual_seed(3)
    from harness.models.archs import build_backbone

    sd["student"] = {f"backbone.{k}": v for k, v in build_backbone("vit_tiny_test").net.state_dict().items()}
    torch.save(sd, path)
    m = tmp_path / "benchmarks" / "methods" / "tinyvit.yaml"
    m.write_text(m.read_text().replace("key: teacher", "key: student"))
    c2 = cell(load_registry(tmp_path / "benchmarks"), "metrics", "imagenet", suite="tiny")
    student = execute(c2, results)
    assert student["status"] == "ok" and student["features"]["cache"] == "miss"
    assert student["metrics"]["dse"] != new["metrics"]["dse"]


@pytest.mark.parametrize("where", ["patch_embed.proj.weight", "norm.weight"])
def test_non_finite_weights_are_refused_by_every_protocol_naming_the_key(world, tmp_path, where):
    bench, _, ck = world
    path = ck / "tinyvit" / "checkpoint0001.pth"
    obj = torch.load(path, weights_only=True)
    w = obj["teacher"][f"backbone.{where}"]
    w.view(-1)[0] = float("nan")  # one value of one channel
    torch.save(obj, path)
    rec = execute(cell(load_registry(bench), "linear_tiny"), tmp_path / "results")
    assert rec["status"] == "failed" and "non-finite (NaN/inf)" in rec["error"] and where in rec["error"]
    assert "(1 of" in rec["error"] and str(path) in rec["error"]


def damage(path, fn):
    lab = np.array(Image.open(path))
    Image.fromarray(fn(lab)).save(path)


def test_validation_labels_are_checked_like_training_labels(world, tmp_path):
    bench, data, _ = world
    val = sorted((data / "VOCdevkit" / "VOC2012" / "SegmentationClass").glob("*.png"))
    reg = load_registry(bench)
    names = (data / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").read_text().split()
    f = next(p for p in val if p.stem in names)

    def fifty(lab):
        lab = lab.copy()
        lab[:3, :3] = 50
        return lab

    damage(f, fifty)
    rec = execute(cell(reg, "linear_tiny", "voc12_aug"), tmp_path / "r1")
    assert rec["status"] == "failed" and "split 'val'" in rec["error"] and f.name in rec["error"]
    assert "label values [50]" in rec["error"]


def test_rgb_labels_wrong_sizes_and_empty_split_files_name_the_file(world, tmp_path):
    bench, data, _ = world
    reg = load_registry(bench)
    ade = sorted((data / "ade" / "ADEChallengeData2016" / "annotations" / "training").glob("*.png"))
    damage(ade[0], lambda lab: np.stack([lab] * 3, axis=-1))  # saved as RGB
    damage(ade[1], lambda lab: lab[:-8])  # 8 rows short of its image
    rec = execute(cell(reg, "linear_tiny", "ade20k"), tmp_path / "r1")
    assert rec["status"] == "failed"
    assert f"{ade[0]}: label map in mode RGB" in rec["error"]
    assert f"{ade[1]}: label map is 64x56 but its image {ade[1].stem}.jpg is 64x64" in rec["error"]
    split = data / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"
    split.write_text("\n")
    rec = execute(cell(reg, "linear_tiny", "voc12_aug"), tmp_path / "r2")
    assert rec["status"] == "failed" and f"the split file {split} lists no images" in rec["error"]


def test_a_truncated_image_is_named(world, tmp_path, monkeypatch):
    bench, data, _ = world
    monkeypatch.setenv("SDD_CACHE", str(tmp_path / "cache"))
    reg = load_registry(bench)
    c = cell(reg, "metrics", "imagenet", suite="tiny")
    from harness.features import image_list

    ds = reg.dataset("imagenet")
    from harness.datasets import root_of

    imgs = image_list(root_of(ds) / "train", 24, 0)
    victim = imgs.root / imgs.paths[5]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    rec = execute(c, tmp_path / "results")
    assert rec["status"] == "failed" and f"{victim}: unreadable or truncated image" in rec["error"]


def test_davis_needs_each_first_frame_annotation_and_pairs_by_name(world, tmp_path):
    bench, data, _ = world
    (bench / "protocols" / "davis_t.yaml").write_text(
        "name: davis_t\nkind: davis\ntitle: tiny davis\ndatasets: [davis2017]\n"
        "params: {short_side: 64, size_multiple: 16, n_last_frames: 3, size_mask_neighborhood: 3}\n"
        "resources: {gpus: 0, cpus: 1, mem_gb: 2, time_min: 5, gpu_hours: 0.0}\n"
    )
    (bench / "suites" / "dv.yaml").write_text(
        "name: dv\ntitle: dv\nmethods: [tinyvit]\ngrid:\n  - protocol: davis_t\n    datasets: [davis2017]\n"
        "    epochs: [1]\n"
    )
    reg = load_registry(bench)
    c = cell(reg, "davis_t", "davis2017", suite="dv")
    assert execute(c, tmp_path / "ok")["status"] == "ok"
    seq = sorted((data / "DAVIS" / "Annotations" / "480p").iterdir())[0]
    first = sorted(seq.glob("*.png"))[0]
    first.unlink()
    rec = execute(c, tmp_path / "r1")
    assert rec["status"] == "failed" and f"{first}: the first frame's annotation is missing" in rec["error"]


def test_large_but_finite_features_give_their_metrics_from_and_out_of_the_cache(tmp_path, monkeypatch):
    """Features x1e6 (norm weights x1e6) are far beyond float16: the float32 cache keeps them, and the
    normalised metrics are those of the unscaled features (a float16 cache made them inf)."""
    reg, ck, path = metrics_world(tmp_path, monkeypatch)
    c = cell(reg, "metrics", "imagenet", suite="tiny")
    plain = execute(c, tmp_path / "plain")
    obj = torch.load(path, weights_only=True)
    obj["teacher"]["backbone.norm.weight"] *= 1e6
    obj["teacher"]["backbone.norm.bias"] *= 1e6
    torch.save(obj, path)
    big = execute(c, tmp_path / "big")
    again = execute(c, tmp_path / "again")  # from the cache
    assert big["status"] == "ok" and big["features"]["cache"] == "miss" and again["features"]["cache"] == "hit"
    assert again["metrics"] == big["metrics"]
    assert big["metrics"]["dse"] == pytest.approx(plain["metrics"]["dse"], rel=1e-4)
    assert big["metrics"]["w2"] == pytest.approx(plain["metrics"]["w2"], rel=1e-4)


def test_tables_refuse_a_results_csv_without_required_columns_and_keep_the_old_tables(tmp_path, capsys):
    import pandas as pd

    from harness.cli import main

    worlds.synthetic_suite(tmp_path, "syn", methods=2, epochs=5)
    assert main(["collect", "--suite", "syn", "--results", str(tmp_path)]) == 0
    assert main(["tables", "--suite", "syn", "--results", str(tmp_path)]) == 0
    tau = (tmp_path / "syn" / "tables" / "kendall_tau.md").read_text()
    assert "_No data._" not in tau
    csv = tmp_path / "syn" / "results.csv"
    for column in ("mIoU", "method"):
        pd.read_csv(csv).drop(columns=[column]).to_csv(tmp_path / "cut.csv", index=False)
        shutil.copy(csv, tmp_path / "full.csv")
        shutil.copy(tmp_path / "cut.csv", csv)
        manifest = csv.with_name("collected.json")
        assert main(["tables", "--suite", "syn", "--results", str(tmp_path)]) == 1  # not what collect wrote
        assert "is not what `sdd collect` wrote" in capsys.readouterr().err
        shutil.copy(manifest, tmp_path / "manifest.json")
        manifest.unlink()  # a table edited by hand on purpose: the columns are checked
        assert main(["tables", "--suite", "syn", "--results", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert f"lacks the column(s) {column}" in err and str(csv) in err
        assert (tmp_path / "syn" / "tables" / "kendall_tau.md").read_text() == tau
        shutil.copy(tmp_path / "full.csv", csv)
        shutil.copy(tmp_path / "manifest.json", manifest)


def test_table_notes_give_the_true_reason_a_cell_is_missing(tmp_path):
    import pandas as pd

    from harness.analysis.tables import sdd_table

    worlds.synthetic_suite(tmp_path, "syn", methods=1, epochs=6)
    from harness.collect import collect

    table = collect(tmp_path, "syn").table
    lin = (table["protocol"] == "linear") & (table["dataset"] == "ade20k")
    table.loc[lin & (table["epoch"] == 20), "status"] = "failed"
    table = table[~(lin & (table["epoch"] == 30))]
    notes = " ".join(sdd_table(pd.DataFrame(table)).notes)
    assert "m000 / ade20k: 4 of 6 checkpoints evaluated" in notes
    assert "1 failed (ep 20)" in notes and "1 without a record (ep 30)" in notes
    assert "DSE-guided" not in notes


def test_guided_plan_reports_a_metrics_record_without_dse_components(tmp_path, capsys):
    from harness import records
    from harness.cli import main

    reg = load_registry()
    cells = [c for c in build_plan(reg, "micro") if c.protocol == "metrics_mini"]
    for c in cells:
        rec = {
            "suite": c.suite,
            "protocol": c.protocol,
            "dataset": c.dataset,
            "method": c.method,
            "epoch": c.epoch,
            "status": "ok",
            "config_hash": c.config_hash,
            "metrics": {"rankme": 3.0},
        }
        records.write_record(c.record_path(tmp_path), rec)
    assert main(["plan", "--suite", "micro", "--guided", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "lack dse_separability / dse_dim" in out and "downstream cells wait" in out


def test_submit_with_failed_cells_exits_non_zero_with_a_summary(tmp_path, capsys):
    from tests.test_slurm import make_registry, sdd

    bench = make_registry(
        tmp_path, "{steps: 1, sleep_s: 0.01, fail_methods: [mae]}", methods="[dino, mae]", epochs="[10, 20]"
    )
    results = tmp_path / "results"
    assert sdd(bench, "submit", "--suite", "probe", "--cluster", "inline", "--results", str(results)) == 1
    out, err = capsys.readouterr()
    assert "2 of 4 cells failed" in err and "probe/imagenet/mae/ep0010" in err
    json.loads((results / "probe/runs/probe/imagenet/dino/ep0010.json").read_text())


def test_ctrl_c_stops_cleanly_without_a_partial_record_and_a_rerun_resumes(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from tests.test_slurm import ROOT, make_registry

    bench = make_registry(tmp_path, "{steps: 40, sleep_s: 0.1}", methods="[dino]", epochs="[10, 20]")
    results = tmp_path / "results"
    state = results / "probe/work/probe/imagenet/dino/ep0010"
    cmd = [
        sys.executable,
        "-m",
        "harness",
        "--registry",
        str(bench),
        "submit",
        "--suite",
        "probe",
        "--cluster",
        "inline",
        "--results",
        str(results),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # Ctrl-C as at a terminal: a test run started in the background (`make test &`) ignores SIGINT, and
    # a child would inherit that and never see the interrupt
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    t = time.time()
    while not list(state.glob("*/probe_state.json")) and time.time() - t < 60:
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err and "interrupted" in err
    assert not (results / "probe/runs/probe/imagenet/dino/ep0010.json").exists()
    saved = json.loads(next(state.glob("*/probe_state.json")).read_text())["step"]
    assert 0 < saved < 40
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0, again.stderr
    rec = json.loads((results / "probe/runs/probe/imagenet/dino/ep0010.json").read_text())
    assert rec["status"] == "ok" and rec["resumed_from_step"] >= saved


def test_collect_never_replaces_results_csv_with_a_partial_read(tmp_path, capsys):
    from harness.cli import main

    worlds.synthetic_suite(tmp_path, "syn", methods=2, epochs=4)
    assert main(["collect", "--suite", "syn", "--results", str(tmp_path)]) == 0
    csv = tmp_path / "syn" / "results.csv"
    before = csv.read_text()
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "syn/runs/linear/ade20k", moved)  # records on a disk that is not mounted now
    (tmp_path / "syn/runs/linear/ade20k").symlink_to(moved / "gone")
    assert main(["collect", "--suite", "syn", "--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "cannot read the records of suite 'syn'" in err and "ade20k" in err and "left as it was" in err
    assert csv.read_text() == before
