"""`sdd demo --interventions`: the seeds' regularisers tried in the mini world (issue 26).

- **−β·DSE** (SDD paper: iBOT and I-JEPA resumed from the DSE-selected checkpoint for 10 epochs with
  L − β·DSE, β = 0.001): each degrading mini method is resumed from its DSE-selected checkpoint (the
  mini suite's highest DSE local maximum) to the end of its 16-epoch schedule, with and without the
  regulariser. The paper's 10 epochs of a several-hundred-epoch run would be a fraction of one mini epoch,
  and the mini world degrades over the whole rest of its schedule, so the budget is scaled to "the rest of
  the schedule". β = 0.001 is the paper's; β = 0.1 (×100) is run beside it because the mini losses are
  of order 1 and 0.001·DSE barely moves them.
- **+λ·W2** (WassersteinSSL, λ = 1.0 for MoCo v2: code/MoCov2/run_moco+w2.sh line 4) on mini MoCo-v3's
  projector outputs, from the same checkpoint with the same budget.
- **DirectCLR**: mini DirectCLR (projector-free) trained like the other mini methods; its embedding
  spectrum at the last checkpoint against mini MoCo-v3's (the dimensional-collapse paper's figure).

Every run is a registry method of its own (one generated file under the mini root's `interventions/registry`,
the real registry beside it) in the suite `interventions`, so its last checkpoint goes through the same
pipeline as the mini suite: `sdd submit` on the local executor, records, collect. The report
(`<results>/interventions/INTERVENTIONS.md`) gives last-checkpoint mIoU (linear_mini, ADE20K and VOC) and
dense effective rank (dense RankMe) per condition as the mean, standard deviation and range over the seeds,
and one sentence per regulariser saying whether it halted the mini world's degradation. Training and
cells are cached: a second run only rebuilds the report.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import yaml

from harness.atomic import write_text
from harness.errors import HarnessError
from harness.mini.demo import DEGRADING, DEGRADING_ON, METHODS

SUITE = "interventions"
SEEDS = (0, 1, 2)
# condition -> (pretrain options, what it is)
CONDITIONS = {
    "none": ([], "resumed, no regulariser"),
    "dse": (["--dse-beta", "0.001"], "− β·DSE, β = 0.001 (the paper's)"),
    "dse_x100": (["--dse-beta", "0.1"], "− β·DSE, β = 0.1 (×100)"),
    "w2": (["--w2-lambda", "1.0"], "+ λ·W2, λ = 1.0 (WassersteinSSL's MoCo v2)"),
    # DINOv3's Gram anchoring, the teacher the DSE-selected checkpoint the run resumes from (fixed, as DINOv3's
    # high-resolution stage keeps it): its end weight 2.0 (dinov3_vit7b16_gram_anchor.yaml l.64-69) and a tenth
    "gram": (["--gram-weight", "2.0"], "+ w·Gram anchoring, w = 2.0 (DINOv3's), teacher = the DSE-selected checkpoint"),
    "gram_small": (["--gram-weight", "0.2"], "+ w·Gram anchoring, w = 0.2 (×0.1)"),
}
REGULARISERS = ("dse", "dse_x100", "w2", "gram", "gram_small")  # the conditions judged against "none"
EXTRA_METHODS = {"mini_directclr": "directclr"}  # trained only here, not in the mini suite
OBJECTIVE_OF = {**METHODS, **EXTRA_METHODS}  # the registry methods whose training objective the harness has
W2_OBJECTIVES = ("mocov3", "directclr")  # the objectives with the embeddings W2 regularises


def plan_for(methods) -> dict[str, tuple[str, ...]]:
    """The conditions each method gets: no regulariser, -beta*DSE at two betas, and +lambda*W2 where the
    objective has the embeddings it regularises."""
    unknown = [m for m in methods if m not in OBJECTIVE_OF]
    if unknown:
        raise InterventionError(
            f"{', '.join(unknown)}: the harness has no training objective for it, so it cannot be resumed with a "
            f"regulariser (it has: {', '.join(OBJECTIVE_OF)}); for a method of your own, add DSELoss / W2Loss "
            f"to its training step (README, During training)"
        )
    return {
        m: ("none", "dse", "dse_x100") + (("w2",) if OBJECTIVE_OF[m] in W2_OBJECTIVES else ()) + ("gram", "gram_small")
        for m in methods
    }


PLAN = plan_for(DEGRADING)  # the default: the methods the mini world degrades
COLLAPSE = ("mini_mocov3", "mini_directclr")  # the spectrum comparison (DirectCLR vs a projector)
PROBE, METRICS = "linear_mini", "metrics_mini"


class InterventionError(HarnessError):
    pass


def run_name(method: str, condition: str, seed: int) -> str:
    return f"{method}__{condition}__s{seed}"


def start_epochs(results: Path, suite: str = "mini", plan: dict | None = None) -> dict[str, tuple[int, int]]:
    """Each method's (DSE-selected checkpoint, last checkpoint) in the suite's records: the highest DSE local
    maximum, and the end of the schedule the runs resume to."""
    from harness.analysis import load_collected
    from harness.analysis.tables import selections

    plan = PLAN if plan is None else plan
    table, _ = load_collected(results / suite)
    absent = [m for m in plan if m not in set(table["method"])]
    if absent:
        raise InterventionError(
            f"{', '.join(absent)}: not in the records of suite {suite} (the DSE selection and the probes the runs "
            f"are compared with come from its metrics and {PROBE} records): pick a suite that runs "
            f"{'it' if len(absent) == 1 else 'them'} (--suite), or add {'it' if len(absent) == 1 else 'them'} to one"
        )
    sel = selections(table)
    missing = [m for m in plan if not sel.get(m)]
    if missing:
        raise InterventionError(
            f"no DSE selection for {', '.join(missing)} in {results / suite}: the {suite} suite's metrics records "
            f"are needed first (`sdd demo --suite {suite}`)"
        )
    out = {}
    for m in plan:
        probed = table[(table["method"] == m) & (table["protocol"] == PROBE)]["epoch"]
        if probed.empty:
            raise InterventionError(f"{m}: suite {suite} has no {PROBE} records for it: the runs resume to its last")
        last = int(probed.max())
        if sel[m][0] >= last:
            raise InterventionError(
                f"{m}: its DSE-selected checkpoint (epoch {sel[m][0]}) is its last probed one ({last}) in suite "
                f"{suite}: there is nothing to resume"
            )
        out[m] = (sel[m][0], last)
    return out


def train_runs(
    root: Path, starts: dict[str, tuple[int, int]], reg, quiet: bool = False, plan: dict | None = None
) -> dict[str, tuple[str, str, int, Path]]:
    """Resume every (method, condition, seed) from the method's DSE-selected checkpoint to its last; cached."""
    from tqdm.auto import tqdm

    from harness.mini.pretrain import parser, train
    from harness.models.checkpoints import checkpoint_path

    runs = {}
    todo = [(m, c, s) for m, conds in (PLAN if plan is None else plan).items() for c in conds for s in SEEDS]
    bar = tqdm(todo, desc="interventions: resumed pre-training", disable=quiet or not sys.stderr.isatty(), leave=False)
    for method, condition, seed in bar:
        spec = reg.method(method)
        start, last = starts[method]
        name = run_name(method, condition, seed)
        out = root / "interventions" / "checkpoints" / name
        args = parser().parse_args(
            [
                "--objective",
                OBJECTIVE_OF[method],
                "--data",
                str(root / "data" / "imagenet-1k"),
                "--out",
                str(out),
                "--name",
                name,
                "--epochs",
                str(last),
                "--seed",
                str(seed),
                "--resume",
                str(checkpoint_path(spec, start)),
                "--resume-epoch",
                str(start),
                "--quiet",
                *CONDITIONS[condition][0],
            ]
        )
        train(args)
        runs[name] = (method, condition, seed, out)
    return runs


def write_registry(root: Path, reg, runs: dict, starts: dict[str, tuple[int, int]]) -> Path:
    """The real registry plus one method file per run and the `interventions` suite (written afresh)."""
    where = root / "interventions" / "registry"
    if where.exists():
        shutil.rmtree(where)
    shutil.copytree(reg.root, where)
    for name, (method, condition, seed, out) in runs.items():
        src = yaml.safe_load((Path(reg.root) / "methods" / f"{method}.yaml").read_text())
        start, last = starts[method]
        src.update(
            name=name,
            title=f"{src['title']} ({CONDITIONS[condition][1]}, seed {seed})",
            notes=f"{method} resumed from its DSE-selected epoch {start} to {last} "
            f"({CONDITIONS[condition][1]}, seed {seed}) by `sdd demo --interventions`.",
        )
        src["checkpoint"] = {
            **src["checkpoint"],
            "dir": str(out),
            "epochs": {"start": start + 1, "stop": last},
        }
        write_text(where / "methods" / f"{name}.yaml", yaml.safe_dump(src, sort_keys=False))
    suite = {
        "name": SUITE,
        "title": "Mini world: the regularisers resumed from the DSE-selected checkpoints (sdd demo --interventions)",
        "methods": [*runs, *COLLAPSE],
        "data_root": "${SDD_MINI_ROOT:-${SDD_RESULTS:-results}/.mini}/data",
        "grid": [
            {"protocol": METRICS, "datasets": ["imagenet"], "epochs": "last"},
            {"protocol": PROBE, "datasets": list(DEGRADING_ON), "epochs": "last"},
        ],
    }
    write_text(where / "suites" / f"{SUITE}.yaml", yaml.safe_dump(suite, sort_keys=False))
    return where


def run(
    results: Path, cluster: str = "local", quiet: bool = False, suite: str = "mini", methods: list[str] | None = None
) -> int:
    """The interventions from `suite`'s records (its DSE selection, its last epoch, its reference mIoU), for
    `methods` (default: the methods the mini world degrades)."""
    plan = PLAN if methods is None else plan_for(methods)
    from harness.clusters import load_cluster
    from harness.collect import write_collected
    from harness.launch import submit, wait
    from harness.mini.demo import prepare
    from harness.registry import load_registry

    t0 = time.time()
    reg = load_registry()
    root = prepare(reg, quiet=quiet, methods=OBJECTIVE_OF)
    starts = start_epochs(results, suite, plan)
    runs = train_runs(root, starts, reg, quiet=quiet, plan=plan)
    t1 = time.time()
    print(
        f"[interventions] {len(runs)} resumed runs ({len(SEEDS)} seeds) from the DSE-selected epochs "
        f"{starts} in {t1 - t0:.0f} s"
    )
    ireg = load_registry(write_registry(root, reg, runs, starts))
    s = submit(ireg, SUITE, load_cluster(cluster), results)
    print(f"[interventions] suite {SUITE}: {s['cells']} cells, {s['to_submit']} to run on '{cluster}'")
    rows = wait(ireg, SUITE, results) if cluster != "inline" else {}
    failed = [r for r in rows.values() if r["state"] in ("failed", "corrupt")]
    for r in failed[:10]:
        print(f"[interventions] {r['state']}: {r['cell']}: {r['reason']}  (log: {r['log']})")
    write_collected(ireg, SUITE, results, skip_corrupt=True)
    text = report(results, starts, suite, plan, costs=step_costs(runs))
    out = results / SUITE / "INTERVENTIONS.md"
    write_text(out, text)
    print(text)
    print(f"[interventions] {time.time() - t0:.0f} s in all ({time.time() - t1:.0f} s for the cells); report: {out}")
    return 1 if failed else 0


# ---- the report -------------------------------------------------------------------------------------------------


def step_costs(runs: dict) -> dict[tuple[str, str], list[float]]:
    """(method, condition) -> each seed's seconds per training step, as its run measured them (TRAINED.json; a
    run cached from before the field existed has none)."""
    import json

    costs: dict[tuple[str, str], list[float]] = {}
    for method, condition, _seed, out in runs.values():
        marker = Path(out) / "TRAINED.json"
        value = json.loads(marker.read_text()).get("seconds_per_step") if marker.is_file() else None
        if value:
            costs.setdefault((method, condition), []).append(float(value))
    return costs


def outcomes(results: Path):
    """One row per run: method, condition, seed and its last checkpoint's mIoU per dataset and dense rank."""
    import pandas as pd

    table = pd.read_csv(results / SUITE / "results.csv", low_memory=False)
    ok = table[table["status"] == "ok"]
    rows = []
    for name, g in ok.groupby("method"):
        if "__" not in name:
            continue
        method, condition, seed = name.split("__")
        row = {"method": method, "condition": condition, "seed": int(seed[1:])}
        for ds in DEGRADING_ON:
            hit = g[(g["protocol"] == PROBE) & (g["dataset"] == ds)]
            row[ds] = float(hit["mIoU"].iloc[0]) if len(hit) else float("nan")
        m = g[g["protocol"] == METRICS]
        row["dense_rankme"] = float(m["dense_rankme"].iloc[0]) if len(m) else float("nan")
        row["dse"] = float(m["dse"].iloc[0]) if len(m) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def _reference(results: Path, starts: dict[str, tuple[int, int]], suite: str):
    """The suite's own values at the DSE-selected checkpoint and at the original run's last."""
    import pandas as pd

    table = pd.read_csv(results / suite / "results.csv", low_memory=False)
    ok = table[table["status"] == "ok"]
    ref = {}
    for method, (start, last) in starts.items():
        g = ok[ok["method"] == method]
        for label, epoch in (("start", start), ("original last", last)):
            at = g[g["epoch"] == epoch]
            vals = {ds: at[(at["protocol"] == PROBE) & (at["dataset"] == ds)]["mIoU"] for ds in DEGRADING_ON}
            vals = {ds: float(v.iloc[0]) if len(v) else float("nan") for ds, v in vals.items()}
            m = at[at["protocol"] == METRICS]
            vals["dense_rankme"] = float(m["dense_rankme"].iloc[0]) if len(m) else float("nan")
            vals["dse"] = float(m["dse"].iloc[0]) if len(m) else float("nan")
            ref[(method, label)] = (epoch, vals)
    return ref


def _cell(values) -> str:
    import numpy as np

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return "—"
    if len(v) == 1:
        return f"{v[0]:.2f} (one run)"
    missing = f" (n={len(v)} of {len(values)})" if len(v) < len(values) else ""
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f} [{v.min():.2f}, {v.max():.2f}]{missing}"


def verdict(start: float, none: list[float], reg: list[float]) -> str:
    """What a regulariser did to one method's last-checkpoint mIoU on one dataset, by a stated rule. The plain
    runs degraded when their mean ends below the DSE-selected checkpoint's value by more than their seed
    standard deviation. The regularised and plain runs differ when their means are further apart than the sum
    of their standard deviations: better and ending no lower than the start minus the regularised spread is
    'halted'; better but still lower, 'reduced'; better where the plain runs did not degrade, 'improved';
    worse, 'worsened'; else 'no effect beyond the seeds' spread'. Without a start value, no verdict."""
    import math

    import numpy as np

    if not math.isfinite(start):
        return "not judged (no probe of the DSE-selected checkpoint)"
    a, b = np.asarray(none, dtype=float), np.asarray(reg, dtype=float)
    sa, sb = a.std(ddof=1), b.std(ddof=1)
    if b.mean() - a.mean() > sa + sb:
        if not degraded(start, none):
            return "improved (no degradation without it)"
        return "halted" if b.mean() >= start - sb else "reduced"
    if a.mean() - b.mean() > sa + sb:
        return "worsened"
    return "no effect beyond the seeds' spread"


def degraded(start: float, none: list[float]) -> bool:
    """The plain runs end below the DSE-selected checkpoint by more than their seed standard deviation."""
    import numpy as np

    a = np.asarray(none, dtype=float)
    return bool(np.isfinite(start) and a.mean() < start - a.std(ddof=1))


def report(
    results: Path,
    starts: dict[str, tuple[int, int]],
    suite: str = "mini",
    plan: dict | None = None,
    costs: dict[tuple[str, str], list[float]] | None = None,
) -> str:
    plan = PLAN if plan is None else plan
    costs = costs or {}
    df = outcomes(results)
    ref = _reference(results, starts, suite)
    cols = [*DEGRADING_ON, "dense_rankme", "dse"]
    lines = [
        "## Interventions in the mini world",
        "",
        f"Each run resumes the method from its DSE-selected checkpoint (the {suite} suite's highest DSE local "
        f"maximum) to its last probed epoch; last-checkpoint linear-probe mIoU ({PROBE}) and dense effective rank "
        f"(dense RankMe, {METRICS}) as mean ± sd [min, max] over seeds {list(SEEDS)}.",
        "",
        "| method | run | seeds | "
        + " | ".join(f"{c} mIoU" if c in DEGRADING_ON else c for c in cols)
        + " | ms per step (× none) |",
        "|---|---|---|" + "---|" * len(cols) + "---|",
    ]
    for method in plan:
        for label in ("start", "original last"):
            epoch, vals = ref[(method, label)]
            what = "DSE-selected checkpoint" if label == "start" else "the original run's last checkpoint"
            lines.append(
                f"| {method} | {what} (epoch {epoch}) | the original run | "
                + " | ".join(f"{vals[c]:.2f}" for c in cols)
                + " | — |"
            )
        for condition in plan[method]:
            g = df[(df["method"] == method) & (df["condition"] == condition)] if len(df) else df
            lines.append(
                f"| {method} | {CONDITIONS[condition][1]} | {len(g)} | "
                + " | ".join(_cell(g[c]) if len(g) else "—" for c in cols)
                + f" | {_cost(costs, method, condition)} |"
            )
    lines += ["", *sentences(df, ref, plan), f"- {collapse(results)[0]}"]
    return "\n".join(lines) + "\n"


def _cost(costs: dict, method: str, condition: str) -> str:
    """The mean training step's milliseconds over the seeds, and its ratio to the plain resumed runs'."""
    mine, base = costs.get((method, condition)), costs.get((method, "none"))
    if not mine:
        return "—"
    ms = 1000 * sum(mine) / len(mine)
    return f"{ms:.1f}" + (f" (×{sum(mine) / len(mine) / (sum(base) / len(base)):.2f})" if base else "")


def sentences(df, ref, plan: dict) -> list[str]:
    """One sentence per regulariser: whether it halted the degradation (the rule of `verdict`), and where."""
    out = []
    for condition in REGULARISERS:
        parts, verdicts = [], []
        for method, conds in plan.items():
            if condition not in conds or not len(df):
                continue
            for ds in DEGRADING_ON:
                none = df[(df["method"] == method) & (df["condition"] == "none")][ds].dropna().tolist()
                reg = df[(df["method"] == method) & (df["condition"] == condition)][ds].dropna().tolist()
                if len(none) < 2 or len(reg) < 2:
                    parts.append(f"{method} on {ds}: not enough runs")
                    continue
                start = ref[(method, "start")][1][ds]
                v = verdict(start, none, reg)
                if degraded(start, none):
                    verdicts.append(v)
                at_start = f", {start:.1f} at the DSE-selected checkpoint" if start == start else ""
                parts.append(
                    f"{method} on {ds} {v} ({sum(reg) / len(reg):.1f} vs {sum(none) / len(none):.1f} without{at_start})"
                )
        if parts:
            k, n = verdicts.count("halted"), len(verdicts)
            if not n:
                answer, count = "had no degradation to halt", "the plain runs degraded in none of the pairs"
            else:
                answer = "halted" if k == n else "did not halt"
                count = f"halted in {k} of the {n} method-dataset pairs where the plain runs degraded"
            out.append(
                f"- {CONDITIONS[condition][1]} {answer} the mini world's degradation ({count}; last-checkpoint "
                f"mIoU with vs without it): {'; '.join(parts)}."
            )
    return out


def collapse(results: Path) -> tuple[str, list[Path]]:
    """Mini DirectCLR's embedding spectrum against mini MoCo-v3's at their last checkpoints: the figure and
    one sentence (the number of dimensions whose singular value is below 1e-6 of the largest, and the
    spectrum's fall over the first half of the ranks)."""
    import pandas as pd

    from harness.analysis.figures import spectra_against

    suite_dir = results / SUITE
    table = pd.read_csv(suite_dir / "results.csv", low_memory=False)
    spec_csv = suite_dir / "spectra.csv"
    spec = pd.read_csv(spec_csv) if spec_csv.is_file() else None
    paths = spectra_against(spec, list(COLLAPSE), suite_dir / "figures", "spectrum_directclr_vs_mocov3")
    m = table[(table["protocol"] == METRICS) & (table["status"] == "ok") & table["method"].isin(COLLAPSE)]
    if spec is None or len(m) < len(COLLAPSE):
        return "the DirectCLR vs MoCo-v3 spectrum is missing (its metrics cells did not finish)", paths
    parts = []
    for method in COLLAPSE:
        row = m[m["method"] == method].iloc[0]
        sv = spec[(spec["method"] == method) & (spec["kind"] == "log_sv") & (spec["epoch"] == row["epoch"])]
        sv = sv.sort_values("index")["log_sv"].to_numpy()
        half = sv[0] - sv[len(sv) // 2]  # natural log units
        parts.append(
            f"{method} {int(row['collapsed_dims'])} of {len(sv)} dimensions below 1e-6 of the largest singular "
            f"value, log σ falling {half:.1f} over the first half of the ranks, RankMe {row['rankme']:.2f}, dense "
            f"RankMe {row['dense_rankme']:.3f}"
        )
    (mo, dc) = (m[m["method"] == x].iloc[0] for x in COLLAPSE)
    seen = "is" if dc["rankme"] > mo["rankme"] else "is not"
    figure = paths[0].name if paths else "no figure"
    return (
        f"Dimensional collapse: mini DirectCLR's representation {seen} less collapsed than mini MoCo-v3's (which "
        f"has a projector) by RankMe of the last checkpoint's embeddings, one training run each ({'; '.join(parts)}; "
        f"{figure})."
    ), paths
