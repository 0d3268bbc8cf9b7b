"""Analysis: tables, figures and a report, all regenerated from `results/<suite>/results.csv`
(and `spectra.csv` for the spectrum figures); nothing here touches a model or a record file."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from harness.analysis.render import write_table
from harness.analysis.tables import MIOU_TABLES, all_tables
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


def probe_protocols(table: pd.DataFrame, csv: Path, requested: str | None = None) -> list[str]:
    """The linear-probe protocols whose mIoU the SDD, τ and selection tables read: the one asked for
    (which must have records), else every protocol of kind `linear` in the table."""
    protocols = sorted(set(table["protocol"].dropna().astype(str))) if "protocol" in table.columns else []
    if requested is not None:
        if requested not in protocols:
            import difflib

            close = difflib.get_close_matches(requested, protocols, n=1)
            raise TablesError(f"--protocol {requested!r} has no record in {csv}"
                              + (f"; did you mean {close[0]!r}?" if close else "")
                              + f" Protocols there: {', '.join(protocols) or '(none)'}")
        return [requested]
    kind = table["kind"] if "kind" in table.columns and table["kind"].notna().any() else table.get("protocol")
    if kind is None:
        return []
    return sorted(set(table.loc[kind == "linear", "protocol"].dropna().astype(str)))


def prefer_source(table: pd.DataFrame, prefer: str = "computed") -> tuple[pd.DataFrame, list[str]]:
    """One row per cell: where a computed and an imported record both exist, `prefer` decides (named)."""
    if "source" not in table.columns or table.empty:
        return table, []
    key = ["protocol", "dataset", "method", "epoch"]
    src = table["source"].fillna("computed")
    both = table[table.duplicated(key, keep=False) & src.isin(["computed", "imported"])]
    if both.empty:
        return table, []
    order = table.assign(_p=(src != prefer).astype(int)).sort_values(key + ["_p"], kind="stable")
    kept = order.drop_duplicates(key, keep="first").drop(columns="_p").sort_index()
    n = both[key].drop_duplicates().shape[0]
    other = "imported" if prefer == "computed" else "computed"
    return kept, [f"{n} cell(s) have both a computed and an imported record: the {prefer} one is used "
                  f"(--prefer {other} for the other)"]


def build_tables(suite_dir: Path, protocol: str | None = None, paper_dir: Path = PAPER, include_stale: bool = False,
                 prefer: str = "computed"):
    """Every table computed first, then written: a failure leaves the previous files in place. With no
    `protocol`, the suite's own linear-probe protocols (by kind) give the mIoU; several give one set of
    tables each (`<table>__<protocol>`). Returns (table, tables, files); each table that reads an mIoU
    says from which protocol (`Table.protocol`)."""
    csv = suite_dir / "results.csv"
    if not csv.is_file():
        raise FileNotFoundError(f"{csv} does not exist; run `sdd collect --suite {suite_dir.name}` first")
    protocols = probe_protocols(pd.read_csv(csv), csv, protocol)
    table, _ = load_collected(suite_dir, protocols[0] if len(protocols) == 1 else "linear")
    table, stale_notes = drop_stale(table, include_stale)
    table, source_notes = prefer_source(table, prefer)
    stale_notes += source_notes
    papers = load_papers(paper_dir)
    tables = []
    for p in protocols or [None]:
        for t in all_tables(table, papers, p or "linear"):
            reads_miou = t.name in MIOU_TABLES
            if not reads_miou and any(t.name == seen.name for seen in tables):  # the others: once
                continue
            if reads_miou:
                t.protocol = p
                if p is None:
                    t.notes.insert(0, "no linear-probe records in results.csv: this table is empty")
                elif len(protocols) > 1:
                    t.name, t.title = f"{t.name}__{p}", f"{t.title} — {p}"
            tables.append(t)
    for t in tables:
        t.notes[:0] = stale_notes
    files = []
    for t in tables:
        files += write_table(t, suite_dir / "tables")
    return table, tables, files


def build_figures(suite_dir: Path, tables, protocol: str = "linear", include_stale: bool = False,
                  prefer: str = "computed") -> list[Path]:
    from harness.analysis.figures import all_figures

    table, spec = load_collected(suite_dir, protocol)
    table, _ = drop_stale(table, include_stale)
    table, _ = prefer_source(table, prefer)
    mean = next(t.frame for t in tables if t.name.split("__")[0] == "kendall_tau")
    return all_figures(table, spec, mean, suite_dir / "figures", protocol)


def world_lines(table: pd.DataFrame, tables) -> list[str]:
    """The size of the world the tables come from, and one plain sentence from the τ intervals."""
    from harness.analysis.tables import tracking_sentence

    ok = table[table["status"] == "ok"] if "status" in table.columns else table
    methods = sorted(set(ok["method"].dropna())) if "method" in ok.columns else []
    per = ok.groupby("method")["epoch"].nunique() if methods else pd.Series(dtype=int)
    images = sorted({int(v) for v in ok.get("images", pd.Series(dtype=float)).dropna()})
    out = [f"- World: {len(methods)} method(s) ({', '.join(methods[:8])}{' ...' if len(methods) > 8 else ''}), "
           + (f"{per.min()}–{per.max()} checkpoints each" if len(per) else "no checkpoints")
           + (f", label-free metrics on {', '.join(map(str, images))} images" if images else "") + "."]
    if methods and all(m.startswith("mini_") for m in methods):
        out.append("- This is the mini world: tiny networks pre-trained for a few epochs on generated images. Its τ "
                   "values are not the paper's and say nothing about real SSL methods; it shows that every code path "
                   "runs and how the tables read.")
    out.append("- τ over a few methods and checkpoints is uncertain: read each average with its 95% interval.")
    mean = next((t.frame for t in tables if t.name.split("__")[0] == "kendall_tau"), None)
    if mean is not None:
        out.append(f"- {tracking_sentence(mean)}")
    return out


def write_report(suite_dir: Path, table: pd.DataFrame, tables, figures: list[Path]) -> Path:
    protocols = sorted({t.protocol for t in tables if t.protocol})
    csv = suite_dir / "results.csv"
    digest = hashlib.sha256(csv.read_bytes()).hexdigest()[:16]
    ok = int((table["status"] == "ok").sum()) if len(table) else 0
    lines = [f"# {suite_dir.name}: report", "",
             f"Generated from `results.csv` (sha256 {digest}): {len(table)} records, {ok} ok, {len(table) - ok} "
             f"failed. Regenerate with `sdd tables --suite {suite_dir.name}`.", "", "## Settings", "",
             "- Segmentation metric: mIoU of the "
             + (", ".join(f"`{p}`" for p in protocols) + " protocol" + ("s" if len(protocols) > 1 else "")
                if protocols else "(no linear-probe protocol has records)")
             + "; label-free metrics from the `metrics` protocol, joined on epoch.",
             "- Kendall τ: `scipy.stats.kendalltau` (τ-b), per method over its checkpoints, then the mean over "
             "methods; Avg. = mean over datasets; metrics in their goodness orientation (raw τ in the per-method "
             "table).",
             "- DSE = separability + λ·dim with λ = Std(separability)/Std(dim) across one method's checkpoints; "
             "DSE (λ=1) is the estimator's raw output.",
             "- Model selection: local maxima of DSE within ±2 checkpoints, top 3 by DSE; reported as the max, "
             "mean and top-1 of their mIoU.",
             "- Best checkpoint: highest mIoU, ties to the earliest epoch.", "", "## What these numbers can say", ""]
    lines += world_lines(table, tables)
    lines += ["", "## Tables", ""]
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
