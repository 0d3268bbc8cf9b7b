"""Suite -> cells. A cell is (suite, protocol, dataset, method, epoch) plus the hash of its resolved
config; changing a hyper-parameter changes the hash of exactly the cells it touches."""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from harness import records
from harness.fingerprint import file_fingerprint
from harness.kinds import METRICS_KIND, PROTOCOL_KINDS
from harness.records import CellState
from harness.registry import DatasetSpec, Registry, RegistryError, SuiteEntry
from harness.selection import dse_normalised, select_checkpoints


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
    checkpoint_file: str = field(default="", compare=False, hash=False, repr=False)  # "" when not resolvable here
    # "recipe" when gpu_hours comes from the recipe (epochs x images x the protocol's per-image cost)
    priced_from: str = field(default="protocol file", compare=False, hash=False, repr=False)

    @property
    def id(self) -> str:
        return records.cell_id(self.protocol, self.dataset, self.method, self.epoch)

    def record_path(self, results: Path) -> Path:
        return records.record_path(results, self.suite, self.protocol, self.dataset, self.method, self.epoch)

    def checkpoint_fingerprint(self) -> dict | None:
        """The checkpoint file's content identity now (read once, then cached); None where it is not
        reachable from here."""
        return file_fingerprint(self.checkpoint_file) if self.checkpoint_file else None

    def state(self, results: Path) -> tuple[CellState, str | None]:
        """(state, why) from this cell's record (`records.cell_state`): a record of another recipe, code
        version or checkpoint content is stale and `why` says which. Where the checkpoint cannot be seen
        (a login node without SDD_CKPT_ROOT), the record's config hash decides alone. A cell without a
        computed record but with an imported one (`sdd import`) is `imported`: never run again."""
        state, why = records.cell_state(
            self.record_path(results),
            self.config_hash,
            Path(results),
            config=self.config,
            checkpoint_file=self.checkpoint_file or None,
            data_check=self._data_check,
        )
        if state == CellState.TODO:
            imported = records.record_path(
                results, self.suite, self.protocol, self.dataset, self.method, self.epoch, tree="imported"
            )
            try:
                if records.read_record(imported, Path(results)) is not None:
                    return CellState.IMPORTED, None
            except records.CorruptRecord as e:
                return CellState.CORRUPT, e.why
        return state, why

    def _data_check(self, recorded: dict) -> str | None:
        """Why the dataset splits a record read are not the ones on disk now (None: the same)."""
        from harness.datasets import data_change

        return data_change(DatasetSpec.model_validate({"title": "", **self.config["dataset"]}), recorded)


def resolved_config(
    reg: Registry, protocol: str, dataset: str, method: str, epoch: int, suite: str | None = None
) -> dict:
    """Everything that determines a cell's result (documentation fields such as `paper` left out); the
    dataset as the suite reads it (its `data_root`)."""
    p, d, m = reg.protocol(protocol), reg.dataset(dataset, suite), reg.method(method)
    proto = p.model_dump(include={"name", "kind", "params"}, mode="json")  # params resolved: defaults filled in
    kind = PROTOCOL_KINDS[p.kind]
    proto["version"] = kind.version  # a code change of the kind's job makes exactly its cells stale
    # parameters added later, at the value that computes what earlier records hold: the job reads them, the
    # config hash leaves them out (`config_hash`), so those records stay current
    same = [p for p, value in kind.added_params if _as_before(proto["params"].get(p, object()), value, m)]
    if same:
        proto["unhashed"] = same
    for param, resolver in kind.plan_time:  # `auto` resolved where the plan is made: one value per table, hashed
        if proto["params"].get(param) == "auto":
            proto["params"] = {**proto["params"], param: PLAN_TIME_RESOLVERS[resolver]()}
    return {
        "protocol": proto,
        "dataset": d.model_dump(exclude={"title", "notes", "source"}, mode="json"),
        "method": {
            "name": m.name,
            "arch": m.arch,
            "arch_kwargs": m.arch_kwargs,
            "checkpoint": m.checkpoint.model_dump(exclude={"epochs"}, mode="json"),
            **{f: getattr(m, f) for f in kind.method_fields},
        },
        "epoch": epoch,
    }


def _as_before(given, before, method) -> bool:
    """Whether a parameter added to a kind (`kinds.ProtocolKind.added_params`) at value `given` computes what the
    kind computed before it existed, for `method`: only the aliases could be evaluated then, and "depth" is the
    alias's ViT depth (a CNN takes no blocks, so any value)."""
    from harness.archnames import ALIAS_DEPTHS

    if method.arch not in ALIAS_DEPTHS or "depth" in method.arch_kwargs:
        return False
    if before == "depth":
        return ALIAS_DEPTHS[method.arch] in (given, 0)
    return given == before


def detectron2_backend() -> str:
    """What `backend: auto` means where the plan is made: detectron2 when it is installed."""
    import importlib.util

    return "detectron2" if importlib.util.find_spec("detectron2") is not None else "torchvision"


# what a kind's `plan_time` parameters name (harness.kinds): resolved once, when the plan is made
PLAN_TIME_RESOLVERS = {"maskrcnn_backend": detectron2_backend}


def config_hash(config: dict) -> str:
    """The cell's identity: its resolved config, less the protocol parameters it marks `unhashed` (added to a
    kind after records existed, at the value that computes what they hold: `kinds.ProtocolKind.added_params`)."""
    proto = config.get("protocol") or {}
    if proto.get("unhashed"):
        params = {k: v for k, v in proto["params"].items() if k not in proto["unhashed"]}
        proto = {k: v for k, v in proto.items() if k != "unhashed"} | {"params": params}
        config = {**config, "protocol": proto}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _entry_epochs(entry: SuiteEntry, method_epochs: tuple[int, ...], where: str) -> tuple[int, ...]:
    if entry.epochs == "all":
        return method_epochs
    if entry.epochs == "last":
        return method_epochs[-1:]
    unknown = sorted(set(entry.epochs) - set(method_epochs))
    if unknown:
        raise RegistryError(
            f"{where}: epochs {unknown} are not checkpoints of this method "
            f"(it has {method_epochs[0]}..{method_epochs[-1]})"
        )
    return tuple(entry.epochs)


def recipe_price(protocol, dataset) -> float | None:
    """GPU·h of a cell priced from its recipe: the images it trains on (epochs x the train split's images, or
    iterations x the global batch) plus its evaluations' images at a third of a training image's cost (a forward
    pass; flipped images twice), x the protocol's `train_s_per_image`; None where the protocol states no per-image
    cost or the dataset file no split sizes it needs (then the protocol's gpu_hours)."""
    s_per_image = protocol.resources.train_s_per_image
    p = protocol.params  # the resolved parameters (defaults filled in)
    sizes = {name: getattr(split, "images", None) for name, split in dataset.splits.items()}
    if not s_per_image:
        return None
    if p.get("epochs"):  # fine-tuning: every epoch over the train split, validated every val_every epochs
        train_split = p.get("train_split", "train")
        if not sizes.get(train_split):
            return None
        trained = p["epochs"] * sizes[train_split]
        evaluated = math.ceil(p["epochs"] / p.get("val_every", 1)) * (sizes.get("val") or 0)
    elif p.get("iters") and p.get("batch_size"):  # an iteration budget: one evaluation at the end
        if not sizes.get("val"):
            return None
        trained = p["iters"] * p["batch_size"]
        evaluated = sizes["val"] * (2 if p.get("eval_flip") else 1)
    else:
        return None
    return round((trained + evaluated / 3) * s_per_image / 3600, 3)


def build_plan(
    reg: Registry, suite: str, *, protocols: list[str] | None = None, methods: list[str] | None = None
) -> list[Cell]:
    s = reg.suite(suite)
    in_suite = [e.protocol for e in s.grid]
    for p in protocols or ():
        reg.protocol(p)
        if p not in in_suite:  # a filter that matches nothing is a mistake, not an empty plan
            raise RegistryError(
                f"suite '{suite}' runs no protocol '{p}' (its protocols: {', '.join(dict.fromkeys(in_suite))})"
            )
    for m in methods or ():
        reg.method(m)
        if m not in s.methods:
            raise RegistryError(f"suite '{suite}' has no method '{m}' (its methods: {', '.join(s.methods)})")
    cells = []
    for entry in s.grid:
        if protocols and entry.protocol not in protocols:
            continue
        p = reg.protocol(entry.protocol)
        names = s.methods if entry.methods == "all" else entry.methods
        prices = {d: recipe_price(p, reg.dataset(d, suite)) for d in entry.datasets}
        for dataset in entry.datasets:
            for method in names:
                if methods and method not in methods:
                    continue
                spec = reg.method(method)
                for epoch in _entry_epochs(entry, spec.epochs(), f"{s.source}: {entry.protocol}/{method}"):
                    cfg = resolved_config(reg, entry.protocol, dataset, method, epoch, suite)
                    try:
                        ckpt = str(spec.checkpoint_file(epoch))
                    except RegistryError:  # e.g. SDD_CKPT_ROOT unset where only planning happens
                        ckpt = ""
                    cells.append(
                        Cell(
                            suite,
                            entry.protocol,
                            dataset,
                            method,
                            epoch,
                            config_hash(cfg),
                            prices[dataset] or p.resources.gpu_hours,
                            cfg,
                            str(reg.root),
                            ckpt,
                            priced_from="recipe" if prices[dataset] else "protocol file",
                        )
                    )
    return cells


def cell_states(cells: list[Cell], results: Path, why: dict[str, str] | None = None) -> dict[str, CellState]:
    """Cell id -> state; `why` (when given) is filled with the reason of every stale, corrupt or failed one."""
    out = {}
    for c in cells:
        state, reason = c.state(results)
        out[c.id] = state
        if why is not None and reason:
            why[c.id] = reason
    return out


def reason_groups(reasons: dict[str, str]) -> list[tuple[str, int, str]]:
    """(kind of reason, how many cells, one example cell) for a summary: the reasons without their
    per-cell details (digests, values), most common first."""
    groups: dict[str, list[str]] = defaultdict(list)
    for cell_id, why in reasons.items():
        groups[why.split(" (")[0].split(":")[0]].append(cell_id)
    return sorted(((k, len(v), v[0]) for k, v in groups.items()), key=lambda g: (-g[1], g[0]))


def measured_prices(
    reg: Registry, cells: list[Cell], states: dict[str, str], results: Path
) -> dict[tuple, tuple[float, int]]:
    """(protocol, arch) -> (median device·h of its finished cells, how many): what a cell of that protocol
    and architecture cost when it ran, from the records (wall time × GPUs used; × processes on the CPU).
    Only runs on the protocol's own kind of device count: a CPU run never prices a GPU cell."""
    import statistics

    hours: dict[tuple, list[float]] = defaultdict(list)
    for c in cells:
        if states.get(c.id) != "done":
            continue
        rec = records.read_record(c.record_path(results), Path(results)) or {}
        placed, wall = rec.get("placement") or {}, (rec.get("timings") or {}).get("total_s")
        wants_gpu = reg.protocol(c.protocol).resources.gpus > 0
        if not placed or wall is None or (placed.get("accelerator") == "cuda") != wants_gpu:
            continue  # no placement stated, or a run on another kind of device than the protocol's
        count = placed.get("gpus") or placed.get("world_size") or 1
        hours[(c.protocol, c.config["method"]["arch"])].append(wall * count / 3600)
    return {k: (statistics.median(v), len(v)) for k, v in hours.items()}


def summarize(
    cells: list[Cell], states: dict[str, str], measured: dict[tuple, tuple[float, int]] | None = None
) -> list[dict]:
    """One row per protocol: datasets, methods, cells, done/failed/stale/corrupt/todo, GPU·h. A cell is
    priced from `measured` (finished cells of its protocol and architecture) when there are any, else
    from the protocol file; `priced_from` says which."""
    measured = measured or {}
    rows: dict[str, dict] = defaultdict(
        lambda: {
            "datasets": set(),
            "methods": set(),
            "cells": 0,
            "done": 0,
            "failed": 0,
            "stale": 0,
            "corrupt": 0,
            "imported": 0,
            "live": 0,
            "todo": 0,
            "gpu_h_all": 0.0,
            "gpu_h_left": 0.0,
            "sources": set(),
            "runs": 0,
        }
    )
    for c in cells:
        r = rows[c.protocol]
        r["datasets"].add(c.dataset)
        r["methods"].add(c.method)
        r["cells"] += 1
        r[states[c.id]] += 1
        m = measured.get((c.protocol, c.config["method"]["arch"]))
        price = m[0] if m else c.gpu_hours
        r["sources"].add("measured" if m else c.priced_from)
        r["runs"] = max(r["runs"], m[1] if m else 0)
        r["gpu_h_all"] += price
        if states[c.id] not in ("done", "imported", "live"):
            r["gpu_h_left"] += price
    out = []
    for p, r in rows.items():
        sources = r.pop("sources")
        runs = r.pop("runs")
        r["gpu_h_cell"] = r["gpu_h_all"] / r["cells"] if r["cells"] else 0.0
        r["priced_from"] = (
            f"measured (median of up to {runs} runs)" if sources == {"measured"} else " + ".join(sorted(sources))
        )
        out.append({"protocol": p, **{k: (len(v) if isinstance(v, set) else v) for k, v in r.items()}})
    return out


# ---------------------------------------------------------------------------------------------
# The DSE-guided grid: label-free metrics on every checkpoint first, then the downstream protocols
# only on each method's DSE top-3 candidates and its last checkpoint.


def _metric_protocols(reg: Registry, cells: list[Cell]) -> set[str]:
    return {c.protocol for c in cells if reg.protocol(c.protocol).kind == METRICS_KIND}


def guided(reg: Registry, cells: list[Cell], results: Path) -> tuple[list[Cell], dict[str, str], dict[str, list[int]]]:
    """(cells to run now, method -> why its downstream cells wait, method -> selected epochs)."""
    results = Path(results)
    metric_protos = _metric_protocols(reg, cells)
    keep = [c for c in cells if c.protocol in metric_protos]
    waiting, selected = {}, {}
    by_method: dict[str, list[Cell]] = defaultdict(list)
    for c in keep:
        by_method[c.method].append(c)
    for method, mcells in by_method.items():
        done, lacking = [], []
        for c in mcells:
            if c.state(results)[0] not in ("done", "live"):  # the monitor's records count as the metrics job's
                continue
            m = records.read_record(c.record_path(results), results)["metrics"]
            if not all(isinstance(m.get(k), (int, float)) for k in ("dse_separability", "dse_dim")):
                lacking.append(f"ep{c.epoch}")
                continue
            done.append((c.epoch, m))
        if lacking:
            waiting[method] = (
                f"{len(lacking)} metrics record(s) lack dse_separability / dse_dim "
                f"({', '.join(lacking[:5])}); re-run them"
            )
            continue
        if len(done) < len(mcells):
            waiting[method] = f"metrics done on {len(done)} of {len(mcells)} checkpoints"
            continue
        rows = sorted(done, key=lambda r: r[0])
        epochs = [e for e, _ in rows]
        sep = [float(m["dse_separability"]) for _, m in rows]
        dim = [float(m["dse_dim"]) for _, m in rows]
        selected[method] = select_checkpoints(epochs, dse_normalised(sep, dim))
    for c in cells:
        if c.protocol in metric_protos or c.method not in selected:
            continue
        last = max(x.epoch for x in cells if x.method == c.method and x.protocol == c.protocol)
        if c.epoch in selected[c.method] or c.epoch == last:
            keep.append(c)
    return keep, waiting, selected


def guided_projection(reg: Registry, full: list[Cell], now: list[Cell], waiting: dict) -> tuple[int, float]:
    """Upper bound on the guided grid's size and cost: the cells chosen now, plus for each method still
    waiting at most 4 checkpoints (3 candidates + last) of each downstream protocol x dataset."""
    metric_protos = _metric_protocols(reg, full)
    n, hours = len(now), sum(c.gpu_hours for c in now)
    groups: dict[tuple, list[Cell]] = defaultdict(list)
    for c in full:
        if c.method in waiting and c.protocol not in metric_protos:
            groups[(c.method, c.protocol, c.dataset)].append(c)
    for cs in groups.values():
        k = min(4, len(cs))
        n += k
        hours += k * cs[0].gpu_hours
    return n, hours
