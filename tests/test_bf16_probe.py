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
        p.read_text().replace("name: linear_tiny", "name: linear_bf16").replace("precision: float32", "precision: bfloat16"))
    (bench / "suites" / "bf.yaml").write_text(
        "name: bf\ntitle: bf16\nmethods: [tinyvit]\ngrid:\n"
        "  - {protocol: linear_tiny, datasets: [ade20k]}\n  - {protocol: linear_bf16, datasets: [ade20k]}\n")
    recs = {(c.protocol, c.epoch): execute(c, tmp_path / "results") for c in build_plan(load_registry(bench), "bf")}
    f32 = [recs[("linear_tiny", e)]["metrics"]["mIoU"] for e in epochs]
    b16 = [recs[("linear_bf16", e)]["metrics"]["mIoU"] for e in epochs]
    assert recs[("linear_bf16", 1)]["precision"] == {"backbone": "bfloat16", "head": "float32"}
    assert max(abs(a - b) for a, b in zip(f32, b16)) <= 0.5, (f32, b16)
    assert kendalltau(f32, b16).statistic >= 0.95, (f32, b16)


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
