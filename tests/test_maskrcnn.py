"""Mask R-CNN: the torchvision backend always runs; the detectron2 backend where it is importable."""

import pytest
import torch

from harness.jobs import execute
from harness.jobs.maskrcnn import detectron2_available
from harness.plan import build_plan
from harness.registry import load_registry
from tests import worlds

TINY = """name: maskrcnn_tiny
kind: maskrcnn
title: tiny Mask R-CNN
datasets: [coco_instances]
params: {{backend: {backend}, iters: {iters}, batch_size: 2, min_size: 96, max_size: 96,
  anchor_sizes: [8, 16, 32, 64, 128], out_channels: 32, optimizer: {{lr: 0.0005, weight_decay: 0.0}},
  checkpoint_interval: 10, detections_per_img: 20}}
resources: {{gpus: 0, cpus: 1, mem_gb: 2, time_min: 5, gpu_hours: 0.0}}
"""


@pytest.fixture
def reg(tmp_path, monkeypatch):
    from harness.mini import generate

    data = tmp_path / "data"
    generate.coco_instances(data / "coco", train=12, val=4, size=96)
    monkeypatch.setenv("SDD_DATA_ROOT", str(data))
    ck = tmp_path / "ck"
    worlds.dino_checkpoint(ck, "tinyvit", "vit_tiny_test", 1, seed=1)
    worlds.dino_checkpoint(ck, "tinyres", "resnet_tiny_test", 1, seed=2)
    bench = worlds.tiny_registry(tmp_path, data, ck)
    (bench / "suites" / "det.yaml").write_text(
        "name: det\ntitle: det\nmethods: [tinyvit, tinyres]\ngrid:\n"
        "  - protocol: maskrcnn_tiny\n    datasets: [coco_instances]\n    epochs: [1]\n"
    )

    def make(backend="torchvision", iters=20):
        (bench / "protocols" / "maskrcnn_tiny.yaml").write_text(TINY.format(backend=backend, iters=iters))
        return load_registry(bench)

    return make


@pytest.mark.parametrize("method", ["tinyvit", "tinyres"])
def test_torchvision_backend_trains_and_scores_with_pycocotools(reg, tmp_path, method):
    r = reg("torchvision", iters=20)
    cell = build_plan(r, "det", methods=[method])[0]
    rec = execute(cell, tmp_path / "results")
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["backend"] == "torchvision"
    m = rec["metrics"]
    for k in ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50", "segm_AP75"):
        assert 0 <= m[k] <= 100, k
    assert m["detections"] > 0
    assert rec["resolved"]["pyramid"] == ("simple" if method == "tinyvit" else "stages")  # the ViT: ViTDet's, CNN: FPN
    # a changed schedule is another recipe: it starts fresh, never from the 20-iteration run's state
    r = reg("torchvision", iters=30)
    cell2 = build_plan(r, "det", methods=[method])[0]
    rec2 = execute(cell2, tmp_path / "results")
    assert rec2["status"] == "ok" and rec2["resumed_from_iter"] == 0 and rec2["iters"] == 30
    # the same recipe again (as a requeue after its last save) resumes from its own state
    cell2.record_path(tmp_path / "results").unlink()
    rec3 = execute(cell2, tmp_path / "results")
    assert rec3["status"] == "ok" and rec3["resumed_from_iter"] == 30 and rec3["metrics"] == rec2["metrics"]


@pytest.mark.parametrize(
    "arch, pyramid", [("vit_tiny_test", "simple"), ("vit_tiny_test", "multilevel"), ("resnet_tiny_test", "simple")]
)
def test_pyramid_shapes(arch, pyramid):
    """Five levels at strides 4..64 (the fifth max-pooled), out_channels wide: ViTDet's simple pyramid, UDI's
    multi-level one (four blocks rescaled x4, x2, x1, x0.5 under an FPN), or an FPN over a CNN's stages."""
    from harness.jobs.maskrcnn import PyramidBackbone
    from harness.models.archs import build_backbone
    from harness.params import MaskRCNNParams

    p = MaskRCNNParams(out_channels=32, pyramid=pyramid, vit_levels=(0, 1, 2, 3), vit_levels_depth=4)
    pb = PyramidBackbone(build_backbone(arch), p)
    out = pb(torch.randn(1, 3, 64, 64))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert [v.shape[-1] for v in out.values()] == [16, 8, 4, 2, 1] and all(v.shape[1] == 32 for v in out.values())
    if pyramid == "multilevel" and arch.startswith("vit"):  # UDI's x4 stage: ConvT -> BatchNorm -> GELU -> ConvT
        assert [type(m).__name__ for m in pb.rescale[0]] == [
            "ConvTranspose2d",
            "BatchNorm2d",
            "GELU",
            "ConvTranspose2d",
        ]


def test_asking_for_a_missing_detectron2_is_a_failed_record(reg, tmp_path):
    ok, why = detectron2_available()
    if ok:
        pytest.skip("detectron2 is installed here")
    r = reg("detectron2")
    rec = execute(build_plan(r, "det", methods=["tinyvit"])[0], tmp_path / "results")
    assert rec["status"] == "failed" and "make install-detectron2" in rec["error"]


@pytest.mark.parametrize("method", ["tinyvit", "tinyres"])
def test_detectron2_backend(reg, tmp_path, method):
    ok, why = detectron2_available()
    if not ok:
        pytest.skip(f"optional detectron2 backend not installed ({why})")
    r = reg("auto", iters=10)  # auto picks detectron2 where it is importable
    rec = execute(build_plan(r, "det", methods=[method])[0], tmp_path / "results")
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["backend"] == "detectron2" and 0 <= rec["metrics"]["segm_AP"] <= 100
    assert rec["pyramid"] == ("detectron2 SimpleFeaturePyramid" if method == "tinyvit" else "detectron2 FPN")
    assert rec["checkpoint"]["loaded_keys"] > 0
    # the published optimizer, not DefaultTrainer's SGD: AdamW with decay-free groups, read back
    assert rec["optimizer"]["type"] == "AdamW" and any(g["weight_decay"] == 0.0 for g in rec["param_groups"])
    assert rec["schedule"]["gamma"] == 0.1


def test_undefined_coco_ap_is_nan_with_the_reason_never_zero(tmp_path):
    """COCOeval says -1 where AP is undefined (no ground truth to score against): NaN and why, not 0."""
    import json

    from harness.jobs.maskrcnn import CocoInstances, build_torchvision_model, coco_evaluate
    from harness.mini import generate
    from harness.models.archs import build_backbone

    root = generate.coco_instances(tmp_path / "coco", train=2, val=2, size=96)
    ann = next(root.glob("annotations/instances_val*.json"))
    data = json.loads(ann.read_text())
    data["annotations"] = []  # images without a single instance
    ann.write_text(json.dumps(data))
    val = CocoInstances(root / "val2017", ann, train=False)
    torch.manual_seed(0)
    from harness.params import MaskRCNNParams

    model = build_torchvision_model(
        build_backbone("resnet_tiny_test"), len(val.cat_ids), MaskRCNNParams(min_size=96, max_size=96, out_channels=16)
    )
    metrics, undefined = coco_evaluate(model, val)
    assert all(torch.isnan(torch.tensor(metrics[k])) for k in ("bbox_AP", "bbox_AP50", "segm_AP75"))
    assert set(undefined) == {f"{t}_AP{s}" for t in ("bbox", "segm") for s in ("", "50", "75")}
    assert "no ground-truth instances" in undefined["bbox_AP"]
