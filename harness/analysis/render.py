"""Tables to Markdown, LaTeX (booktabs) and CSV, with fixed number formats so that the same
results.csv always gives byte-identical files."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd


def _fmt(col: str, v, missing: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return missing
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and (col.startswith(("n_", "epoch")) or
                                                                         col in ("checkpoints", "best_epoch",
                                                                                 "last_epoch"))):
        return str(int(v))
    if isinstance(v, float):
        return f"{v:.3f}" if col.endswith("_h") else f"{v:+.2f}" if col.startswith(("diff", "delta", "gain")) \
            else f"{v:.2f}"
    return str(v)


def markdown(frame: pd.DataFrame, title: str, notes: list[str]) -> str:
    lines = [f"### {title}", ""]
    if frame.empty:
        lines.append("_No data._")
    else:
        cols = list(frame.columns)
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "|".join("---" for _ in cols) + "|")
        for row in frame.itertuples(index=False):
            lines.append("| " + " | ".join(_fmt(c, v, "—").replace("|", "\\|") for c, v in zip(cols, row)) + " |")
    lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines).rstrip() + "\n"


def _tex(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("α", r"$\alpha$"), ("λ", r"$\lambda$"), ("τ", r"$\tau$"), ("−", "--"), ("†", r"$^\dagger$"),
                 ("·", r"$\cdot$"), ("±", r"$\pm$"), ("—", "--")):
        s = s.replace(a, b)
    return s


def latex(frame: pd.DataFrame, title: str) -> str:
    cols = list(frame.columns)
    align = "".join("r" if pd.api.types.is_numeric_dtype(frame[c]) else "l" for c in cols) or "l"
    out = [f"% {title}", r"\begin{tabular}{" + align + "}", r"\toprule",
           " & ".join(_tex(str(c)) for c in cols) + r" \\", r"\midrule"]
    for row in frame.itertuples(index=False):
        out.append(" & ".join(_tex(_fmt(c, v, "--")) for c, v in zip(cols, row)) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def write_table(table, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{table.name}.md", out_dir / f"{table.name}.tex", out_dir / f"{table.name}.csv"]
    paths[0].write_text(markdown(table.frame, table.title, table.notes))
    paths[1].write_text(latex(table.frame, table.title))
    table.frame.to_csv(paths[2], index=False, float_format="%.6g", lineterminator="\n")
    return paths
