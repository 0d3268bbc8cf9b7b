"""Figures from the collected tables: trajectories, DSE components, spectra, τ heat map (PNG + PDF)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from harness.analysis.tables import DATASET_LABEL, metric_frame, miou_frame
from harness.atomic import FileSet


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {"figure.dpi": 100, "savefig.dpi": 120, "font.size": 9, "svg.hashsalt": "sdd", "pdf.fonttype": 42}
    )
    return plt


def _integer_x(ax) -> None:
    """Ticks on whole numbers only (epochs, ranks): a 3-epoch run otherwise gets 1.25, 1.5, ..."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _minmax(v: pd.Series) -> pd.Series:
    lo, hi = v.min(), v.max()
    return (v - lo) / (hi - lo) if hi > lo else v * 0 + 0.5


_FILES: list[FileSet] = []  # the set the figures of this `all_figures` call go into


def _save(fig, out: Path, name: str) -> list[Path]:
    """PNG + PDF of `fig`, into the current `all_figures` set (or replaced at once, both together)."""
    if not _FILES:
        with FileSet(out.parent) as own:  # its journal where the suite's next writer looks
            _FILES.append(own)
            try:
                return _save(fig, out, name)
            finally:
                _FILES.pop()
    files = _FILES[-1]
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    files.staged(paths[0], lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))
    files.staged(
        paths[1],
        lambda tmp: fig.savefig(
            tmp, format="pdf", bbox_inches="tight", metadata={"CreationDate": None, "ModDate": None}
        ),
    )
    return paths


def trajectories(table: pd.DataFrame, out: Path, protocol: str | None = None) -> list[Path]:
    """Per method: min-max normalised metrics and mIoU over epochs (as the paper's figure)."""
    plt = _plt()
    mf, mi = metric_frame(table), miou_frame(table, protocol)
    paths = []
    for method in sorted(set(mf.get("method", pd.Series(dtype=str))) | set(mi["method"])):
        fig, ax = plt.subplots(figsize=(5, 3))
        g = mf[mf["method"] == method].sort_values("epoch") if not mf.empty else mf
        for col, label, style in (("dse_lambda", "DSE", "-"), ("rankme", "RankMe", ":"), ("lidar", "LiDAR", ":")):
            if not g.empty and col in g.columns and g[col].notna().any():
                ax.plot(g["epoch"], _minmax(g[col]), style, label=label, linewidth=1.5 if col == "dse_lambda" else 1)
        for dataset, h in mi[mi["method"] == method].groupby("dataset", sort=True):
            ax.plot(
                h["epoch"], _minmax(h["miou"]), "--o", markersize=2, label=f"mIoU {DATASET_LABEL.get(dataset, dataset)}"
            )
        ax.set(title=method, xlabel="epoch", ylabel="min-max normalised")
        _integer_x(ax)
        ax.legend(fontsize=7, loc="best")
        paths += _save(fig, out, f"trajectory_{method}")
        plt.close(fig)
    return paths


def dse_components(table: pd.DataFrame, out: Path) -> list[Path]:
    plt = _plt()
    mf = metric_frame(table)
    paths = []
    comps = [c for c in ("dse_inter", "dse_intra_image", "dse_intra_batch", "dse_dim") if c in mf.columns]
    for method, g in mf.groupby("method", sort=True) if not mf.empty else []:
        fig, ax = plt.subplots(figsize=(5, 3))
        for c in comps:
            ax.plot(g["epoch"], g[c], label=c.replace("dse_", ""))
        ax.set(title=f"{method}: DSE components", xlabel="epoch")
        _integer_x(ax)
        ax.legend(fontsize=7)
        paths += _save(fig, out, f"dse_components_{method}")
        plt.close(fig)
    return paths


def spectra(spec: pd.DataFrame, out: Path) -> list[Path]:
    """Singular-value spectrum of the first vs the last checkpoint of each method."""
    plt = _plt()
    paths = []
    if spec is None or spec.empty:
        return paths
    for method, g in spec[spec["kind"] == "log_sv"].groupby("method", sort=True):
        epochs = sorted(g["epoch"].unique())
        fig, ax = plt.subplots(figsize=(4, 3))
        for e in [epochs[0], epochs[-1]] if len(epochs) > 1 else epochs:
            h = g[g["epoch"] == e].sort_values("index")
            ax.plot(h["index"], h["log_sv"], label=f"epoch {e}")
        ax.set(title=f"{method}: embedding spectrum", xlabel="singular value rank", ylabel="log σ")
        _integer_x(ax)
        ax.legend(fontsize=7)
        paths += _save(fig, out, f"spectrum_{method}")
        plt.close(fig)
    return paths


def spectra_against(spec: pd.DataFrame, methods: list[str], out: Path, name: str) -> list[Path]:
    """The last checkpoint's embedding spectrum of several methods in one plot (DirectCLR's figure: a
    collapsed dimension is a singular value that falls off the curve)."""
    plt = _plt()
    sv = spec[(spec["kind"] == "log_sv") & spec["method"].isin(methods)] if spec is not None else None
    if sv is None or sv.empty:
        return []
    fig, ax = plt.subplots(figsize=(4.5, 3))
    for method in methods:
        g = sv[sv["method"] == method]
        if g.empty:
            continue
        last = g["epoch"].max()
        h = g[g["epoch"] == last].sort_values("index")
        ax.plot(h["index"], h["log_sv"], label=f"{method} (epoch {last})")
    ax.set(title="embedding spectrum, last checkpoint", xlabel="singular value rank", ylabel="log σ")
    _integer_x(ax)
    ax.legend(fontsize=7)
    paths = _save(fig, out, name)
    plt.close(fig)
    return paths


def tau_heatmap(mean: pd.DataFrame, out: Path) -> list[Path]:
    plt = _plt()
    if mean.empty:
        return []
    cols = [
        c
        for c in mean.columns
        if c not in ("metric", "orientation") and not c.startswith("n_") and not c.endswith("95% CI")
    ]
    data = mean[cols].to_numpy(float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(cols), 0.5 + 0.35 * len(mean)))
    im = ax.imshow(np.nan_to_num(data, nan=0.0), cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(mean)), mean["metric"])
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            ax.text(j, i, "—" if np.isnan(data[i, j]) else f"{data[i, j]:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label="Kendall τ")
    paths = _save(fig, out, "kendall_tau_heatmap")
    plt.close(fig)
    return paths


def all_figures(
    table: pd.DataFrame,
    spec: pd.DataFrame,
    mean_tau: pd.DataFrame,
    out: Path,
    protocol: str | None = None,
    files: FileSet | None = None,
) -> list[Path]:
    """Every figure under `out`, through `files` (replaced with the rest of a tables run), or at once and
    together when no set is given."""
    if files is None:
        with FileSet(out.parent) as own:  # its journal where the suite's next writer looks
            return all_figures(table, spec, mean_tau, out, protocol, own)
    _FILES.append(files)
    try:
        return (
            trajectories(table, out, protocol)
            + dse_components(table, out)
            + spectra(spec, out)
            + tau_heatmap(mean_tau, out)
        )
    finally:
        _FILES.pop()
