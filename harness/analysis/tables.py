"""The paper's tables as pure functions of the collected table (`results.csv`), never of a model.

Conventions (also written into REPORT.md):
- mIoU series per (method, dataset) come from a linear-probe protocol's rows, metric series per method
  from the label-free protocol's rows (the kinds' roles in `harness.kinds`); they are joined on epoch.
- A failed cell, or one whose value is not a finite number, is left out of its series and named in the
  notes; its method stays in the means. A grid is "guided" only when its downstream checkpoints are the
  DSE-guided grid's (the DSE top-3 and the last): such τ are shown per method and kept out of the means.
- Best checkpoint: the highest mIoU among the grid's checkpoints (an import recorded outside the grid is
  left out unless asked); a tie goes to the earliest epoch. Last: the method's last checkpoint of the
  grid, whatever records exist; if it has no mIoU, last and diff are empty (never another epoch instead).
- Kendall τ: `scipy.stats.kendalltau` (τ-b, ties corrected), per method between a metric's series and
  the mIoU series over the checkpoints both have; mean over methods; "Avg." is the mean over datasets.
  τ is in the metric's goodness orientation, as its kind declares it (W2: lower is better, so −W2;
  α-ReQ: closer to 1 is better, so −|α − 1|), and raw in the long table.
- A number that came from an import is marked ⁱ (a τ or a mean when any of its inputs did); the notes
  name those cells and their files. A cell with a computed and an imported record is one row merged metric
  by metric (`harness.analysis.prefer_source`), so the mark is per metric (`imported_metrics`).
- Label-free table: every label-free metric per method × epoch, with the DSE selection's rank (`dse_top3`).
- DSE with λ and the model selection: `harness.selection` (the same code the guided planner uses).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from harness.analysis.render import MARK as IMPORTED_MARK
from harness.analysis.uncertainty import bootstrap_mean_tau, interval_text, permutation_p
from harness.kinds import (
    CLASSIFICATION,
    DENSE,
    DEPTH,
    IMAGE,
    LABEL_FREE,
    PROBE,
    PROTOCOL_KINDS,
    TAU_ROWS,
    Metric,
    kinds_with,
)
from harness.selection import dse_normalised, select_checkpoints

DATASET_ORDER = ["coco_stuff164k", "voc12_aug", "ade20k", "cityscapes"]
DATASET_LABEL = {"coco_stuff164k": "COCO", "voc12_aug": "VOC", "ade20k": "ADE20k", "cityscapes": "City"}
# A finding needs enough data: fewer methods than this (or checkpoints per method) give an interval
# that says little, whatever its bounds.
MIN_METHODS_FOR_A_FINDING = 3
MIN_CHECKPOINTS_FOR_A_FINDING = 5
TAU_METRICS: tuple[Metric, ...] = TAU_ROWS


@dataclass
class Table:
    name: str
    title: str
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    protocol: str | None = None  # the linear-probe protocol whose mIoU it reads, if any
    marks: set = field(default_factory=set)  # (row position, column) of numbers that came from an import
    context: list[str] = field(default_factory=list)  # what every table of the build shares (records used)


# the tables that read a linear probe's mIoU (one set per probe protocol of a suite)
MIOU_TABLES = ("sdd", "kendall_tau", "kendall_tau_per_method", "kendall_tau_vs_paper", "model_selection", "efficiency")


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"] if "status" in df.columns else df


def _kind(table: pd.DataFrame) -> pd.Series:
    """Each row's protocol kind (recorded by collect; the protocol's name where a hand-made table lacks it)."""
    if "kind" in table.columns and table["kind"].notna().any():
        return table["kind"].fillna(table["protocol"])
    return table["protocol"]


IMPORTED_METRICS = "imported_metrics"  # a merged cell's metrics that came from its import ("; "-joined)
DERIVED = {"dse_lambda": ("dse_separability", "dse_dim")}  # computed by the tables from these


def _imported(df: pd.DataFrame, column: str | None = None) -> pd.Series:
    """Rows whose number came from an import: an imported record (`column` None: the record as a whole),
    or, for `column`, also a cell whose computed and imported records were merged metric by metric and
    that took this metric (or one it is computed from) from the import."""
    whole = (
        df["source"].fillna("computed").eq("imported") if "source" in df.columns else pd.Series(False, index=df.index)
    )
    if column is None or IMPORTED_METRICS not in df.columns:
        return whole
    names = {column, *DERIVED.get(column, ())}
    part = df[IMPORTED_METRICS].map(lambda v: isinstance(v, str) and bool(names & set(v.split("; "))))
    return whole | part.astype(bool)


def _any_imported(df: pd.DataFrame) -> pd.Series:
    """Rows with any number from an import (a whole imported record, or a merged cell)."""
    if IMPORTED_METRICS not in df.columns:
        return _imported(df)
    return _imported(df) | df[IMPORTED_METRICS].map(lambda v: isinstance(v, str) and bool(v)).astype(bool)


def _cell(method, dataset, epoch, protocol=None) -> str:
    return "/".join(str(x) for x in (protocol, dataset, method) if x is not None) + f"/ep{int(epoch):04d}"


def probe_protocol_of(table: pd.DataFrame) -> str:
    """The first protocol of a linear-probe kind with rows in the table (the mIoU the tables read when
    none is named); "" when there is none."""
    rows = table[_kind(table).isin(kinds_with(PROBE))] if len(table) else table
    return min(rows["protocol"].dropna().astype(str), default="") if len(rows) else ""


def datasets_of(table: pd.DataFrame, protocol: str) -> list[str]:
    present = sorted(set(table.loc[table["protocol"] == protocol, "dataset"].dropna()))
    return [d for d in DATASET_ORDER if d in present] + [d for d in present if d not in DATASET_ORDER]


def _is_metrics(table: pd.DataFrame) -> pd.Series:
    """Rows of the label-free metrics protocol."""
    return _kind(table).isin(kinds_with(LABEL_FREE))


def metric_frame(table: pd.DataFrame) -> pd.DataFrame:
    """Metrics rows, one per (method, epoch), with the λ-normalised DSE added per method (NaN where a
    checkpoint lacks separability or dimensionality)."""
    m = _ok(table[_is_metrics(table)]).copy()
    if m.empty:
        return m
    m = m.sort_values(["method", "epoch"])
    m["dse_lambda"] = np.nan
    if {"dse_separability", "dse_dim"} <= set(m.columns):
        for method, g in m.groupby("method"):
            m.loc[g.index, "dse_lambda"] = dse_normalised(
                pd.to_numeric(g["dse_separability"], errors="coerce").tolist(),
                pd.to_numeric(g["dse_dim"], errors="coerce").tolist(),
            )
    return m


def miou_frame(table: pd.DataFrame, protocol: str | None = None, column: str = "mIoU") -> pd.DataFrame:
    """(method, dataset, epoch, miou, imported) of the protocol's ok rows with a finite value."""
    protocol = protocol or probe_protocol_of(table)
    s = _ok(table[table["protocol"] == protocol])
    if column not in s.columns:
        return pd.DataFrame(columns=["method", "dataset", "epoch", "miou", "imported"])
    s = s[["method", "dataset", "epoch", column]].assign(imported=_imported(s, column)).rename(columns={column: "miou"})
    s = s[np.isfinite(pd.to_numeric(s["miou"], errors="coerce").astype(float))]
    return s.sort_values(["method", "dataset", "epoch"])


def left_out(table: pd.DataFrame, protocol: str, column: str = "mIoU") -> dict[tuple, dict[str, list[int]]]:
    """(method, dataset) -> {"failed": epochs, "not a number": epochs}: the protocol's rows left out of a series."""
    out: dict[tuple, dict[str, list[int]]] = {}
    rows = table[table["protocol"] == protocol]
    values = (
        pd.to_numeric(rows[column], errors="coerce") if column in rows.columns else pd.Series(np.nan, index=rows.index)
    )
    for (i, r), v in zip(rows.iterrows(), values):
        why = "failed" if r.get("status") != "ok" else None if math.isfinite(v) else f"{column} not a number"
        if why:
            out.setdefault((r["method"], r["dataset"]), {}).setdefault(why, []).append(int(r["epoch"]))
    return out


# --------------------------------------------------------------------------------------------
def last_epochs(table: pd.DataFrame, protocol: str | None = None) -> dict[tuple, int]:
    """(method, dataset) -> the method's last checkpoint of the grid for that protocol and dataset (from
    `last_epoch`, which collect writes from the plan); else the largest epoch any of its records has."""
    rows = table if protocol is None else table[table["protocol"] == protocol]
    out = {}
    fallback = {m: int(g["epoch"].max()) for m, g in table.dropna(subset=["epoch"]).groupby("method")}
    for (method, dataset), g in rows.groupby(["method", "dataset"]):
        planned = pd.to_numeric(g["last_epoch"], errors="coerce").dropna() if "last_epoch" in g.columns else []
        out[(method, dataset)] = int(planned.max()) if len(planned) else fallback.get(method, int(g["epoch"].max()))
    return out


def grid_kind(table: pd.DataFrame, protocol: str):
    """(method, dataset) -> "guided" (the downstream checkpoints with a record are the DSE top-3 and the
    last, fewer than the metrics cover: the DSE-guided grid) | "full"."""
    mf = metric_frame(table)
    metric_epochs = mf.groupby("method")["epoch"].apply(lambda e: set(e.astype(int))).to_dict() if not mf.empty else {}
    sel = selections(table)
    last = last_epochs(table, protocol)
    rows = table[table["protocol"] == protocol]
    evaluated = rows.groupby(["method", "dataset"])["epoch"].apply(lambda e: set(e.astype(int))).to_dict()

    def kind(method, dataset) -> str:
        have, want = evaluated.get((method, dataset), set()), metric_epochs.get(method, set())
        chosen = set(sel.get(method, [])) | {last.get((method, dataset))}
        return "guided" if want and have < want and have <= chosen and len(have) < len(want) else "full"

    return kind


def _imported_note(table: pd.DataFrame, cells: set[tuple], what: str) -> list[str]:
    """One note naming the imported cells whose numbers a table shows, and their files."""
    if not cells:
        return []
    files = set()
    rows = table[_any_imported(table)] if "source" in table.columns else table.iloc[0:0]
    for r in rows.itertuples(index=False):
        d = r._asdict()
        if (d["protocol"], d["dataset"], d["method"], int(d["epoch"])) in cells and isinstance(
            d.get("import_files"), str
        ):
            files.update(d["import_files"].split("; "))
    names = sorted(_cell(m, ds, e, p) for p, ds, m, e in cells)
    return [
        f"{IMPORTED_MARK} {what} from {len(names)} imported cell(s): {', '.join(names[:8])}"
        + (f" ... (+{len(names) - 8})" if len(names) > 8 else "")
        + (f"; files: {', '.join(sorted(files)[:4])}" + (" ..." if len(files) > 4 else "") if files else "")
    ]


def sdd_table(table: pd.DataFrame, protocol: str | None = None, paper: pd.DataFrame | None = None) -> Table:
    protocol = protocol or probe_protocol_of(table)
    mi = miou_frame(table, protocol)
    last_of = last_epochs(table, protocol)
    grid_of = grid_kind(table, protocol)
    rows, notes, marks, imported_cells = [], [], set(), set()
    for (method, dataset), g in mi.groupby(["method", "dataset"], sort=True):
        g = g.sort_values("epoch")
        best_i = g["miou"].astype(float).to_numpy().argmax()  # first maximum = earliest epoch on ties
        best = g.iloc[best_i]
        last_epoch = last_of.get((method, dataset), int(g["epoch"].max()))
        hit = g[g["epoch"] == last_epoch]
        last = float(hit["miou"].iloc[0]) if len(hit) else math.nan
        if not len(hit):
            notes.append(
                f"{method} / {dataset}: the last checkpoint (ep {last_epoch}) has no mIoU: last and diff "
                f"are left empty (never the last evaluated one instead)"
                + (
                    f"; one checkpoint only has an mIoU (ep {int(best['epoch'])}): best is that one"
                    if len(g) == 1
                    else ""
                )
            )
        i = len(rows)
        rows.append(
            {
                "method": method,
                "dataset": dataset,
                "checkpoints": len(g),
                "grid": grid_of(method, dataset),
                "best": float(best["miou"]),
                "best_epoch": int(best["epoch"]),
                "last": last,
                "last_epoch": last_epoch,
                "diff": last - float(best["miou"]),
            }
        )
        if best["imported"]:
            marks.add((i, "best"))
            imported_cells.add((protocol, dataset, method, int(best["epoch"])))
        if len(hit) and bool(hit["imported"].iloc[0]):
            marks.update({(i, "last"), (i, "diff")})
            imported_cells.add((protocol, dataset, method, last_epoch))
        if best["imported"]:
            marks.add((i, "diff"))
        if len(g) == 1 and len(hit):  # (without the last, the note above says why there is no diff)
            notes.append(f"{method} / {dataset}: one checkpoint only, so best = last")
    if any(r["grid"] == "guided" for r in rows):
        notes.append(
            "grid guided: the DSE-guided grid evaluated only the DSE top-3 and the last checkpoint; its best "
            "is over those"
        )
    frame = pd.DataFrame(
        rows, columns=["method", "dataset", "checkpoints", "grid", "best", "best_epoch", "last", "last_epoch", "diff"]
    )
    frame, order = _order(frame)
    marks = {(order[i], c) for i, c in marks}
    if paper is not None and not frame.empty:
        frame = frame.merge(
            paper.rename(columns={"last_minus_best": "paper_diff"}), on=["method", "dataset"], how="left"
        )
        frame["delta_diff"] = frame["diff"] - frame["paper_diff"]
        marks |= {(i, "delta_diff") for i, c in marks if c == "diff"}
    notes += missing_notes(table, mi, protocol)
    notes += _imported_note(table, imported_cells, "best / last values")
    return Table("sdd", "SDD: best vs last checkpoint (mIoU; diff = last − best)", frame, notes, marks=marks)


def _eps(epochs) -> str:
    eps = sorted(int(e) for e in epochs)
    return ", ".join(map(str, eps[:8])) + (" ..." if len(eps) > 8 else "")


def missing_notes(table: pd.DataFrame, mi: pd.DataFrame, protocol: str) -> list[str]:
    """For each method × dataset: the checkpoints left out of its series (failed, not a number) and the
    ones without a record (the DSE-guided grid when that explains it)."""
    mf = metric_frame(table)
    metric_epochs = mf.groupby("method")["epoch"].apply(lambda e: set(e.astype(int))).to_dict() if not mf.empty else {}
    gone = left_out(table, protocol)
    grid_of = grid_kind(table, protocol)
    rows = table[table["protocol"] == protocol]
    notes = []
    for (method, dataset), g in rows.groupby(["method", "dataset"], sort=True):
        why = [
            f"{len(eps)} {reason} (ep {_eps(eps)})" for reason, eps in sorted(gone.get((method, dataset), {}).items())
        ]
        want = metric_epochs.get(method, set())
        absent = set(want) - set(g["epoch"].astype(int))
        if absent:
            guided = grid_of(method, dataset) == "guided"
            why.append(
                f"{len(absent)} without a record (ep {_eps(absent)})"
                + (
                    ": not run by the DSE-guided grid, which evaluates the DSE top-3 and the last checkpoint"
                    if guided
                    else ""
                )
            )
        if why:
            n = len(mi[(mi["method"] == method) & (mi["dataset"] == dataset)])
            total = len(set(want) | set(g["epoch"].astype(int)))
            notes.append(
                f"{method} / {dataset}: {n} of {total} checkpoints evaluated; {'; '.join(why)}; best and τ "
                f"are over those {n}"
                + ("" if grid_of(method, dataset) == "guided" else " (the method stays in the means)")
            )
    return notes


def _order(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[int, int]]:
    """The frame sorted by method and dataset order; and old row position -> new row position."""
    if frame.empty:
        return frame, {}
    rank = {d: i for i, d in enumerate(DATASET_ORDER)}
    key = frame["dataset"].map(lambda d: (rank.get(d, len(rank)), d))
    ordered = frame.assign(_k=key, _i=range(len(frame))).sort_values(["method", "_k"], kind="stable")
    order = {int(old): new for new, old in enumerate(ordered["_i"])}
    return ordered.drop(columns=["_k", "_i"]).reset_index(drop=True), order


# --------------------------------------------------------------------------------------------
def _tau(x: np.ndarray, y: np.ndarray) -> tuple[float, str]:
    if len(x) < 2:
        return math.nan, "fewer than 2 checkpoints"
    if np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan, "constant series"
    return float(kendalltau(x, y).statistic), ""


def _goodness(md: Metric, raw: pd.Series) -> pd.Series:
    return raw.astype(float).map(md.goodness)


def _metric_notes(mf: pd.DataFrame, mi: pd.DataFrame) -> list[str]:
    """Which metric cannot be computed for which method, and why."""
    notes = []
    if mf.empty:
        return notes
    probed = sorted(set(mi["method"]))
    for md in TAU_METRICS:
        if md.name not in mf.columns:
            continue
        have = mf.groupby("method")[md.name].apply(lambda v: int(np.isfinite(pd.to_numeric(v, errors="coerce")).sum()))
        lacking = [m for m in probed if m in have.index and have[m] == 0]
        if lacking:
            why = (
                "no separability / dimensionality (only the raw DSE is known: its τ is in the DSE (λ=1) row)"
                if md.name == "dse_lambda"
                else f"its records have no '{md.name}'"
            )
            notes.append(f"{md.label}: left out for {', '.join(lacking)}: {why}")
    return notes


LONG_COLUMNS = [
    "metric",
    "orientation",
    "method",
    "dataset",
    "checkpoints",
    "grid",
    "tau_raw",
    "tau",
    "p_value",
    "undefined_because",
]


@dataclass
class _TauRows:
    """The per-method τ rows being built, with the series behind them and what came from imports."""

    rows: list = field(default_factory=list)
    series: dict = field(default_factory=dict)
    marks: set = field(default_factory=set)
    imported_cells: set = field(default_factory=set)


def _tau_rows(mf: pd.DataFrame, mi: pd.DataFrame, protocol: str, datasets: list[str], grid_of, notes: list) -> _TauRows:
    out = _TauRows()
    for md in TAU_METRICS:
        if mf.empty or md.name not in mf.columns:
            notes.append(f"{md.label}: no '{md.name}' values in the records; row left empty")
            continue
        series = mf[["method", "epoch", md.name, "protocol", "dataset"]].assign(_imp=_imported(mf, md.name))
        for dataset in datasets:
            joined = series.rename(columns={"protocol": "_mp", "dataset": "_md"}).merge(
                mi[mi["dataset"] == dataset], on=["method", "epoch"]
            )
            joined = joined[np.isfinite(pd.to_numeric(joined[md.name], errors="coerce").astype(float))]
            for method, g in joined.groupby("method", sort=True):
                _tau_row(out, md, dataset, method, g, protocol, grid_of)
    return out


def _tau_row(out: _TauRows, md: Metric, dataset: str, method: str, g: pd.DataFrame, protocol: str, grid_of) -> None:
    raw, y = g[md.name].to_numpy(float), g["miou"].to_numpy(float)
    good = _goodness(md, g[md.name]).to_numpy(float)
    t_raw, why = _tau(raw, y)
    t_good, _ = _tau(good, y)
    out.series[(md.label, dataset, method)] = (good, y)
    if g["_imp"].any() or g["imported"].any():
        out.marks.update({(len(out.rows), "tau"), (len(out.rows), "tau_raw")})
        out.imported_cells |= {
            (p, d, method, int(e)) for p, d, e in g.loc[g["_imp"], ["_mp", "_md", "epoch"]].itertuples(index=False)
        }
        out.imported_cells |= {(protocol, dataset, method, int(e)) for e in g.loc[g["imported"], "epoch"]}
    out.rows.append(
        {
            "metric": md.label,
            "orientation": md.direction,
            "method": method,
            "dataset": dataset,
            "checkpoints": len(g),
            "grid": grid_of(method, dataset),
            "tau_raw": t_raw,
            "tau": t_good,
            "p_value": permutation_p(good, y) if not why else math.nan,
            "undefined_because": why or None,
        }
    )


def kendall_tables(
    table: pd.DataFrame, protocol: str | None = None, paper: pd.DataFrame | None = None
) -> tuple[Table, Table, Table | None]:
    """(mean τ per metric × dataset, per-method long table, paper side by side)."""
    protocol = protocol or probe_protocol_of(table)
    mf, mi = metric_frame(table), miou_frame(table, protocol)
    datasets = datasets_of(table, protocol)
    notes = _metric_notes(mf, mi)
    built = _tau_rows(mf, mi, protocol, datasets, grid_kind(table, protocol), notes)
    long = pd.DataFrame(built.rows, columns=LONG_COLUMNS)
    guided = long[long["grid"] == "guided"]
    if len(guided):  # τ over a DSE-guided subset is not comparable with τ over every checkpoint
        notes.append(
            f"{guided[['method', 'dataset']].drop_duplicates().shape[0]} method × dataset pair(s) evaluated on "
            f"the DSE-guided grid (the DSE top-3 and the last checkpoint only): their τ is in the per-method "
            f"table, marked, and left out of these means"
        )
    mean, mean_marks = _mean_rows(long, built.series, datasets, built.marks)
    if datasets:
        notes.append(
            "Avg. = the mean of the per-dataset columns: " + ", ".join(DATASET_LABEL.get(d, d) for d in datasets)
        )
    undefined = long[(long["grid"] == "full") & long["tau"].isna()]
    if len(undefined):
        notes.append(
            f"{len(undefined)} method × dataset × metric τ undefined and left out of the means "
            f"({'; '.join(sorted(set(undefined['undefined_because'].dropna())))})"
        )
    notes += missing_notes(table, mi, protocol)
    if len(mean) and len(datasets):
        notes.append(
            "95% CI: percentile interval of the mean τ when methods and each method's checkpoints are "
            "resampled with replacement (1,000 draws, seed 0); p-values per method in the long table "
            "(two-sided permutation test of τ, 9,999 pairings, seed 0)"
        )
    imp_note = _imported_note(table, built.imported_cells, "τ computed with values")
    t_mean = Table(
        "kendall_tau",
        "Average Kendall τ between each metric and mIoU (goodness orientation; mean over "
        "methods; n = methods with a defined τ)",
        mean,
        notes + imp_note,
        marks=mean_marks,
    )
    t_long = Table(
        "kendall_tau_per_method",
        "Kendall τ per method (raw and goodness orientation)",
        long,
        imp_note,
        marks=built.marks,
    )
    return t_mean, t_long, _paper_side(paper, mean, long, datasets)


def _mean_rows(long: pd.DataFrame, series: dict, datasets: list[str], long_marks: set) -> tuple[pd.DataFrame, set]:
    full = long[long["grid"] == "full"]
    marked = {i for i, _ in long_marks}
    rows, marks = [], set()
    for md in TAU_METRICS:
        row = {"metric": md.label, "orientation": md.direction}
        sub = full[full["metric"] == md.label]
        vals, groups = [], []
        methods = sorted(set(sub.loc[sub["tau"].notna(), "method"]))
        any_imported = False
        for dataset in datasets:
            label = DATASET_LABEL.get(dataset, dataset)
            here = sub[(sub["dataset"] == dataset) & sub["tau"].notna()]
            row[label] = here["tau"].mean() if len(here) else math.nan
            row[f"n_{label}"] = len(here)
            if any(i in marked for i in here.index):
                marks.add((len(rows), label))
                any_imported = True
            defined = set(here["method"])
            group = [series.get((md.label, dataset, m)) if m in defined else None for m in methods]
            row[f"{label} 95% CI"] = interval_text(*bootstrap_mean_tau([group]))
            groups.append(group)
            if len(here):
                vals.append(here["tau"].mean())
        row["Avg."] = float(np.mean(vals)) if vals else math.nan
        row["Avg. 95% CI"] = interval_text(*bootstrap_mean_tau(groups))
        if any_imported:
            marks.add((len(rows), "Avg."))
        rows.append(row)
    return pd.DataFrame(rows), marks


def _paper_side(paper, mean: pd.DataFrame, long: pd.DataFrame, datasets: list[str]) -> Table | None:
    if paper is None or mean.empty:
        return None
    ours = mean.melt(
        id_vars=["metric"],
        value_vars=[DATASET_LABEL.get(d, d) for d in datasets] + ["Avg."],
        var_name="dataset",
        value_name="ours",
    )
    raw = long.groupby(["metric", "dataset"])["tau_raw"].mean().reset_index()
    raw["dataset"] = raw["dataset"].map(lambda d: DATASET_LABEL.get(d, d))
    raw_avg = raw.groupby("metric")["tau_raw"].mean().reset_index().assign(dataset="Avg.")
    raw = pd.concat([raw, raw_avg]).rename(columns={"tau_raw": "ours_raw"})
    side_df = paper.merge(ours, on=["metric", "dataset"], how="left").merge(raw, on=["metric", "dataset"], how="left")
    side_df = side_df.rename(columns={"tau": "paper"})
    side_df["delta"] = side_df["ours"] - side_df["paper"]
    return Table(
        "kendall_tau_vs_paper",
        "Average Kendall τ: paper vs ours",
        side_df,
        [
            "paper: arXiv 2510.17299 as transcribed (results/paper/kendall_tau.csv); the paper's "
            "α-ReQ, RankMe and LiDAR rows are raw τ: compare them with ours_raw",
            "ours 'Avg.' is the unrounded mean of the per-dataset columns (each a mean over methods)",
        ]
        + _paper_average_notes(paper),
    )


def _paper_average_notes(paper: pd.DataFrame) -> list[str]:
    """A note for every paper row whose printed 'Avg.' is not its own datasets' mean to the printed
    precision (e.g. DSE: 0.58, 0.60, 0.56, 0.49 average 0.5575, printed 0.57): the harness cannot reproduce
    that rounding, and the row's delta carries the difference."""
    notes = []
    for metric, g in paper.groupby("metric", sort=False):
        cols, avg = g[g["dataset"] != "Avg."]["tau"], g[g["dataset"] == "Avg."]["tau"]
        if len(avg) != 1 or cols.isna().any() or not len(cols):
            continue
        mean = float(cols.mean())
        if abs(mean - float(avg.iloc[0])) > 0.005 + 1e-9:  # beyond the printed precision's half unit
            notes.append(
                f"the paper's {metric} 'Avg.' {float(avg.iloc[0]):.2f} is not the mean of its columns "
                f"({', '.join(f'{v:.2f}' for v in cols)}: {mean:.4f}); the difference is in that row's delta "
                "and cannot be reproduced"
            )
    return notes


# --------------------------------------------------------------------------------------------
def selections(table: pd.DataFrame) -> dict[str, list[int]]:
    mf = metric_frame(table)
    out = {}
    if mf.empty or "dse_lambda" not in mf.columns:
        return out
    for method, g in mf.groupby("method", sort=True):
        g = g[np.isfinite(g["dse_lambda"].astype(float))].sort_values("epoch")
        if len(g):
            out[method] = select_checkpoints(g["epoch"].astype(int).tolist(), g["dse_lambda"].tolist())
    return out


def _unselected_notes(table: pd.DataFrame, sel: dict[str, list[int]], methods: list[str]) -> list[str]:
    """Why a method with mIoU has no DSE selection (so no row): no label-free records, or none with both
    DSE components (λ needs separability and dimensionality; the raw DSE alone gives none)."""
    mf = metric_frame(table)
    have = set(mf["method"]) if not mf.empty else set()
    notes = []
    for method in methods:
        if method in sel:
            continue
        why = (
            "its label-free records have no DSE separability and dimensionality (λ needs both; "
            "the raw DSE alone gives no selection)"
            if method in have
            else "it has no label-free (metrics) records"
        )
        notes.append(f"{method}: no DSE selection, so no row: {why}")
    return notes


def selection_table(table: pd.DataFrame, protocol: str | None = None, paper: pd.DataFrame | None = None) -> Table:
    protocol = protocol or probe_protocol_of(table)
    sel, mi = selections(table), miou_frame(table, protocol)
    last_of = last_epochs(table, protocol)
    rows, notes, marks, imported_cells = [], [], set(), set()
    notes += _unselected_notes(table, sel, sorted(set(mi["method"])))
    for method, epochs in sorted(sel.items()):
        for dataset, g in mi[mi["method"] == method].groupby("dataset", sort=True):
            g = g.sort_values("epoch")
            by_epoch = dict(zip(g["epoch"].astype(int), g["miou"].astype(float)))
            imp = dict(zip(g["epoch"].astype(int), g["imported"]))
            have = [by_epoch[e] for e in epochs if e in by_epoch]
            if not have:
                notes.append(f"{method} / {dataset}: no mIoU at the selected epochs {epochs}")
                continue
            last_epoch = last_of.get((method, dataset), int(g["epoch"].max()))
            last = by_epoch.get(last_epoch, math.nan)
            if last_epoch not in by_epoch:
                notes.append(f"{method} / {dataset}: the last checkpoint (ep {last_epoch}) has no mIoU: no gain")
            top1 = by_epoch.get(epochs[0], math.nan)
            i = len(rows)
            rows.append(
                {
                    "method": method,
                    "dataset": dataset,
                    "selected_epochs": " ".join(map(str, epochs)),
                    "last": last,
                    "selected_max": max(have),
                    "selected_mean": float(np.mean(have)),
                    "selected_top1": top1,
                    "gain": max(have) - last,
                }
            )
            used = [e for e in epochs if e in by_epoch] + ([last_epoch] if last_epoch in by_epoch else [])
            if any(imp.get(e) for e in used):
                marks.update((i, c) for c in ("last", "selected_max", "selected_mean", "selected_top1", "gain"))
                imported_cells |= {(protocol, dataset, method, e) for e in used if imp.get(e)}
    frame, order = _order(
        pd.DataFrame(
            rows,
            columns=[
                "method",
                "dataset",
                "selected_epochs",
                "last",
                "selected_max",
                "selected_mean",
                "selected_top1",
                "gain",
            ],
        )
    )
    marks = {(order[i], c) for i, c in marks}
    if paper is not None and not frame.empty:
        frame = frame.merge(
            paper.rename(columns={"last": "paper_last", "selected": "paper_selected"}),
            on=["method", "dataset"],
            how="left",
        )
    if not frame.empty:
        notes.insert(
            0,
            f"average gain (max of the selected candidates − last): {frame['gain'].mean():+.2f} mIoU over "
            f"{frame['gain'].notna().sum()} method × dataset pairs",
        )
    notes += _imported_note(table, imported_cells, "mIoU")
    top = max((len(e) for e in sel.values()), default=0)
    title = (
        "DSE model selection: "
        + (f"top-{top} local maxima" if top > 1 else "the highest local maximum")
        + " of DSE (±2 checkpoints)"
    )
    return Table("model_selection", title, frame, notes, marks=marks)


# --------------------------------------------------------------------------------------------
def label_free_columns(mf: pd.DataFrame) -> list[tuple[str, str]]:
    """(metric, label) of the label-free metrics with a value in `mf`: DSE with λ first, then each
    label-free kind's metrics in the order it declares them."""
    spec = [("dse_lambda", "DSE")] + [
        (m.name, m.label) for k in kinds_with(LABEL_FREE) for m in PROTOCOL_KINDS[k].metrics if not m.per_class
    ]
    seen: set[str] = set()
    out = []
    for name, label in spec:
        if name in seen or name not in mf.columns or not pd.to_numeric(mf[name], errors="coerce").notna().any():
            continue
        seen.add(name)
        out.append((name, label))
    return out


def label_free_table(table: pd.DataFrame) -> Table:
    """Every label-free metric per method × epoch, with the DSE selection marked (its rank among the
    top-3): the table of a run without probes, e.g. one a monitor scores while it trains."""
    mf, sel = metric_frame(table), selections(table)
    cols = label_free_columns(mf)
    where = [] if mf.empty or len(mf[["protocol", "dataset"]].drop_duplicates()) <= 1 else ["protocol", "dataset"]
    rows: list[dict] = []
    marks: set[tuple[int, str]] = set()
    imported_cells: set[tuple] = set()
    if not mf.empty:
        mf = mf.sort_values(["method", *where, "epoch"], kind="stable")
        flags = {name: _imported(mf, name).to_numpy() for name, _ in cols}
        for j, r in enumerate(mf.to_dict("records")):
            epoch = int(r["epoch"])
            ranked = sel.get(r["method"], [])
            row = {"method": r["method"], **{w: r[w] for w in where}, "epoch": epoch}
            row.update({label: _number(r[name]) for name, label in cols})
            row["dse_top3"] = str(ranked.index(epoch) + 1) if epoch in ranked else None
            for name, label in cols:
                if flags[name][j] and math.isfinite(row[label]):
                    marks.add((len(rows), label))
                    imported_cells.add((r["protocol"], r["dataset"], r["method"], epoch))
            rows.append(row)
    frame = pd.DataFrame(rows, columns=["method", *where, "epoch"] + [label for _, label in cols] + ["dse_top3"])
    return Table(
        "label_free",
        "Label-free metrics per epoch (dse_top3: the DSE selection's rank)",
        frame,
        _label_free_notes(table, mf, sel) + _imported_note(table, imported_cells, "values"),
        marks=marks,
    )


def _number(v) -> float:
    x = pd.to_numeric(v, errors="coerce")
    return float(x) if x is not None and np.isfinite(x) else math.nan


def _label_free_notes(table: pd.DataFrame, mf: pd.DataFrame, sel: dict[str, list[int]]) -> list[str]:
    if mf.empty:
        return ["no label-free (metrics) records in results.csv"]
    notes = [
        "DSE = separability + λ·dim, λ = Std(separability)/Std(dim) over each method's checkpoints; "
        "dse_top3: the (up to) 3 highest local maxima of DSE within ±2 checkpoints, ranked (harness.selection: "
        "the model-selection table's and the DSE-guided grid's rule)"
    ]
    notes += [
        f"{m}: no DSE selection: its records have no DSE separability and dimensionality (λ needs both)"
        for m in sorted(set(mf["method"]) - set(sel))
    ]
    rows = table[_is_metrics(table)]
    failed = rows[rows["status"] != "ok"] if "status" in rows.columns else rows.iloc[0:0]
    if len(failed):
        notes.append(f"{len(failed)} failed label-free cell(s) left out (REPORT.md names them)")
    live = int(mf["source"].eq("live").sum()) if "source" in mf.columns else 0
    if live:
        notes.append(f"{live} of these records were written by a training run's monitor (source: live)")
    return notes


def device_hours(table: pd.DataFrame, seconds: str = "wall_s") -> pd.DataFrame:
    """gpu_h and cpu_h of each row from what ran: GPU·h = seconds × GPUs used on CUDA, CPU·h = seconds ×
    processes on the CPU. A row that states no device (no `gpus` / `device`) gets neither."""
    t = table.copy()
    wall = pd.to_numeric(t[seconds], errors="coerce") if seconds in t.columns else pd.Series(np.nan, index=t.index)
    gpus = pd.to_numeric(t["gpus"], errors="coerce") if "gpus" in t.columns else pd.Series(np.nan, index=t.index)
    device = t["device"] if "device" in t.columns else pd.Series(None, index=t.index, dtype=object)
    device = device.where(device.notna(), np.where(gpus > 0, "cuda", np.where(gpus == 0, "cpu", None)))
    world = pd.to_numeric(t["world_size"], errors="coerce").fillna(1) if "world_size" in t.columns else 1.0
    t["gpu_h"] = np.where(device == "cuda", wall * gpus / 3600, np.nan)
    t["cpu_h"] = np.where(device == "cpu", wall * world / 3600, np.nan)
    t["device_stated"] = device.notna() & wall.notna()
    return t


def efficiency_table(table: pd.DataFrame, protocol: str | None = None) -> Table:
    protocol = protocol or probe_protocol_of(table)
    ok = _ok(table)
    ok = ok[~_imported(ok)]  # an import says nothing of what it cost
    # DSE's cost is its own (checkpoint + dense features + the estimator, `dse_s`), not the metrics job's
    # other metrics (LiDAR's 50 views each): the paper's 0.025 GPU·h is of DSE alone
    metrics_rows = ok[_is_metrics(ok)].copy()
    dse_s = (
        pd.to_numeric(metrics_rows["dse_s"], errors="coerce")
        if "dse_s" in metrics_rows.columns
        else pd.Series(np.nan, index=metrics_rows.index)
    )
    whole = int(dse_s.isna().sum())
    metrics_rows["dse_cost_s"] = dse_s.fillna(pd.to_numeric(metrics_rows["wall_s"], errors="coerce"))
    t = pd.concat([device_hours(metrics_rows, "dse_cost_s"), device_hours(ok[~_is_metrics(ok)])])
    rows, notes = [], []
    if whole:
        notes.append(f"{whole} metrics record(s) do not time DSE alone: their whole job counts as DSE's cost")
    for method, g in t.groupby("method", sort=True):
        dse, sup = g[_is_metrics(g)], g[g["protocol"] == protocol]
        row = {
            "method": method,
            "dse_gpu_h": dse["gpu_h"].sum(min_count=1),
            "supervised_gpu_h": sup["gpu_h"].sum(min_count=1),
            "dse_cpu_h": dse["cpu_h"].sum(min_count=1),
            "supervised_cpu_h": sup["cpu_h"].sum(min_count=1),
        }
        ratio, unit = math.nan, None
        for u in ("gpu", "cpu"):  # a ratio only between hours of the same kind of device
            if row[f"dse_{u}_h"] > 0 and row[f"supervised_{u}_h"] > 0:
                ratio, unit = row[f"supervised_{u}_h"] / row[f"dse_{u}_h"], u.upper()
                break
        rows.append({**row, "ratio": ratio, "ratio_of": unit})
    unstated = int((~t["device_stated"]).sum()) if len(t) else 0
    if unstated:
        notes.append(f"{unstated} record(s) state no device or wall time and are left out of the cost")
    n_imported = int(_imported(_ok(table)).sum())
    if n_imported:
        notes.append(f"{n_imported} imported record(s) are left out: an import says nothing of what it cost")
    frame = pd.DataFrame(
        rows, columns=["method", "dse_gpu_h", "supervised_gpu_h", "dse_cpu_h", "supervised_cpu_h", "ratio", "ratio_of"]
    )
    notes.append("paper: DSE 0.025 GPU·h vs supervised selection 2.43 GPU·h (~97×)")
    return Table(
        "efficiency",
        "Cost: label-free metrics vs supervised evaluation, from what ran (GPU·h = wall time × "
        "GPUs used; CPU·h = wall time × processes of a run on the CPU)",
        frame,
        notes,
    )


def dense_columns(role: str = DENSE) -> list[tuple[str, str, str]]:
    """(kind, metric, label) of the columns of a role's final/selected table, as its kinds declare them."""
    return [(k, m.name, m.label) for k in kinds_with(role) for m in PROTOCOL_KINDS[k].metrics if m.dense_table]


def _optional(kind: str, metric: str) -> bool:
    """A metric a protocol writes only when asked (the multi-scale test): no column when no record has it."""
    m = PROTOCOL_KINDS[kind].metric(metric)
    return bool(m and m.optional)


def dense_table(table: pd.DataFrame) -> Table:
    return final_and_selected_table(
        table, DENSE, "dense", "Dense protocols (UDI style): final and DSE-selected checkpoint"
    )


def classification_table(table: pd.DataFrame) -> Table:
    return final_and_selected_table(
        table,
        CLASSIFICATION,
        "classification",
        "Image-level classifiers, on frozen features (linear, low-shot) and fine-tuned end to end (ImageNet, "
        "transfer, low-shot fine-tuning): final and DSE-selected checkpoint",
    )


def final_and_selected_table(table: pd.DataFrame, role: str, name: str, title: str) -> Table:
    """The final and the DSE-selected checkpoint of every method, one column per metric its role's kinds
    mark for the table (several protocols of a kind: one column each, named by the protocol)."""
    sel = selections(table)
    ok = _ok(table)
    kind = _kind(ok)
    cols_spec = _columns_by_protocol(ok, kind, dense_columns(role))
    rows, notes, marks, imported_cells = [], [], set(), set()
    methods = sorted(set(ok.loc[kind.isin(kinds_with(role)), "method"]))
    for method in methods:
        for which in ("final", "DSE-selected"):
            row = {"method": method, "checkpoint": which}
            for k, where, col, label in cols_spec:
                g = ok[(ok["method"] == method) & (kind == k)]
                if where:  # one of several protocols / datasets of this kind
                    g = g[(g["protocol"] == where[0]) & (g["dataset"] == where[1])]
                if g.empty or col not in g.columns:
                    row[label] = math.nan
                    continue
                if which == "final":
                    planned = (
                        pd.to_numeric(g["last_epoch"], errors="coerce").dropna() if "last_epoch" in g.columns else []
                    )
                    epoch = int(planned.max()) if len(planned) else g["epoch"].max()
                else:
                    epoch = (sel.get(method) or [None])[0]
                hit = g[g["epoch"] == epoch]
                row[label] = float(hit[col].iloc[0]) if len(hit) else math.nan
                row[f"epoch_{'/'.join(where) if where else k}"] = int(epoch) if epoch is not None and len(hit) else None
                if len(hit) and bool(_imported(hit, col).iloc[0]):
                    marks.add((len(rows), label))
                    imported_cells.add((hit["protocol"].iloc[0], hit["dataset"].iloc[0], method, int(epoch)))
            rows.append(row)
    if not rows:
        notes.append(f"no records of a {role} protocol (" + ", ".join(kinds_with(role)) + ") in this suite")
    cols = ["method", "checkpoint"] + [label for *_, label in cols_spec]
    frame = pd.DataFrame(rows).reindex(columns=cols + sorted({c for r in rows for c in r if c.startswith("epoch_")}))
    empty = [label for k, _, col, label in cols_spec if _optional(k, col) and frame[label].isna().all()]
    frame = frame.drop(columns=empty)
    notes += _imported_note(table, imported_cells, "values")
    return Table(name, title, frame, notes, marks=marks)


def _columns_by_protocol(ok: pd.DataFrame, kind: pd.Series, spec) -> list[tuple[str, tuple | None, str, str]]:
    """(kind, protocol, metric, label): one column per metric of a kind, or, where the records hold
    several protocols (or datasets) of that kind (k-NN, low-shot 1% and 10%, CIFAR-10 and -100), one per
    protocol and dataset, labelled with them."""
    out = []
    for k, col, label in spec:
        here = ok[kind == k]
        pairs = sorted(set(zip(here["protocol"], here["dataset"]))) if len(here) else []
        if len(pairs) <= 1:
            out.append((k, None, col, label))
            continue
        for protocol, dataset in pairs:
            out.append((k, (protocol, dataset), col, f"{label} [{protocol}/{dataset}]"))
    return out


def published_table(table: pd.DataFrame, published: pd.DataFrame | None) -> Table:
    """Each number a method's own paper or release publishes for one of the suite's protocols (its method file's
    `published`, copied by `sdd collect`), beside ours: the final checkpoint's record of that protocol,
    dataset and metric."""
    cols = ["method", "protocol", "dataset", "metric", "ours", "published", "delta", "source"]
    notes: list[str] = []
    if published is None or published.empty:
        notes.append("no method of this suite lists published numbers for its protocols (method files: `published`)")
        return Table("published", "Ours beside the methods' own published numbers", pd.DataFrame(columns=cols), notes)
    ok = _ok(table)
    rows, marks = [], set()
    for _, n in published.iterrows():
        g = ok[(ok["method"] == n["method"]) & (ok["protocol"] == n["protocol"]) & (ok["dataset"] == n["dataset"])]
        epoch = last_epochs(table, n["protocol"]).get((n["method"], n["dataset"]))
        hit = g[g["epoch"] == epoch] if epoch is not None else g.iloc[0:0]
        ours = (
            float(pd.to_numeric(hit[n["metric"]], errors="coerce").iloc[0])
            if len(hit) and n["metric"] in hit.columns
            else math.nan
        )
        if len(hit) and n["metric"] in hit.columns and bool(_imported(hit, n["metric"]).iloc[0]):
            marks.add((len(rows), "ours"))
        rows.append(
            {
                "method": n["method"],
                "protocol": n["protocol"],
                "dataset": n["dataset"],
                "metric": n["metric"],
                "ours": ours,
                "published": float(n["value"]),
                "delta": ours - float(n["value"]),
                "source": n["source"],
            }
        )
        if isinstance(n.get("note"), str) and n["note"]:
            notes.append(f"{n['method']}, {n['protocol']} {n['metric']}: {n['note']}")
    missing = sum(math.isnan(r["ours"]) for r in rows)
    if missing:
        notes.insert(0, f"{missing} of {len(rows)} published numbers have no record of ours yet (ours: empty)")
    return Table(
        "published",
        "Ours beside the methods' own published numbers (final checkpoint; delta = ours - published)",
        pd.DataFrame(rows, columns=cols),
        notes,
        marks=marks,
    )


def tracking_sentence(mean: pd.DataFrame, long: pd.DataFrame | None = None) -> str:
    """One plain sentence on which metrics track mIoU, read from the averaged τ's 95% intervals, and only
    when there is enough data for an interval to mean something (methods with a defined τ, and the
    checkpoints behind each, from the per-method table `long`)."""
    if mean.empty or "Avg. 95% CI" not in mean.columns:
        return "No τ could be computed: the tables need metrics and linear-probe records on the same checkpoints."
    n_cols = [c for c in mean.columns if c.startswith("n_")]
    methods = int(mean[n_cols].max(axis=1).max()) if n_cols else 0
    full = long[(long["grid"] == "full") & long["tau"].notna()] if long is not None and len(long) else None
    checkpoints = int(full["checkpoints"].min()) if full is not None and len(full) else 0
    if methods < MIN_METHODS_FOR_A_FINDING or checkpoints < MIN_CHECKPOINTS_FOR_A_FINDING:
        return (
            f"Too little data for a finding: the averages rest on {methods} method(s) with at least "
            f"{checkpoints} checkpoint(s) each (a finding needs {MIN_METHODS_FOR_A_FINDING} methods with "
            f"{MIN_CHECKPOINTS_FOR_A_FINDING} checkpoints); read the per-method τ and their p-values instead."
        )
    up, down = [], []
    for metric, ci in zip(mean["metric"], mean["Avg. 95% CI"]):
        m = re.match(r"\[([-+0-9.]+), ([-+0-9.]+)\]", str(ci))
        if m:
            lo, hi = float(m.group(1)), float(m.group(2))
            (up if lo > 0 else down if hi < 0 else []).append(metric)
    if not up:
        return (
            "No metric tracks mIoU here: every metric's 95% interval of the average τ includes zero"
            + (f" or lies below it ({', '.join(down)})" if down else "")
            + "."
        )
    return (
        f"{', '.join(up)} track{'s' if len(up) == 1 else ''} mIoU here (95% interval of the average τ above zero); "
        f"the others' intervals include zero" + (f" or lie below it ({', '.join(down)})" if down else "") + "."
    )


IMAGE_TAU_METRICS = [m for m in TAU_ROWS if m.name in ("dse_lambda", "rankme")]
PAPER_IMAGE_TAU = {"DSE": 0.86, "RankMe": 0.79}  # arXiv 2510.17299: Kendall τ against k-NN top-1


def image_level_tau_table(table: pd.DataFrame) -> Table:
    """The paper's image-level comparison: Kendall τ of DSE and RankMe against ImageNet k-NN top-1 over
    every checkpoint, per method, then the mean over methods (from the image-level kind's records)."""
    mf = metric_frame(table)
    knn = _ok(table[_kind(table).isin(kinds_with(IMAGE))])
    rows, notes = [], []
    if mf.empty or knn.empty or "top1" not in knn.columns:
        notes.append("needs metrics and k-NN records on the same checkpoints")
        return Table(
            "image_level_tau",
            "Kendall τ against k-NN top-1 (image level)",
            pd.DataFrame(columns=["metric", "tau", "methods", "paper"]),
            notes,
        )
    k = knn[["method", "epoch", "top1"]].dropna()
    for md in IMAGE_TAU_METRICS:
        taus = []
        if md.name in mf.columns:
            joined = mf[["method", "epoch", md.name]].merge(k, on=["method", "epoch"])
            joined = joined[np.isfinite(pd.to_numeric(joined[md.name], errors="coerce").astype(float))]
            for method, g in joined.groupby("method", sort=True):
                t, why = _tau(_goodness(md, g[md.name]).to_numpy(float), g["top1"].to_numpy(float))
                if math.isnan(t):
                    notes.append(f"{md.label} / {method}: τ undefined ({why})")
                else:
                    taus.append(t)
        rows.append(
            {
                "metric": md.label,
                "tau": float(np.mean(taus)) if taus else math.nan,
                "methods": len(taus),
                "paper": PAPER_IMAGE_TAU[md.label],
            }
        )
    n = k.groupby("method")["epoch"].nunique()
    notes.append("k-NN checkpoints per method: " + ", ".join(f"{m} {c}" for m, c in n.items()))
    return Table(
        "image_level_tau",
        "Kendall τ against k-NN top-1 (image level; mean over methods)",
        pd.DataFrame(rows, columns=["metric", "tau", "methods", "paper"]),
        notes,
    )


def depth_targets() -> list[Metric]:
    """The depth metrics the τ table ranks the label-free metrics against, as the depth kinds declare them."""
    return [m for k in kinds_with(DEPTH) for m in PROTOCOL_KINDS[k].metrics if m.tau_target]


def depth_tau_table(table: pd.DataFrame, miou_mean: pd.DataFrame | None = None) -> Table:
    """Kendall τ of every label-free metric against each depth target (RMSE, δ1) over every checkpoint, per method,
    then the mean over methods, in goodness orientation on both sides (a lower RMSE is better), with the same 95%
    intervals as the mIoU τ table; beside it, each metric's average τ against mIoU when that table has it."""
    mf = metric_frame(table)
    depth = _ok(table[_kind(table).isin(kinds_with(DEPTH))])
    targets = depth_targets()
    cols = ["metric", "orientation"]
    for t in targets:
        cols += [f"τ vs {t.label}", f"n_{t.name}", f"{t.label} 95% CI"]
    cols += ["τ vs mIoU (Avg.)"]
    notes: list[str] = []
    if mf.empty or depth.empty:
        notes.append("needs metrics and depth records on the same checkpoints")
        return Table("depth_tau", "Kendall τ against depth (NYU-style linear depth)", pd.DataFrame(columns=cols), notes)
    rows = []
    for md in TAU_METRICS:
        row: dict = {"metric": md.label, "orientation": md.direction}
        for t in targets:
            series = []
            if md.name in mf.columns and t.name in depth.columns:
                d = depth[["method", "epoch", t.name]].dropna()
                joined = mf[["method", "epoch", md.name]].merge(d, on=["method", "epoch"])
                joined = joined[np.isfinite(pd.to_numeric(joined[md.name], errors="coerce").astype(float))]
                for method, g in joined.groupby("method", sort=True):
                    x = _goodness(md, g[md.name]).to_numpy(float)
                    y = _goodness(t, g[t.name]).to_numpy(float)
                    tau, why = _tau(x, y)
                    if math.isnan(tau):
                        notes.append(f"{md.label} vs {t.label} / {method}: τ undefined ({why})")
                    else:
                        series.append((x, y, tau))
            taus = [tau for _, _, tau in series]
            row[f"τ vs {t.label}"] = float(np.mean(taus)) if taus else math.nan
            row[f"n_{t.name}"] = len(taus)
            row[f"{t.label} 95% CI"] = interval_text(*bootstrap_mean_tau([[(x, y) for x, y, _ in series]]))
        hit = miou_mean[miou_mean["metric"] == md.label] if miou_mean is not None and len(miou_mean) else None
        row["τ vs mIoU (Avg.)"] = float(hit["Avg."].iloc[0]) if hit is not None and len(hit) else math.nan
        rows.append(row)
    frame = pd.DataFrame(rows, columns=cols)
    n = depth.groupby("method")["epoch"].nunique()
    notes.append("depth checkpoints per method: " + ", ".join(f"{m} {c}" for m, c in n.items()))
    notes.append(
        "goodness orientation on both sides: a lower RMSE ranks higher; 95% CI: percentile interval of the mean τ "
        "when methods and each method's checkpoints are resampled (1,000 draws, seed 0)"
    )
    notes.append(depth_sentence(frame, targets))
    return Table("depth_tau", "Kendall τ against depth (goodness orientation; mean over methods)", frame, notes)


def depth_sentence(frame: pd.DataFrame, targets: list[Metric]) -> str:
    """One sentence: does DSE track depth less well than mIoU, and which metric tracks depth best (or the intervals
    do not separate them)."""
    if frame.empty or not targets:
        return "no depth τ to compare"
    t = targets[0]
    col, ci = f"τ vs {t.label}", f"{t.label} 95% CI"
    dse = frame[frame["metric"] == TAU_METRICS[0].label]
    parts = []
    if len(dse) and np.isfinite(dse[col].iloc[0]):
        on_depth, on_miou = float(dse[col].iloc[0]), float(dse["τ vs mIoU (Avg.)"].iloc[0])
        if np.isfinite(on_miou):
            word = "less well than" if on_depth < on_miou else "better than" if on_depth > on_miou else "as well as"
            parts.append(f"DSE tracks depth ({t.label}) {word} mIoU here (τ {on_depth:+.2f} vs {on_miou:+.2f})")
        else:
            parts.append(f"DSE's τ against {t.label} is {on_depth:+.2f} (no mIoU τ to compare here)")
    ranked = frame[np.isfinite(frame[col])].sort_values(col, ascending=False)
    if len(ranked):
        best = ranked.iloc[0]
        low = _interval_bound(best[ci], 0)
        highs = [_interval_bound(v, 1) for v in ranked[ci].iloc[1:]]
        separated = low is not None and len(highs) > 0 and all(h is not None and h < low for h in highs)
        tail = "its interval above every other's" if separated else "but the intervals do not separate the metrics"
        parts.append(f"{best['metric']} tracks {t.label} best (τ {best[col]:+.2f}; {tail})")
    return "; ".join(parts) + "." if parts else "no depth τ defined"


def _interval_bound(text, which: int) -> float | None:
    """The lower (0) or upper (1) end of an interval as `interval_text` writes it; None for "—"."""
    try:
        return float(str(text).strip("[]").split(",")[which])
    except (ValueError, IndexError):
        return None


def all_tables(
    table: pd.DataFrame,
    papers: dict[str, pd.DataFrame] | None = None,
    protocol: str | None = None,
    published: pd.DataFrame | None = None,
) -> list[Table]:
    protocol = protocol or probe_protocol_of(table)
    papers = papers or {}
    mean, long, side = kendall_tables(table, protocol, papers.get("kendall_tau"))
    out = [
        sdd_table(table, protocol, papers.get("sdd_table")),
        mean,
        long,
        selection_table(table, protocol, papers.get("model_selection")),
        label_free_table(table),
        efficiency_table(table, protocol),
        dense_table(table),
        classification_table(table),
        image_level_tau_table(table),
    ]
    if _kind(table).isin(kinds_with(DEPTH)).any():  # only grids with a depth protocol
        out.append(depth_tau_table(table, mean.frame))
    if published is not None and len(published):  # only suites whose methods publish numbers for its protocols
        out.append(published_table(table, published))
    if side is not None:
        out.insert(3, side)
    return out
