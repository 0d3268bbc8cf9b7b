"""The mini world's dense degradation (issue 16), on records the harness generates: the mini methods are
pre-trained for real (16 checkpoints), every checkpoint of the methods the mini world was chosen to
degrade is probed with the `linear_mini` protocol, and each of them loses at least the stated mIoU from
its best checkpoint to its last (docs/demo.md)."""

import pandas as pd
import pytest

from harness.analysis.tables import sdd_table
from harness.collect import write_collected
from harness.jobs import execute
from harness.mini.demo import DEGRADING, DEGRADING_ON, STATED_DROP, degradation_summary, prepare
from harness.plan import build_plan
from harness.registry import load_registry


@pytest.mark.slow
def test_the_mini_world_degrades_by_the_stated_size(mini_world, tmp_path, monkeypatch):
    monkeypatch.setenv("SDD_MINI_ROOT", str(mini_world))  # pre-trained for the registry's 16 epochs, as `make demo`
    monkeypatch.setenv("SDD_CACHE", str(tmp_path / "cache"))
    reg = load_registry()
    cells = [
        c
        for c in build_plan(reg, "mini", protocols=["linear_mini"])
        if c.method in DEGRADING and c.dataset in DEGRADING_ON
    ]
    assert len(cells) == len(DEGRADING) * len(DEGRADING_ON) * len(reg.method(DEGRADING[0]).epochs())
    results = tmp_path / "results"
    statuses = [execute(c, results, registry=reg, progress=False)["status"] for c in cells]  # ~3 s each
    assert statuses == ["ok"] * len(cells)
    write_collected(reg, "mini", results)
    table = pd.read_csv(results / "mini" / "results.csv", low_memory=False)
    deg = sdd_table(table, "linear_mini").frame
    print(degradation_summary(results / "mini" / "results.csv"))
    assert set(zip(deg["method"], deg["dataset"])) == {(m, d) for m in DEGRADING for d in DEGRADING_ON}
    assert (deg["checkpoints"] == 16).all()
    for r in deg.itertuples():  # a peak before the end, and a fall of at least the stated size after it
        assert r.best_epoch < r.last_epoch and -r.diff >= STATED_DROP, r


def test_a_mini_world_of_another_version_is_regenerated_with_its_checkpoints(tmp_path, monkeypatch, capsys):
    from harness.mini import generate

    root = tmp_path / "mini"
    (root / "data" / "imagenet-1k").mkdir(parents=True)
    (root / "data" / "GENERATED").write_text("ok\n")  # what the first mini world wrote
    (root / "data" / "imagenet-1k" / "old.JPEG").write_text("x")
    (root / "checkpoints" / "mini_dino").mkdir(parents=True)
    (root / "checkpoints" / "mini_dino" / "TRAINED.json").write_text("{}")
    monkeypatch.setenv("SDD_MINI_ROOT", str(root))
    monkeypatch.setenv("SDD_DATA_ROOT", str(root / "data"))
    prepare(load_registry(), quiet=True, epochs=1)
    assert "another version of the mini world" in capsys.readouterr().out
    assert (root / "data" / "GENERATED").read_text().strip() == generate.WORLD
    assert not (root / "data" / "imagenet-1k" / "old.JPEG").exists()
    assert (root / "checkpoints" / "mini_dino" / "checkpoint0001.pth").is_file()  # retrained on the new data
