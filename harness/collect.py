"""Records -> one tidy table (`results/<suite>/results.csv`, one row per cell; nested metrics as
`name.sub` columns) and the singular-value spectra in long form (`spectra.csv`).

The CLI's `sdd collect` and the demo both call `write_collected`. It never replaces a results.csv with
a partial read: a records folder that cannot be listed, or a record that cannot be trusted, stops it
before anything is written (unless `skip_corrupt`, which writes the sound records and names the rest).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness import records
from harness.atomic import FileSet
from harness.errors import HarnessError

# `device`, `gpus` and `world_size` say what actually ran (the record's placement), never what the
# protocol asked for: every cost in the tables is computed from them.
META_COLUMNS = [
    "suite",
    "protocol",
    "kind",
    "dataset",
    "method",
    "family",
    "arch",
    "epoch",
    "status",
    "error",
    "config_hash",
    "current",
    "device",
    "device_name",
    "gpus",
    "world_size",
    "wall_s",
    "dse_s",
    "load_s",
    "features_s",
    "metrics_s",
    "peak_memory_mb",
    "git_sha",
    "host",
    "slurm_job_id",
    "torch",
    "source",
    "import_files",
    "outside_grid",
    "last_epoch",
    "images",
]


def _number(v):
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    return None


def _import_files(rec: dict) -> str | None:
    """The files an imported record's numbers came from ("; "-joined), for the tables' notes."""
    imp = rec.get("imported")
    if not imp:
        return None
    sources = imp.get("sources") or {"": imp}
    files = sorted({str(o.get("file")) for o in sources.values() if isinstance(o, dict) and o.get("file")})
    return "; ".join(files) or None


def record_row(rec: dict, methods: dict | None = None) -> dict:
    """One tidy row of a record: metadata columns, then every scalar metric ("name.sub" if nested)."""
    cfg_method = (rec.get("config") or {}).get("method") or {}
    spec = (methods or {}).get(rec.get("method"))
    timings = rec.get("timings") or {}
    placed = rec.get("placement") or {}
    row = {
        "suite": rec.get("suite"),
        "protocol": rec.get("protocol"),
        "kind": ((rec.get("config") or {}).get("protocol") or {}).get("kind") or rec.get("protocol"),
        "dataset": rec.get("dataset"),
        "method": rec.get("method"),
        "family": getattr(spec, "family", None),
        "arch": getattr(spec, "arch", None) or cfg_method.get("arch"),
        "epoch": rec.get("epoch"),
        "status": rec.get("status"),
        "error": ((rec.get("error") or "").splitlines() or [None])[0],
        "config_hash": rec.get("config_hash"),
        "device": placed.get("accelerator"),
        "device_name": placed.get("name"),
        "gpus": placed.get("gpus"),
        "world_size": placed.get("world_size"),
        "wall_s": timings.get("total_s"),
        "dse_s": timings.get("dse_s"),
        "load_s": timings.get("load_s"),
        "features_s": timings.get("features_s"),
        "metrics_s": timings.get("metrics_s"),
        "peak_memory_mb": rec.get("peak_memory_mb"),
        "git_sha": rec.get("git_sha"),
        "host": rec.get("host"),
        "slurm_job_id": rec.get("slurm_job_id"),
        "torch": (rec.get("versions") or {}).get("torch"),
        "source": rec.get("source", "computed"),
        "images": (rec.get("image_list") or {}).get("count"),
        "import_files": _import_files(rec),
        "outside_grid": bool((rec.get("imported") or {}).get("outside_grid")),
    }
    for name, value in sorted((rec.get("metrics") or {}).items()):
        col = name if name not in row else f"metric_{name}"
        if isinstance(value, dict):
            for sub, v in sorted(value.items()):
                if _number(v) is not None:
                    row[f"{col}.{sub}"] = _number(v)
        elif _number(value) is not None:
            row[col] = _number(value)
    return row


@dataclass
class Collected:
    table: "object"  # pandas DataFrame, one row per sound record
    spectra: "object"  # pandas DataFrame (method, epoch, kind, index, log_sv)
    corrupt: list[str] = field(default_factory=list)  # "path: why" for every record left out
    stray: list[str] = field(default_factory=list)  # files in the record trees that are not records


def collect(results: Path, suite: str, *, methods: dict | None = None) -> Collected:
    """Read every record of a suite. A folder that cannot be listed raises OSError; damaged records
    are left out of the table and listed in `corrupt`."""
    import pandas as pd

    rows, spectra, corrupt = [], [], []
    results = Path(results)
    paths = records.iter_record_files(results, suite) + records.iter_record_files(results, suite, "imported")
    for path in paths:
        try:
            rec = records.read_record(path, results)
        except records.CorruptRecord as e:
            corrupt.append(str(e))
            continue
        rows.append(record_row(rec, methods))
        details = rec.get("details") or {}
        for kind in ("log_sv", "log_sv_dense"):
            for i, v in enumerate(details.get(kind) or []):
                spectra.append(
                    {"method": rec.get("method"), "epoch": rec.get("epoch"), "kind": kind, "index": i, "log_sv": v}
                )
    table = pd.DataFrame(rows)
    if not table.empty:
        metric_cols = sorted(c for c in table.columns if c not in META_COLUMNS)
        table = table.reindex(columns=META_COLUMNS + metric_cols)
        table = table.sort_values(["protocol", "dataset", "method", "epoch"], kind="stable").reset_index(drop=True)
    spec_df = pd.DataFrame(spectra, columns=["method", "epoch", "kind", "index", "log_sv"])
    return Collected(table, spec_df, corrupt, [str(p) for p in records.stray_files(results, suite)])


class CollectError(HarnessError):
    """Nothing was written; the message says which input is wrong and what to do."""


@dataclass
class CollectSummary:
    csv: Path
    records: int
    ok: int
    parquet: bool
    corrupt: list[str]
    missing: dict[str, int]  # protocol -> cells of the plan with no record
    stray: list[str] = field(default_factory=list)


def write_collected(reg, suite: str, results: Path, *, skip_corrupt: bool = False) -> CollectSummary:
    """Collect a suite's records into results.csv / spectra.csv (and results.parquet when pyarrow is
    there), under the suite's lock and all together with their manifest (`collected.json`: what each file
    holds, so that a reader never builds on one that is not what was written); raises CollectError,
    writing nothing, on an unreadable folder or (without `skip_corrupt`) a corrupt record."""
    from harness.suitedir import suite_lock

    with suite_lock(results, suite, f"sdd collect --suite {suite}"):
        return _write_collected(reg, suite, Path(results), skip_corrupt)


MANIFEST = "collected.json"


def _digest(text: str, rows: int) -> dict:
    import hashlib

    data = text.encode()
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "rows": rows}


def check_collected(suite_dir: Path, name: str = "results.csv") -> None:
    """Raise CollectError when `name` is not what `sdd collect` wrote, as its manifest records (cut short by
    a full disk, half-copied, edited). A table with no manifest is one made by hand: it is read as it is."""
    import hashlib

    manifest = Path(suite_dir) / MANIFEST
    try:
        held = records.read_json(manifest)
    except records.CorruptRecord as e:
        raise CollectError(f"{manifest} is unreadable ({e.why}); run `sdd collect --suite {Path(suite_dir).name}`")
    want = ((held or {}).get("files") or {}).get(name)
    if not want:
        return
    path = Path(suite_dir) / name
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CollectError(f"cannot read {path} ({e.strerror or e}); run `sdd collect --suite {Path(suite_dir).name}`")
    if len(data) != want.get("bytes") or hashlib.sha256(data).hexdigest() != want.get("sha256"):
        raise CollectError(
            f"{path} is not what `sdd collect` wrote ({want.get('rows')} rows, {want.get('bytes')} bytes; it now has "
            f"{len(data)} bytes): cut short or changed since, so no table is built from it. Run `sdd collect --suite "
            f"{Path(suite_dir).name}` again; for a table you edit by hand on purpose, delete {manifest}"
        )


PUBLISHED = "published.csv"  # the suite's methods' own published numbers (method files' `published`)
PUBLISHED_COLUMNS = ["method", "protocol", "dataset", "metric", "value", "source", "note"]


def published_frame(reg, suite: str):
    """One row per number the suite's methods publish for one of the suite's protocols (registry -> results,
    so the tables need no registry): what the `published` table sets beside ours."""
    import pandas as pd

    spec = reg.suites.get(suite)
    if spec is None:
        return pd.DataFrame(columns=PUBLISHED_COLUMNS)
    in_grid = {  # (method, protocol, dataset) the suite's grid evaluates
        (m, e.protocol, d)
        for e in spec.grid
        for m in (spec.methods if e.methods == "all" else e.methods)
        for d in e.datasets
    }
    protocols = {e.protocol for e in spec.grid}
    methods = {m: reg.methods[m] for m in spec.methods if m in reg.methods}
    rows = [
        {
            "method": m.name,
            "protocol": n.protocol,
            "dataset": n.dataset or reg.protocol(n.protocol).datasets[0],
            "metric": n.metric,
            "value": n.value,
            "source": n.source,
            "note": n.note,
        }
        for m in methods.values()
        for n in m.published
        if n.protocol in protocols
        and (m.name, n.protocol, n.dataset or reg.protocol(n.protocol).datasets[0]) in in_grid
    ]
    return pd.DataFrame(rows, columns=PUBLISHED_COLUMNS)


def _write_collected(reg, suite: str, results: Path, skip_corrupt: bool) -> CollectSummary:
    try:
        got = collect(results, suite, methods=reg.methods)
    except OSError as e:
        raise CollectError(f"cannot read the records of suite '{suite}' ({e}); results.csv was left as it was")
    if got.corrupt and not skip_corrupt:
        raise CollectError(
            f"{len(got.corrupt)} record(s) of suite '{suite}' are corrupt; results.csv was left as it was:\n  "
            + "\n  ".join(got.corrupt[:20])
            + ("\n  ..." if len(got.corrupt) > 20 else "")
            + f"\nre-run them (`sdd submit --suite {suite} ...` treats them as to do), or pass --skip-corrupt "
            "to write a table without them"
        )
    from harness.plan import build_plan

    table = got.table
    cells = build_plan(reg, suite) if suite in reg.suites else []
    if cells and len(table):  # `current`: is the record of the recipe the plan has now? (tables keep these)
        now = {(c.protocol, c.dataset, c.method, c.epoch): c.config_hash for c in cells}
        keys = list(zip(table["protocol"], table["dataset"], table["method"], table["epoch"]))
        table["current"] = [
            None if k not in now or src == "imported" else now[k] == h
            for k, h, src in zip(keys, table["config_hash"], table["source"])
        ]
        # each method's last checkpoint in the grid (per protocol and dataset): "last" in the tables is this
        # one, whichever records exist (an import of epochs 1..9 of a 16-epoch grid has no last)
        last: dict[tuple, int] = {}
        for c in cells:
            last[(c.protocol, c.dataset, c.method)] = max(c.epoch, last.get((c.protocol, c.dataset, c.method), 0))
        table["last_epoch"] = [last.get(k[:3]) for k in keys]
    out = results / suite
    csv_text = table.to_csv(index=False, float_format="%.10g", lineterminator="\n")
    published = published_frame(reg, suite)
    published_text = published.to_csv(index=False, float_format="%.10g", lineterminator="\n")
    spectra_text = got.spectra.to_csv(index=False, float_format="%.8g", lineterminator="\n")
    parquet = True
    with FileSet(out) as files:  # the tables, the spectra and the manifest that vouches for them: together
        files.text(out / "results.csv", csv_text)
        files.text(out / "spectra.csv", spectra_text)
        files.text(out / PUBLISHED, published_text)
        try:
            from pandas.io.parquet import get_engine

            get_engine("auto")  # asked first: a failure inside the set would abort all of it
        except ImportError:
            parquet = False
        if parquet:
            files.staged(out / "results.parquet", lambda tmp: table.to_parquet(tmp, index=False))
        files.json(
            out / MANIFEST,
            {
                "written_by": "sdd collect",
                "at": records.now(),
                "records": len(table),
                "files": {
                    "results.csv": _digest(csv_text, len(table)),
                    "spectra.csv": _digest(spectra_text, len(got.spectra)),
                    PUBLISHED: _digest(published_text, len(published)),
                },
            },
        )
    ok = int((table["status"] == "ok").sum()) if len(table) else 0
    missing: dict[str, int] = {}
    have = set(
        zip(table.get("protocol", []), table.get("dataset", []), table.get("method", []), table.get("epoch", []))
    )
    for c in cells:
        if (c.protocol, c.dataset, c.method, c.epoch) not in have:
            missing[c.protocol] = missing.get(c.protocol, 0) + 1
    return CollectSummary(out / "results.csv", len(table), ok, parquet, got.corrupt, missing, got.stray)
