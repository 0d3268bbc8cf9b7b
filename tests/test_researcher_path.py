"""The researcher's path (issue 18): a method of their own in MoCo v3's file format under their own file
names, a small suite, a local run, the tables, and each wrong turn a new user met on the way."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.mini import generate
from harness.models.archs import build_backbone
from tests import formats

ROOT = Path(__file__).resolve().parents[1]

METHOD = """name: mymethod
title: My method (MoCo v3 style)
family: contrastive
arch: vit_tiny_test
checkpoint:
  dir: {ckpts}
  file: 'run7_ep{{epoch}}.ckpt'
  epochs: [1, 2, 3]
  state_dict: {{key: state_dict, keep_prefix: {prefix}}}
"""
SUITE = """name: mine
title: my method on the mini world
methods: [mymethod]
grid:
  - protocol: metrics_mini
    datasets: [imagenet]
  - protocol: linear_mini
    datasets: [ade20k]
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate.imagenet(root / "imagenet-1k", classes=8, train=32, val=8, seed=0)
    generate.ade20k(root / "ade" / "ADEChallengeData2016", seed=0)
    return root


@pytest.fixture
def world(tmp_path, data, monkeypatch):
    """The researcher's registry: the shipped one plus their method file and suite; their checkpoints
    are MoCo v3 files (base and momentum encoders, predictor) saved under their own names."""
    monkeypatch.setenv("SDD_DATA_ROOT", str(data))
    monkeypatch.setenv("SDD_RESULTS", str(tmp_path / "results"))
    for var in ("SDD_CACHE", "SDD_SUBMITIT"):  # one results root: everything goes under it
        monkeypatch.delenv(var, raising=False)
    bench = tmp_path / "bench"
    shutil.copytree(ROOT / "benchmarks", bench)
    ckpts = tmp_path / "my_ckpts"
    for epoch in (1, 2, 3):
        torch.manual_seed(epoch)
        written = formats.mocov3(build_backbone("vit_tiny_test").net.state_dict(), ckpts, epoch)
        written.rename(ckpts / f"run7_ep{epoch}.ckpt")

    def write(prefix="module.momentum_encoder."):
        (bench / "methods" / "mymethod.yaml").write_text(METHOD.format(ckpts=ckpts, prefix=prefix))
        return bench

    (bench / "suites" / "mine.yaml").write_text(SUITE)
    return write, ckpts, tmp_path


def sdd(bench, *args):
    return main(["--registry", str(bench), *args])


def test_from_a_method_file_to_non_empty_tables(world, capsys):
    write, _, tmp = world
    bench = write()
    assert sdd(bench, "validate", "--suite", "mine") == 0
    assert sdd(bench, "reproduce", "--suite", "mine", "--cluster", "local", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "first and last checkpoint of each method loaded" in out and "would submit 6" in out
    assert sdd(bench, "submit", "--suite", "mine", "--cluster", "local") == 0
    out = capsys.readouterr()
    assert "all 6 cells ok" in out.out and "mmengine" not in out.out + out.err  # the libraries' chatter: in logs
    results = tmp / "results"
    logs = list((results / "mine" / "logs" / "linear_mini").rglob("*.log"))
    assert len(logs) == 3 and any("mmengine" in f.read_text() for f in logs)
    for f in logs:  # each cell's log holds the job's own progress, its final metrics and the library's log
        text = f.read_text()
        assert "Iter(train)" in text and "loss:" in text and "lr:" in text, text[-2000:]
        assert "job finished: " in text and "mIoU=" in text.split("job finished: ")[-1] and "library log: " in text
    assert (results / ".submitit").is_dir() and not (ROOT / "results" / ".submitit" / "mine").exists()
    assert sdd(bench, "collect", "--suite", "mine") == 0
    assert sdd(bench, "tables", "--suite", "mine") == 0  # no --protocol: the suite's own linear_mini
    sdd_md = (results / "mine" / "tables" / "sdd.md").read_text()
    tau_md = (results / "mine" / "tables" / "kendall_tau.md").read_text()
    assert "_No data._" not in sdd_md and "mymethod | ade20k | 3 |" in sdd_md and "| DSE |" in tau_md
    assert "`linear_mini` protocol" in (results / "mine" / "REPORT.md").read_text()
    assert sdd(bench, "tables", "--suite", "mine", "--protocol", "linar") == 1
    assert "did you mean 'linear_mini'?" in capsys.readouterr().err


def test_validate_reports_every_problem_of_a_suite_at_once(world, capsys):
    write, ckpts, _ = world
    bench = write(prefix="module.encoder.")  # a wrong keep_prefix
    (ckpts / "run7_ep2.ckpt").unlink()  # and a missing checkpoint
    assert sdd(bench, "validate", "--suite", "mine") == 1
    err = capsys.readouterr().err
    assert "method 'mymethod': 1 of 3 checkpoints missing" in err
    assert "method 'mymethod', epoch 1:" in err and "method 'mymethod', epoch 3:" in err
    assert "module.base_encoder." in err and "module.momentum_encoder." in err  # what the file does hold
    s = bench / "suites" / "mine.yaml"
    s.write_text(SUITE.replace("datasets: [ade20k]", "datasets: [ade20k]\n    epochs: [1, 5]"))
    assert sdd(bench, "validate") == 2
    assert "method 'mymethod' has no checkpoint for epochs [5]" in capsys.readouterr().err


def test_a_0_based_epoch_and_a_wrong_prefix_are_reported_together_with_their_fixes(world, capsys):
    """A wrong epoch used to hide a wrong keep_prefix until the next run, and the hint named file_offset
    where `epoch_key_offset: 1` is the fix for a file that stores the 0-based epoch index."""
    write, ckpts, _ = world
    bench = write(prefix="module.encoder.")
    m = bench / "methods" / "mymethod.yaml"
    m.write_text(m.read_text().replace("  epochs: [1, 2, 3]", "  epochs: [1, 2, 3]\n  epoch_tolerance: 0"))
    for epoch in (1, 2, 3):  # as DINO's and MoCo's loops store it: the index of the last completed epoch
        f = ckpts / f"run7_ep{epoch}.ckpt"
        obj = torch.load(f, weights_only=True)
        obj["epoch"] = epoch - 1
        torch.save(obj, f)
    assert sdd(bench, "validate", "--suite", "mine") == 1
    err = capsys.readouterr().err
    one = err[err.index("method 'mymethod', epoch 1:") : err.index("method 'mymethod', epoch 3:")]
    assert "2 problems" in one and "Likely fix: set `checkpoint.epoch_key_offset: 1`" in one
    assert "backbone keys are missing after the state-dict rule" in one and "module.momentum_encoder." in one


def test_loader_errors_point_the_right_way(world, tmp_path):
    from harness.models.checkpoints import CheckpointError, load_backbone
    from harness.registry import load_registry

    write, ckpts, _ = world
    bench = write()
    m = bench / "methods" / "mymethod.yaml"
    m.write_text(m.read_text().replace("arch: vit_tiny_test", "arch: vit_small_patch16"))
    with pytest.raises(CheckpointError, match="fit architecture vit_tiny_test: is `arch` right"):
        load_backbone("mymethod", 1, registry=load_registry(bench))
    m.write_text(
        m.read_text()
        .replace("arch: vit_small_patch16", "arch: vit_tiny_test")
        .replace("run7_ep{epoch}.ckpt", "run7_ep{epoch:03d}.ckpt")
    )
    with pytest.raises(CheckpointError) as e:
        load_backbone("mymethod", 1, registry=load_registry(bench))
    assert "another zero padding" in str(e.value) and "'run7_ep{epoch}.ckpt'" in str(e.value)
    m.write_text(m.read_text().replace("run7_ep{epoch:03d}.ckpt", "run7_ep{epoch}.ckpt"))
    (ckpts / "run7_ep1.ckpt").rename(ckpts / "run7_ep0.ckpt")  # numbered from 0: an offset, and it says so
    with pytest.raises(CheckpointError, match=r"numbered 0, 2, 3 \(number = epoch \+ checkpoint.file_offset"):
        load_backbone("mymethod", 1, registry=load_registry(bench))


def test_launch_output_tells_the_truth(world, capsys):
    write, _, tmp = world
    bench = write()
    assert sdd(bench, "plan", "--suite", "mine", "--protocol", "knn_mini") == 2
    assert "suite 'mine' runs no protocol 'knn_mini'" in capsys.readouterr().err
    assert sdd(bench, "submit", "--suite", "mine", "--cluster", "local", "--method", "dino", "--dry-run") == 2
    assert "suite 'mine' has no method 'dino'" in capsys.readouterr().err
    assert sdd(bench, "submit", "--suite", "mine", "--cluster", "local", "--dry-run") == 0
    rows = lambda out: [
        line.split()[0]
        for line in out.splitlines()
        if line.startswith("  ") and line.split()[0] not in ("protocol",) and not line.strip().startswith("-")
    ]
    dry = rows(capsys.readouterr().out)
    assert sdd(bench, "submit", "--suite", "mine", "--cluster", "local", "--protocol", "metrics_mini") == 0
    ran = rows(capsys.readouterr().out)
    assert dry == ["linear_mini", "metrics_mini"] and ran == ["metrics_mini"]  # the dry run's groups
    p = bench / "protocols" / "metrics_mini.yaml"
    p.write_text(p.read_text().replace("tokens_per_image: 8", "tokens_per_image: 4"))
    assert sdd(bench, "status", "--suite", "mine") == 0
    out = capsys.readouterr().out
    assert (
        "stale" in out.splitlines()[0] and next(x for x in out.splitlines() if x.startswith("total")).split()[-2] == "3"
    )
    assert sdd(bench, "ls") == 0
    out = capsys.readouterr().out
    assert all(f"{kind}:" in out for kind in ("methods", "datasets", "protocols", "suites"))


def test_piping_a_local_submit_does_not_block(world):
    write, _, tmp = world
    bench = write()
    cmd = [
        sys.executable,
        "-m",
        "harness",
        "--registry",
        str(bench),
        "submit",
        "--suite",
        "mine",
        "--cluster",
        "local",
        "--protocol",
        "metrics_mini",
    ]
    out = subprocess.run(
        " ".join(cmd) + " | tail -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )
    assert "all 3 cells ok" in out.stdout, out.stderr[-2000:]
    rec = json.loads(next((tmp / "results" / "mine" / "runs" / "metrics_mini").rglob("ep0001.json")).read_text())
    assert rec["status"] == "ok"
