"""DSE while a model trains (issue 26): a hand-written loop and a real mmengine run write the metrics
protocol's records epoch by epoch; collect and the tables read them while the run is going; the running
top-3 says what to keep; the training model is never touched."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from harness.models.archs import build_backbone
from harness.monitor import DSEMonitor, MonitorError
from harness.registry import load_registry
from tests import worlds


class Trainee(nn.Module):
    """A model as a training script holds it: a ViT under `backbone`, a head beside it."""

    def __init__(self):
        super().__init__()
        self.backbone = build_backbone("vit_tiny_test").net
        self.head = nn.Linear(48, 4)

    def forward(self, x):
        return self.head(self.backbone.forward_features(x)[:, 0])


@pytest.fixture
def world(tmp_path, monkeypatch):
    from harness.mini import generate

    data = tmp_path / "data"
    generate.imagenet(data / "imagenet-1k", classes=4, train=8, val=2)
    ck = tmp_path / "ck"  # the tiny methods' files are never read by the monitor
    bench = worlds.tiny_registry(tmp_path, data / "imagenet-1k", ck, num_images=16, lidar_images=4)
    monkeypatch.setenv("SDD_BENCHMARKS", str(bench))
    return load_registry(bench), tmp_path / "results"


def train_a_little(model, steps=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        x, y = torch.randn(4, 3, 64, 64, generator=g), torch.randint(0, 4, (4,), generator=g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_a_hand_written_loop_writes_the_metrics_records_and_the_tables_read_them(world):
    from harness.analysis import build_tables, load_collected
    from harness.analysis.tables import selections
    from harness.collect import write_collected

    reg, results = world
    torch.manual_seed(0)
    model = Trainee()
    monitor = DSEMonitor("tiny", "tinyvit", rule={"keep_prefix": "backbone."}, results=results, registry=reg)
    for epoch in (1, 2):
        train_a_little(model, seed=epoch)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        rec = monitor.step(model, epoch)
        assert rec["status"] == "ok" and rec["protocol"] == "metrics" and rec["epoch"] == epoch
        assert torch.isfinite(torch.tensor(rec["metrics"]["dse"]))
        assert (
            rec["inputs"]["checkpoint"]["path"] is None
            and "live model" in rec["inputs"]["checkpoint"]["live"]["source"]
        )
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # scored a copy
        assert model.training
    assert set(monitor.selected()) <= {1, 2} and monitor.selected()
    assert monitor.keep(monitor.selected()[0])
    # the run's records are the metrics protocol's: collect and the tables work on them mid-run
    write_collected(reg, "tiny", results)
    table, tables, _ = build_tables(results / "tiny")  # the tables build mid-run (no mIoU yet: empty rows)
    assert {t.name for t in tables} >= {"kendall_tau", "model_selection"}
    collected, _ = load_collected(results / "tiny")
    assert selections(collected)["tinyvit"] == monitor.selected()  # the online top-3 is the tables' selection


def test_scores_only_when_due_and_refuses_what_it_cannot_score(world):
    reg, results = world
    model = Trainee()
    every2 = DSEMonitor("tiny", "tinyvit", every=2, rule={"keep_prefix": "backbone."}, results=results, registry=reg)
    assert every2.step(model, 1) is None and not (results / "tiny").exists()
    with pytest.raises(
        MonitorError, match=r"epoch 3 is not a checkpoint epoch of method 'tinyvit'.*\(1, 2\).*tinyvit.yaml"
    ) as e:
        DSEMonitor("tiny", "tinyvit", rule={"keep_prefix": "backbone."}, results=results, registry=reg).step(model, 3)
    wrong = DSEMonitor("tiny", "tinyvit", rule={"keep_prefix": "encoder."}, results=results, registry=reg)
    assert "every=" not in str(e.value) and "epochs: {start: 1, stop: E, step: 1}" in str(e.value)
    with pytest.raises(MonitorError, match=r"^the training model: .*backbone keys are missing") as e:
        wrong.step(model, 1)
    assert "The model's tensors sit under: backbone." in str(e.value) and "?:" not in str(e.value)
    assert "keep_prefix: 'backbone.' would fit" in str(e.value) and "the monitor's `rule`" in str(e.value)
    with pytest.raises(MonitorError, match="runs no metrics protocol"):
        DSEMonitor("tiny", "tinyvit", protocol="knn", results=results, registry=reg)
    assert not (results / "tiny").exists()  # nothing written for a refusal


def test_an_mmengine_run_with_the_hook_in_its_config_writes_a_record_per_epoch(world, tmp_path):
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    from harness.monitor import mmengine_hook

    reg, results = world
    mmengine_hook()  # registers DSEMonitorHook in mmengine's HOOKS

    class Wrapped(BaseModel):
        def __init__(self):
            super().__init__()
            self.net = Trainee()

        def forward(self, inputs, labels, mode="tensor"):
            logits = self.net(torch.stack(inputs) if isinstance(inputs, list) else inputs)
            if mode == "loss":
                return {"loss": nn.functional.cross_entropy(logits, torch.as_tensor(labels))}
            return logits

    g = torch.Generator().manual_seed(0)
    data = [dict(inputs=torch.randn(3, 64, 64, generator=g), labels=int(i % 4)) for i in range(8)]
    runner = Runner(
        model=Wrapped(),
        work_dir=str(tmp_path / "mm"),
        train_dataloader=dict(
            dataset=data,
            sampler=dict(type="DefaultSampler", shuffle=True),
            batch_size=4,
            collate_fn=dict(type="default_collate"),
        ),
        train_cfg=dict(by_epoch=True, max_epochs=2),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01)),
        custom_hooks=[
            dict(
                type="DSEMonitorHook",
                suite="tiny",
                method="tinyvit",
                module="net",
                rule={"keep_prefix": "backbone."},
                results=str(results),
            )
        ],
        default_hooks=dict(checkpoint=None),
        default_scope="mmengine",
    )
    runner.train()
    import json

    from harness.analysis import build_tables, load_collected
    from harness.analysis.tables import selections
    from harness.collect import write_collected

    for epoch in (1, 2):
        path = results / "tiny" / "runs" / "metrics" / "imagenet" / "tinyvit" / f"ep{epoch:04d}.json"
        assert path.is_file(), sorted(p.name for p in path.parent.glob("*")) if path.parent.exists() else path
        rec = json.loads(path.read_text())
        assert rec["status"] == "ok" and rec["epoch"] == epoch and "live model" in str(rec["inputs"]["checkpoint"])
    hook = next(h for h in runner.hooks if type(h).__name__ == "DSEMonitorHook")
    assert sorted(hook.monitor.history) == [1, 2]
    write_collected(reg, "tiny", results)
    _, tables, _ = build_tables(results / "tiny")
    assert {t.name for t in tables} >= {"kendall_tau", "model_selection"}
    collected, _ = load_collected(results / "tiny")
    assert selections(collected)["tinyvit"] == hook.monitor.selected()


def test_a_lightning_run_with_the_callback_writes_a_record_per_epoch(world):
    pytest.importorskip("lightning")
    import pickle

    import lightning.pytorch as pl

    from harness import records
    from harness.analysis import build_tables, load_collected
    from harness.analysis.tables import selections
    from harness.collect import write_collected
    from harness.monitor import DSEMonitorCallback, lightning_callback

    reg, results = world

    class Wrapped(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = Trainee()

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(8, 3, 64, 64, generator=g), torch.arange(8) % 4)
    torch.manual_seed(0)
    callback = lightning_callback()(
        "tiny", "tinyvit", module="net", rule={"keep_prefix": "backbone."}, results=results, registry=reg
    )
    assert isinstance(callback, pl.Callback) and lightning_callback() is DSEMonitorCallback  # one class
    assert isinstance(pickle.loads(pickle.dumps(callback)), DSEMonitorCallback)  # ddp_spawn pickles callbacks
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(Wrapped(), torch.utils.data.DataLoader(data, batch_size=4, shuffle=True, generator=g))
    # Lightning's current_epoch is 0-based inside on_train_epoch_end: the records are of epochs done, 1 and 2
    for epoch in (1, 2):
        path = results / "tiny" / "runs" / "metrics" / "imagenet" / "tinyvit" / f"ep{epoch:04d}.json"
        rec = records.read_record(path, results)
        assert rec is not None and rec["status"] == "ok" and rec["epoch"] == epoch, path
        assert "live model (Trainee)" in rec["inputs"]["checkpoint"]["live"]["source"]
    assert sorted(callback.monitor.history) == [1, 2]
    assert float(trainer.callback_metrics["dse"]) == pytest.approx(rec["metrics"]["dse"])  # logged as "dse"
    # collect and the tables read the run's records; the callback's running top-3 is the tables' selection
    write_collected(reg, "tiny", results)
    _, tables, _ = build_tables(results / "tiny")
    assert {t.name for t in tables} >= {"kendall_tau", "model_selection"}
    collected, _ = load_collected(results / "tiny")
    assert callback.monitor.selected() and selections(collected)["tinyvit"] == callback.monitor.selected()


def test_the_lightning_callback_without_lightning_says_what_to_install(monkeypatch):
    from harness.monitor import LIGHTNING_PIN, lightning_callback

    monkeypatch.setitem(sys.modules, "lightning", None)  # import lightning raises ImportError
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    with pytest.raises(MonitorError, match=rf"pip install {LIGHTNING_PIN}"):
        lightning_callback()
    lock = (Path(__file__).parents[1] / "lock.txt").read_text().split()
    assert LIGHTNING_PIN in lock  # the message names the locked version
