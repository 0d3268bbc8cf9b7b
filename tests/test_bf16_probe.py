"""The linear probe's frozen backbone in bfloat16, its head in float32 (issue 15): the same numbers as
float32, within 0.5 mIoU per checkpoint and the same ranking of checkpoints."""

import pytest
from scipy.stats import kendalltau

from harness.jobs import execute
from harness.plan import build_plan
from harness.registry import load_registry
from tests import seg_world, worlds


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return seg_world.data_world(tmp_path_factory.mktemp("data"))


def test_bfloat16_backbone_features_agree_with_float32(data, tmp_path, monkeypatch):
    monkeypatch.setenv("SDD_DATA_ROOT", str(data))
    ck = tmp_path / "ck"
    epochs = [1, 2, 3, 4, 5, 6]
    for e in epochs:  # six checkpoints of different quality (random weights of different scale)
        worlds.dino_checkpoint(ck, "tinyvit", "vit_tiny_test", e, seed=e)
    bench = seg_world.seg_registry(tmp_path, data, ck, iters=40)
    m = bench / "methods" / "tinyvit.yaml"
    m.write_text(m.read_text().replace("epochs: [1, 2]", f"epochs: {epochs}"))
    p = bench / "protocols" / "linear_tiny.yaml"
    p.write_text(p.read_text().replace("photometric: false,", "photometric: false, precision: float32,"))
    (bench / "protocols" / "linear_bf16.yaml").write_text(
        p.read_text()
        .replace("name: linear_tiny", "name: linear_bf16")
        .replace("precision: float32", "precision: bfloat16")
    )
    (bench / "suites" / "bf.yaml").write_text(
        "name: bf\ntitle: bf16\nmethods: [tinyvit]\ngrid:\n"
        "  - {protocol: linear_tiny, datasets: [ade20k]}\n  - {protocol: linear_bf16, datasets: [ade20k]}\n"
    )
    recs = {(c.protocol, c.epoch): execute(c, tmp_path / "results") for c in build_plan(load_registry(bench), "bf")}
    f32 = [recs[("linear_tiny", e)]["metrics"]["mIoU"] for e in epochs]
    b16 = [recs[("linear_bf16", e)]["metrics"]["mIoU"] for e in epochs]
    assert recs[("linear_bf16", 1)]["precision"] == {"backbone": "bfloat16", "head": "float32"}
    assert max(abs(a - b) for a, b in zip(f32, b16)) <= 0.5, (f32, b16)
    # the same ranking: every pair of checkpoints that float32 separates by more than the agreement
    # tolerance keeps its order (Kendall τ over those pairs is 1); pairs float32 itself puts within 0.5
    # points (here three checkpoints within 0.25) are ties a bfloat16 rounding may swap
    pairs = [(i, j) for i in range(len(f32)) for j in range(i + 1, len(f32)) if abs(f32[i] - f32[j]) > 0.5]
    assert len(pairs) >= 10 and all((f32[i] - f32[j]) * (b16[i] - b16[j]) > 0 for i, j in pairs), (f32, b16)
    assert kendalltau(f32, b16).statistic >= 0.8, (f32, b16)


def test_the_probe_backbone_really_runs_in_bfloat16(data, tmp_path, monkeypatch):
    import torch

    import harness.jobs.mm_modules as mm

    ck = tmp_path / "ck"
    worlds.dino_checkpoint(ck, "tinyvit", "vit_tiny_test", 1, seed=1)
    bench = seg_world.seg_registry(tmp_path, data, ck)
    x = torch.randn(2, 3, 64, 64)
    f32 = mm.SDDBackbone("tinyvit", 1, registry_root=str(bench), mode="last", frozen=True)(x)[0]
    b16 = mm.SDDBackbone("tinyvit", 1, registry_root=str(bench), mode="last", frozen=True, autocast="bfloat16")(x)[0]
    diff = (f32 - b16).abs().max().item()
    assert b16.dtype == torch.float32 and 0 < diff < 0.1 * f32.abs().max().item()  # rounded, not another network


def test_batched_slide_inference_predicts_as_mmsegs_loop(data, tmp_path, monkeypatch):
    """Slide inference with the windows batched (SDDEncoderDecoder) gives mmseg's per-window predictions;
    evaluation runs the backbone in float32 (its default) although training ran it in bfloat16, and
    `test.precision: bfloat16` stays close to it (measured on the demo's mini world: 99.2-99.9% of
    pixels agree, below the 99.9% asked for, which is why float32 is the default)."""
    import copy

    import torch

    from harness.mmcv_shim import import_mmseg

    import_mmseg()  # the mmcv stand-in before mmseg's models (a test worker may import them here first)
    from mmseg.models.segmentors import EncoderDecoder

    import harness.jobs.mm_modules  # noqa: F401  (registers the harness's mmseg modules)
    from harness.device import resolve
    from harness.jobs import JobContext
    from harness.jobs.mm_adapter import on_device, runner_from_config
    from harness.jobs.segmentation import build_config

    monkeypatch.setenv("SDD_DATA_ROOT", str(data))
    ck = tmp_path / "ck"
    worlds.dino_checkpoint(ck, "tinyvit", "vit_tiny_test", 1, seed=1)
    bench = seg_world.seg_registry(tmp_path, data, ck, iters=40)
    p = bench / "protocols" / "linear_tiny.yaml"
    p.write_text(
        p.read_text().replace(
            "photometric: false,",
            "photometric: false, precision: bfloat16, test: {mode: slide, crop_size: [32, 32], stride: [21, 21]},",
        )
    )
    reg = load_registry(bench)
    cell = next(c for c in build_plan(reg, "seg") if c.protocol == "linear_tiny" and c.dataset == "ade20k")
    from harness.kinds import PROTOCOL_KINDS

    params = PROTOCOL_KINDS["linear"].params.model_validate(cell.config["protocol"]["params"])
    resources = reg.protocol(cell.protocol).resources
    ctx = JobContext(reg, tmp_path / "work", {}, resolve(0, cpus=1), resources, params, False)
    cfg = build_config(cell, reg, tmp_path / "work", ctx)
    cfg.pop("sdd_run")
    assert cfg["model"]["type"] == "SDDEncoderDecoder" and cfg["model"]["test_cfg"]["mode"] == "slide"
    assert cfg["model"]["backbone"]["autocast"] == "bfloat16" and "eval_autocast" not in cfg["model"]["backbone"]
    with on_device("cpu"):
        runner = runner_from_config(cfg)
        runner.train()
    model = runner.model.eval()
    model.window_batch = 4  # 9 windows per image: batches of 4, 4 and 1
    agree, pixels, exact, evaluated = 0, 0, True, True
    with torch.no_grad():
        for batch in runner.val_dataloader:
            data_in = model.data_preprocessor(batch, False)
            x, samples = data_in["inputs"], data_in["data_samples"]
            metas = [s.metainfo for s in samples]
            model.backbone.evaluating = True  # as SDDEncoderDecoder.predict sets it
            ref = EncoderDecoder.slide_inference(model, x, copy.deepcopy(metas))  # mmseg: one window at a time
            batched = model.slide_inference(x, copy.deepcopy(metas))
            model.backbone.eval_autocast = torch.bfloat16
            b16 = model.slide_inference(x, copy.deepcopy(metas))
            model.backbone.eval_autocast, model.backbone.evaluating = None, False
            predicted = torch.stack([s.seg_logits.data for s in model.predict(x, copy.deepcopy(samples))])
            exact &= torch.allclose(ref, batched, atol=1e-4, rtol=1e-4)
            evaluated &= torch.allclose(predicted, ref, atol=1e-4, rtol=1e-4)  # float32, not training's bfloat16
            agree += (ref.argmax(1) == b16.argmax(1)).sum().item()
            pixels += ref[:, 0].numel()
    assert exact and evaluated
    assert pixels > 0 and agree / pixels >= 0.99, agree / pixels
