"""The paper's tables as pure functions of the collected table (`results.csv`), never of a model.

Conventions (also written into REPORT.md):
- mIoU series per (method, dataset) come from the segmentation protocol's rows (default `linear`),
  metric series per method from the `metrics` rows; they are joined on epoch. Failed or missing
  values are left out of a series, and the table says what was left out.
- Best checkpoint: the highest mIoU; a tie goes to the earliest epoch.
- Kendall τ: `scipy.stats.kendalltau` (τ-b, ties corrected), per method between a metric's series and
  the mIoU series over the checkpoints both have; mean over methods (methods with an undefined τ are
  left out and counted); "Avg." is the mean over datasets. τ is reported in the metric's goodness
  orientation (W2: lower is better, so −W2; α-ReQ: closer to 1 is better, so −|α − 1|), and raw in
  the long table.
- DSE with λ and the model selection: `harness.selection` (the same code the guided planner uses).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from harness.analysis.uncertainty import bootstrap_mean_tau, interval_text, permutation_p
from harness.selection import dse_normalised, select_checkpoints

DATASET_ORDER = ["coco_stuff164k", "voc12_aug", "ade20k", "cityscapes"]
DATASET_LABEL = {"coco_stuff164k": "COCO", "voc12_aug": "VOC", "ade20k": "ADE20k", "cityscapes": "City"}


@dataclass(frozen=True)
class MetricDef:
    label: str
    column: str
    orientation: str  # "higher", "lower", "closer to 1"

    def goodness(self, raw: pd.Series) -> pd.Series:
        if self.orientation == "lower":
            return -raw
        if self.orientation == "closer to 1":
            return -(raw - 1).abs()
        return raw


TAU_METRICS = [
    MetricDef("DSE", "dse_lambda", "higher"),
    MetricDef("DSE (λ=1)", "dse", "higher"),
    MetricDef("Separability only", "dse_separability", "higher"),
    MetricDef("Dimensionality only (RankMe†)", "dse_dim", "higher"),
    MetricDef("RankMe", "rankme", "higher"),
    MetricDef("α-ReQ", "alpha_req", "closer to 1"),
    MetricDef("LiDAR", "lidar", "higher"),
    MetricDef("W2", "w2", "lower"),
    MetricDef("−L_U", "neg_lu", "higher"),
]


@dataclass
class Table:
    name: str
    title: str
    frame: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    protocol: str | None = None  # the linear-probe protocol whose mIoU it reads, if any


# the tables that read a linear probe's mIoU (one set per probe protocol of a suite)
MIOU_TABLES = ("sdd", "kendall_tau", "kendall_tau_per_method", "kendall_tau_vs_paper", "model_selection", "efficiency")


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"] if "status" in df.columns else df


def datasets_of(table: pd.DataFrame, protocol: str) -> list[str]:
    present = sorted(set(table.loc[table["protocol"] == protocol, "dataset"].dropna()))
    return [d for d in DATASET_ORDER if d in present] + [d for d in present if d not in DATASET_ORDER]


def _is_metrics(table: pd.DataFrame) -> pd.Series:
    """Rows of the label-free metrics protocol (by kind when recorded, else by the name `metrics`)."""
    if "kind" in table.columns and table["kind"].notna().any():
        return table["kind"] == "metrics"
    return table["protocol"] == "metrics"


def metric_frame(table: pd.DataFrame) -> pd.DataFrame:
    """Metrics rows, one per (method, epoch), with the λ-normalised DSE added per method."""
    m = _ok(table[_is_metrics(table)]).copy()
    if m.empty:
        return m
    m = m.sort_values(["method", "epoch"])
    m["dse_lambda"] = np.nan
    if {"dse_separability", "dse_dim"} <= set(m.columns):
        for method, g in m.groupby("method"):
            m.loc[g.index, "dse_lambda"] = dse_normalised(g["dse_separability"].astype(float).tolist(),
                                                          g["dse_dim"].astype(float).tolist())
    return m


def miou_frame(table: pd.DataFrame, protocol: str = "linear", column: str = "mIoU") -> pd.DataFrame:
    s = _ok(table[table["protocol"] == protocol])
    if column not in s.columns:
        return pd.DataFrame(columns=["method", "dataset", "epoch", "miou"])
    s = s[["method", "dataset", "epoch", column]].rename(columns={column: "miou"})
    return s[np.isfinite(s["miou"].astype(float))].sort_values(["method", "dataset", "epoch"])


# --------------------------------------------------------------------------------------------
def last_epochs(table: pd.DataFrame) -> dict[str, int]:
    """Each method's last checkpoint: the largest epoch any of its records has."""
    return {m: int(g["epoch"].max()) for m, g in table.dropna(subset=["epoch"]).groupby("method")}


def grid_kind(table: pd.DataFrame):
    """method, downstream checkpoints -> "full" | "partial" (fewer than the metrics cover)."""
    mf = metric_frame(table)
    n_metric = mf.groupby("method")["epoch"].nunique().to_dict() if not mf.empty else {}
    return lambda method, n: "partial" if n < n_metric.get(method, 0) else "full"


def sdd_table(table: pd.DataFrame, protocol: str = "linear", paper: pd.DataFrame | None = None) -> Table:
    mi = miou_frame(table, protocol)
    last_epochs_ = last_epochs(table)
    grid_of = grid_kind(table)
    rows, notes = [], []
    for (method, dataset), g in mi.groupby(["method", "dataset"], sort=True):
        g = g.sort_values("epoch")
        best_i = g["miou"].to_numpy().argmax()  # first maximum = earliest epoch on ties
        best = g.iloc[best_i]
        last_epoch = last_epochs_.get(method, int(g["epoch"].max()))  # the method's last checkpoint, always
        hit = g[g["epoch"] == last_epoch]
        last = float(hit["miou"].iloc[0]) if len(hit) else math.nan
        if not len(hit):
            notes.append(f"{method} / {dataset}: the last checkpoint (ep {last_epoch}) has no mIoU: last and diff "
                         f"are left empty (never the last evaluated one instead)")
        rows.append({"method": method, "dataset": dataset, "checkpoints": len(g), "grid": grid_of(method, len(g)),
                     "best": best["miou"], "best_epoch": int(best["epoch"]), "last": last, "last_epoch": last_epoch,
                     "diff": last - best["miou"]})
        if len(g) == 1:
            notes.append(f"{method} / {dataset}: one checkpoint only, so best = last")
    if any(r["grid"] == "partial" for r in rows):
        notes.append("grid partial: fewer downstream checkpoints than metric checkpoints (the notes below say why); "
                     "its best is over the evaluated ones only")
    frame = pd.DataFrame(rows, columns=["method", "dataset", "checkpoints", "grid", "best", "best_epoch", "last",
                                        "last_epoch", "diff"])
    frame = _order(frame)
    if paper is not None and not frame.empty:
        frame = frame.merge(paper.rename(columns={"last_minus_best": "paper_diff"}), on=["method", "dataset"],
                            how="left")
        frame["delta_diff"] = frame["diff"] - frame["paper_diff"]
    notes += missing_notes(table, mi, protocol)
    failed = table[(table["protocol"] == protocol) & (table["status"] != "ok")]
    if len(failed):
        notes.append(f"{len(failed)} {protocol} cell(s) failed and are left out: "
                     + ", ".join(f"{r.method}/{r.dataset}/ep{int(r.epoch)}" for r in failed.itertuples())[:500])
    return Table("sdd", "SDD: best vs last checkpoint (mIoU; diff = last − best)", frame, notes)


def _eps(epochs) -> str:
    eps = sorted(int(e) for e in epochs)
    return ", ".join(map(str, eps[:8])) + (" ..." if len(eps) > 8 else "")


def missing_notes(table: pd.DataFrame, mi: pd.DataFrame, protocol: str) -> list[str]:
    """For each method × dataset evaluated on fewer checkpoints than the metrics cover: how many, and
    why the others are missing (failed, no record; the DSE-guided grid only when that explains it)."""
    mf = metric_frame(table)
    if mf.empty or mi.empty:
        return []
    metric_epochs = mf.groupby("method")["epoch"].apply(lambda e: set(e.astype(int)))
    sel = selections(table)
    rows = table[table["protocol"] == protocol]
    notes = []
    for (method, dataset), g in mi.groupby(["method", "dataset"], sort=True):
        if method not in metric_epochs:
            continue
        want, have = metric_epochs[method], set(g["epoch"].astype(int))
        if not want - have:
            continue
        mine = rows[(rows["method"] == method) & (rows["dataset"] == dataset)]
        failed = set(mine.loc[mine["status"] != "ok", "epoch"].astype(int)) & want
        absent = want - have - failed
        why = []
        if failed:
            why.append(f"{len(failed)} failed (ep {_eps(failed)})")
        if absent:
            guided = not failed and have <= set(sel.get(method, [])) | {max(want)}
            why.append(f"{len(absent)} without a record (ep {_eps(absent)})"
                       + (": not run by the DSE-guided grid, which evaluates the DSE top-3 and the last checkpoint"
                          if guided else ""))
        notes.append(f"{method} / {dataset}: {len(have)} of {len(want)} checkpoints evaluated; {'; '.join(why)}; "
                     f"best is over those {len(have)}")
    return notes


def _order(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return frame
    rank = {d: i for i, d in enumerate(DATASET_ORDER)}
    key = frame["dataset"].map(lambda d: (rank.get(d, len(rank)), d))
    return frame.assign(_k=key).sort_values(["method", "_k"]).drop(columns="_k").reset_index(drop=True)


# --------------------------------------------------------------------------------------------
def _tau(x: np.ndarray, y: np.ndarray) -> tuple[float, str]:
    if len(x) < 2:
        return math.nan, "fewer than 2 checkpoints"
    if np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan, "constant series"
    return float(kendalltau(x, y).statistic), ""


def kendall_tables(table: pd.DataFrame, protocol: str = "linear",
                   paper: pd.DataFrame | None = None) -> tuple[Table, Table, Table | None]:
    """(mean τ per metric × dataset, per-method long table, paper side by side)."""
    mf, mi = metric_frame(table), miou_frame(table, protocol)
    datasets = datasets_of(table, protocol)
    grid_of = grid_kind(table)
    long_rows, notes, series = [], [], {}
    if not mf.empty and {"dse", "dse_lambda"} <= set(mf.columns):
        raw_only = sorted(set(mf.loc[mf["dse"].notna() & mf["dse_lambda"].isna(), "method"]))
        if raw_only:  # e.g. imported scores without the estimator's components
            notes.append(f"{', '.join(raw_only)}: only the raw DSE is known (no separability / dimensionality): "
                         f"their τ is in the DSE (λ=1) row; the DSE row needs the components for λ")
    for md in TAU_METRICS:
        if mf.empty or md.column not in mf.columns:
            notes.append(f"{md.label}: no '{md.column}' values in the records; row left empty")
            continue
        for dataset in datasets:
            joined = mf[["method", "epoch", md.column]].merge(mi[mi["dataset"] == dataset], on=["method", "epoch"])
            joined = joined[np.isfinite(joined[md.column].astype(float))]
            for method, g in joined.groupby("method", sort=True):
                raw, y = g[md.column].to_numpy(float), g["miou"].to_numpy(float)
                good = md.goodness(g[md.column]).to_numpy(float)
                t_raw, why = _tau(raw, y)
                t_good, _ = _tau(good, y)
                series[(md.label, dataset, method)] = (good, y)
                long_rows.append({"metric": md.label, "orientation": md.orientation, "method": method,
                                  "dataset": dataset, "checkpoints": len(g), "grid": grid_of(method, len(g)),
                                  "tau_raw": t_raw, "tau": t_good,
                                  "p_value": permutation_p(good, y) if not why else math.nan,
                                  "undefined_because": why or None})
    long = pd.DataFrame(long_rows, columns=["metric", "orientation", "method", "dataset", "checkpoints", "grid",
                                            "tau_raw", "tau", "p_value", "undefined_because"])
    partial = long[long["grid"] == "partial"]
    if len(partial):  # τ over a DSE-guided subset is not comparable with τ over every checkpoint
        notes.append(f"{partial[['method', 'dataset']].drop_duplicates().shape[0]} method × dataset pair(s) evaluated on "
                     f"a partial grid (fewer downstream than metric checkpoints): their τ is in the per-method table, "
                     f"marked, and left out of these means")
    full = long[long["grid"] == "full"]
    rows = []
    for md in TAU_METRICS:
        row = {"metric": md.label, "orientation": md.orientation}
        sub = full[full["metric"] == md.label]
        vals = []
        methods = sorted(set(sub.loc[sub["tau"].notna(), "method"]))
        groups = []
        for dataset in datasets:
            label = DATASET_LABEL.get(dataset, dataset)
            t = sub.loc[sub["dataset"] == dataset, "tau"].dropna()
            row[label] = t.mean() if len(t) else math.nan
            row[f"n_{label}"] = len(t)
            defined = set(sub.loc[(sub["dataset"] == dataset) & sub["tau"].notna(), "method"])
            group = [series.get((md.label, dataset, m)) if m in defined else None for m in methods]
            row[f"{label} 95% CI"] = interval_text(*bootstrap_mean_tau([group]))
            groups.append(group)
            if len(t):
                vals.append(t.mean())
        row["Avg."] = float(np.mean(vals)) if vals else math.nan
        row["Avg. 95% CI"] = interval_text(*bootstrap_mean_tau(groups))
        rows.append(row)
    mean = pd.DataFrame(rows)
    if datasets:
        notes.append("Avg. = the mean of the per-dataset columns: "
                     + ", ".join(DATASET_LABEL.get(d, d) for d in datasets))
    undefined = full[full["tau"].isna()]
    if len(undefined):
        notes.append(f"{len(undefined)} method × dataset × metric τ undefined and left out of the means "
                     f"({'; '.join(sorted(set(undefined['undefined_because'].dropna())))})")
    side = None
    if paper is not None and not mean.empty:
        ours = mean.melt(id_vars=["metric"], value_vars=[DATASET_LABEL.get(d, d) for d in datasets] + ["Avg."],
                         var_name="dataset", value_name="ours")
        raw = long.groupby(["metric", "dataset"])["tau_raw"].mean().reset_index()
        raw["dataset"] = raw["dataset"].map(lambda d: DATASET_LABEL.get(d, d))
        raw_avg = raw.groupby("metric")["tau_raw"].mean().reset_index().assign(dataset="Avg.")
        raw = pd.concat([raw, raw_avg]).rename(columns={"tau_raw": "ours_raw"})
        side_df = paper.merge(ours, on=["metric", "dataset"], how="left").merge(raw, on=["metric", "dataset"],
                                                                                 how="left")
        side_df = side_df.rename(columns={"tau": "paper"})
        side_df["delta"] = side_df["ours"] - side_df["paper"]
        side = Table("kendall_tau_vs_paper", "Average Kendall τ: paper vs ours", side_df,
                     ["paper: arXiv 2510.17299 as transcribed (results/paper/kendall_tau.csv); the paper's "
                      "α-ReQ, RankMe and LiDAR rows are raw τ: compare them with ours_raw"])
    if rows and len(datasets):
        notes.append("95% CI: percentile interval of the mean τ when methods and each method's checkpoints are "
                     "resampled with replacement (1,000 draws, seed 0); p-values per method in the long table "
                     "(two-sided permutation test of τ, 9,999 pairings, seed 0)")
    t_mean = Table("kendall_tau", "Average Kendall τ between each metric and mIoU (goodness orientation; "
                                  "mean over methods; n = methods with a defined τ)", mean, notes)
    t_long = Table("kendall_tau_per_method", "Kendall τ per method (raw and goodness orientation)", long)
    return t_mean, t_long, side


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


def selection_table(table: pd.DataFrame, protocol: str = "linear", paper: pd.DataFrame | None = None) -> Table:
    sel, mi = selections(table), miou_frame(table, protocol)
    rows, notes = [], []
    for method, epochs in sorted(sel.items()):
        for dataset, g in mi[mi["method"] == method].groupby("dataset", sort=True):
            g = g.sort_values("epoch")
            by_epoch = dict(zip(g["epoch"].astype(int), g["miou"]))
            have = [by_epoch[e] for e in epochs if e in by_epoch]
            if not have:
                notes.append(f"{method} / {dataset}: no mIoU at the selected epochs {epochs}")
                continue
            last = g["miou"].iloc[-1]
            top1 = by_epoch.get(epochs[0], math.nan)
            rows.append({"method": method, "dataset": dataset, "selected_epochs": " ".join(map(str, epochs)),
                         "last": last, "selected_max": max(have), "selected_mean": float(np.mean(have)),
                         "selected_top1": top1, "gain": max(have) - last})
    frame = _order(pd.DataFrame(rows, columns=["method", "dataset", "selected_epochs", "last", "selected_max",
                                               "selected_mean", "selected_top1", "gain"]))
    if paper is not None and not frame.empty:
        frame = frame.merge(paper.rename(columns={"last": "paper_last", "selected": "paper_selected"}),
                            on=["method", "dataset"], how="left")
    if not frame.empty:
        notes.insert(0, f"average gain (max of the 3 candidates − last): {frame['gain'].mean():+.2f} mIoU over "
                        f"{len(frame)} method × dataset pairs")
    return Table("model_selection", "DSE model selection: top-3 local maxima of DSE (±2 checkpoints)", frame, notes)


# --------------------------------------------------------------------------------------------
def device_hours(table: pd.DataFrame, seconds: str = "wall_s") -> pd.DataFrame:
    """gpu_h and cpu_h of each row from what ran: GPU·h = seconds × GPUs used on CUDA, CPU·h = seconds ×
    processes on the CPU. A row that states no device (no `gpus` / `device`) gets neither."""
    t = table.copy()
    wall = t[seconds].astype(float) if seconds in t.columns else pd.Series(np.nan, index=t.index)
    gpus = t["gpus"].astype(float) if "gpus" in t.columns else pd.Series(np.nan, index=t.index)
    device = t["device"] if "device" in t.columns else pd.Series(None, index=t.index, dtype=object)
    device = device.where(device.notna(), np.where(gpus > 0, "cuda", np.where(gpus == 0, "cpu", None)))
    world = t["world_size"].astype(float).fillna(1) if "world_size" in t.columns else 1.0
    t["gpu_h"] = np.where(device == "cuda", wall * gpus / 3600, np.nan)
    t["cpu_h"] = np.where(device == "cpu", wall * world / 3600, np.nan)
    t["device_stated"] = device.notna() & wall.notna()
    return t


def efficiency_table(table: pd.DataFrame, protocol: str = "linear") -> Table:
    ok = _ok(table)
    # DSE's cost is its own (checkpoint + dense features + the estimator, `dse_s`), not the metrics job's
    # other metrics (LiDAR's 50 views each): the paper's 0.025 GPU·h is of DSE alone
    metrics_rows = ok[_is_metrics(ok)].copy()
    dse_s = metrics_rows["dse_s"].astype(float) if "dse_s" in metrics_rows.columns else pd.Series(np.nan, index=metrics_rows.index)
    whole = int(dse_s.isna().sum())
    metrics_rows["dse_cost_s"] = dse_s.fillna(metrics_rows["wall_s"].astype(float))
    t = pd.concat([device_hours(metrics_rows, "dse_cost_s"), device_hours(ok[~_is_metrics(ok)])])
    rows, notes = [], []
    if whole:
        notes.append(f"{whole} metrics record(s) do not time DSE alone: their whole job counts as DSE's cost")
    for method, g in t.groupby("method", sort=True):
        dse, sup = g[_is_metrics(g)], g[g["protocol"] == protocol]
        row = {"method": method, "dse_gpu_h": dse["gpu_h"].sum(min_count=1), "supervised_gpu_h": sup["gpu_h"].sum(min_count=1),
               "dse_cpu_h": dse["cpu_h"].sum(min_count=1), "supervised_cpu_h": sup["cpu_h"].sum(min_count=1)}
        ratio, unit = math.nan, None
        for u in ("gpu", "cpu"):  # a ratio only between hours of the same kind of device
            if row[f"dse_{u}_h"] > 0 and row[f"supervised_{u}_h"] > 0:
                ratio, unit = row[f"supervised_{u}_h"] / row[f"dse_{u}_h"], u.upper()
                break
        rows.append({**row, "ratio": ratio, "ratio_of": unit})
    unstated = int((~t["device_stated"]).sum()) if len(t) else 0
    if unstated:
        notes.append(f"{unstated} record(s) state no device or wall time and are left out of the cost")
    frame = pd.DataFrame(rows, columns=["method", "dse_gpu_h", "supervised_gpu_h", "dse_cpu_h", "supervised_cpu_h",
                                        "ratio", "ratio_of"])
    notes.append("paper: DSE 0.025 GPU·h vs supervised selection 2.43 GPU·h (~97×)")
    return Table("efficiency", "Cost: label-free metrics vs supervised evaluation, from what ran (GPU·h = wall time × "
                               "GPUs used; CPU·h = wall time × processes of a run on the CPU)", frame, notes)


DENSE_COLUMNS = [("maskrcnn", "bbox_AP", "AP^bb"), ("maskrcnn", "segm_AP", "AP^mk"), ("upernet", "mIoU", "UperNet mIoU"),
                 ("upernet", "aAcc", "UperNet aAcc"), ("upernet", "mAcc", "UperNet mAcc"), ("davis", "JF_mean", "J&F")]


def dense_table(table: pd.DataFrame) -> Table:
    sel = selections(table)
    ok = _ok(table)
    rows, notes = [], []
    kind = ok["kind"] if "kind" in ok.columns and ok["kind"].notna().any() else ok["protocol"]
    methods = sorted(set(ok.loc[kind.isin({p for p, _, _ in DENSE_COLUMNS}), "method"]))
    for method in methods:
        for which in ("final", "DSE-selected"):
            row = {"method": method, "checkpoint": which}
            for protocol, col, label in DENSE_COLUMNS:
                g = ok[(ok["method"] == method) & (kind == protocol)]
                if g.empty or col not in g.columns:
                    row[label] = math.nan
                    continue
                if which == "final":
                    epoch = g["epoch"].max()
                else:
                    epoch = (sel.get(method) or [None])[0]
                hit = g[g["epoch"] == epoch]
                row[label] = float(hit[col].iloc[0]) if len(hit) else math.nan
                row[f"epoch_{protocol}"] = int(epoch) if epoch is not None and len(hit) else None
            rows.append(row)
    if not rows:
        notes.append("no Mask R-CNN, UperNet or DAVIS records in this suite")
    cols = ["method", "checkpoint"] + [label for _, _, label in DENSE_COLUMNS]
    frame = pd.DataFrame(rows).reindex(columns=cols + sorted({c for r in rows for c in r if c.startswith("epoch_")}))
    return Table("dense", "Dense protocols (UDI style): final and DSE-selected checkpoint", frame, notes)


def tracking_sentence(mean: pd.DataFrame) -> str:
    """One plain sentence on which metrics track mIoU, read from the averaged τ's 95% intervals."""
    if mean.empty or "Avg. 95% CI" not in mean.columns:
        return "No τ could be computed: the tables need metrics and linear-probe records on the same checkpoints."
    up, down = [], []
    for metric, ci in zip(mean["metric"], mean["Avg. 95% CI"]):
        m = re.match(r"\[([-+0-9.]+), ([-+0-9.]+)\]", str(ci))
        if m:
            lo, hi = float(m.group(1)), float(m.group(2))
            (up if lo > 0 else down if hi < 0 else []).append(metric)
    if not up:
        return ("No metric tracks mIoU here: every metric's 95% interval of the average τ includes zero"
                + (f" or lies below it ({', '.join(down)})" if down else "") + ".")
    return (f"{', '.join(up)} track{'s' if len(up) == 1 else ''} mIoU here (95% interval of the average τ above zero); "
            f"the others' intervals include zero" + (f" or lie below it ({', '.join(down)})" if down else "") + ".")


IMAGE_TAU_METRICS = [MetricDef("DSE", "dse_lambda", "higher"), MetricDef("RankMe", "rankme", "higher")]
PAPER_IMAGE_TAU = {"DSE": 0.86, "RankMe": 0.79}  # arXiv 2510.17299: Kendall τ against k-NN top-1


def image_level_tau_table(table: pd.DataFrame) -> Table:
    """The paper's image-level comparison: Kendall τ of DSE and RankMe against ImageNet k-NN top-1 over
    every checkpoint, per method, then the mean over methods (from `knn` records on every checkpoint)."""
    mf = metric_frame(table)
    kind = table["kind"] if "kind" in table.columns and table["kind"].notna().any() else table["protocol"]
    knn = _ok(table[kind == "knn"])
    rows, notes = [], []
    if mf.empty or knn.empty or "top1" not in knn.columns:
        notes.append("needs metrics and k-NN (`knn` protocol) records on the same checkpoints")
        return Table("image_level_tau", "Kendall τ against k-NN top-1 (image level)", pd.DataFrame(
            columns=["metric", "tau", "methods", "paper"]), notes)
    k = knn[["method", "epoch", "top1"]].dropna()
    for md in IMAGE_TAU_METRICS:
        taus = []
        if md.column in mf.columns:
            joined = mf[["method", "epoch", md.column]].merge(k, on=["method", "epoch"])
            for method, g in joined.groupby("method", sort=True):
                t, why = _tau(md.goodness(g[md.column]).to_numpy(float), g["top1"].to_numpy(float))
                if math.isnan(t):
                    notes.append(f"{md.label} / {method}: τ undefined ({why})")
                else:
                    taus.append(t)
        rows.append({"metric": md.label, "tau": float(np.mean(taus)) if taus else math.nan, "methods": len(taus),
                     "paper": PAPER_IMAGE_TAU[md.label]})
    n = k.groupby("method")["epoch"].nunique()
    notes.append("k-NN checkpoints per method: " + ", ".join(f"{m} {c}" for m, c in n.items()))
    return Table("image_level_tau", "Kendall τ against k-NN top-1 (image level; mean over methods)",
                 pd.DataFrame(rows, columns=["metric", "tau", "methods", "paper"]), notes)


def all_tables(table: pd.DataFrame, papers: dict[str, pd.DataFrame] | None = None,
               protocol: str = "linear") -> list[Table]:
    papers = papers or {}
    mean, long, side = kendall_tables(table, protocol, papers.get("kendall_tau"))
    out = [sdd_table(table, protocol, papers.get("sdd_table")), mean, long,
           selection_table(table, protocol, papers.get("model_selection")), efficiency_table(table, protocol),
           dense_table(table), image_level_tau_table(table)]
    if side is not None:
        out.insert(3, side)
    return out
