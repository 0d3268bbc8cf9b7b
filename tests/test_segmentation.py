"""mmseg linear probe and UperNet jobs, end to end on generated data in the real layouts."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness.jobs import execute, work_dir
from harness.plan import build_plan
from harness.registry import load_registry
from tests import seg_world, worlds


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return seg_world.data_world(tmp_path_factory.mktemp("data"))


@pytest.fixture
def reg(tmp_path, data, monkeypatch):
    monkeypatch.setenv("SDD_DATA_ROOT", str(data))
    ck = tmp_path / "ck"
    worlds.dino_checkpoint(ck, "tinyvit", "vit_tiny_test", 1, seed=1)
    worlds.dino_checkpoint(ck, "tinyres", "resnet_tiny_test", 1, seed=2)
    return load_registry(seg_world.seg_registry(tmp_path, data, ck))


def cell_of(reg, protocol, dataset, method="tinyvit"):
    return next(c for c in build_plan(reg, "seg", protocols=[protocol], methods=[method]) if c.dataset == dataset)


@pytest.mark.parametrize("dataset", ["ade20k", "voc12_aug", "coco_stuff164k", "cityscapes"])
def test_linear_probe_on_every_segmentation_layout(reg, tmp_path, dataset):
    rec = execute(cell_of(reg, "linear_tiny", dataset), tmp_path / "results")
    assert rec["status"] == "ok", rec.get("traceback")
    m = rec["metrics"]
    assert 0 <= m["mIoU"] <= 100 and 0 <= m["aAcc"] <= 100 and "mAcc" in m
    n_classes = {"ade20k": 150, "voc12_aug": 21, "coco_stuff164k": 171, "cityscapes": 19}[dataset]
    assert len(m["IoU"]) == n_classes  # per-class IoU, every class of the mmseg dataset
    present = list(m["IoU"].values())[:4]  # the generator draws classes 0..3 (after reduce_zero_label on ADE20K)
    assert sum(present) / 4 > 25, m["IoU"]  # a random ViT's features still encode the classes' colour and texture
    assert rec["backbone_frozen"] and rec["trainable_params"] < 48 * n_classes + 48 * 4 + n_classes + 10
    assert rec["mmseg_config"]["model"]["decode_head"]["type"] == "BNHead"
    assert rec["checkpoint"]["loaded_keys"] > 0 and rec["timings"]["iters_per_s"] > 0


def test_random_features_do_not_reach_a_high_miou(reg, tmp_path):
    """The same probe on features that ignore the image stays near chance."""
    import harness.jobs.mm_modules as mm

    good = execute(cell_of(reg, "linear_tiny", "ade20k"), tmp_path / "a")["metrics"]["mIoU"]
    orig = mm.SDDBackbone.forward

    def noise(self, x):
        out = orig(self, x)
        return tuple(torch.randn_like(o) for o in out)

    mm.SDDBackbone.forward = noise
    try:
        bad = execute(cell_of(reg, "linear_tiny", "ade20k"), tmp_path / "b")["metrics"]["mIoU"]
    finally:
        mm.SDDBackbone.forward = orig
    assert good > 25 and bad < good / 2, (good, bad)  # paired classes: harder than colour-coded ones


def test_frozen_backbone_stays_in_eval_mode_without_gradients(reg):
    import harness.jobs.mm_modules as mm

    b = mm.SDDBackbone("tinyvit", 1, registry_root=str(reg.root), mode="last", frozen=True)
    b.train(True)
    assert not b.backbone.training and not any(p.requires_grad for p in b.backbone.parameters())
    out = b(torch.randn(2, 3, 64, 64, requires_grad=True))[0]
    assert out.shape == (2, 48, 4, 4) and not out.requires_grad


def test_upernet_fine_tunes_with_layer_decay(reg, tmp_path):
    for method in ("tinyvit", "tinyres"):
        rec = execute(cell_of(reg, "upernet_tiny", "ade20k", method), tmp_path / method)
        assert rec["status"] == "ok", rec.get("traceback")
        assert not rec["backbone_frozen"] and 0 < rec["metrics"]["mIoU"] <= 100
        assert rec["mmseg_config"]["model"]["decode_head"]["type"] == "UPerHead"
        if method == "tinyvit":  # blocks 0..3 get 0.9^(4-i): several distinct learning rates
            assert rec["mmseg_config"]["model"]["neck"]["type"] == "Feature2Pyramid"
            assert len(rec["initial_lrs"]) >= 5 and min(rec["initial_lrs"]) < max(rec["initial_lrs"])


RUN = r"""
import sys, pickle
from harness.jobs import execute
cell, results = pickle.load(open(sys.argv[1], "rb"))
execute(cell, results)
"""


def test_a_killed_probe_resumes_from_its_saved_state(data, tmp_path, monkeypatch):
    import pickle

    monkeypatch.setenv("SDD_DATA_ROOT", str(data))
    ck = tmp_path / "ck"
    worlds.dino_checkpoint(ck, "tinyvit", "vit_tiny_test", 1, seed=1)
    reg = load_registry(seg_world.seg_registry(tmp_path, data, ck, iters=400))
    cell = cell_of(reg, "linear_tiny", "ade20k")
    results = tmp_path / "results"
    state = work_dir(cell, results) / "resume.pth"
    (tmp_path / "cell.pkl").write_bytes(pickle.dumps((cell, str(results))))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", RUN, str(tmp_path / "cell.pkl")], env=env)
    t = time.time()
    while not state.is_file() and time.time() - t < 120:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)  # preempted without warning
    proc.wait()
    assert state.is_file() and not cell.record_path(results).exists()
    saved = torch.load(state, weights_only=True)["iter"]
    assert 10 <= saved < 400
    rec = execute(cell, results)
    assert rec["status"] == "ok" and rec["resumed_from_iter"] >= saved and rec["iters"] == 400


def test_bad_inputs_end_as_failed_records(reg, tmp_path, data):
    import numpy as np
    from PIL import Image

    # a checkpoint whose architecture does not match the registry (ResNet weights for a ViT method)
    worlds.dino_checkpoint(tmp_path / "ck", "tinyvit", "resnet_tiny_test", 1, seed=3)
    rec = execute(cell_of(reg, "linear_tiny", "ade20k"), tmp_path / "r1")
    assert rec["status"] == "failed" and "backbone keys are missing" in rec["error"]
    worlds.dino_checkpoint(tmp_path / "ck", "tinyvit", "vit_tiny_test", 1, seed=1)
    # label values outside the class range
    voc = data / "VOCdevkit" / "VOC2012" / "SegmentationClassAug"
    f = sorted(voc.glob("*.png"))[0]
    keep = f.read_bytes()
    lab = np.array(Image.open(f))
    lab[:4, :4] = 50
    Image.fromarray(lab).save(f)
    try:
        rec = execute(cell_of(reg, "linear_tiny", "voc12_aug"), tmp_path / "r2")
    finally:
        f.write_bytes(keep)
    assert (
        rec["status"] == "failed"
        and "label values [50]" in rec["error"]
        and "outside the class range 0..20" in rec["error"]
    )
    # a missing dataset
    os.environ["SDD_DATA_ROOT"] = str(tmp_path / "nowhere")
    rec = execute(cell_of(reg, "linear_tiny", "cityscapes"), tmp_path / "r3")
    assert rec["status"] == "failed" and "does not exist" in rec["error"] and "SDD_DATA_ROOT" in rec["error"]


def _with_test(reg, name: str, test: str):
    """A copy of linear_tiny with another `test:` block, in the same registry folder."""
    src = Path(reg.protocol("linear_tiny").source)
    text = src.read_text().replace("name: linear_tiny", f"name: {name}").rstrip()
    text = text.replace("log_interval: 10,", f"log_interval: 10, test: {test},")
    (src.parent / f"{name}.yaml").write_text(text + "\n")
    suite = Path(reg.suites["seg"].source)
    suite.write_text(suite.read_text() + f"  - protocol: {name}\n    datasets: [ade20k]\n    epochs: [1]\n")
    return load_registry(src.parents[1])


def test_multi_scale_test_of_one_unflipped_view_equals_the_single_scale_test(reg, tmp_path):
    """The TTA path (mmseg's TestTimeAug + SegTTAModel) with one view at the test scale must give the
    single-scale numbers exactly; with several scales and flips it gives its own, next to them."""
    reg = _with_test(reg, "linear_ms1", "{mode: whole, multi_scale: {ratios: [1.0], flip: false, resize: scale}}")
    rec = execute(cell_of(reg, "linear_ms1", "ade20k"), tmp_path / "one")
    assert rec["status"] == "ok", rec.get("traceback")
    m = rec["metrics"]
    assert m["mIoU_ms"] == m["mIoU"] and m["aAcc_ms"] == m["aAcc"] and set(m["IoU_ms"]) == set(m["IoU"])
    same = [
        (a == b) or (a != a and b != b) for a, b in ((m["IoU_ms"][c], m["IoU"][c]) for c in m["IoU"])
    ]  # NaN: absent
    assert all(same)
    assert rec["multi_scale"]["ratios"] == [1.0] and "val_multi_scale_s" in rec["timings"]

    reg = _with_test(reg, "linear_ms4", "{mode: whole, multi_scale: {ratios: [1.0, 1.5], flip: true}}")
    rec = execute(cell_of(reg, "linear_ms4", "ade20k"), tmp_path / "four")
    assert rec["status"] == "ok", rec.get("traceback")
    m = rec["metrics"]
    assert 0 <= m["mIoU_ms"] <= 100 and set(m["IoU_ms"]) == set(m["IoU"])
    pipe = rec["multi_scale"]["dataloader"]["dataset"]["pipeline"][1]["transforms"]
    assert [t["scale"] for t in pipe[0]] == [64, 96] and len(pipe[1]) == 2  # SETR rule: max(crop 64, r x 64)
