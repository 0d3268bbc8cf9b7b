"""Linear depth on a frozen backbone (issue 33): DINOv3's NYU recipe piece by piece (one-cycle schedule with its
beta1, SigLoss, bins, the Eigen mask, per-image metrics), the job end to end on generated NYU scenes in BTS's layout
with a tiny ViT on the CPU, its resume, and the τ table against depth in goodness orientation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from harness.jobs import depth, execute
from harness.params import DepthParams
from harness.plan import build_plan
from harness.registry import load_registry
from tests import worlds

CPU = "resources: {gpus: 0, cpus: 1, mem_gb: 2, time_min: 5, gpu_hours: 0.0}\n"
TINY = (
    "name: depth_tiny\ntitle: depth_tiny\nkind: depth_linear\ndatasets: [nyu_depth_v2]\n"
    "params: {iters: 60, batch_size: 4, optimizer: {lr: 3.0e-3}, schedule: {warmup_iters: 20}, loss_warmup_iters: 5,"
    " train_crop: [64, 96], checkpoint_interval: 20, num_workers: 0}\n" + CPU
)


@pytest.fixture
def world(tmp_path, monkeypatch):
    from harness.mini import generate

    data = tmp_path / "data"
    generate.nyu_depth(data / "nyu_depth_v2", train=12, val=4, size=(128, 96), seed=0)
    monkeypatch.setenv("SDD_DATA_ROOT", str(data))
    ck = tmp_path / "ck"
    worlds.dino_checkpoint(ck, "tinyvit", "vit_tiny_test", 1, seed=1)
    bench = worlds.tiny_registry(tmp_path, data / "imagenet-1k", ck)
    f = bench / "datasets" / "nyu_depth_v2.yaml"  # the generated NYU is not of the released size
    f.write_text(f.read_text().replace(", images: 24231", "").replace(", images: 654", ""))
    (bench / "protocols" / "depth_tiny.yaml").write_text(TINY)
    (bench / "suites" / "dep.yaml").write_text(
        "name: dep\ntitle: depth\nmethods: [tinyvit]\ngrid:\n  - protocol: depth_tiny\n"
        "    datasets: [nyu_depth_v2]\n    epochs: [1]\n"
    )
    return load_registry(bench)


def cell(reg):
    return build_plan(reg, "dep")[0]


def test_the_one_cycle_schedule_is_dinov3s():
    """lr and beta1 at the steps where the source scheduler (dinov3/eval/depth/schedulers.py, run on the CPU) gives:
    3e-7 and beta1 0 at the start, the warm-up peaking near 0.75 x max_lr, beta1 0.85 -> 0.95 after, 1.2e-8 at the
    end."""
    p = DepthParams()
    want = {
        0: (3e-7, 0.0),
        6400: (1.40252e-4, 0.0),
        12799: (2.25293e-4, 0.0),
        12800: (2.24992e-4, 0.85),
        25600: (7.49984e-5, 0.90),
        38399: (1.2e-8, 0.95),
    }
    for step, (lr, beta1) in want.items():
        got_lr, got_beta1 = depth.one_cycle(p, step)
        assert got_lr == pytest.approx(lr, rel=2e-5, abs=1e-12), step
        assert got_beta1 == pytest.approx(beta1, abs=1e-3), step


def test_sig_loss_drops_its_variance_term_during_its_warm_up_and_ignores_missing_depth():
    p = DepthParams()
    pred = torch.tensor([1.0, 2.0, 4.0, 3.0])
    gt = torch.tensor([1.5, 2.0, 3.0, 0.0])  # the last pixel has no depth
    g = torch.log(pred[:3] + 1e-3) - torch.log(gt[:3] + 1e-3)
    assert float(depth.sig_loss(pred, gt, p, 0)) == pytest.approx(math.sqrt(0.15 * float(g.mean()) ** 2))
    full = math.sqrt(float(g.var()) + 0.15 * float(g.mean()) ** 2)  # unbiased variance, as torch.var
    assert float(depth.sig_loss(pred, gt, p, p.loss_warmup_iters)) == pytest.approx(full)
    assert float(depth.sig_loss(gt[:3], gt[:3], p, 500)) == pytest.approx(0.0, abs=1e-7)


def test_the_head_weighs_linear_bins_and_starts_near_their_middle():
    torch.manual_seed(0)  # the head's init and the features: the same draw in every worker and order
    head = depth.DepthHead(8, 256, 0.001, 10.0).eval()
    middle = (0.001 + 10.0) / 2
    out = head(torch.randn(2, 8, 3, 4))
    assert out.shape == (2, 1, 3, 4)
    # N(0, 0.01) weights over 8 channels: each bin's weight relu(z) + 0.1 moves ~0.017 around 0.11, which moves the
    # weighted mean of 256 bins by ~0.03 m per pixel; 0.25 m is ~9 of those
    assert torch.allclose(out, torch.full_like(out, middle), atol=0.25)
    with torch.no_grad():  # a zero convolution: every bin weighs 0.1, the output is exactly the bins' mean
        head.conv.weight.zero_()
        assert torch.allclose(head(torch.randn(1, 8, 2, 2)), torch.tensor(middle), atol=1e-4)
    with torch.no_grad():  # all weight on the last bin: the maximum depth
        head.conv.weight.zero_()
        head.conv.bias.fill_(-1e4)
        head.conv.bias[-1] = 1e6
    assert torch.allclose(head(torch.randn(1, 8, 2, 2)), torch.tensor(10.0), atol=1e-2)


def test_the_eigen_mask_and_the_per_image_metrics():
    p = DepthParams()
    gt = torch.full((480, 640), 2.0)
    gt[100, 100] = 0.0  # no depth
    gt[200, 200] = 12.0  # beyond max_depth
    mask = depth.eval_mask(gt, p)
    assert mask[45:471, 41:601].sum() == 426 * 560 - 2 and mask.sum() == 426 * 560 - 2
    assert not mask[44, 300] and not mask[471, 300] and not mask[300, 40] and not mask[300, 601]
    rng = np.random.default_rng(0)
    g = torch.tensor(rng.uniform(0.5, 9.0, 500))
    pr = torch.tensor(rng.uniform(0.5, 9.0, 500))
    got = depth.image_metrics(pr, g)
    gn, pn = g.numpy(), pr.numpy()
    ratio = np.maximum(gn / pn, pn / gn)
    want = [
        np.sqrt(np.mean((gn - pn) ** 2)),
        np.mean(np.abs(gn - pn) / gn),
        np.mean(np.abs(np.log10(gn) - np.log10(pn))),
        np.sqrt(np.mean((np.log(gn) - np.log(pn)) ** 2)),
        *(np.mean(ratio < 1.25**k) for k in (1, 2, 3)),
    ]
    assert got == pytest.approx(want)


def test_linear_depth_learns_the_scenes_and_resumes_where_it_stopped(world, tmp_path, monkeypatch):
    reg = world
    rec = execute(cell(reg), tmp_path / "results")
    assert rec["status"] == "ok", rec.get("traceback")
    m = rec["metrics"]
    assert 0 < m["rmse"] and 0 <= m["delta1"] <= m["delta2"] <= m["delta3"] <= 1
    assert rec["evaluated_images"] == 4 and rec["train_images"] == 12
    assert [h["iter"] for h in rec["history"]] == [20, 40, 60]
    assert rec["history"][0]["beta1"] == 0.0 and rec["history"][-1]["beta1"] > 0.85  # warm-up, then the cycle
    # the trained head beats the untrained one (every pixel at the bins' middle, about 5 m)
    p = DepthParams.model_validate(reg.protocol("depth_tiny").params)
    from types import SimpleNamespace

    from harness.models.checkpoints import load_backbone

    bb = load_backbone("tinyvit", 1, registry=reg, kind="depth_linear").backbone.eval()
    from harness.datasets import depth_pairs

    val = depth.DepthPairs(depth_pairs(reg.dataset("nyu_depth_v2"), "val"), p, train=False)
    here = SimpleNamespace(device="cpu", rank=0, world_size=1, distributed=False)
    untrained, _ = depth.evaluate(bb, depth.DepthHead(bb.dim, 256, 0.001, 10.0), val, p, here, None)
    assert m["rmse"] < untrained["rmse"]
    # a run killed after its first saved state resumes there and ends where the uninterrupted run ended
    real = depth._train
    seen = {}

    def killed(*args, **kwargs):
        seen["start"] = args[8]  # _train(backbone, head, net, opt, dataset, p, ctx, plan, start, ...)
        if args[8] == 0:
            monkeypatch.setattr(depth, "one_cycle", _dies_at(20))
        return real(*args, **kwargs)

    monkeypatch.setattr(depth, "_train", killed)
    first = execute(cell(reg), tmp_path / "again")
    assert first["status"] == "failed" and "stopped at iteration 21" in first["error"]
    monkeypatch.setattr(depth, "one_cycle", ONE_CYCLE)
    resumed = execute(cell(reg), tmp_path / "again")
    assert resumed["status"] == "ok", resumed.get("traceback")
    assert resumed["resumed_from_iter"] == 20 and seen["start"] == 20
    assert resumed["metrics"] == pytest.approx(m)


ONE_CYCLE = depth.one_cycle


def _dies_at(step: int):
    def one_cycle(p, s):
        if s == step:
            raise RuntimeError(f"stopped at iteration {s + 1}")
        return ONE_CYCLE(p, s)

    return one_cycle


def test_the_tau_table_against_depth_orients_rmse_and_delta1():
    """Two methods, five checkpoints: DSE rises while RMSE falls and δ1 rises, so DSE's τ is +1 against both in
    goodness orientation; RankMe falls, so its τ is -1."""
    from harness.analysis.tables import depth_tau_table

    rows = []
    for method in ("a", "b"):
        for e in range(1, 6):
            rows.append(
                {
                    "status": "ok",
                    "method": method,
                    "epoch": e,
                    "protocol": "metrics",
                    "kind": "metrics",
                    "dataset": "imagenet",
                    "dse_separability": float(e),
                    "dse_dim": 0.5,
                    "dse": float(e),
                    "rankme": 10.0 - e,
                }
            )
            rows.append(
                {
                    "status": "ok",
                    "method": method,
                    "epoch": e,
                    "protocol": "depth_linear",
                    "kind": "depth_linear",
                    "dataset": "nyu_depth_v2",
                    "rmse": 2.0 - 0.1 * e,
                    "delta1": 0.5 + 0.05 * e,
                }
            )
    t = depth_tau_table(pd.DataFrame(rows))
    f = t.frame.set_index("metric")
    assert f.loc["DSE (λ=1)", "τ vs RMSE (m)"] == pytest.approx(1.0) and f.loc["DSE (λ=1)", "τ vs δ1"] == pytest.approx(
        1.0
    )
    assert f.loc["RankMe", "τ vs RMSE (m)"] == pytest.approx(-1.0) and f.loc["RankMe", "n_rmse"] == 2
    assert any(n.startswith("DSE's τ against RMSE (m) is +1.00") or "tracks RMSE (m) best" in n for n in t.notes)


def test_the_depth_sentence_says_less_well_better_or_as_well_and_whether_intervals_separate():
    from harness.analysis.tables import TAU_METRICS, depth_sentence, depth_targets

    dse, other = TAU_METRICS[0].label, TAU_METRICS[1].label

    def frame(on_depth, on_miou, dse_ci, other_ci):
        return pd.DataFrame(
            {
                "metric": [dse, other],
                "τ vs RMSE (m)": [on_depth, 0.1],
                "RMSE (m) 95% CI": [dse_ci, other_ci],
                "τ vs mIoU (Avg.)": [on_miou, 0.0],
            }
        )

    said = depth_sentence(frame(0.6, 0.2, "[+0.30, +0.90]", "[-0.40, +0.20]"), depth_targets())
    assert "better than mIoU here (τ +0.60 vs +0.20)" in said and "its interval above every other's" in said
    said = depth_sentence(frame(0.2, 0.6, "[-0.30, +0.90]", "[-0.40, +0.20]"), depth_targets())
    assert "less well than mIoU" in said and "do not separate" in said
    assert "as well as mIoU" in depth_sentence(frame(0.4, 0.4, "[-0.3, +0.9]", "[-0.4, +0.2]"), depth_targets())


def test_the_plan_prices_a_depth_cell_from_its_iterations_and_batch():
    from pathlib import Path

    from harness.plan import recipe_price

    reg = load_registry(Path(__file__).resolve().parents[1] / "benchmarks")
    proto = reg.protocol("depth_linear")
    want = (38400 * 16 + 654 * 2 / 3) * proto.resources.train_s_per_image / 3600  # the test images flipped: twice
    assert recipe_price(proto, reg.dataset("nyu_depth_v2")) == pytest.approx(want, abs=1e-3)
    assert recipe_price(proto, reg.dataset("nyu_depth_v2", "mini_depth")) is None  # the mini copy states no sizes
