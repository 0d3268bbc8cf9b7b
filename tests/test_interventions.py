"""The mini world's interventions (issue 26): every mini objective restores exactly what it saved in its own
format; a resumed run continues from its checkpoint (weights, teacher, optimizer) to the end of the
schedule; the regularisers reach the weights; the verdict rule; the generated registry of runs plans."""

from __future__ import annotations

import pytest
import torch

from harness.atomic import save_tensors
from harness.mini import interventions
from harness.mini.pretrain import OBJECTIVES, ResumeError, parser, train
from harness.models.checkpoints import safe_load


def _tensors(obj, prefix=""):
    """Every tensor of a checkpoint but the optimizer's, by its path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k != "optimizer":
                out.update(_tensors(v, f"{prefix}/{k}"))
        return out
    return {}


def _one_step(model, seed):
    g = torch.Generator().manual_seed(seed)
    v1, v2 = torch.randn(4, 3, 64, 64, generator=g), torch.randn(4, 3, 64, 64, generator=g)
    opt = torch.optim.AdamW(model.params, lr=1e-3)
    loss = model.loss(v1, v2)
    opt.zero_grad()
    loss.backward()
    opt.step()
    model.after_step(0.9)
    return opt


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_each_objective_restores_exactly_what_it_saved(objective, tmp_path):
    args = parser().parse_args(["--objective", objective, "--data", "x", "--out", "y"])
    torch.manual_seed(1)
    saved = OBJECTIVES[objective](args)
    opt = _one_step(saved, seed=0)
    path = tmp_path / "ck.pth"
    save_tensors(saved.checkpoint(3, opt, args), path)  # through the file, as a resumed run reads it
    ck = safe_load(path)
    torch.manual_seed(2)
    fresh = OBJECTIVES[objective](args)
    want = _tensors(ck)
    before = _tensors(fresh.checkpoint(3, opt, args))
    assert any(not torch.equal(before[k], want[k]) for k in want)  # a different model until restored
    fresh.restore(ck, str(path))
    got = _tensors(fresh.checkpoint(3, opt, args))
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want), [k for k in want if not torch.equal(got[k], want[k])]


def test_a_checkpoint_missing_a_key_is_refused_by_name(tmp_path):
    args = parser().parse_args(["--objective", "mocov3", "--data", "x", "--out", "y"])
    model = OBJECTIVES["mocov3"](args)
    ck = model.checkpoint(1, torch.optim.AdamW(model.params), args)
    del ck["state_dict"]["module.predictor.0.weight"]
    with pytest.raises(ResumeError, match=r"predictor: 1 key\(s\) missing, e.g. \['module.predictor.0.weight'\]"):
        OBJECTIVES["mocov3"](args).restore(ck, "ck.pth")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from harness.mini import generate

    root = tmp_path_factory.mktemp("iv") / "imagenet-1k"
    generate.imagenet(root, classes=4, train=8, val=2)  # 32 images: two steps of 16 per epoch
    return root


def _train(data, out, objective, *extra):
    return train(
        parser().parse_args(
            ["--objective", objective, "--data", str(data), "--out", str(out), "--quiet", "--seed", "3", *extra]
        )
    )


def _student(path, objective):
    ck = safe_load(path)
    sd = {"dino": lambda: ck["student"], "mocov3": lambda: ck["state_dict"]}[objective]()
    key = {"dino": "module.backbone.", "mocov3": "module.base_encoder."}[objective]
    return {k: v for k, v in sd.items() if k.startswith(key) and ".head." not in k}


@pytest.mark.slow
@pytest.mark.parametrize(
    "objective, file, regulariser",
    [
        ("dino", "checkpoint{:04d}.pth", ["--dse-beta", "0.1"]),
        ("mocov3", "checkpoint_{:04d}.pth.tar", ["--w2-lambda", "1.0"]),
        ("dino", "checkpoint{:04d}.pth", ["--gram-weight", "2.0"]),
    ],
)
def test_a_resumed_run_continues_from_its_checkpoint_and_the_regulariser_reaches_the_weights(
    data, tmp_path, objective, file, regulariser
):
    base = _train(data, tmp_path / "base", objective, "--epochs", "2")
    ck1 = base / file.format(1)
    resume = ["--epochs", "3", "--resume", str(ck1), "--resume-epoch", "1"]
    # at lr 0 the resumed student is the checkpoint's: it was restored, not re-initialised
    frozen = _train(data, tmp_path / "frozen", objective, *resume, "--lr", "0")
    assert sorted(p.name for p in frozen.glob("checkpoint*")) == [file.format(2), file.format(3)]
    a, b = _student(ck1, objective), _student(frozen / file.format(3), objective)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # AdamW's state continues the checkpoint's: 2 epochs of 2 steps after the first epoch's 2
    before = {int(v["step"]) for v in safe_load(ck1)["optimizer"]["state"].values()}
    after = {int(v["step"]) for v in safe_load(frozen / file.format(3))["optimizer"]["state"].values()}
    assert before == {2} and after == {2 + 4}
    # the same seed and data order: the regulariser is the only difference, and it moves the weights
    plain = _student(_train(data, tmp_path / "plain", objective, *resume) / file.format(3), objective)
    reg = _student(_train(data, tmp_path / "reg", objective, *resume, *regulariser) / file.format(3), objective)
    again = _student(_train(data, tmp_path / "again", objective, *resume) / file.format(3), objective)
    assert all(torch.equal(plain[k], again[k]) for k in plain)  # deterministic, so the difference is the loss
    assert any(not torch.equal(plain[k], reg[k]) for k in plain)


def test_a_resume_with_nothing_to_train_or_a_regulariser_without_its_input_is_refused(data, tmp_path):
    with pytest.raises(ResumeError, match="leaves nothing to train"):
        _train(data, tmp_path / "x", "dino", "--epochs", "2", "--resume", "ck.pth", "--resume-epoch", "2")
    with pytest.raises(ResumeError, match="objective 'dino' has no projector outputs"):
        _train(data, tmp_path / "y", "dino", "--epochs", "1", "--w2-lambda", "1.0")
    with pytest.raises(ResumeError, match="Gram anchoring needs --resume"):
        _train(data, tmp_path / "z", "dino", "--epochs", "1", "--gram-weight", "2.0")
    assert not (tmp_path / "x").exists() and not any((tmp_path / "y").glob("checkpoint*"))
    assert not any((tmp_path / "z").glob("checkpoint*"))


def test_the_verdict_rule():
    v = interventions.verdict
    assert v(40.0, [30.0, 31.0, 32.0], [39.5, 40.5, 41.0]) == "halted"  # ends at the start; the plain runs fall
    assert v(40.0, [30.0, 31.0, 32.0], [35.0, 36.0, 37.0]) == "reduced"  # better, yet still below the start
    assert v(40.0, [35.0, 36.0, 37.0], [30.0, 31.0, 32.0]) == "worsened"
    assert v(28.0, [28.0, 29.0, 30.0], [56.0, 57.0, 58.0]) == "improved (no degradation without it)"
    assert v(40.0, [30.0, 32.0, 34.0], [31.0, 33.0, 35.0]) == "no effect beyond the seeds' spread"
    assert v(float("nan"), [30.0, 31.0, 32.0], [39.5, 40.5, 41.0]).startswith("not judged")
    # at the start on average, but the seeds spread further than the gain: not a difference
    assert v(46.0, [37.0, 37.5, 38.0], [38.0, 42.0, 51.0]) == "no effect beyond the seeds' spread"


def test_the_generated_registry_plans_each_run_on_its_last_checkpoint(tmp_path, monkeypatch):
    from harness.plan import build_plan
    from harness.registry import load_registry

    monkeypatch.setenv("SDD_MINI_ROOT", str(tmp_path / "mini"))
    reg = load_registry()
    starts = {"mini_dino": (1, 16), "mini_mocov3": (4, 16)}
    runs = {
        interventions.run_name(m, c, s): (m, c, s, tmp_path / "ck" / interventions.run_name(m, c, s))
        for m, conds in interventions.PLAN.items()
        for c in conds
        for s in interventions.SEEDS
    }
    ireg = load_registry(interventions.write_registry(tmp_path / "mini", reg, runs, starts))
    cells = build_plan(ireg, interventions.SUITE)
    run_cells = [c for c in cells if "__" in c.method]
    assert {c.method for c in run_cells} == set(runs) and len(runs) == 3 * (5 + 6)  # 3 seeds x the conditions
    assert {c.epoch for c in run_cells} == {16} and {c.protocol for c in cells} == {"metrics_mini", "linear_mini"}
    spec = ireg.method("mini_mocov3__w2__s2")
    assert list(spec.epochs()) == list(range(5, 17)) and str(spec.checkpoint.dir).endswith("mini_mocov3__w2__s2")
    assert spec.checkpoint.state_dict == reg.method("mini_mocov3").checkpoint.state_dict  # the method's own rule
    assert {c.method for c in cells} >= set(interventions.COLLAPSE)


@pytest.mark.slow
def test_the_interventions_run_end_to_end_on_the_micro_suite(mini_world, micro_run, tmp_path, monkeypatch, capsys):
    """The real pipeline, smaller: mini DINO resumed from its DSE-selected checkpoint of the micro suite to the
    suite's last epoch, with and without -beta*DSE, two seeds; every run's last checkpoint probed and scored;
    the report's table, spreads and sentences; the DirectCLR spectrum; a second run trains and runs nothing."""
    from harness.cli import main

    monkeypatch.setenv("SDD_MINI_ROOT", str(mini_world))
    monkeypatch.setenv("SDD_SUBMITIT", str(tmp_path / "submitit"))
    monkeypatch.setenv("SDD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(interventions, "PLAN", {"mini_dino": ("none", "dse_x100", "gram")})
    monkeypatch.setattr(interventions, "SEEDS", (0, 1))
    from tests.conftest import copy_results

    assert micro_run[1] == 0  # the micro suite, run once for the session on the local executor
    results = copy_results(micro_run[0], tmp_path / "results")
    assert main(["collect", "--suite", "micro", "--results", str(results)]) == 0
    (start, last) = interventions.start_epochs(results, "micro")["mini_dino"]
    assert last == 4 and 1 <= start < last
    assert interventions.run(results, cluster="local", quiet=True, suite="micro") == 0
    text = (results / "interventions" / "INTERVENTIONS.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| mini_dino |")]
    assert len(rows) == 2 + 3  # the start and the original last, then the three conditions
    assert all(" ± " in r and "| 2 |" in r for r in rows[2:])  # two seeds, their spread
    assert rows[2].endswith("(×1.00) |") and "(×" in rows[4]  # each step's measured cost, against the plain runs'
    assert "+ w·Gram anchoring, w = 2.0" in rows[4] and "- + w·Gram anchoring, w = 2.0" in text  # row, sentence
    assert f"DSE-selected checkpoint (epoch {start})" in rows[0]
    assert "mini_dino on voc12_aug not judged (no probe of the DSE-selected checkpoint)" in text  # micro: ADE only
    assert "mini_dino on ade20k " in text and "nan at the DSE" not in text
    assert "mini_directclr" in text and (results / "interventions/figures/spectrum_directclr_vs_mocov3.png").is_file()
    table = __import__("pandas").read_csv(results / "interventions" / "results.csv")
    assert (table["status"] == "ok").all() and set(table["epoch"][table["method"].str.contains("__")]) == {last}
    capsys.readouterr()
    assert interventions.run(results, cluster="local", quiet=True, suite="micro") == 0
    out = capsys.readouterr().out
    assert "0 to run" in out and "pre-trained" not in out  # all cached


def test_the_plan_covers_any_method_whose_objective_the_harness_has_and_refuses_the_others(capsys):
    from harness.cli import main

    gram = ("gram", "gram_small")
    assert interventions.PLAN == {
        "mini_dino": ("none", "dse", "dse_x100", *gram),
        "mini_mocov3": ("none", "dse", "dse_x100", "w2", *gram),
    }  # the default: the methods the mini world degrades; W2 where the objective has its embeddings
    assert interventions.plan_for(["mini_mae", "mini_directclr"]) == {
        "mini_mae": ("none", "dse", "dse_x100", *gram),
        "mini_directclr": ("none", "dse", "dse_x100", "w2", *gram),
    }
    with pytest.raises(interventions.InterventionError, match="dino: the harness has no training objective"):
        interventions.plan_for(["dino"])  # a real method: the README's hook + loss path instead
    assert main(["demo", "--interventions", "--methods", "dino"]) == 2  # refused before any work
    assert main(["demo", "--methods", "mini_dino"]) == 2
    assert "add --interventions" in capsys.readouterr().err


def test_the_sentence_counts_only_the_pairs_that_degraded():
    import pandas as pd

    rows = [
        {"method": "mini_dino", "condition": c, "seed": i, "ade20k": a + i, "voc12_aug": v + i}
        for c, a, v in (("none", 30.0, 50.0), ("dse", 40.0, 60.0), ("dse_x100", 30.0, 50.0))
        for i in range(3)
    ]
    ref = {("mini_dino", "start"): (1, {"ade20k": 41.0, "voc12_aug": 45.0})}  # ADE degrades, VOC does not
    got = interventions.sentences(pd.DataFrame(rows), ref, {"mini_dino": ("none", "dse", "dse_x100")})
    assert got[0].startswith(
        "- − β·DSE, β = 0.001 (the paper's) halted the mini world's degradation (halted in 1 of the 1"
    )
    assert "voc12_aug improved (no degradation without it)" in got[0]
    assert "did not halt" in got[1] and "halted in 0 of the 1" in got[1]


def test_a_resume_from_the_wrong_epoch_or_objective_is_refused_by_name(data, tmp_path):
    base = _train(data, tmp_path / "base", "mocov3", "--epochs", "1")
    ck = base / "checkpoint_0001.pth.tar"
    with pytest.raises(ResumeError, match=r"holds epoch 1, not --resume-epoch 2: pass the checkpoint's own epoch"):
        _train(data, tmp_path / "x", "mocov3", "--epochs", "3", "--resume", str(ck), "--resume-epoch", "2")
    with pytest.raises(ResumeError, match=r"not a dino checkpoint of this pre-trainer .*--objective must be"):
        _train(data, tmp_path / "y", "dino", "--epochs", "2", "--resume", str(ck), "--resume-epoch", "1")
    assert not any((tmp_path / "x").glob("checkpoint*")) and not any((tmp_path / "y").glob("checkpoint*"))
    import torch

    saved = torch.load(ck, weights_only=True)
    for stored, ok in ((torch.tensor([1, 1]), True), ("1", True), (1.5, False)):  # a per-rank copy, a string
        other = tmp_path / f"ck_{stored!r}.pth.tar"[:200]
        torch.save({**saved, "epoch": stored}, other)
        out = tmp_path / f"z{len(list(tmp_path.iterdir()))}"
        if ok:  # read as the harness reads a checkpoint's epoch: the resume goes on
            _train(data, out, "mocov3", "--epochs", "2", "--resume", str(other), "--resume-epoch", "1")
            assert (out / "checkpoint_0002.pth.tar").is_file()
        else:
            with pytest.raises(ResumeError, match=r"'epoch' field is no epoch"):
                _train(data, out, "mocov3", "--epochs", "2", "--resume", str(other), "--resume-epoch", "1")
