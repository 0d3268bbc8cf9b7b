"""Analysis: tables, figures and a report, all regenerated from `results/<suite>/results.csv`
(and `spectra.csv` for the spectrum figures); nothing here touches a model or a record file."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from harness.analysis.render import write_table
from harness.analysis.tables import all_tables
from harness.collect import META_COLUMNS

PAPER = Path(__file__).resolve().parents[2] / "results" / "paper"


def load_papers(paper_dir: Path = PAPER) -> dict[str, pd.DataFrame]:
    return {p.stem: pd.read_csv(p) for p in sorted(Path(paper_dir).glob("*.csv"))}


class TablesError(Exception):
    """The collected table cannot give the tables; nothing was written."""


REQUIRED = ["protocol", "dataset", "method", "epoch", "status"]


def check_columns(table: pd.DataFrame, csv: Path, protocol: str) -> None:
    """A results.csv without the columns the tables are computed from would give empty tables that read
    as "no data": refuse it instead, naming what is missing."""
    missing = [c for c in REQUIRED if c not in table.columns]
    if "protocol" in table.columns and (table["protocol"] == protocol).any() and "mIoU" not in table.columns:
        missing.append("mIoU")
    if missing:
        raise TablesError(f"{csv} lacks the column(s) {', '.join(missing)} that the tables are computed from; "
                          f"the previous tables were left in place. Rebuild it with `sdd collect --suite "
                          f"{csv.parent.name}`, or add the columns to a hand-made table.")


def load_collected(suite_dir: Path, protocol: str = "linear") -> tuple[pd.DataFrame, pd.DataFrame]:
    csv = suite_dir / "results.csv"
    if not csv.is_file():
        raise FileNotFoundError(f"{csv} does not exist; run `sdd collect --suite {suite_dir.name}` first")
    table = pd.read_csv(csv)
    check_columns(table, csv, protocol)
    for col in META_COLUMNS:  # a hand-made or partial table may lack some: defined as empty
        if col not in table.columns:
            table[col] = pd.Series([None] * len(table), dtype=object)
    spec_csv = suite_dir / "spectra.csv"
    spec = pd.read_csv(spec_csv) if spec_csv.is_file() else pd.DataFrame(columns=["method", "epoch", "kind",
                                                                                   "index", "log_sv"])
    return table, spec


def drop_stale(table: pd.DataFrame, include_stale: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Rows whose record is of another recipe than the current plan's (`current` is False) are left out,
    and named; `include_stale` keeps them."""
    if "current" not in table.columns:
        return table, []
    stale = table[table["current"].astype(str).str.lower() == "false"]
    if stale.empty:
        return table, []
    cells = ", ".join(f"{r.protocol}/{r.dataset}/{r.method}/ep{int(r.epoch)}" for r in stale.itertuples())
    if include_stale:
        return table, [f"{len(stale)} stale record(s) (recipe changed since) kept by --include-stale: {cells[:300]}"]
    return table.drop(index=stale.index), [f"{len(stale)} stale record(s) (recipe changed since) left out; "
                                           f"--include-stale keeps them: {cells[:300]}"]


def build_tables(suite_dir: Path, protocol: str = "linear", paper_dir: Path = PAPER, include_stale: bool = False):
    """Every table computed first, then written: a failure leaves the previous files in place."""
    table, _ = load_collected(suite_dir, protocol)
    table, stale_notes = drop_stale(table, include_stale)
    tables = all_tables(table, load_papers(paper_dir), protocol)
    for t in tables:
        t.notes[:0] = stale_notes
    files = []
    for t in tables:
        files += write_table(t, suite_dir / "tables")
    return table, tables, files


def build_figures(suite_dir: Path, tables, protocol: str = "linear", include_stale: bool = False) -> list[Path]:
    from harness.analysis.figures import all_figures

    table, spec = load_collected(suite_dir, protocol)
    table, _ = drop_stale(table, include_stale)
    mean = next(t.frame for t in tables if t.name == "kendall_tau")
    return all_figures(table, spec, mean, suite_dir / "figures", protocol)


def write_report(suite_dir: Path, table: pd.DataFrame, tables, figures: list[Path], protocol: str = "linear") -> Path:
    csv = suite_dir / "results.csv"
    digest = hashlib.sha256(csv.read_bytes()).hexdigest()[:16]
    ok = int((table["status"] == "ok").sum()) if len(table) else 0
    lines = [f"# {suite_dir.name}: report", "",
             f"Generated from `results.csv` (sha256 {digest}): {len(table)} records, {ok} ok, {len(table) - ok} "
             f"failed. Regenerate with `sdd tables --suite {suite_dir.name}`.", "", "## Settings", "",
             f"- Segmentation metric: mIoU of the `{protocol}` protocol; label-free metrics from the `metrics` "
             "protocol, joined on epoch.",
             "- Kendall τ: `scipy.stats.kendalltau` (τ-b), per method over its checkpoints, then the mean over "
             "methods; Avg. = mean over datasets; metrics in their goodness orientation (raw τ in the per-method "
             "table).",
             "- DSE = separability + λ·dim with λ = Std(separability)/Std(dim) across one method's checkpoints; "
             "DSE (λ=1) is the estimator's raw output.",
             "- Model selection: local maxima of DSE within ±2 checkpoints, top 3 by DSE; reported as the max, "
             "mean and top-1 of their mIoU.",
             "- Best checkpoint: highest mIoU, ties to the earliest epoch.", "", "## Tables", ""]
    for t in tables:
        lines.append(f"- [{t.title}](tables/{t.name}.md) ([LaTeX](tables/{t.name}.tex), [CSV](tables/{t.name}.csv))")
        lines += [f"  - {n}" for n in t.notes]
    lines += ["", "## Figures", ""]
    for f in figures:
        if f.suffix == ".png":
            lines.append(f"- [{f.stem}](figures/{f.name}) ([PDF](figures/{f.stem}.pdf))")
    if not figures:
        lines.append("- (none: run `sdd figures`)")
    out = suite_dir / "REPORT.md"
    out.write_text("\n".join(lines) + "\n")
    return out
