"""The metrics job end to end on generated images and tiny checkpoints; failures become records."""

import math

import pytest

from harness import records
from harness.jobs import execute
from harness.plan import build_plan
from harness.registry import load_registry
from tests import worlds


@pytest.fixture
def world(tmp_path, monkeypatch):
    data = worlds.imagefolder(tmp_path / "imagenet")
    ck = tmp_path / "ck"
    monkeypatch.setenv("SDD_CACHE", str(tmp_path / "cache"))  # read when a cell runs
    reg = load_registry(worlds.tiny_registry(tmp_path, data, ck))
    return reg, ck, tmp_path / "results"


def test_every_cell_gets_a_record_and_failures_say_why(world):
    reg, ck, results = world
    worlds.dino_checkpoint(ck, "tinyvit", "vit_tiny_test", 1, seed=1)
    worlds.dino_checkpoint(ck, "tinyvit", "vit_tiny_test", 2, seed=2)
    worlds.dino_checkpoint(ck, "tinyres", "resnet_tiny_test", 1, seed=3, nan=True)  # NaN weights
    # tinyres epoch 2: no checkpoint at all
    cells = build_plan(reg, "tiny")
    assert len(cells) == 4
    recs = {c.id: execute(c, results) for c in cells}
    ok = [r for r in recs.values() if r["status"] == "ok"]
    assert len(ok) == 2
    for r in ok:
        m = r["metrics"]
        for k in (
            "dse",
            "dse_inter",
            "dse_intra_image",
            "dse_intra_batch",
            "dse_dim",
            "w2",
            "neg_lu",
            "rankme",
            "effective_rank",
            "alpha_req",
            "lidar",
        ):
            assert isinstance(m[k], float) and math.isfinite(m[k]), k
        assert 0 < m["dse_dim"] <= 1 and 0 <= m["w2"] <= math.sqrt(2) + 1e-9
        assert r["image_list"]["count"] == 24 and len(r["image_list"]["hash"]) == 16
        assert r["features"]["shape"] == [24, 16, 48] and r["timings"]["features_s"] > 0
        assert r["config_hash"] and r["versions"]["torch"] and r["peak_memory_mb"] > 0
    assert ok[0]["image_list"]["hash"] == ok[1]["image_list"]["hash"]  # one image list for all checkpoints
    assert ok[0]["metrics"]["dse"] != ok[1]["metrics"]["dse"]
    nan = recs["metrics/imagenet/tinyres/ep0001"]
    assert nan["status"] == "failed" and "NaN/inf" in nan["error"] and "Traceback" in nan["traceback"]
    missing = recs["metrics/imagenet/tinyres/ep0002"]
    assert missing["status"] == "failed" and "checkpoint not found" in missing["error"]
    assert "tinyres/checkpoint0002.pth" in missing["error"]
    states = [records.cell_state(c.record_path(results), c.config_hash)[0] for c in cells]
    assert sorted(states) == ["done", "done", "failed", "failed"]


def test_cached_features_give_identical_metrics(world):
    reg, ck, results = world
    worlds.dino_checkpoint(ck, "tinyvit", "vit_tiny_test", 1, seed=1)
    cell = next(c for c in build_plan(reg, "tiny", methods=["tinyvit"]) if c.epoch == 1)
    first = execute(cell, results)
    second = execute(cell, results)
    assert first["features"]["cache"] == "miss" and second["features"]["cache"] == "hit"
    assert first["metrics"] == second["metrics"]


def test_missing_dataset_is_a_failed_record(world, tmp_path):
    reg, ck, results = world
    worlds.dino_checkpoint(ck, "tinyvit", "vit_tiny_test", 1, seed=1)
    import shutil

    shutil.rmtree(tmp_path / "imagenet")
    cell = build_plan(reg, "tiny", methods=["tinyvit"])[0]
    rec = execute(cell, results)
    assert rec["status"] == "failed" and "image folder" in rec["error"] and "does not exist" in rec["error"]
