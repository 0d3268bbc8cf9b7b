"""Classifiers on frozen features (issue 25): DINO's linear evaluation on ImageNet-style folders and on
CIFAR's released batches, and UDI's low-shot logistic regression on a labelled subset list; end to end on
generated data in the real layouts, with the checks that keep a wrong number out of the record."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from harness.datasets import DatasetError, read_cifar
from harness.jobs import execute
from harness.plan import build_plan
from harness.registry import load_registry
from tests import worlds

PROTOCOLS = {
    "lincls_tiny": "kind: linear_cls\ndatasets: [imagenet]\n"
    "params: {n_last_blocks: 2, epochs: 3, batch_size: 16, optimizer: {lr: 0.5}, train_crop: 64, resize: 64, crop: 64}",
    "lincifar_tiny": "kind: linear_cls\ndatasets: [cifar10, cifar100]\n"
    "params: {n_last_blocks: 1, epochs: 2, batch_size: 32, optimizer: {lr: 0.3, lr_scaling: none}, train_crop: 32,"
    " resize: null, crop: null, normalize: cifar}",
    "lowshot_tiny": "kind: lowshot\ndatasets: [imagenet]\n"
    "params: {train_split: train_few, lambdas: [0.01, 1.0], resize: 64, crop: 64, batch_size: 16}",
}


@pytest.fixture
def world(tmp_path, monkeypatch):
    from harness.mini import generate

    data = tmp_path / "data"
    generate.imagenet(data / "imagenet-1k", classes=4, train=10, val=4)
    generate.imagenet_subsets(data / "imagenet-1k", {"few": 3})
    generate.cifar(data / "cifar10", hundred=False, train=8, val=4)
    generate.cifar(data / "cifar100", hundred=True, train=1, val=1)
    monkeypatch.setenv("SDD_DATA_ROOT", str(data))
    ck = tmp_path / "ck"
    worlds.dino_checkpoint(ck, "tinyvit", "vit_tiny_test", 1, seed=1)
    worlds.dino_checkpoint(ck, "tinyres", "resnet_tiny_test", 1, seed=2)
    bench = worlds.tiny_registry(tmp_path, data / "imagenet-1k", ck)
    (bench / "datasets" / "imagenet.yaml").write_text(
        f"name: imagenet\ntitle: mini\nkind: imagenet\nroot: {data / 'imagenet-1k'}\ntask: classification\n"
        "img_suffix: .JPEG\nsplits:\n  train: {img_dir: train}\n  val: {img_dir: val}\n"
        "  train_few: {img_dir: train, split_file: subsets/few.txt}\n"
    )
    cpu = "resources: {gpus: 0, cpus: 1, mem_gb: 2, time_min: 5, gpu_hours: 0.0}\n"
    for name, body in PROTOCOLS.items():
        (bench / "protocols" / f"{name}.yaml").write_text(f"name: {name}\ntitle: {name}\n{body}\n{cpu}")
    (bench / "suites" / "cls.yaml").write_text(
        "name: cls\ntitle: classifiers\nmethods: [tinyvit, tinyres]\ngrid:\n"
        "  - protocol: lincls_tiny\n    datasets: [imagenet]\n    epochs: [1]\n"
        "  - protocol: lincifar_tiny\n    datasets: [cifar10, cifar100]\n    epochs: [1]\n"
        "  - protocol: lowshot_tiny\n    datasets: [imagenet]\n    epochs: [1]\n"
    )
    return load_registry(bench), data


def cell(reg, protocol, dataset="imagenet", method="tinyvit"):
    return next(c for c in build_plan(reg, "cls", protocols=[protocol], methods=[method]) if c.dataset == dataset)


def test_linear_classification_trains_resumes_and_reports_the_best_epoch(world, tmp_path):
    reg, _ = world
    rec = execute(cell(reg, "lincls_tiny"), tmp_path / "results")
    assert rec["status"] == "ok", rec.get("traceback")
    m = rec["metrics"]
    assert 0 <= m["top1"] <= m["top1_best"] <= 100 and m["top1"] <= m["top5"]
    assert m["top1_best"] == max(h["top1"] for h in rec["history"]) and len(rec["history"]) == 3
    assert rec["feature_dim"] == 2 * 48 and "last 2 block(s)" in rec["features"]  # vit_tiny_test: width 48
    assert rec["lr"] == pytest.approx(0.5 * 16 / 256)  # DINO's linear scaling rule
    assert m["top1_best"] > 25  # 4 classes: above chance on separable generated images
    # a second run of the cell (a requeue) resumes after its last epoch: no training, the same numbers
    again = execute(cell(reg, "lincls_tiny"), tmp_path / "results")
    assert again["status"] == "ok", again.get("traceback")
    assert again["resumed_from_epoch"] == 3 and again["metrics"]["top1"] == m["top1"]


def test_a_cnn_is_classified_from_its_global_average_pool(world, tmp_path):
    reg, _ = world
    rec = execute(cell(reg, "lincls_tiny", method="tinyres"), tmp_path / "results")
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["features"] == "global average pool of the last layer"


@pytest.mark.parametrize("dataset,classes", [("cifar10", 10), ("cifar100", 100)])
def test_linear_classification_reads_cifar_batches_in_their_released_layout(world, tmp_path, dataset, classes):
    reg, _ = world
    rec = execute(cell(reg, "lincifar_tiny", dataset), tmp_path / "results")
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["classes"] == classes and rec["train_images"] == (80 if classes == 10 else 100)
    assert set(rec["inputs"]["data"]) == {"train", "val"}  # both splits fingerprinted: a change makes it stale


def test_cifar_batches_are_checked_and_never_run_code(world):
    reg, data = world
    ds = reg.dataset("cifar10")
    images, labels = read_cifar(ds, "train")
    assert images.shape == (80, 32, 32, 3) and images.dtype == np.uint8 and sorted(set(labels)) == list(range(10))
    batch = data / "cifar10" / "cifar-10-batches-py" / "data_batch_2"

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    batch.write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}))
    with pytest.raises(DatasetError, match=r"data_batch_2: not a CIFAR batch .*refused global builtins.print"):
        read_cifar(ds, "train")
    batch.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}, protocol=2))
    with pytest.raises(DatasetError, match=r"data_batch_2: labels 0..12 outside 0..9"):
        read_cifar(ds, "train")
    (data / "cifar10" / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DatasetError, match="test_batch"):
        read_cifar(ds, "val")


def test_low_shot_fits_every_lambda_on_the_listed_images_only(world, tmp_path):
    reg, data = world
    rec = execute(cell(reg, "lowshot_tiny"), tmp_path / "results")
    assert rec["status"] == "ok", rec.get("traceback")
    m = rec["metrics"]
    assert set(m["top1_at"]) == {"0.01", "1"} and m["top1"] == max(m["top1_at"].values())
    assert rec["train_images"] == 12 and rec["train_split"] == "train_few"  # 3 listed per class x 4
    assert "train_few" in rec["inputs"]["data"]
    # one listed name that is not there fails the cell naming it (never a fit on fewer images)
    listed = data / "imagenet-1k" / "subsets" / "few.txt"
    listed.write_text(listed.read_text() + "n99999999_1.JPEG\n")
    bad = execute(cell(reg, "lowshot_tiny"), tmp_path / "other")
    assert bad["status"] == "failed" and "n99999999_1.JPEG" in bad["error"]


def test_logistic_regression_matches_the_adjusted_lambda_objective():
    """C = 1 / lambda (UDI's lambda / n on the mean loss): a larger lambda shrinks the weights, and the
    optimum is the same whatever the solver's start (strictly convex)."""
    from harness.jobs.lowshot import fit_and_score
    from harness.params import LowShotParams

    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(60, 8, generator=g), dim=1).numpy()
    y = (x[:, 0] > 0).astype(int)
    p = LowShotParams(train_split="t")
    assert fit_and_score(x, y, x, y, 0.01, p) >= fit_and_score(x, y, x, y, 100.0, p)
    with pytest.raises(RuntimeError, match="did not converge in 1 lbfgs iterations"):
        fit_and_score(x, y, x, y, 1e-6, LowShotParams(train_split="t", max_iter=1))
