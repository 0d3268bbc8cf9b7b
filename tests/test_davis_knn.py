"""J&F on hand-made masks, label propagation on a moving-shape video, and k-NN classification."""

import numpy as np
import pytest
import torch
from PIL import Image

from harness.jobs import execute, jandf
from harness.jobs.knn import knn_classify
from harness.plan import build_plan
from harness.registry import load_registry
from tests import worlds


def square(h, w, y0, x0, s):
    m = np.zeros((h, w), bool)
    m[y0 : y0 + s, x0 : x0 + s] = True
    return m


def test_region_iou_by_hand():
    a, b = square(20, 20, 0, 0, 10), square(20, 20, 0, 5, 10)  # overlap 10x5 = 50, union 150
    assert jandf.region_iou(a, b) == pytest.approx(50 / 150)
    void = np.zeros((20, 20), bool)
    void[:, 10:] = True  # only columns 0..9 count: inter 50, union 100
    assert jandf.region_iou(a, b, void) == pytest.approx(0.5)
    empty = np.zeros((5, 5), bool)
    assert jandf.region_iou(empty, empty) == 1.0


def test_boundary_f_by_hand():
    a = square(100, 100, 20, 20, 40)
    assert jandf.boundary_f(a, a) == 1.0
    # tolerance ceil(0.008 * diag(100,100)) = ceil(1.13) = 2 px: a shift of 2 px still matches fully,
    # a shift of 10 px matches only where the edges overlap (the two horizontal edges, partly)
    assert jandf.boundary_f(a, square(100, 100, 22, 20, 40)) == pytest.approx(1.0)
    far = jandf.boundary_f(a, square(100, 100, 20, 30, 40))
    assert 0.2 < far < 0.8
    empty = np.zeros((100, 100), bool)
    assert jandf.boundary_f(empty, empty) == 1.0 and jandf.boundary_f(a, empty) == 0.0
    # DAVIS's border map marks pixels that differ from their right, lower or lower-right neighbour:
    # for a 3x3 square at (1, 1) that is rows 0 and 3 (columns 0..3) and columns 0 and 3 of rows 1-2
    b = jandf.boundary_map(square(6, 6, 1, 1, 3))
    assert b.sum() == 12 and b[0, 0] and b[3, 3] and not b[2, 2] and not b[4, 4]


def test_statistics_and_summary_exclude_first_and_last_frames():
    gt = [square(16, 16, 4, 4, 6).astype(np.uint8) for _ in range(6)]
    perfect = [g.copy() for g in gt]
    wrong_ends = [np.zeros_like(g) for g in gt[:1]] + perfect[1:-1] + [np.zeros_like(gt[0])]
    s = jandf.summarize({"seq": jandf.evaluate_sequence(gt, wrong_ends)})
    assert s["J_mean"] == 1.0 and s["F_mean"] == 1.0 and s["JF_mean"] == 1.0 and s["objects"] == 1
    half = [g.copy() for g in gt]
    for h in half[1:3]:
        h[:] = 0  # frames 1 and 2 lost: J = [0, 0, 1, 1] over the 4 inner frames
    s = jandf.summarize({"seq": jandf.evaluate_sequence(gt, half)})
    assert s["J_mean"] == pytest.approx(0.5) and s["J_recall"] == pytest.approx(0.5)
    assert s["J_decay"] == pytest.approx(-1.0)  # first bin 0, last bin 1


@pytest.fixture
def world(tmp_path, monkeypatch):
    from harness.mini import generate

    data = tmp_path / "data"
    generate.davis2017(data / "DAVIS", sequences=2, frames=8, size=(128, 192))
    generate.imagenet(data / "imagenet-1k", classes=4, train=10, val=4)
    monkeypatch.setenv("SDD_DATA_ROOT", str(data))
    ck = tmp_path / "ck"
    worlds.dino_checkpoint(ck, "tinyvit", "vit_tiny_test", 1, seed=1)
    worlds.dino_checkpoint(ck, "tinyres", "resnet_tiny_test", 1, seed=2)
    bench = worlds.tiny_registry(tmp_path, data / "imagenet-1k", ck)
    (bench / "datasets" / "imagenet.yaml").write_text(
        f"name: imagenet\ntitle: mini\nkind: imagenet\nroot: {data / 'imagenet-1k'}\ntask: classification\n"
        "img_suffix: .JPEG\nsplits:\n  train: {img_dir: train}\n  val: {img_dir: val}\n"
    )
    (bench / "protocols" / "davis_tiny.yaml").write_text(
        "name: davis_tiny\nkind: davis\ntitle: tiny davis\ndatasets: [davis2017]\n"
        "params: {short_side: 128, size_multiple: 16, n_last_frames: 3, size_mask_neighborhood: 3, topk: 5,\n"
        "  temperature: 0.1, resnet_layer: 3}\n"
        "resources: {gpus: 0, cpus: 1, mem_gb: 2, time_min: 5, gpu_hours: 0.0}\n"
    )
    (bench / "protocols" / "knn_tiny.yaml").write_text(
        "name: knn_tiny\nkind: knn\ntitle: tiny knn\ndatasets: [imagenet]\n"
        "params: {ks: [1, 5, 10], k: 5, temperature: 0.07, resize: 64, crop: 64, batch_size: 16}\n"
        "resources: {gpus: 0, cpus: 1, mem_gb: 2, time_min: 5, gpu_hours: 0.0}\n"
    )
    (bench / "suites" / "dk.yaml").write_text(
        "name: dk\ntitle: davis and knn\nmethods: [tinyvit, tinyres]\ngrid:\n"
        "  - protocol: davis_tiny\n    datasets: [davis2017]\n    epochs: [1]\n"
        "  - protocol: knn_tiny\n    datasets: [imagenet]\n    epochs: [1]\n"
    )
    return load_registry(bench), data


def static_baseline(data):
    """J&F of predicting the first-frame mask for every frame."""
    root = data / "DAVIS" / "Annotations" / "480p"
    per = {}
    for seq in sorted(p.name for p in root.iterdir()):
        gts = [np.array(Image.open(f)) for f in sorted((root / seq).glob("*.png"))]
        per[seq] = jandf.evaluate_sequence(gts, [gts[0]] * len(gts))
    return jandf.summarize(per)["JF_mean"]


def test_propagation_tracks_moving_shapes_better_than_a_static_mask(world, tmp_path):
    reg, data = world
    baseline = static_baseline(data)
    for method in ("tinyvit", "tinyres"):
        cell = next(c for c in build_plan(reg, "dk", protocols=["davis_tiny"], methods=[method]))
        rec = execute(cell, tmp_path / "results")
        assert rec["status"] == "ok", rec.get("traceback")
        m = rec["metrics"]
        assert m["objects"] == 4 and 0 <= m["J_mean"] <= 1 and 0 <= m["F_mean"] <= 1
        assert m["JF_mean"] == pytest.approx((m["J_mean"] + m["F_mean"]) / 2)
        if method == "tinyvit":
            print("JF", method, m["JF_mean"], "static", baseline)
            assert m["JF_mean"] > baseline + 0.1, (m["JF_mean"], baseline)
        else:
            assert "stride 16" in rec["feature"]


def test_knn_by_hand_and_on_images(world, tmp_path):
    train = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=1)
    votes = knn_classify(train, torch.tensor([0, 0, 1]), torch.tensor([[1.0, 0.05]]), classes=2, k=2)
    assert votes[0, 0] > 0 and votes[0, 1] == 0  # both neighbours are class 0
    reg, _ = world
    cell = next(c for c in build_plan(reg, "dk", protocols=["knn_tiny"], methods=["tinyvit"]))
    rec = execute(cell, tmp_path / "results")
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["metrics"]["top1"] > 50 and rec["metrics"]["top5"] == 100 and rec["val_images"] == 16
    # DINO's sweep from one neighbour search: every k in the record, k=5 the one the tables read
    m = rec["metrics"]
    assert set(m["top1_at"]) == {"1", "5", "10"} and m["top1_at"]["5"] == m["top1"]
    from harness.jobs.knn import knn_sweep

    train = torch.nn.functional.normalize(torch.randn(40, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    labels, test = torch.randint(0, 3, (40,)), torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    swept = knn_sweep(train, labels, test, 3, (2, 7))
    for k in (2, 7):  # the same votes as a search of its own for each k
        assert torch.allclose(swept[k], knn_classify(train, labels, test, 3, k=k))
    assert rec["embedding"].startswith("class token")  # DINO k-NN's embedding, not the mean patch token
