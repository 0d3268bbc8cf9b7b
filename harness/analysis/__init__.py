"""Analysis: tables, figures and a report, all regenerated from `results/<suite>/results.csv`
(and `spectra.csv` for the spectrum figures); nothing here touches a model or a record file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from harness.analysis.render import write_table
from harness.analysis.tables import IMPORTED_METRICS, MIOU_TABLES, all_tables
from harness.atomic import FileSet, write_text
from harness.collect import META_COLUMNS
from harness.errors import HarnessError
from harness.kinds import LABEL_FREE, PROBE, kinds_with
from harness.records import cell_id

PAPER = Path(__file__).resolve().parents[2] / "results" / "paper"


def load_papers(paper_dir: Path = PAPER) -> dict[str, pd.DataFrame]:
    return {p.stem: pd.read_csv(p) for p in sorted(Path(paper_dir).glob("*.csv"))}


class TablesError(HarnessError):
    """The collected table cannot give the tables; nothing was written."""


REQUIRED = ["protocol", "dataset", "method", "epoch", "status"]


def check_columns(table: pd.DataFrame, csv: Path, protocols: list[str] = ()) -> None:
    """A results.csv without the columns the tables are computed from would give empty tables that read
    as "no data": refuse it instead, naming what is missing -- or, when a probe protocol has rows but no
    mIoU column because every one of its cells failed, saying that."""
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise TablesError(
            f"{csv} lacks the column(s) {', '.join(missing)} that the tables are computed from; "
            f"the previous tables were left in place. Rebuild it with `sdd collect --suite "
            f"{csv.parent.name}`, or add the columns to a hand-made table."
        )
    if "mIoU" in table.columns:
        return
    for p in protocols:
        rows = table[table["protocol"] == p]
        failed = rows[rows["status"] != "ok"]
        if len(rows) and len(failed) == len(rows):
            first = (
                str(failed["error"].dropna().iloc[0]) if "error" in failed and failed["error"].notna().any() else "?"
            )
            raise TablesError(
                f"every {p} cell failed ({len(rows)} of {len(rows)}), so there is no mIoU to tabulate; "
                f"the first error: {first[:300]}. `sdd status --suite {csv.parent.name}` lists them; "
                f"fix the cause and `sdd submit --retry-failed`."
            )
        if len(rows):
            raise TablesError(
                f"{csv} lacks the column(s) mIoU that the tables are computed from ({p} has rows); "
                f"the previous tables were left in place. Rebuild it with `sdd collect --suite "
                f"{csv.parent.name}`, or add the column to a hand-made table."
            )


def load_published(suite_dir: Path) -> pd.DataFrame | None:
    """The methods' published numbers `sdd collect` copied from the registry (None for a table made without
    it), checked against the collect manifest like results.csv."""
    from harness.collect import PUBLISHED, CollectError, check_collected

    path = suite_dir / PUBLISHED
    if not path.is_file():
        return None
    try:
        check_collected(suite_dir, PUBLISHED)
        return pd.read_csv(path)
    except CollectError as e:
        raise TablesError(f"{e}; the previous tables were left in place") from None
    except (ValueError, pd.errors.ParserError) as e:
        raise TablesError(f"{path} cannot be read as a table ({e}); run `sdd collect --suite {suite_dir.name}`")


def load_collected(suite_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """results.csv and spectra.csv, each checked against what `sdd collect` recorded it wrote (a file cut
    short or changed since is refused: TablesError, naming it); a hand-made table has no such record."""
    from harness.collect import CollectError, check_collected

    csv = suite_dir / "results.csv"
    if not csv.is_file():
        raise FileNotFoundError(f"{csv} does not exist; run `sdd collect --suite {suite_dir.name}` first")
    try:
        check_collected(suite_dir, "results.csv")
        check_collected(suite_dir, "spectra.csv")
    except CollectError as e:
        raise TablesError(f"{e}; the previous tables were left in place") from None
    try:
        # consolidated at once: read_csv gives one block per column, and a column added to such a frame
        # (any table's helper column) makes pandas print a PerformanceWarning once it is wide (per-class IoU)
        table = pd.read_csv(csv, low_memory=False).copy()
    except (ValueError, pd.errors.ParserError) as e:  # EmptyDataError is a ValueError
        raise TablesError(f"{csv} cannot be read as a table ({e}); run `sdd collect --suite {suite_dir.name}`")
    check_columns(table, csv)
    absent = [c for c in META_COLUMNS if c not in table.columns]  # a hand-made or partial table: defined as empty
    if absent:  # at once (column by column fragments the frame: pandas' PerformanceWarning)
        table = pd.concat(
            [table, pd.DataFrame({c: pd.Series([None] * len(table), dtype=object) for c in absent}, index=table.index)],
            axis=1,
        )
    spec_csv = suite_dir / "spectra.csv"
    spec = (
        pd.read_csv(spec_csv)
        if spec_csv.is_file()
        else pd.DataFrame(columns=["method", "epoch", "kind", "index", "log_sv"])
    )
    return table, spec


def drop_stale(table: pd.DataFrame, include_stale: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Rows whose record is of another recipe than the current plan's (`current` is False) are left out,
    and named; `include_stale` keeps them."""
    if "current" not in table.columns:
        return table, []
    stale = table[table["current"].astype(str).str.lower() == "false"]
    if stale.empty:
        return table, []
    cells = _names(stale)
    if include_stale:
        return table, [f"{len(stale)} stale record(s) (recipe changed since) kept by --include-stale: {cells}"]
    return table.drop(index=stale.index), [
        f"{len(stale)} stale record(s) (recipe changed since) left out; --include-stale keeps them: {cells}"
    ]


def _names(rows: pd.DataFrame, limit: int = 8) -> str:
    names = [cell_id(r.protocol, r.dataset, r.method, r.epoch) for r in rows.itertuples()]
    return ", ".join(names[:limit]) + (f" ... (+{len(names) - limit})" if len(names) > limit else "")


def drop_outside_grid(table: pd.DataFrame, include: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Imported records of epochs the suite's grid does not hold (`sdd import --allow-outside-grid`) are
    left out of every table, and named; `include` keeps them."""
    if "outside_grid" not in table.columns:
        return table, []
    out = table[table["outside_grid"].astype(str).str.lower() == "true"]
    if out.empty:
        return table, []
    if include:
        return table, [
            f"{len(out)} imported record(s) outside the suite's grid kept by --include-outside-grid: {_names(out)}"
        ]
    return table.drop(index=out.index), [
        f"{len(out)} imported record(s) outside the suite's grid left out (they "
        f"would change best and τ); --include-outside-grid keeps them: {_names(out)}"
    ]


KEY = ["protocol", "dataset", "method", "epoch"]


def check_duplicates(table: pd.DataFrame, csv: Path) -> None:
    """One cell, one row per source (computed, imported): a duplicated row is a damaged or hand-edited table,
    never a silent choice of one of its numbers."""
    key = KEY + (["source"] if "source" in table.columns else [])
    dup = table[table.duplicated(key, keep=False)]
    if len(dup):
        raise TablesError(
            f"{csv} has {len(dup)} rows for {dup[key].drop_duplicates().shape[0]} cell(s) that should have "
            f"one each ({_names(dup.drop_duplicates(key))}); the previous tables were left in place. "
            f"Rebuild it with `sdd collect --suite {csv.parent.name}`."
        )


def probe_protocols(table: pd.DataFrame, csv: Path, requested: str | None = None) -> list[str]:
    """The linear-probe protocols whose mIoU the SDD, τ and selection tables read: the one asked for
    (which must have records), else every protocol of a probe kind in the table."""
    protocols = sorted(set(table["protocol"].dropna().astype(str))) if "protocol" in table.columns else []
    if requested is not None:
        if requested not in protocols:
            import difflib

            close = difflib.get_close_matches(requested, protocols, n=1)
            raise TablesError(
                f"--protocol {requested!r} has no record in {csv}"
                + (f"; did you mean {close[0]!r}?" if close else "")
                + f" Protocols there: {', '.join(protocols) or '(none)'}"
            )
        return [requested]
    kind = table["kind"] if "kind" in table.columns and table["kind"].notna().any() else table.get("protocol")
    if kind is None:
        return []
    return sorted(set(table.loc[kind.isin(kinds_with(PROBE)), "protocol"].dropna().astype(str)))


def prefer_source(table: pd.DataFrame, prefer: str = "computed") -> tuple[pd.DataFrame, list[str]]:
    """One row per cell. Where a computed and an imported record of a cell are both ok, they are merged
    metric by metric: each metric takes the `prefer` source's value where it has one, else the other's (an
    imported DSE beside a computed RankMe keeps both). The merged row keeps the computed record's metadata
    (what ran) and names in `imported_metrics` the metrics whose value came from the import (the tables
    mark those). Where one of the two failed, the `prefer` one is the cell's row as a whole. Each choice is
    named."""
    if "source" not in table.columns or table.empty:
        return table, []
    src = table["source"].fillna("computed").replace({"live": "computed"})  # the monitor's: computed in training
    pair = table.duplicated(KEY, keep=False) & src.isin(["computed", "imported"])
    if not pair.any():
        return table, []
    rows = table[pair]
    ok = rows["status"].eq("ok") if "status" in rows.columns else pd.Series(True, index=rows.index)
    sound = ok.groupby([rows[k] for k in KEY], dropna=False).transform("all").astype(bool)
    ordered = rows.iloc[np.argsort((src[pair] != prefer).to_numpy(), kind="stable")]  # preferred first per cell
    fine = sound[ordered.index].to_numpy()
    merged, context = _merge_metrics(ordered[fine], src[ordered.index][fine], prefer)
    whole = ordered[~fine].drop_duplicates(KEY, keep="first")
    if len(whole):
        context.append(
            f"{len(whole)} cell(s) have both a computed and an imported record and one of them failed: the "
            f"{prefer} one is used as a whole (--prefer {_other(prefer)} for the other): {_names(whole)}"
        )
    return pd.concat([p for p in (table[~pair], merged, whole) if len(p)]).sort_index(), context


def _other(prefer: str) -> str:
    return "imported" if prefer == "computed" else "computed"


def _merge_metrics(ordered: pd.DataFrame, src: pd.Series, prefer: str) -> tuple[pd.DataFrame, list[str]]:
    """One row per cell of `ordered` (a cell's records, the preferred source first): each metric the first
    value its records have, on the metadata of the cell's computed record; and a line per way they merged."""
    if ordered.empty:
        return ordered, []
    metrics = [c for c in ordered.columns if c not in META_COLUMNS and c not in KEY and c != IMPORTED_METRICS]
    group = ordered.groupby([ordered[k] for k in KEY], dropna=False, sort=False).ngroup().to_numpy()
    values, imported = ordered[metrics], (src == "imported").to_numpy()
    chosen = values.groupby(group).first()  # per metric, the first value in the preferred order
    have = values.notna().to_numpy()
    origin = pd.DataFrame(np.where(have, src.to_numpy()[:, None], None), columns=metrics).groupby(group).first()
    taken = origin.eq("imported")
    unused = pd.DataFrame(have & imported[:, None], columns=metrics).groupby(group).any() & ~taken
    base = (  # each cell's computed record (first in order if several): its metadata says what ran
        pd.DataFrame({"g": group, "imp": imported, "at": range(len(ordered))})
        .sort_values(["g", "imp", "at"], kind="stable")
        .drop_duplicates("g")
    )
    keep = ordered.iloc[base["at"].to_numpy()]
    out = pd.concat([keep.drop(columns=metrics), chosen.loc[base["g"]].set_axis(keep.index)], axis=1)
    out = out[list(ordered.columns)]
    out[IMPORTED_METRICS] = ["; ".join(c for c in metrics if taken.at[g, c]) or None for g in base["g"]]
    if "import_files" in ordered.columns:
        names = ordered["import_files"].where(imported).groupby(group).agg(_joined)
        out["import_files"] = [names.get(g) or None for g in base["g"]]
    signature: dict[tuple, list[int]] = {}
    with_import = pd.Series(imported).groupby(group).any()
    for i, g in enumerate(base["g"]):
        if not with_import[g]:  # a live and a computed record: nothing to say about imports
            continue
        key = (tuple(c for c in metrics if taken.at[g, c]), tuple(c for c in metrics if unused.at[g, c]))
        signature.setdefault(key, []).append(i)
    lines = []
    for (took, left), at in signature.items():
        what = [f"from the import: {_few(took)}" if took else "nothing from the import"]
        what += [f"the import's {_few(left)} not used"] if left else []
        lines.append(
            f"{len(at)} cell(s) have both a computed and an imported record, merged metric by metric: where both "
            f"have a value, the {prefer} one is used (--prefer {_other(prefer)} for the other); {'; '.join(what)}: "
            f"{_names(out.iloc[at])}"
        )
    return out, lines


def _joined(files: pd.Series) -> str:
    return "; ".join(sorted({f for v in files.dropna() for f in str(v).split("; ")}))


def _few(names: tuple[str, ...], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit})" if len(names) > limit else "")


def build_tables(
    suite_dir: Path,
    protocol: str | None = None,
    paper_dir: Path = PAPER,
    include_stale: bool = False,
    prefer: str = "computed",
    include_outside_grid: bool = False,
    files: FileSet | None = None,
):
    """Every table computed first, then written (through `files`, with the rest of a tables run; or on
    their own, all together): a failure leaves the previous files in place. With no
    `protocol`, the suite's own linear-probe protocols (by kind) give the mIoU; several give one set of
    tables each (`<table>__<protocol>`). Returns (table, tables, files); each table that reads an mIoU
    says from which protocol (`Table.protocol`); what the build left out or chose is each table's
    `context` (written once in REPORT.md)."""
    csv = suite_dir / "results.csv"
    if not csv.is_file():
        raise FileNotFoundError(f"{csv} does not exist; run `sdd collect --suite {suite_dir.name}` first")
    table, _ = load_collected(suite_dir)
    check_duplicates(table, csv)
    protocols = probe_protocols(table, csv, protocol)
    check_columns(table, csv, protocols)
    table, context = drop_stale(table, include_stale)
    table, more = drop_outside_grid(table, include_outside_grid)
    context += more
    table, more = prefer_source(table, prefer)
    context += more
    table = table.copy()  # one consolidated frame: the tables add columns to slices of it
    papers = load_papers(paper_dir)
    published = load_published(suite_dir)
    tables = []
    for p in protocols or [None]:
        for t in all_tables(table, papers, p, published):
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
        t.context = list(context)
    if files is None:
        with FileSet(suite_dir) as own:
            return table, tables, _write_tables(tables, suite_dir, own)
    return table, tables, _write_tables(tables, suite_dir, files)


def _write_tables(tables, suite_dir: Path, files: FileSet) -> list[Path]:
    """Each table's files; a file of tables/ that this run does not write (a protocol that left the suite,
    a table renamed) is removed with the same commit, so what is there is what the records give now."""
    written = [p for t in tables for p in write_table(t, suite_dir / "tables", files)]
    _remove_others(suite_dir / "tables", written, (".md", ".tex", ".csv"), files)
    return written


def _remove_others(folder: Path, written: list[Path], suffixes: tuple[str, ...], files: FileSet) -> None:
    keep = {p.name for p in written}
    if folder.is_dir():
        for old in folder.iterdir():
            if old.suffix in suffixes and old.name not in keep and not old.name.startswith("."):
                files.remove(old)


def build_figures(
    suite_dir: Path,
    tables,
    protocol: str | None = None,
    include_stale: bool = False,
    prefer: str = "computed",
    include_outside_grid: bool = False,
    files: FileSet | None = None,
) -> list[Path]:
    from harness.analysis.figures import all_figures

    table, spec = load_collected(suite_dir)
    table, _ = drop_stale(table, include_stale)
    table, _ = drop_outside_grid(table, include_outside_grid)
    table, _ = prefer_source(table, prefer)
    mean = next(t.frame for t in tables if t.name.split("__")[0] == "kendall_tau")
    if files is None:
        with FileSet(suite_dir) as own:
            return build_figures(suite_dir, tables, protocol, include_stale, prefer, include_outside_grid, own)
    out = all_figures(table, spec, mean, suite_dir / "figures", protocol, files)
    _remove_others(suite_dir / "figures", out, (".png", ".pdf"), files)
    return out


def world_lines(table: pd.DataFrame, tables) -> list[str]:
    """The size of the world the tables come from, and one plain sentence from the τ intervals."""
    from harness.analysis.tables import tracking_sentence

    ok = table[table["status"] == "ok"] if "status" in table.columns else table
    methods = sorted(set(ok["method"].dropna())) if "method" in ok.columns else []
    per = ok.groupby("method")["epoch"].nunique() if methods else pd.Series(dtype=int)
    images = sorted({int(v) for v in ok.get("images", pd.Series(dtype=float)).dropna()})
    span = (
        (f"{per.min()} checkpoints each" if per.min() == per.max() else f"{per.min()}–{per.max()} checkpoints each")
        if len(per)
        else "no checkpoints"
    )
    out = [
        f"- World: {len(methods)} method(s) ({', '.join(methods[:8])}{' ...' if len(methods) > 8 else ''}), "
        + span
        + (f", label-free metrics on {', '.join(map(str, images))} images" if images else "")
        + "."
    ]
    if methods and all(m.startswith("mini_") for m in methods):
        out.append(
            "- This is the mini world: tiny networks pre-trained for a few epochs on generated images. Its τ "
            "values are not the paper's and say nothing about real SSL methods; it shows that every code path "
            "runs and how the tables read."
        )
    out.append("- τ over a few methods and checkpoints is uncertain: read each average with its 95% interval.")
    mean = next((t.frame for t in tables if t.name.split("__")[0] == "kendall_tau"), None)
    long = next((t.frame for t in tables if t.name.split("__")[0] == "kendall_tau_per_method"), None)
    if mean is not None:
        out.append(f"- {tracking_sentence(mean, long)}")
    return out


def failed_lines(table: pd.DataFrame, limit: int = 30) -> list[str]:
    """The failed cells, each with the first line of its error (the tables leave them out: say which)."""
    if "status" not in table.columns:
        return []
    failed = table[table["status"] != "ok"]
    if failed.empty:
        return []
    errors = failed["error"] if "error" in failed.columns else pd.Series([None] * len(failed), index=failed.index)
    out = ["", f"## Failed cells ({len(failed)}, left out of every table)", ""]
    for r, err in list(zip(failed.itertuples(), errors))[:limit]:
        why = str(err) if isinstance(err, str) and err else "no error recorded"
        out.append(f"- `{cell_id(r.protocol, r.dataset, r.method, r.epoch)}`: {why[:200]}")
    if len(failed) > limit:
        out.append(f"- ... {len(failed) - limit} more: `sdd status --suite <suite> --all`")
    out.append("- `sdd status` shows each one's log; fix the cause and `sdd submit --retry-failed`.")
    return out


def write_report(
    suite_dir: Path, table: pd.DataFrame, tables, figures: list[Path], files: FileSet | None = None
) -> Path:
    protocols = sorted({t.protocol for t in tables if t.protocol})
    kind = table["kind"].fillna(table["protocol"]) if "kind" in table.columns else table["protocol"]
    label_free = sorted(set(table.loc[kind.isin(kinds_with(LABEL_FREE)) & (table["status"] == "ok"), "protocol"]))
    csv = suite_dir / "results.csv"
    digest = hashlib.sha256(csv.read_bytes()).hexdigest()[:16]
    ok = int((table["status"] == "ok").sum()) if len(table) else 0
    lines = [
        f"# {suite_dir.name}: report",
        "",
        f"Generated from `results.csv` (sha256 {digest}): {len(table)} records, {ok} ok, {len(table) - ok} "
        f"failed. Regenerate with `sdd tables --suite {suite_dir.name}`.",
        "",
        "## Settings",
        "",
        "- Segmentation metric: mIoU of the "
        + (
            ", ".join(f"`{p}`" for p in protocols) + " protocol" + ("s" if len(protocols) > 1 else "")
            if protocols
            else "(no linear-probe protocol has records)"
        )
        + "; label-free metrics from the "
        + (
            ", ".join(f"`{p}`" for p in label_free) + " protocol" + ("s" if len(label_free) > 1 else "")
            if label_free
            else "(no label-free protocol has records)"
        )
        + ", joined on epoch.",
        "- Kendall τ: `scipy.stats.kendalltau` (τ-b), per method over its checkpoints, then the mean over "
        "methods; Avg. = mean over datasets; metrics in their goodness orientation (raw τ in the per-method "
        "table).",
        "- DSE = separability + λ·dim with λ = Std(separability)/Std(dim) across one method's checkpoints; "
        "DSE (λ=1) is the estimator's raw output.",
        "- Model selection: local maxima of DSE within ±2 checkpoints, the (up to) 3 highest by DSE; reported "
        "as the max, mean and top-1 of their mIoU.",
        "- Best checkpoint: highest mIoU, ties to the earliest epoch.",
        "",
        "## What these numbers can say",
        "",
    ]
    lines += world_lines(table, tables)
    lines += failed_lines(table)
    context = tables[0].context if tables else []
    if context:
        lines += ["", "## Records used", ""] + [f"- {n}" for n in context]
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
    if files is None:
        write_text(out, "\n".join(lines) + "\n")
    else:
        files.text(out, "\n".join(lines) + "\n")
    return out


class UnknownTable(TablesError):
    """`--show` names a table that the run does not make."""


def _check_shown(show, tables) -> None:
    import difflib

    names = {tb.name for tb in tables}
    unknown = [n for n in show if n not in names]
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(names), n=1)
        raise UnknownTable(
            f"--show {', '.join(unknown)}: no such table{f' (did you mean {close[0]!r}?)' if close else ''}; "
            f"the tables are: {', '.join(sorted(names))}; nothing was written"
        )


def write_all(
    suite_dir: Path,
    protocol: str | None = None,
    *,
    figures: bool = False,
    figure_protocol: str | None = None,
    include_stale: bool = False,
    prefer: str = "computed",
    include_outside_grid: bool = False,
    paper_dir: Path = PAPER,
    show: list[str] = (),
):
    """A tables run, all or nothing, under the suite's lock: every table (and, with `figures`, every figure)
    and REPORT.md are written to temporary files first and put in place together; a failure (a full disk,
    an interrupt) leaves every previous file as it was. Returns (table, tables, table files, figures,
    report)."""
    from harness.suitedir import suite_lock

    suite_dir = Path(suite_dir)
    if not (suite_dir / "results.csv").is_file():
        raise FileNotFoundError(
            f"{suite_dir / 'results.csv'} does not exist; run `sdd collect --suite {suite_dir.name}` first"
        )
    with suite_lock(suite_dir.parent, suite_dir.name, f"sdd tables --suite {suite_dir.name}"):
        with FileSet(suite_dir) as files:
            table, tables, written = build_tables(
                suite_dir, protocol, paper_dir, include_stale, prefer, include_outside_grid, files
            )
            _check_shown(show, tables)  # before anything is drawn or written: a typo is not an empty table
            probe = figure_protocol or next((t.protocol for t in tables if t.protocol), None)
            if figures:
                figs = build_figures(suite_dir, tables, probe, include_stale, prefer, include_outside_grid, files)
            else:  # the figures already there (from an earlier run) are the ones the report links
                folder = suite_dir / "figures"
                figs = sorted(folder.glob("*.png")) if folder.is_dir() else []
            report = write_report(suite_dir, table, tables, figs, files)
    return table, tables, written, figs, report
