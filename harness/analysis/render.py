"""Tables to Markdown, LaTeX (booktabs) and CSV, with fixed number formats so that the same
results.csv always gives byte-identical files."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from harness.atomic import FileSet


def _fmt(col: str, v, missing: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return missing
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int) or (
        isinstance(v, float)
        and v.is_integer()
        and (col.startswith(("n_", "epoch")) or col in ("checkpoints", "best_epoch", "last_epoch"))
    ):
        return str(int(v))
    if isinstance(v, float):
        return (
            f"{v:.3f}"
            if col.endswith("_h")
            else f"{v:+.2f}"
            if col.startswith(("diff", "delta", "gain"))
            else f"{v:.2f}"
        )
    return str(v)


MARK = "ⁱ"  # a number that came from an import (harness.analysis.tables marks them)


def _cells(frame: pd.DataFrame, missing: str, marks: set) -> list[list[str]]:
    cols = list(frame.columns)
    return [
        [
            _fmt(c, v, missing) + (MARK if (i, c) in marks and _fmt(c, v, missing) != missing else "")
            for c, v in zip(cols, row)
        ]
        for i, row in enumerate(frame.itertuples(index=False))
    ]


def markdown(
    frame: pd.DataFrame, title: str, notes: list[str], marks: set | None = None, context: list[str] | None = None
) -> str:
    lines = [f"### {title}", ""]
    if frame.empty:
        lines.append("_No data._")
    else:
        cols = list(frame.columns)
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "|".join("---" for _ in cols) + "|")
        for row in _cells(frame, "—", marks or set()):
            lines.append("| " + " | ".join(v.replace("|", "\\|") for v in row) + " |")
    lines += [""] + [f"- {n}" for n in notes] + [f"- {n}" for n in context or []]
    return "\n".join(lines).rstrip() + "\n"


def _tex(s: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("_", r"\_"),
        ("#", r"\#"),
        ("α", r"$\alpha$"),
        ("λ", r"$\lambda$"),
        ("τ", r"$\tau$"),
        ("−", "--"),
        ("†", r"$^\dagger$"),
        ("·", r"$\cdot$"),
        ("±", r"$\pm$"),
        ("—", "--"),
    ):
        s = s.replace(a, b)
    return s


def latex(frame: pd.DataFrame, title: str, marks: set | None = None) -> str:
    cols = list(frame.columns)
    align = "".join("r" if pd.api.types.is_numeric_dtype(frame[c]) else "l" for c in cols) or "l"
    out = [
        f"% {title}",
        r"\begin{tabular}{" + align + "}",
        r"\toprule",
        " & ".join(_tex(str(c)) for c in cols) + r" \\",
        r"\midrule",
    ]
    for row in _cells(frame, "--", marks or set()):
        out.append(" & ".join(_tex(v).replace(MARK, r"$^{i}$") for v in row) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def write_table(table, out_dir: Path, files: FileSet | None = None) -> list[Path]:
    """The table's Markdown, LaTeX and CSV under `out_dir`, through `files` (replaced with the rest of a
    tables run), or at once and together when no set is given."""
    if files is None:
        with FileSet(out_dir.parent) as own:  # its journal where the suite's next writer looks
            return write_table(table, out_dir, own)
    paths = [out_dir / f"{table.name}.md", out_dir / f"{table.name}.tex", out_dir / f"{table.name}.csv"]
    marks = getattr(table, "marks", set())
    files.text(paths[0], markdown(table.frame, table.title, table.notes, marks, getattr(table, "context", [])))
    files.text(paths[1], latex(table.frame, table.title, marks))
    frame = table.frame
    if marks:  # which numbers of a row came from an import, for a reader of the CSV alone
        frame = frame.assign(
            imported=[",".join(c for c in frame.columns if (i, c) in marks) or None for i in range(len(frame))]
        )
    files.staged(paths[2], lambda tmp: frame.to_csv(tmp, index=False, float_format="%.6g", lineterminator="\n"))
    return paths
