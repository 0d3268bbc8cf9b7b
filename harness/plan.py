"""Suite -> cells. A cell is (suite, protocol, dataset, method, epoch) plus the hash of its resolved
config; changing a hyper-parameter changes the hash of exactly the cells it touches."""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from harness import store
from harness.registry import Registry, RegistryError, SuiteEntry


@dataclass(frozen=True)
class Cell:
    suite: str
    protocol: str
    dataset: str
    method: str
    epoch: int
    config_hash: str
    gpu_hours: float
    config: dict = field(compare=False, hash=False, repr=False)
    registry_root: str = field(default="", compare=False, hash=False, repr=False)

    @property
    def id(self) -> str:
        return f"{self.protocol}/{self.dataset}/{self.method}/ep{self.epoch:04d}"

    def record_path(self, results: Path) -> Path:
        return store.record_path(results, self.suite, self.protocol, self.dataset, self.method, self.epoch)


def resolved_config(reg: Registry, protocol: str, dataset: str, method: str, epoch: int) -> dict:
    """Everything that determines a cell's result (documentation fields such as `paper` left out)."""
    p, d, m = reg.protocol(protocol), reg.dataset(dataset), reg.method(method)
    return {
        "protocol": p.model_dump(include={"name", "kind", "params"}, mode="json"),
        "dataset": d.model_dump(exclude={"title", "notes", "source"}, mode="json"),
        "method": {"name": m.name, "arch": m.arch, "arch_kwargs": m.arch_kwargs,
                   "checkpoint": m.checkpoint.model_dump(exclude={"epochs"}, mode="json")},
        "epoch": epoch,
    }


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _entry_epochs(entry: SuiteEntry, method_epochs: tuple[int, ...], where: str) -> tuple[int, ...]:
    if entry.epochs == "all":
        return method_epochs
    if entry.epochs == "last":
        return method_epochs[-1:]
    unknown = sorted(set(entry.epochs) - set(method_epochs))
    if unknown:
        raise RegistryError(f"{where}: epochs {unknown} are not checkpoints of this method "
                            f"(it has {method_epochs[0]}..{method_epochs[-1]})")
    return tuple(entry.epochs)


def build_plan(reg: Registry, suite: str, *, protocols: list[str] | None = None,
               methods: list[str] | None = None) -> list[Cell]:
    s = reg.suite(suite)
    for p in protocols or ():
        reg.protocol(p)
    for m in methods or ():
        reg.method(m)
    cells = []
    for entry in s.grid:
        if protocols and entry.protocol not in protocols:
            continue
        p = reg.protocol(entry.protocol)
        names = s.methods if entry.methods == "all" else entry.methods
        for dataset in entry.datasets:
            for method in names:
                if methods and method not in methods:
                    continue
                spec = reg.method(method)
                for epoch in _entry_epochs(entry, spec.epochs(), f"{s.source}: {entry.protocol}/{method}"):
                    cfg = resolved_config(reg, entry.protocol, dataset, method, epoch)
                    cells.append(Cell(suite, entry.protocol, dataset, method, epoch, config_hash(cfg),
                                      p.resources.gpu_hours, cfg, str(reg.root)))
    return cells


def cell_states(cells: list[Cell], results: Path) -> dict[str, str]:
    return {c.id: store.cell_state(c.record_path(results), c.config_hash) for c in cells}


def summarize(cells: list[Cell], states: dict[str, str]) -> list[dict]:
    """One row per protocol: datasets, methods, cells, done/failed/stale/todo, GPU·h."""
    rows: dict[str, dict] = defaultdict(lambda: {"datasets": set(), "methods": set(), "cells": 0, "done": 0,
                                                 "failed": 0, "stale": 0, "todo": 0, "gpu_h_cell": 0.0,
                                                 "gpu_h_all": 0.0, "gpu_h_left": 0.0})
    for c in cells:
        r = rows[c.protocol]
        r["datasets"].add(c.dataset)
        r["methods"].add(c.method)
        r["cells"] += 1
        r[states[c.id]] += 1
        r["gpu_h_cell"] = c.gpu_hours
        r["gpu_h_all"] += c.gpu_hours
        if states[c.id] != "done":
            r["gpu_h_left"] += c.gpu_hours
    return [{"protocol": p, **{k: (len(v) if isinstance(v, set) else v) for k, v in r.items()}}
            for p, r in rows.items()]
