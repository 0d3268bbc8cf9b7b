"""`sdd demo`: the whole pipeline in miniature on this machine.

mini world (generated data in the real layouts) -> tiny SSL pre-training of three methods (checkpoints
in DINO / MoCo v3 / MAE formats) -> the `mini` suite through `sdd submit` on the local executor, with
progress -> collect -> tables, figures, REPORT.md -> the Kendall-τ and SDD tables. Every step is
cached, so a second run finds everything done.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from harness.atomic import write_text
from harness.records import cell_id
from harness.registry import ROOT

METHODS = {"mini_dino": "dino", "mini_mocov3": "mocov3", "mini_mae": "mae"}
# The mini world is chosen for the phenomenon (docs/demo.md): these methods' linear probes peak and then
# fall by at least STATED_DROP mIoU points (best checkpoint minus last) on each of DEGRADING_ON.
DEGRADING = ("mini_dino", "mini_mocov3")
DEGRADING_ON = ("ade20k", "voc12_aug")
STATED_DROP = 4.0


def mini_root() -> Path:
    from harness.records import results_root

    p = Path(os.environ.get("SDD_MINI_ROOT") or results_root() / ".mini")
    return p if p.is_absolute() else ROOT / p


def prepare(reg=None, quiet: bool = False, epochs: int | None = None, methods: dict | None = None) -> Path:
    """Generate the mini world and pre-train the mini methods (both cached) under the mini root (the `mini`
    and `micro` suites read their data there: their `data_root`).
    Each method trains up to the last epoch its registry file lists, so every cell of the `mini`
    suite has its checkpoint; `epochs` trains fewer (for suites that use only the first ones)."""
    if reg is None:
        from harness.registry import load_registry

        reg = load_registry()
    from harness.mini import generate
    from harness.mini.pretrain import parser, train

    root = mini_root()
    os.environ["SDD_MINI_ROOT"] = str(root)
    data = root / "data"
    marker = data / "GENERATED"
    if not marker.is_file() or marker.read_text().strip() != generate.WORLD:
        import shutil

        if data.exists():  # another version's world: its data and the checkpoints trained on it go
            print(f"[demo] {data} holds another version of the mini world; generating {generate.WORLD!r}")
            shutil.rmtree(data)
            shutil.rmtree(root / "checkpoints", ignore_errors=True)
            shutil.rmtree(root / "interventions", ignore_errors=True)  # runs resumed from those checkpoints
        t = time.time()
        generate.generate_all(data)
        write_text(marker, generate.WORLD + "\n")
        print(f"[demo] generated the mini world under {data} in {time.time() - t:.1f} s")
    for name, objective in (methods or METHODS).items():
        n = epochs or max(reg.method(name).epochs())
        t = time.time()
        out = root / "checkpoints" / name
        args = parser().parse_args(
            [
                "--objective",
                objective,
                "--data",
                str(data / "imagenet-1k"),
                "--out",
                str(out),
                "--name",
                name,
                "--epochs",
                str(n),
            ]
            + (["--quiet"] if quiet else [])
        )
        fresh = not (out / "TRAINED.json").is_file()
        train(args)
        if fresh:
            print(f"[demo] pre-trained {name} ({objective}-style, {n} epochs) in {time.time() - t:.1f} s")
    return root


def run(suite: str = "mini", cluster: str = "local", results: Path | None = None) -> int:
    from harness.analysis import write_all
    from harness.analysis.render import markdown
    from harness.clusters import load_cluster
    from harness.collect import write_collected
    from harness.launch import submit, wait
    from harness.records import results_root
    from harness.registry import load_registry

    t0 = time.time()
    results = Path(results or results_root())
    reg = load_registry()
    prepare(reg)
    t1 = time.time()
    s = submit(reg, suite, load_cluster(cluster), results)
    print(
        f"[demo] suite {suite}: {s['cells']} cells, {s['to_submit']} to run on '{cluster}' "
        f"({', '.join(f'{n} {w}' for w, n in s['skipped'].items()) or 'none skipped'})"
    )
    rows = wait(reg, suite, results) if cluster != "inline" else {}  # launch.wait
    failed = [r for r in rows.values() if r["state"] in ("failed", "corrupt")]
    for r in failed[:10]:
        print(f"[demo] {r['state']}: {r['cell']}: {r['reason']}  (log: {r['log']})")
    t2 = time.time()
    c = write_collected(reg, suite, results, skip_corrupt=True)
    print(f"[demo] collected {c.records} records ({c.ok} ok) -> {c.csv}")
    suite_dir = results / suite
    # the suite's own linear-probe protocol (linear_mini) gives the mIoU; the figures follow it
    table, tables, _, figures, report = write_all(suite_dir, figures=True, figure_protocol="linear_mini")
    by = {t.name: t for t in tables}
    print()
    print(markdown(by["kendall_tau"].frame, by["kendall_tau"].title, by["kendall_tau"].notes))
    print(
        markdown(
            by["sdd"].frame.drop(columns=[c for c in ("paper_diff", "delta_diff") if c in by["sdd"].frame]),
            by["sdd"].title,
            by["sdd"].notes,
        )
    )
    print(degradation_summary(results / suite / "results.csv"))
    print(guided_summary(reg, suite, results))
    from harness.analysis.tables import tracking_sentence

    print(
        f"[demo] {tracking_sentence(by['kendall_tau'].frame, by['kendall_tau_per_method'].frame)} (the mini world's "
        f"τ are not the paper's: see "
        f"{report.name})"
    )
    print(
        f"[demo] pipeline {t1 - t0:.0f} s preparing, {t2 - t1:.0f} s running cells, {time.time() - t2:.0f} s "
        f"for tables and figures; report: {report}"
    )
    return 1 if failed else 0


def degradation_summary(csv: Path) -> str:
    """What the mini world shows: each method's dense drop from its best checkpoint to its last, against
    the stated size for the methods it was chosen to degrade, and its k-NN top-1 from first to last."""
    import pandas as pd

    from harness.analysis.tables import sdd_table

    table = pd.read_csv(csv, low_memory=False)
    deg = sdd_table(table, "linear_mini").frame  # best vs last checkpoint, as the SDD table has them
    knn = table[(table["protocol"] == "knn_mini") & (table["status"] == "ok")] if "protocol" in table else table[:0]
    lines = [
        f"[demo] the mini world's dense degradation (linear probe mIoU, best checkpoint -> last; stated: "
        f">= {STATED_DROP:g} points for {', '.join(DEGRADING)} on {', '.join(DEGRADING_ON)}; docs/demo.md):"
    ]
    for method, g in deg.groupby("method"):
        parts = [
            f"{r.dataset} {r.best:.1f} (ep {r.best_epoch}) -> {r.last:.1f} ({r.diff:+.1f})" for r in g.itertuples()
        ]
        k = knn[knn["method"] == method].sort_values("epoch")
        if len(k) > 1:
            parts.append(
                f"k-NN top-1 {k['top1'].iloc[0]:.1f} (ep {int(k['epoch'].iloc[0])}) -> "
                f"{k['top1'].iloc[-1]:.1f} (ep {int(k['epoch'].iloc[-1])})"
            )
        held = ""
        if method in DEGRADING:
            ok = all(-r.diff >= STATED_DROP for r in g.itertuples() if r.dataset in DEGRADING_ON)
            held = "  [as stated]" if ok else "  [SMALLER THAN STATED]"
        lines.append(f"  {method}: " + "; ".join(parts) + held)
    return "\n".join(lines)


def guided_summary(reg, suite: str, results: Path) -> str:
    """What the DSE-guided grid would have run, and whether it picks the same checkpoints as the full grid."""
    import pandas as pd

    from harness.analysis.tables import miou_frame
    from harness.plan import build_plan, guided

    full = build_plan(reg, suite)
    cells, waiting, selected = guided(reg, full, results)
    table = pd.read_csv(results / suite / "results.csv")
    mi = miou_frame(table, "linear_mini")
    lines = [
        "### DSE-guided grid vs full grid",
        "",
        "| method | DSE top-3 epochs | datasets | guided best mIoU (top-3 + last) | full-grid best mIoU (epoch) |",
        "|---|---|---|---|---|",
    ]
    for method, sel in sorted(selected.items()):
        for dataset, g in mi[mi["method"] == method].groupby("dataset"):
            last = int(g["epoch"].max())
            cand = g[g["epoch"].isin(sel + [last])]
            best = g.loc[g["miou"].idxmax()]
            lines.append(
                f"| {method} | {sel} | {dataset} | {cand['miou'].max():.2f} | {best['miou']:.2f} "
                f"(ep {int(best['epoch'])}) |"
            )
    full_h = sum(c.gpu_hours for c in full)
    guided_h = sum(c.gpu_hours for c in cells)
    rec_h = _measured_hours(results, suite, {c.id for c in cells}, {c.id for c in full})
    lines += [
        "",
        f"- guided grid: {len(cells)} of {len(full)} cells; estimated {guided_h:.4f} of {full_h:.4f} "
        f"device·h from the protocol files; measured here {rec_h[0]:.4f} of {rec_h[1]:.4f} CPU·h",
    ]
    if waiting:
        lines.append(f"- still waiting for metrics: {', '.join(sorted(waiting))}")
    return "\n".join(lines) + "\n"


def _measured_hours(results: Path, suite: str, guided_ids: set, full_ids: set) -> tuple[float, float]:
    import pandas as pd

    table = pd.read_csv(results / suite / "results.csv")
    g = f = 0.0
    for r in table.itertuples():
        h = (0.0 if pd.isna(r.wall_s) else float(r.wall_s)) / 3600
        cid = cell_id(r.protocol, r.dataset, r.method, r.epoch)
        if cid in full_ids:
            f += h
        if cid in guided_ids:
            g += h
    return g, f
