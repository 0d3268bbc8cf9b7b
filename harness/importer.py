"""`sdd import`: numbers a researcher already has, as records of a suite, joined into the same tables.

Formats (detected when not given):
- dse-official: the tree the official `get_DSE.py` writes,
  `<save_root>/DSE_<dataset>/_<kl>local_clusters_<kg>global_clusters_<n>th_layer_datapercent_<p>[_normalized]_bs_<b>/
  epoch_<N>/metrics_epoch_<N>.txt`, one `Layer <L> <quantity>: <value>` line per layer and quantity;
- spreadsheet: the `.xlsx` (or `.csv`) the official README asks users to compile: `Layer <L> <quantity>`
  columns, one row per checkpoint, an `epoch` column or the official convention row i -> epoch (i+1)*10;
- csv / parquet: wide or long tables with `method`, `epoch` and the harness's metric names, or
  downstream columns (`protocol`, `dataset`, `mIoU`, `AP`, `J&F`, `top1`);
- mmseg: a work directory of an mmseg run (1.x `vis_data/scalars.json`, 0.x `<stamp>.log.json`), the
  final validation mIoU (per-class IoU when logged);
- detectron2: a run's `metrics.json`, bbox / segm AP of the last evaluation.

An imported record sits apart from computed ones (`results/<suite>/imported/...`) and says where it came
from (file, sha256, format, line or row). It is never run again: `plan` and `submit` count its cell as
done; the tables prefer a computed record of the same cell and say so. Importing is all or nothing: any
bad line, row or column stops the command with one message naming it and nothing is written.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness import records
from harness.kinds import METRICS_KIND
from harness.registry import Registry

FORMATS = ("dse-official", "spreadsheet", "csv", "mmseg", "detectron2")

# the official estimator's quantities -> the harness's metric names
DSE_QUANTITIES = {"dse metric (original)": "dse", "dse metric": "dse", "inter-class distance": "dse_inter",
                  "intra-class radius (image)": "dse_intra_image", "effective dimensionality": "dse_dim",
                  "intra-class radius (batch)": "dse_intra_batch"}
METRIC_COLUMNS = {"dse", "dse_separability", "dse_dim", "dse_inter", "dse_intra_image", "dse_intra_batch", "w2",
                  "neg_w2", "neg_lu", "rankme", "effective_rank", "alpha_req", "lidar", "dense_rankme"}
DOWNSTREAM_COLUMNS = {"miou": ("linear", "mIoU"), "aacc": ("linear", "aAcc"), "macc": ("linear", "mAcc"),
                      "ap": ("maskrcnn", "segm_AP"), "segm_ap": ("maskrcnn", "segm_AP"),
                      "bbox_ap": ("maskrcnn", "bbox_AP"), "j&f": ("davis", "JF_mean"), "jf_mean": ("davis", "JF_mean"),
                      "top1": ("knn", "top1"), "top5": ("knn", "top5")}
ID_COLUMNS = {"method", "epoch", "protocol", "dataset", "suite"}


class ImportError_(Exception):
    """Nothing was imported; the message names the file, the line or row, and the fix."""


@dataclass
class Item:
    """One record to write: a cell and its metrics, and where they came from."""
    protocol: str
    dataset: str
    method: str
    epoch: int
    metrics: dict
    origin: dict                  # file, line/row
    details: dict = field(default_factory=dict)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def imported_path(results: Path, suite: str, protocol: str, dataset: str, method: str, epoch: int) -> Path:
    return records.record_path(results, suite, protocol, dataset, method, epoch, tree="imported")


def detect(path: Path) -> str:
    path = Path(path)
    if path.is_dir():
        if any(path.rglob("metrics_epoch_*.txt")):
            return "dse-official"
        if any(path.rglob("vis_data/scalars.json")) or any(path.glob("*.log.json")):
            return "mmseg"
        if (path / "metrics.json").is_file():
            return "detectron2"
    elif path.suffix in (".xlsx", ".xls"):
        return "spreadsheet"
    elif path.name == "metrics.json":
        return "detectron2"
    elif path.suffix in (".csv", ".parquet"):
        head = path.read_text(errors="replace").splitlines()[0] if path.suffix == ".csv" else ""
        return "spreadsheet" if re.search(r"Layer \d+ ", head) else "csv"
    raise ImportError_(f"{path}: cannot tell its format (a dse-official tree, a .xlsx/.csv, an mmseg work "
                       f"directory or a detectron2 metrics.json); give --format one of {', '.join(FORMATS)}")


def _number(value, where: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ImportError_(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(v):
        raise ImportError_(f"{where}: {value!r} is not a finite number; remove the row or fix the value")
    return v


def _separability(m: dict) -> dict:
    """The estimator's components also give separability (inter − mean intra radius), as computed ones do."""
    if {"dse_inter", "dse_intra_image", "dse_intra_batch"} <= m.keys():
        m["dse_separability"] = m["dse_inter"] - (m["dse_intra_image"] + m["dse_intra_batch"]) / 2
    return m


# --------------------------------------------------------------------------------------------- readers

SETTINGS = re.compile(r"^_?(?P<local_clusters>\d+)local_clusters_(?P<global_clusters>\d+)global_clusters_"
                      r"(?P<layers>\d+)th_layer_datapercent_(?P<data_percent>[0-9.eE-]+)(?P<normalized>_normalized)?"
                      r"_bs_(?P<batch_size>\d+)$")
LINE = re.compile(r"^Layer (?P<layer>\d+) (?P<quantity>.+?):\s*(?P<value>\S+)\s*$")


def read_dse_official(root: Path, method: str | None, layer: int, metrics_protocol: str, dataset: str) -> list[Item]:
    if method is None:
        raise ImportError_(f"{root}: the official tree does not name its method; give --method")
    items = []
    for f in sorted(Path(root).rglob("metrics_epoch_*.txt")):
        settings_dir = f.parent.parent
        m = SETTINGS.match(settings_dir.name)
        if not m:
            raise ImportError_(f"{settings_dir}: folder name not in get_DSE.py's form "
                               f"'_<kl>local_clusters_<kg>global_clusters_<n>th_layer_datapercent_<p>[_normalized]_bs_<b>'")
        settings = {k: v for k, v in m.groupdict().items()}
        settings["normalized"] = bool(settings["normalized"])
        epoch_dir = re.match(r"^epoch_(\d+)$", f.parent.name)
        if not epoch_dir or int(epoch_dir.group(1)) != int(re.search(r"(\d+)", f.stem).group(1)):
            raise ImportError_(f"{f}: expected epoch_<N>/metrics_epoch_<N>.txt")
        values = {}
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if not line.strip():
                continue
            lm = LINE.match(line)
            if not lm:
                raise ImportError_(f"{f}:{n}: {line!r} is not 'Layer <L> <quantity>: <value>'")
            q = lm.group("quantity").strip().lower()
            if q not in DSE_QUANTITIES:
                raise ImportError_(f"{f}:{n}: unknown quantity {lm.group('quantity')!r}; expected one of "
                                   f"{', '.join(sorted(set(DSE_QUANTITIES)))}")
            if int(lm.group("layer")) == layer:
                values[DSE_QUANTITIES[q]] = _number(lm.group("value"), f"{f}:{n}")
        if not values:
            raise ImportError_(f"{f}: no line of layer {layer} (the method's last; --layer picks another)")
        items.append(Item(metrics_protocol, dataset, method, int(epoch_dir.group(1)), _separability(values),
                          {"file": str(f)}, {"official_settings": settings, "layer": layer,
                                             "dse_dataset_folder": settings_dir.parent.name}))
    if not items:
        raise ImportError_(f"{root}: no metrics_epoch_<N>.txt under it")
    return items


SHEET_COLUMN = re.compile(r"^Layer (?P<layer>\d+) (?P<quantity>.+)$")


def read_spreadsheet(path: Path, method: str | None, layer: int, metrics_protocol: str, dataset: str) -> tuple[list[Item], list[str]]:
    import pandas as pd

    frame = pd.read_excel(path) if path.suffix in (".xlsx", ".xls") else pd.read_csv(path)
    notes, columns = [], {}
    for col in frame.columns:
        name = str(col).strip()
        if name.lower() in ("epoch", "method"):
            continue
        m = SHEET_COLUMN.match(name)
        if not m or m.group("quantity").strip().lower() not in DSE_QUANTITIES:
            raise ImportError_(f"{path}: unknown column {name!r}; expected 'epoch', 'method' or 'Layer <L> <quantity>' "
                               f"with a quantity among {', '.join(sorted(set(DSE_QUANTITIES)))}")
        if int(m.group("layer")) == layer:
            columns[name] = DSE_QUANTITIES[m.group("quantity").strip().lower()]
    if not columns:
        raise ImportError_(f"{path}: no 'Layer {layer} ...' column (the method's last layer; --layer picks another)")
    epoch_col = next((c for c in frame.columns if str(c).strip().lower() == "epoch"), None)
    method_col = next((c for c in frame.columns if str(c).strip().lower() == "method"), None)
    if epoch_col is None:
        notes.append(f"{path.name}: no epoch column; rows numbered as the official code does: row i -> epoch (i+1)*10")
    items = []
    for i, row in frame.iterrows():
        where = f"{path}: row {i + 2}"  # the spreadsheet's own row number (header = row 1)
        who = str(row[method_col]) if method_col is not None else method
        if not who or who == "nan":
            raise ImportError_(f"{where}: no method (no 'method' column, and no --method)")
        epoch = int(_number(row[epoch_col], where)) if epoch_col is not None else (i + 1) * 10
        values = {metric: _number(row[col], f"{where}, column {col!r}") for col, metric in columns.items()}
        items.append(Item(metrics_protocol, dataset, who, epoch, _separability(values), {"file": str(path), "row": i + 2},
                          {"layer": layer}))
    return items, notes


def read_table(path: Path, method: str | None, suite_protocols: dict[str, str], metrics_dataset: str,
               protocol: str | None) -> list[Item]:
    """Wide (one column per metric) or long (`metric`, `value`) tables."""
    import pandas as pd

    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    cols = {str(c).strip(): c for c in frame.columns}
    long = {"metric", "value"} <= {c.lower() for c in cols}
    if long:
        frame = frame.pivot_table(index=[c for c in frame.columns if str(c).lower() not in ("metric", "value")],
                                  columns=next(c for c in frame.columns if str(c).lower() == "metric"),
                                  values=next(c for c in frame.columns if str(c).lower() == "value"),
                                  aggfunc="first").reset_index()
        cols = {str(c).strip(): c for c in frame.columns}
    unknown = [c for c in cols if c.lower() not in ID_COLUMNS and c not in METRIC_COLUMNS
               and c.lower() not in DOWNSTREAM_COLUMNS]
    if unknown:
        raise ImportError_(f"{path}: unknown column(s) {unknown}; expected method, epoch, protocol, dataset, the "
                           f"harness's metric names ({', '.join(sorted(METRIC_COLUMNS))}) or downstream columns "
                           f"({', '.join(sorted(DOWNSTREAM_COLUMNS))})")
    if "epoch" not in {c.lower() for c in cols}:
        raise ImportError_(f"{path}: no 'epoch' column")
    items = []
    for i, row in frame.iterrows():
        where = f"{path}: row {i + 2}"
        get = lambda name: row[next(c for k, c in cols.items() if k.lower() == name)] \
            if name in {k.lower() for k in cols} else None
        who = get("method") if get("method") is not None else method
        if who is None or (isinstance(who, float) and math.isnan(who)):
            raise ImportError_(f"{where}: no method (no 'method' column, and no --method)")
        epoch = int(_number(get("epoch"), f"{where}, column 'epoch'"))
        metric_values = {k: _number(row[c], f"{where}, column {k!r}") for k, c in cols.items()
                         if k in METRIC_COLUMNS and not _missing(row[c])}
        if metric_values:
            items.append(Item(protocol if protocol and not _downstream_cols(cols) else suite_protocols[METRICS_KIND],
                              metrics_dataset, str(who), epoch, _separability(metric_values),
                              {"file": str(path), "row": i + 2}))
        down = {}
        for k, c in cols.items():
            if k.lower() in DOWNSTREAM_COLUMNS and not _missing(row[c]):
                kind, name = DOWNSTREAM_COLUMNS[k.lower()]
                down.setdefault(kind, {})[name] = _number(row[c], f"{where}, column {k!r}")
        for kind, values in down.items():
            proto = get("protocol") if get("protocol") is not None else protocol or suite_protocols.get(kind)
            dataset = get("dataset")
            if proto is None:
                raise ImportError_(f"{where}: {kind} values but no 'protocol' column, no --protocol, and the suite "
                                   f"runs no protocol of kind {kind}")
            if dataset is None:
                raise ImportError_(f"{where}: downstream values need a 'dataset' column")
            items.append(Item(str(proto), str(dataset), str(who), epoch, values, {"file": str(path), "row": i + 2}))
    return items


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _downstream_cols(cols) -> bool:
    return any(k.lower() in DOWNSTREAM_COLUMNS for k in cols)


def last_json_line(f: Path, wanted, missing: str) -> tuple[dict, int]:
    """(entry, line number) of the last line of a JSON-lines log that `wanted` accepts (mmseg's and
    detectron2's logs both write one JSON object per line)."""
    last, line_no = None, None
    for n, line in enumerate(f.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            raise ImportError_(f"{f}:{n}: not a JSON line") from None
        if isinstance(entry, dict) and wanted(entry):
            last, line_no = entry, n
    if last is None:
        raise ImportError_(f"{f}: {missing}")
    return last, line_no


def read_mmseg(root: Path, method: str | None, epoch: int | None, dataset: str | None, protocol: str) -> list[Item]:
    """The final validation mIoU of an mmseg run: 1.x vis_data/scalars.json (percent) or 0.x
    <stamp>.log.json (fractions, as UDI's and iBOT's logs)."""
    if method is None or epoch is None or dataset is None:
        raise ImportError_(f"{root}: an mmseg work directory does not say which checkpoint it evaluated: give "
                           f"--method, --epoch and --dataset")
    found = sorted(Path(root).rglob("vis_data/scalars.json")) or sorted(Path(root).rglob("*.log.json"))
    if not found:
        raise ImportError_(f"{root}: neither <timestamp>/vis_data/scalars.json (mmseg 1.x) nor <timestamp>.log.json "
                           f"(0.x) under it")
    f = found[-1]  # the last run in the folder
    last, line_no = last_json_line(f, lambda e: "mIoU" in e and e.get("mode", "val") == "val",
                                   "no validation entry with mIoU")
    scale = 100.0 if f.name.endswith(".log.json") and last["mIoU"] <= 1.0 else 1.0  # 0.x logs fractions
    where = f"{f}:{line_no}"
    values = {"mIoU": _number(last["mIoU"], where) * scale}
    for k in ("aAcc", "mAcc"):
        if k in last:
            values[k] = _number(last[k], where) * scale
    per_class = {k[4:]: _number(v, where) * scale for k, v in last.items() if k.startswith("IoU.")}
    if per_class:
        values["IoU"] = per_class
    return [Item(protocol, dataset, method, int(epoch), values, {"file": str(f), "line": line_no},
                 {"mmseg_log": "1.x" if f.name == "scalars.json" else "0.x"})]


def read_detectron2(path: Path, method: str | None, epoch: int | None, dataset: str | None, protocol: str) -> list[Item]:
    if method is None or epoch is None or dataset is None:
        raise ImportError_(f"{path}: a detectron2 metrics.json does not say which checkpoint it evaluated: give "
                           f"--method, --epoch and --dataset")
    f = path / "metrics.json" if path.is_dir() else path
    last, line_no = last_json_line(f, lambda e: "bbox/AP" in e or "segm/AP" in e,
                                   "no evaluation line (bbox/AP, segm/AP)")
    where = f"{f}:{line_no}"
    values = {f"{kind}_{name}": _number(last[f"{kind}/{name}"], where)
              for kind in ("bbox", "segm") for name in ("AP", "AP50", "AP75") if f"{kind}/{name}" in last}
    return [Item(protocol, dataset, method, int(epoch), values, {"file": str(f), "line": line_no},
                 {"iteration": last.get("iteration")})]


# --------------------------------------------------------------------------------------------- the command

@dataclass
class ImportPlan:
    format: str
    items: list[Item]
    notes: list[str]
    written: list[Path] = field(default_factory=list)


def last_layer(reg: Registry, method: str) -> int:
    """The official model selection's layer: ViT block L-1 (11 for ViT-S/B), stage index 3 for ResNet/Swin."""
    from harness.models.archs import ARCHS

    info = ARCHS[reg.method(method).arch]
    return max(info.level_indices) if info.family == "vit" else 3


def suite_protocols(reg: Registry, suite: str) -> dict[str, str]:
    """Protocol kind -> the suite's protocol of that kind (the first, when several)."""
    out: dict[str, str] = {}
    for e in reg.suite(suite).grid:
        out.setdefault(reg.protocol(e.protocol).kind, e.protocol)
    return out


def plan_import(reg: Registry, suite: str, path: Path, results: Path, *, fmt: str = "auto", method: str | None = None,
                epoch: int | None = None, dataset: str | None = None, protocol: str | None = None,
                layer: int | None = None, replace: bool = False) -> ImportPlan:
    """Read and check everything; raise ImportError_ on the first problem (nothing is written here)."""
    path = Path(path)
    if not path.exists():
        raise ImportError_(f"{path} does not exist")
    s = reg.suite(suite)
    fmt = detect(path) if fmt == "auto" else fmt
    protos = suite_protocols(reg, suite)
    metrics_protocol = protos.get(METRICS_KIND)
    metrics_dataset = next((d for e in s.grid if e.protocol == metrics_protocol for d in e.datasets), "imagenet")
    notes: list[str] = []
    if method is not None:
        reg.method(method)
    if fmt in ("dse-official", "spreadsheet"):
        if metrics_protocol is None:
            raise ImportError_(f"suite '{suite}' runs no metrics protocol: DSE scores have no cell to go into")
        lay = layer if layer is not None else (last_layer(reg, method) if method else None)
        if lay is None:
            raise ImportError_(f"{path}: give --method (its architecture gives the layer) or --layer")
        if fmt == "dse-official":
            items = read_dse_official(path, method, lay, metrics_protocol, metrics_dataset)
        else:
            items, notes = read_spreadsheet(path, method, lay, metrics_protocol, metrics_dataset)
    elif fmt == "csv":
        items = read_table(path, method, protos, metrics_dataset, protocol)
    elif fmt == "mmseg":
        proto = protocol or protos.get("linear") or protos.get("upernet")
        if proto is None:
            raise ImportError_(f"suite '{suite}' runs no segmentation protocol; give --protocol")
        items = read_mmseg(path, method, epoch, dataset, proto)
    elif fmt == "detectron2":
        proto = protocol or protos.get("maskrcnn")
        if proto is None:
            raise ImportError_(f"suite '{suite}' runs no maskrcnn protocol; give --protocol")
        items = read_detectron2(path, method, epoch, dataset, proto)
    else:
        raise ImportError_(f"--format {fmt!r}: expected auto or one of {', '.join(FORMATS)}")
    _check_items(reg, suite, items, results, replace)
    return ImportPlan(fmt, items, notes)


def _check_items(reg: Registry, suite: str, items: list[Item], results: Path, replace: bool) -> None:
    s = reg.suite(suite)
    seen = {}
    for it in items:
        where = f"{it.origin['file']}" + (f": row {it.origin['row']}" if "row" in it.origin else "") \
            + (f":{it.origin['line']}" if "line" in it.origin else "")
        if it.method not in s.methods:
            raise ImportError_(f"{where}: method '{it.method}' is not in suite '{suite}' (its methods: "
                               f"{', '.join(s.methods)}); add it to the suite or give --method")
        if it.protocol not in reg.protocols or it.protocol not in {e.protocol for e in s.grid}:
            raise ImportError_(f"{where}: protocol '{it.protocol}' is not run by suite '{suite}'")
        if it.dataset not in reg.datasets:
            raise ImportError_(f"{where}: unknown dataset '{it.dataset}'")
        if it.epoch not in reg.method(it.method).epochs():
            eps = reg.method(it.method).epochs()
            raise ImportError_(f"{where}: epoch {it.epoch} is not a checkpoint of '{it.method}' ({eps[0]}..{eps[-1]} "
                               f"in {reg.method(it.method).source}); fix the epoch or the method file")
        key = (it.protocol, it.dataset, it.method, it.epoch)
        if key in seen:
            raise ImportError_(f"{where}: epoch {it.epoch} of '{it.method}' ({it.protocol}/{it.dataset}) appears twice "
                               f"(also at {seen[key]}); keep one")
        seen[key] = where
        target = imported_path(results, suite, *key)
        if target.exists() and not replace:
            raise ImportError_(f"{where}: {target} was imported before; --replace overwrites it")


def write_import(plan: ImportPlan, reg: Registry, suite: str, results: Path) -> list[Path]:
    """Every record of the plan, written atomically (after everything was checked)."""
    from harness.jobs.common import now

    shas: dict[str, str] = {}
    written = []
    for it in plan.items:
        f = it.origin["file"]
        shas.setdefault(f, sha256(Path(f)))
        rec = {"suite": suite, "protocol": it.protocol, "dataset": it.dataset, "method": it.method, "epoch": it.epoch,
               "cell": f"{it.protocol}/{it.dataset}/{it.method}/ep{it.epoch:04d}", "status": "ok",
               "config_hash": "imported", "source": "imported",
               "config": {"protocol": {"name": it.protocol, "kind": reg.protocol(it.protocol).kind}},
               "imported": {"format": plan.format, "file": f, "sha256": shas[f],
                            **{k: v for k, v in it.origin.items() if k != "file"}, "at": now()},
               "metrics": it.metrics, "details": it.details}
        target = imported_path(results, suite, it.protocol, it.dataset, it.method, it.epoch)
        records.write_record(target, rec)
        written.append(target)
    plan.written = written
    return written
