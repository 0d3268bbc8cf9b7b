"""DSE while a model trains: `DSEMonitor` scores the model on a suite's fixed image list every N epochs and
writes the record the `metrics` protocol writes for that (suite, method, epoch), so `sdd collect`, the
paper's λ, the τ tables and the DSE selection work on a run while it goes; it keeps the running DSE top-3
(the official selection rule, online) and says which epochs a loop should keep.

    monitor = DSEMonitor("my_suite", "my_method", every=10, rule={"keep_prefix": "backbone."})
    for epoch in range(1, epochs + 1):
        train_one_epoch(model)
        monitor.step(model, epoch)                  # the record of (my_suite, metrics, my_method, epoch)
        if monitor.keep(epoch) or epoch == epochs:
            save_checkpoint(model, epoch)          # one of the DSE top-3 so far, and the last epoch

`keep(epoch)`: the epoch is a local maximum of DSE (within ±2 scored epochs) among the 3 highest so far --
the tables' model-selection rule over the epochs scored until now. The guided grid also probes the last
epoch: save it. The monitor's history is its records (read when it starts: a restart knows the epochs
scored before; a re-score replaces its epoch); its records say `source: live`, and it refuses to start
where records of the method computed from checkpoint files exist (`replace=True` replaces them).

The model reaches the metrics as the registry method's architecture: its state_dict, through `rule` (a
checkpoint state-dict rule without `key`: keep_prefix, strip_prefixes, rename_prefixes, ...), must fill
every backbone key of the method's `arch` (a copy is scored in eval mode on the monitor's device; the
training model is not touched), or the model is a harness `Backbone` already. Framework adapters:
`DSEMonitorHook` (an mmengine hook: `custom_hooks=[dict(type="DSEMonitorHook", suite=..., method=...)]`) and
`DSEMonitorCallback` (a PyTorch Lightning callback: `Trainer(callbacks=[lightning_callback()(suite, method)])`;
Lightning is optional, pinned in lock.txt and the `lightning` extra).
"""

from __future__ import annotations

import time
from pathlib import Path

from harness.errors import HarnessError


class MonitorError(HarnessError):
    pass


LIGHTNING_PIN = "lightning==2.6.6"  # as in lock.txt and pyproject's `lightning` extra


class DSEMonitor:
    def __init__(
        self,
        suite: str,
        method: str,
        *,
        every: int = 1,
        rule: dict | None = None,
        results: str | Path | None = None,
        registry=None,
        device: str = "cpu",
        protocol: str | None = None,
        top: int = 3,
        replace: bool = False,
    ):
        from harness.kinds import METRICS_KIND
        from harness.paths import results_root
        from harness.registry import StateDictRule, load_registry

        if every < 1:
            raise MonitorError(f"every = {every}: score every N >= 1 epochs")
        self.reg = registry or load_registry()
        self.suite, self.method, self.every, self.top = suite, method, every, top
        self.results = Path(results) if results is not None else results_root()
        self.rule = StateDictRule.model_validate({**(rule or {}), "key": None})
        self.device = device
        entries = [
            e
            for e in self.reg.suite(suite).grid
            if self.reg.protocol(e.protocol).kind == METRICS_KIND and (protocol is None or e.protocol == protocol)
        ]
        if not entries:
            raise MonitorError(
                f"suite '{suite}' runs no {METRICS_KIND} protocol{f' named {protocol}' if protocol else ''}: "
                f"the monitor writes that protocol's records"
            )
        self.protocol, self.dataset = entries[0].protocol, entries[0].datasets[0]
        self.reg.method(method)
        self.replace = replace
        # epoch -> (separability, dimensionality): the records' (read now; a re-score replaces its epoch)
        self.history: dict[int, tuple[float, float]] = {}
        self._read_history()

    def _cells(self) -> list:
        from harness.plan import build_plan

        return [
            c
            for c in build_plan(self.reg, self.suite, protocols=[self.protocol], methods=[self.method])
            if c.dataset == self.dataset
        ]

    def _read_history(self) -> None:
        """The scores already recorded for this (suite, method): the monitor's own from before a restart, and
        -- refused unless `replace` -- records computed from checkpoint files, which a monitored run must not
        mix with its own numbers."""
        from harness import records

        from_files = []
        for c in self._cells():
            try:
                rec = records.read_record(c.record_path(self.results), self.results)
            except records.CorruptRecord:
                continue  # a damaged record is replaced when its epoch is scored
            if not rec or rec.get("status") != "ok":
                continue
            if not records.is_live(rec):
                from_files.append(c.epoch)
                continue
            m = rec.get("metrics") or {}
            if isinstance(m.get("dse_separability"), (int, float)) and isinstance(m.get("dse_dim"), (int, float)):
                self.history[c.epoch] = (float(m["dse_separability"]), float(m["dse_dim"]))
        if from_files and not self.replace:
            raise MonitorError(
                f"suite '{self.suite}' already holds {len(from_files)} {self.protocol} record(s) of method "
                f"'{self.method}' computed from checkpoint files (epochs {from_files[:6]}"
                f"{' ...' if len(from_files) > 6 else ''}): a monitored run would mix its numbers with theirs and "
                f"replace them. Monitor this run under a method of its own (another method file) or another suite, "
                f"or pass replace=True to replace those records with this run's"
            )

    # ---- the training loop's side ---------------------------------------------------------------------------
    def step(self, model, epoch: int) -> dict | None:
        """Score `model` at `epoch` when it is due (every N epochs) and write its record; returns the
        record (None when not due). A failure to score is raised, never written as a number."""
        if epoch % self.every:
            return None
        from harness import records
        from harness.jobs import data_inputs, ok_record
        from harness.jobs.common import base_record
        from harness.jobs.metrics import score
        from harness.suitedir import suite_lock

        cell = self._cell(epoch)
        params = self._params(cell)
        t0 = time.perf_counter()
        backbone = self.backbone_of(model)
        placement = self._placement()
        result = score(backbone, cell, self.reg, params, placement, checkpoint=self._live(model, epoch)).record_fields()
        record = {
            **base_record(cell),
            "source": "live",
            "inputs": {"checkpoint": {"path": None, "live": self._live(model, epoch)}},
            "placement": placement.record(),
        }
        record["inputs"]["data"] = data_inputs(self.reg, cell, params)
        record = ok_record(record, result, time.perf_counter() - t0)
        path = cell.record_path(self.results)
        with suite_lock(self.results, self.suite, f"DSE monitor of {self.method}"):
            try:
                old = records.read_record(path, self.results)
            except records.CorruptRecord:
                old = None
            if old and old.get("status") == "ok" and not records.is_live(old) and not self.replace:
                raise MonitorError(
                    f"{path} holds a record computed from a checkpoint file since this monitor started; it was "
                    f"left as it was (pass replace=True to replace such records with this run's)"
                )
            records.write_record(path, record)
        m = record["metrics"]
        self.history[epoch] = (float(m["dse_separability"]), float(m["dse_dim"]))
        return record

    def selected(self) -> list[int]:
        """The epochs of the running DSE top-3 (local maxima within ±2 scored epochs, the paper's λ over the
        epochs scored so far): what the tables' selection would say now."""
        from harness.selection import dse_normalised, select_checkpoints

        epochs = sorted(self.history)
        if not epochs:
            return []
        dse = dse_normalised([self.history[e][0] for e in epochs], [self.history[e][1] for e in epochs])
        return select_checkpoints(epochs, dse, top=self.top)

    def keep(self, epoch: int) -> bool:
        """Whether `epoch` is in the running DSE selection: a local maximum of DSE within ±2 scored epochs,
        among the 3 highest of the epochs scored so far (save its checkpoint; one that drops out later may be
        deleted). Save the last epoch as well: the guided grid probes it."""
        return epoch in self.selected()

    # ---- internals --------------------------------------------------------------------------------------------
    def backbone_of(self, model):
        """A copy of `model` as the method's architecture: a harness Backbone as it is, else its state_dict
        through the monitor's rule, every backbone key required."""
        import copy

        from harness.models.archs import Backbone, build_backbone
        from harness.models.checkpoints import CheckpointError, extract_state_dict, load_state_into

        if isinstance(model, Backbone):
            bb = copy.deepcopy(model)
        else:
            spec = self.reg.method(self.method)
            bb = build_backbone(spec.arch, **spec.arch_kwargs)
            sd = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
            try:
                load_state_into(
                    bb,
                    extract_state_dict(sd, self.rule, path="the training model"),
                    path="the training model",
                    raw_keys=list(sd),
                    holder="The model",
                    fix="Set the monitor's `rule` (DSEMonitor(..., rule={...}): keep_prefix / strip_prefixes / "
                    "rename_prefixes), which maps the model's state_dict keys to the method's architecture",
                )
            except CheckpointError as e:
                raise MonitorError(str(e)) from None
        from harness.kinds import METRICS_KIND, PROTOCOL_KINDS

        bb.remainder = PROTOCOL_KINDS[METRICS_KIND].patch_remainder  # scored as the metrics job scores a file
        return bb.eval().requires_grad_(False)

    def _cell(self, epoch: int):
        cells = self._cells()
        hit = [c for c in cells if c.epoch == epoch]
        if not hit:
            planned = sorted(c.epoch for c in cells)
            shown = ", ".join(map(str, planned[:4])) + (f", ... {planned[-1]}" if len(planned) > 4 else "")
            spec = self.reg.method(self.method)
            where = f" in {spec.source}" if getattr(spec, "source", None) else ""
            raise MonitorError(
                f"epoch {epoch} is not a checkpoint epoch of method '{self.method}' in suite '{self.suite}' "
                f"({shown}): the monitor writes the record of a planned cell. Add the epochs you monitor to "
                f"checkpoint.epochs{where} (every {self.every} epoch(s) up to E: "
                f"`epochs: {{start: {self.every}, stop: E, step: {self.every}}}`)"
            )
        return hit[0]

    def _params(self, cell):
        from harness.kinds import PROTOCOL_KINDS

        return PROTOCOL_KINDS[cell.config["protocol"]["kind"]].params.model_validate(cell.config["protocol"]["params"])

    def _placement(self):
        import dataclasses

        from harness.device import resolve

        p = resolve(0)
        if self.device == "cpu":
            return p
        import torch

        if not torch.cuda.is_available():
            raise MonitorError(f"device {self.device!r}: no GPU is visible to this process")
        return dataclasses.replace(p, device=self.device, accelerator="cuda", name=torch.cuda.get_device_name())

    def _live(self, model, epoch: int) -> dict:
        return {"source": f"live model ({type(model).__name__}) at epoch {epoch}", "epoch": epoch}


def mmengine_hook():
    """The mmengine hook class (registered in mmengine's HOOKS as DSEMonitorHook on first call)."""
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS

    if "DSEMonitorHook" in HOOKS.module_dict:
        return HOOKS.module_dict["DSEMonitorHook"]

    class DSEMonitorHook(Hook):
        """Scores the runner's model after every N-th training epoch (mmengine counts from 0; the record's
        epoch is the number of epochs done). `module`: the attribute path of the part to score (e.g.
        "backbone"); `rule`: maps its state_dict keys to the method's architecture."""

        priority = "LOW"

        def __init__(self, suite: str, method: str, every: int = 1, module: str = "", **kwargs):
            self.monitor = DSEMonitor(suite, method, every=every, **kwargs)
            self.module = module

        def after_train_epoch(self, runner) -> None:
            from harness.jobs.mm_adapter import unwrap

            model = unwrap(runner.model)
            for name in filter(None, self.module.split(".")):
                model = getattr(model, name)
            rec = self.monitor.step(model, runner.epoch + 1)
            if rec is not None:
                runner.logger.info(
                    f"DSE at epoch {rec['epoch']}: {rec['metrics']['dse']:.4f}; top-3 so far {self.monitor.selected()}"
                )

    HOOKS.register_module(module=DSEMonitorHook)
    return DSEMonitorHook


_lightning_callbacks: dict = {}  # Lightning's Callback base -> DSEMonitorCallback (one class per process)


def lightning_callback():
    """The PyTorch Lightning callback class, `DSEMonitorCallback(suite, method, every=1, module="", **kwargs)`
    (a `lightning.pytorch.Callback`; Lightning is imported here, not when harness.monitor is)."""
    try:
        from lightning.pytorch import Callback
        from lightning.pytorch.utilities import rank_zero_info
    except ImportError as e:
        raise MonitorError(
            f"the Lightning callback needs PyTorch Lightning, which is not importable here ({e}): "
            f"`.venv/bin/pip install {LIGHTNING_PIN}` (pinned in lock.txt: `make install` installs it)"
        ) from None
    if Callback in _lightning_callbacks:
        return _lightning_callbacks[Callback]

    class DSEMonitorCallback(Callback):
        """Scores the LightningModule (or its part at the attribute path `module`, e.g. "backbone") after
        every N-th training epoch, on global rank 0 only (Lightning counts from 0; the record's epoch is the
        number of epochs done); logs the DSE as "dse" (rank 0 only: not a metric other ranks can monitor).
        `rule`: maps the part's state_dict keys to the method's architecture."""

        def __init__(self, suite: str, method: str, every: int = 1, module: str = "", **kwargs):
            self.monitor = DSEMonitor(suite, method, every=every, **kwargs)
            self.module = module

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            if not trainer.is_global_zero:
                return
            model = pl_module
            for name in filter(None, self.module.split(".")):
                model = getattr(model, name)
            rec = self.monitor.step(model, trainer.current_epoch + 1)
            if rec is not None:
                dse = float(rec["metrics"]["dse"])
                pl_module.log("dse", dse, on_step=False, on_epoch=True, rank_zero_only=True)
                rank_zero_info(f"DSE at epoch {rec['epoch']}: {dse:.4f}; top-3 so far {self.monitor.selected()}")

    DSEMonitorCallback.__qualname__ = "DSEMonitorCallback"  # pickled by name (ddp_spawn): see __getattr__
    _lightning_callbacks[Callback] = DSEMonitorCallback
    return DSEMonitorCallback


def __getattr__(name: str):
    if name == "DSEMonitorCallback":  # `from harness.monitor import DSEMonitorCallback`, and unpickling one
        return lightning_callback()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
