"""`sdd` — the command line: ls | validate | plan | submit | status | collect | tables | figures | demo.

Imports stay light (no torch) so registry and planning commands start fast.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from harness.errors import HarnessError
from harness.records import results_root
from harness.registry import (
    KINDS,
    Registry,
    RegistryError,
    env_vars,
    load_registry,
    resolve_path,
)


def table(rows: list[dict], cols: list[str], headers: list[str] | None = None) -> str:
    headers = headers or cols
    cells = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    num = [all(isinstance(r.get(c), (int, float)) for r in rows) and rows for c in cols]
    line = lambda vals: "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(vals, widths, num)).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}" if v >= 0.1 or v == 0 else f"{v:.3f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _epochs_text(eps: tuple[int, ...]) -> str:
    if len(eps) > 3:
        steps = {b - a for a, b in zip(eps, eps[1:])}
        if len(steps) == 1:
            return f"{eps[0]}..{eps[-1]} step {steps.pop()} ({len(eps)})"
    return ", ".join(map(str, eps))


# ---------------------------------------------------------------------------------------------
def cmd_ls(reg: Registry, args) -> int:
    if args.what is None:  # everything, kind by kind
        for i, kind in enumerate(KINDS):
            print(("\n" if i else "") + f"{kind}:")
            args.what = kind
            cmd_ls(reg, args)
        args.what = None
        return 0
    what = args.what
    if what == "archs":
        return _ls_archs(reg)
    if what == "methods":
        rows = [
            {
                "name": m.name,
                "title": m.title,
                "family": m.family,
                "arch": m.arch,
                "epochs": _epochs_text(m.epochs()),
                "file": m.checkpoint.file,
            }
            for m in reg.methods.values()
        ]
        print(table(rows, ["name", "title", "family", "arch", "epochs", "file"]))
    elif what == "datasets":
        rows = [
            {"name": d.name, "title": d.title, "task": d.task, "classes": d.num_classes or "-", "root": d.root}
            for d in reg.datasets.values()
        ]
        print(table(rows, ["name", "title", "task", "classes", "root"]))
    elif what == "protocols":
        rows = [
            {
                "name": p.name,
                "kind": p.kind,
                "title": p.title,
                "datasets": ", ".join(p.datasets) or "any",
                "gpus": p.resources.gpus,
                "GPU·h/cell": p.resources.gpu_hours,
                "source": p.source_line(),
                "deviations": len(p.recipe.deviations) if p.recipe else "-",
            }
            for p in reg.protocols.values()
        ]
        print(table(rows, ["name", "kind", "title", "datasets", "gpus", "GPU·h/cell", "source", "deviations"]))
        print("(each protocol's source and deviations, value by value: docs/protocols.md)")
    else:
        rows = [
            {
                "name": s.name,
                "title": s.title,
                "methods": len(s.methods),
                "protocols": ", ".join(dict.fromkeys(e.protocol for e in s.grid)),
            }
            for s in reg.suites.values()
        ]
        print(table(rows, ["name", "title", "methods", "protocols"]))
    return 0


def _ls_archs(reg: Registry) -> int:
    """The aliases with what they are (read from the built models), and the rule for every other name."""
    import json

    from harness.archnames import timm_names
    from harness.models.archs import ALIASES, arch_facts

    users: dict[tuple[str, str], list[str]] = {}  # (arch, its arch_kwargs) -> the methods built so
    for m in reg.methods.values():
        users.setdefault((m.arch, json.dumps(m.arch_kwargs, sort_keys=True)), []).append(m.name)
    rows = []
    for name, kw in [*((a, "{}") for a in ALIASES), *sorted(set(users) - {(a, "{}") for a in ALIASES})]:
        f = arch_facts(name, **json.loads(kw))
        rows.append(
            {
                "arch": name + ("" if kw == "{}" else f" {kw}"),
                "what": f.description,
                "facts (read from the built model)": f.summary(),
                "params": f"{f.params / 1e6:.1f}M",
                "methods": ", ".join(sorted(users.get((name, kw), []))) or "-",
            }
        )
    print(table(rows, ["arch", "what", "facts (read from the built model)", "params", "methods"]))
    print(
        f"\nAny of timm's {len(timm_names())} model names works as `arch:` too (`timm.list_models()`; e.g. "
        "vit_small_patch14_reg4_dinov2, vit_small_patch16_dinov3_qkvb, vit_base_patch16_224, convnext_tiny), with "
        "`arch_kwargs:` passed to timm.create_model. Weights always come from the method's checkpoint file "
        "(never downloaded); release layouts load with `convert: timm` (timm's own converter). README: "
        "'Adding your own method'."
    )
    return 0


def _validate_one(reg: Registry, method: str, epoch: int | None) -> int:
    """Load one checkpoint file of a method and say what matched, what was left out, and the architecture."""
    from harness.models.archs import ArchError
    from harness.models.checkpoints import CheckpointError, load_backbone

    spec = reg.method(method)
    epoch = spec.epochs()[-1] if epoch is None else epoch
    try:
        loaded = load_backbone(spec, epoch, registry=reg)
    except (CheckpointError, ArchError) as e:
        print(f"sdd validate: method '{method}', epoch {epoch}: {e}", file=sys.stderr)
        return 1
    f = loaded.backbone.info
    rule = spec.checkpoint.state_dict
    print(f"{loaded.path}: loads as method '{method}', epoch {epoch}")
    print(f"  architecture: {spec.arch}{f' {spec.arch_kwargs}' if spec.arch_kwargs else ''} -- {f.summary()}")
    print(
        f"  matched: all {loaded.loaded_keys} backbone tensors ({f.params / 1e6:.1f}M parameters), every value finite"
        + (f"; converted by `convert: {rule.convert}`" if rule.convert else "")
    )
    stored = "not stored in the file" if loaded.stored_epoch is None else f"the file says {loaded.stored_epoch}"
    print(f"  epoch: {stored}")
    left = loaded.unexpected_keys
    shown = ", ".join(left[:10]) + (f" ... ({len(left)} in all)" if len(left) > 10 else "")
    print(f"  left out (in the file after the rule, not part of the backbone): {shown or 'nothing'}")
    return 0


def cmd_validate(reg: Registry, args) -> int:
    counts = ", ".join(f"{len(getattr(reg, k))} {k}" for k in KINDS)
    print(f"registry {reg.root}: OK ({counts})")
    if args.method:
        return _validate_one(reg, args.method, args.epoch)
    if args.epoch is not None:
        print("sdd validate: --epoch needs --method NAME", file=sys.stderr)
        return 2
    if args.suite:  # (implies --paths) the suite's own checkpoints and data, every file, the first and last loaded
        problems = preflight(reg, args.suite, load=True)
        if problems:
            _print_problems("validate", problems)
            return 1
        print(
            f"suite {args.suite}: every dataset split and checkpoint file is in place; the first and last checkpoint "
            f"of each method load through their state-dict rules"
        )
        return 0
    if not args.paths:
        unset = sorted(
            {v for m in reg.methods.values() for v in env_vars(m.checkpoint.dir, required_only=True)}
            | {v for d in reg.datasets.values() for v in env_vars(d.root, required_only=True)}
        )
        unset = [v for v in unset if v not in os.environ]
        if unset:
            print(
                f"note: environment variables not set: {', '.join(unset)} "
                f"(needed to locate checkpoints and data; `sdd validate --paths` checks them)"
            )
        return 0
    missing = 0
    rows = []
    for kind, specs, attr in (
        ("method", reg.methods.values(), "checkpoint.dir"),
        ("dataset", reg.datasets.values(), "root"),
    ):
        for s in specs:
            raw = s.checkpoint.dir if kind == "method" else s.root
            try:
                path = resolve_path(raw, source=s.source, key=attr)
                state = "ok" if Path(path).is_dir() else "missing"
                if kind == "method" and state == "ok":  # a folder is not enough: do its files match?
                    n = sum((Path(path) / s.checkpoint.file_name(e)).is_file() for e in s.epochs())
                    state = f"ok ({n} of {len(s.epochs())} files)" if n else f"no file matches '{s.checkpoint.file}'"
            except RegistryError:
                path, state = (
                    raw,
                    "env var unset: " + ", ".join(v for v in env_vars(raw, required_only=True) if v not in os.environ),
                )
            missing += not state.startswith("ok")
            rows.append({"kind": kind, "name": s.name, "path": path, "state": state})
    print(table(rows, ["kind", "name", "path", "state"]))
    print(f"{missing} of {len(rows)} paths missing")
    return 1 if (missing and args.strict) else 0


def cmd_plan(reg: Registry, args) -> int:
    from harness.plan import build_plan, cell_states, guided

    cells = build_plan(reg, args.suite, protocols=args.protocol, methods=args.method)
    results = Path(args.results)
    full, waiting, selected = cells, {}, {}
    if args.guided:
        cells, waiting, selected = guided(reg, cells, results)
    why: dict[str, str] = {}
    states = cell_states(cells, results, why)
    suite = reg.suite(args.suite)
    from harness.fingerprint import identical_checkpoints

    for same in identical_checkpoints(full):  # two epochs, one content: two `ok` records of one number
        print(f"warning: {same}", file=sys.stderr)
    if args.cells:
        rows = [
            {"state": str(states[c.id]), "cell": c.id, "config": c.config_hash, "why": why.get(c.id, "")} for c in cells
        ]
        print(table(rows, ["state", "cell", "config", "why"]))
        return 0
    print(f"suite {suite.name}: {suite.title}")
    _print_plan_summary(reg, cells, states, results)
    _note_recipe_priced(cells)
    _note_no_gpu(reg, cells)
    _print_stale(cells, states, why, args.suite)
    _print_corrupt(cells, results)
    from harness.records import stray_files

    stray = stray_files(results, suite.name)
    if stray:
        print()
        _print_stray(stray)
    _print_per_method(cells, states)
    if args.guided:
        _print_guided(reg, full, cells, waiting, selected)
    print(f"\nrecords under {results / suite.name / 'runs'}; `sdd plan --suite {suite.name} --cells` lists every cell")
    return 0


PLAN_COLUMNS = [
    ("protocol", "protocol"),
    ("datasets", "datasets"),
    ("methods", "methods"),
    ("cells", "cells"),
    ("done", "done"),
    ("failed", "failed"),
    ("stale", "stale"),
    ("corrupt", "corrupt"),
    ("imported", "imported"),
    ("live", "live"),
    ("todo", "todo"),
    ("gpu_h_cell", "GPU·h/cell"),
    ("gpu_h_all", "GPU·h all"),
    ("gpu_h_left", "GPU·h left"),
    ("priced_from", "priced from"),
]


def _note_recipe_priced(cells) -> None:
    """Say which cells were priced from their recipes (the fine-tuning protocols: days of GPUs each) and what share
    of the grid's GPU·h they are."""
    priced = [c for c in cells if c.priced_from == "recipe"]
    if not priced:
        return
    total, theirs = sum(c.gpu_hours for c in cells), sum(c.gpu_hours for c in priced)
    top = max(priced, key=lambda c: c.gpu_hours)
    print(
        f"\nnote: {len(priced)} cell(s) are priced from their recipes (epochs x images x the protocol file's "
        f"train_s_per_image, an assumed per-image cost): {theirs:,.1f} GPU·h, {100 * theirs / total:.0f}% of this "
        f"grid's {total:,.1f}: end-to-end fine-tuning, days of GPU time per cell (the largest: {top.protocol} on "
        f"{top.dataset}, {top.gpu_hours:,.1f} GPU·h); `--protocol` plans the others alone."
    )


def _note_no_gpu(reg: Registry, cells) -> None:
    """On a machine without a GPU, say which of the plan's protocols need one and what runs here instead."""
    from harness.device import no_gpu_here
    from harness.launch import gpu_steer

    if not no_gpu_here():
        return
    note = gpu_steer(reg, {c.protocol for c in cells}, "this machine")
    if note:
        print(f"\nnote: {note}.")


def _print_plan_summary(reg: Registry, cells, states: dict, results: Path) -> None:
    """One row per protocol (cells by state, GPU·h) and the total; rare states only when they occur."""
    from harness.plan import measured_prices, summarize

    rows = summarize(cells, states, measured_prices(reg, cells, states, results))
    counted = ("cells", "done", "failed", "stale", "corrupt", "imported", "live", "todo", "gpu_h_all", "gpu_h_left")
    total = {"protocol": "total", **{k: sum(r[k] for r in rows) for k in counted}}
    shown = [(c, h) for c, h in PLAN_COLUMNS if c not in ("corrupt", "imported", "live") or total[c]]
    print(table(rows + [total], [c for c, _ in shown], [h for _, h in shown]))


def _print_per_method(cells, states: dict) -> None:
    """Per method: the checkpoints each protocol × dataset runs over, and how many of its cells are done."""
    by_method: dict[str, dict] = {}
    for c in cells:
        r = by_method.setdefault(c.method, {"method": c.method, "epochs": set(), "cells": 0, "done": 0})
        r["epochs"].add(c.epoch)
        r["cells"] += 1
        r["done"] += states[c.id] == "done"
    mrows = [{**r, "epochs": _epochs_text(tuple(sorted(r["epochs"])))} for r in by_method.values()]
    print()
    print(table(mrows, ["method", "epochs", "cells", "done"]))


def _print_guided(reg: Registry, full, cells, waiting: dict, selected: dict) -> None:
    from harness.plan import guided_projection

    full_h = sum(c.gpu_hours for c in full)
    n_proj, proj_h = guided_projection(reg, full, cells, waiting)
    print(
        f"\nguided grid: {len(cells)} cells now; at most {n_proj} of the full grid's {len(full)} cells in all, "
        f"{proj_h:,.3f} of {full_h:,.3f} GPU·h: {full_h - proj_h:,.3f} GPU·h "
        f"({100 * (1 - proj_h / full_h) if full_h else 0:.0f}%) saved"
    )
    for m, sel in sorted(selected.items()):
        print(f"  {m}: DSE top-3 epochs {sel} + last checkpoint")
    for m, why in sorted(waiting.items()):
        print(f"  {m}: downstream cells wait ({why})")


def _print_stale(cells, states: dict, why: dict[str, str], suite: str) -> None:
    """Why stale cells are to run again, grouped (the full reason of each: `--cells`)."""
    from harness.plan import reason_groups

    stale = {c.id: why.get(c.id, "?") for c in cells if states[c.id] == "stale"}
    if stale:
        print(f"\n{len(stale)} stale cell(s) will run again:")
        for kind, n, example in reason_groups(stale):
            print(f"  {n:6d}  {kind}  (e.g. {example}: {stale[example]})")
        print(f"  every cell's reason: sdd plan --suite {suite} --cells")


def _print_stray(stray: list, limit: int = 10) -> None:
    if stray:
        print(
            f"{len(stray)} stray file(s) in the record folders are not records and were not read (only "
            f"ep<NNNN>.json is; move them out of results/):\n  "
            + "\n  ".join(map(str, stray[:limit]))
            + (f"\n  ... {len(stray) - limit} more" if len(stray) > limit else "")
        )


def _print_corrupt(cells, results: Path, limit: int = 20) -> None:
    bad = [(c, why) for c in cells for state, why in [c.state(results)] if state == "corrupt"]
    if bad:
        print(f"\n{len(bad)} corrupt record(s) (counted as to do; a re-run replaces them):")
        for c, why in bad[:limit]:
            print(f"  {c.record_path(results)}: {why}")
        if len(bad) > limit:
            print(f"  ... {len(bad) - limit} more")


def cmd_collect(reg: Registry, args) -> int:
    import time

    from harness.collect import CollectError, write_collected

    t = time.perf_counter()
    try:
        s = write_collected(reg, args.suite, Path(args.results), skip_corrupt=args.skip_corrupt)
    except CollectError as e:
        print(f"sdd collect: {e}", file=sys.stderr)
        return 1
    print(
        f"collected {s.records} records ({s.ok} ok, {s.records - s.ok} failed) -> {s.csv}"
        f"{' and results.parquet' if s.parquet else ''} in {time.perf_counter() - t:.1f} s"
    )
    if s.corrupt:
        print(f"left out {len(s.corrupt)} corrupt record(s) (--skip-corrupt):\n  " + "\n  ".join(s.corrupt[:20]))
    _print_stray(s.stray)
    if s.missing:
        print(
            f"missing {sum(s.missing.values())} of the plan's cells (no usable record yet): "
            + ", ".join(f"{p} {n}" for p, n in sorted(s.missing.items()))
        )
    return 0


def cmd_tables(reg: Registry, args) -> int:
    import time

    from harness.analysis import TablesError, UnknownTable, write_all

    t = time.perf_counter()
    suite_dir = Path(args.results) / args.suite
    try:
        table, tables, files, figures, report = write_all(
            suite_dir,
            args.protocol,
            figures=args.figures,
            include_stale=args.include_stale,
            prefer=args.prefer,
            include_outside_grid=args.include_outside_grid,
            show=args.show,
        )
    except TablesError as e:
        print(f"sdd tables: {e}", file=sys.stderr)
        return 2 if isinstance(e, UnknownTable) else 1
    print(
        f"wrote {len(files)} table files under {suite_dir / 'tables'}"
        + (f", {len(figures)} figures under {suite_dir / 'figures'}" if args.figures else "")
        + f" and {report} in {time.perf_counter() - t:.1f} s"
    )
    if args.show:
        from harness.analysis.render import markdown

        for tb in tables:
            if tb.name in args.show:
                print()
                print(markdown(tb.frame, tb.title, tb.notes, tb.marks, tb.context))
    return 0


def cmd_figures(reg: Registry, args) -> int:
    args.figures, args.show = True, []
    return cmd_tables(reg, args)


def cmd_submit(reg: Registry, args) -> int:
    from harness.clusters import load_cluster
    from harness.launch import submit

    cluster = load_cluster(args.cluster)
    _note_unset(reg, args.suite)
    s = submit(
        reg,
        args.suite,
        cluster,
        Path(args.results),
        protocols=args.protocol,
        methods=args.method,
        dry_run=args.dry_run,
        retry_failed=args.retry_failed,
        max_attempts=args.max_attempts,
        guided=args.guided,
        replace_live=getattr(args, "replace_live", False),
    )
    for m, why in sorted(s.get("waiting", {}).items()):
        print(f"guided: {m}'s downstream cells wait ({why}); run `sdd submit --guided` again when the metrics are done")
    if s.get("warning"):
        print(f"warning: {s['warning']}", file=sys.stderr)
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(s["skipped"].items())) or "none"
    verb = "would submit" if args.dry_run else "submitted"
    print(f"suite {s['suite']} on {s['cluster']}: {s['cells']} cells; skipped: {skipped}; {verb} {s['to_submit']}")
    if s.get("stale"):
        from harness.plan import reason_groups

        print(f"  of which {len(s['stale'])} stale (their records no longer count):")
        for kind, n, example in reason_groups(s["stale"]):
            print(f"    {n:6d}  {kind}  (e.g. {example}: {s['stale'][example]})")
    _print_arrays(s["arrays"], cluster)
    if args.dry_run and cluster.executor in ("local", "inline"):  # this machine would run them
        from harness.plan import build_plan

        _note_no_gpu(reg, build_plan(reg, args.suite, protocols=args.protocol, methods=args.method))
    if not s["to_submit"] or args.dry_run:
        return 0
    if cluster.executor == "slurm" or (cluster.executor == "local" and args.no_wait):
        print(
            f"watch: sdd status --suite {args.suite} --watch 30   |   when done: sdd collect --suite {args.suite} "
            f"&& sdd tables --suite {args.suite} --figures"
        )
        return 0
    if cluster.executor == "local":  # this machine's workers: wait for them, as inline does
        from harness.launch import wait

        wait(reg, args.suite, Path(args.results), cells=set(s["submitted"]))
    return _report_outcome(reg, args, s["submitted"])


def _note_unset(reg: Registry, suite: str) -> None:
    """Once: the variables the suite's checkpoint and data paths need that are not set here (a login node
    without SDD_CKPT_ROOT can still plan: records decide by their config hash alone)."""
    s = reg.suite(suite)
    need: dict[str, set] = {}
    for m in s.methods:
        for v in env_vars(reg.method(m).checkpoint.dir, required_only=True):
            need.setdefault(v, set()).add(f"method {m}")
    for d in {d for e in s.grid for d in e.datasets}:
        for v in env_vars(reg.dataset(d, suite).root, required_only=True):
            need.setdefault(v, set()).add(f"dataset {d}")
    for v, users in sorted(need.items()):
        if v not in os.environ:
            print(
                f"note: {v} is not set here ({len(users)} path(s) use it): checkpoint files are not checked; done "
                f"and stale cells are judged by their records' config hash alone"
            )


def _print_arrays(arrays: list[dict], cluster) -> None:
    """One aligned row per resource profile: what each job array asks for, where, and how it is split."""
    rows = []
    for a in arrays:
        p = a["profile"]
        procs = p.get("tasks", 1) * p.get("nodes", 1)
        n = a["cells"]
        split = (
            ""
            if cluster.executor != "slurm"
            else (
                f"{-(-n // cluster.array_limit)} arrays of <= {cluster.array_limit:,}"
                if n > cluster.array_limit
                else "1 array"
            )
        )
        rows.append(
            {
                "protocol": p["protocol"],
                "cells": n,
                "gpus": p["gpus"],
                "processes": procs,
                "nodes": p.get("nodes", 1),
                "cpus/proc": p["cpus"],
                "mem": f"{p['mem_gb']:g}G",
                "time": f"{p['time_min']}min",
                "partition": p.get("partition") or "(default)",
                "parallel": p["array_parallelism"],
                "arrays": split,
                "jobs": " ".join(a["job_ids"]) or "(dry run)",
            }
        )
    if rows:
        cols = [
            c
            for c in (
                "protocol",
                "cells",
                "gpus",
                "processes",
                "nodes",
                "cpus/proc",
                "mem",
                "time",
                "partition",
                "parallel",
                "arrays",
                "jobs",
            )
            if c != "arrays" or any(r["arrays"] for r in rows)
        ]
        print("  " + table(rows, cols).replace("\n", "\n  "))
    for a in arrays:
        if a.get("note"):
            print(f"  {a['profile']['protocol']}: {a['note']}")


def _report_outcome(reg: Registry, args, submitted: list[str]) -> int:
    """After cells ran here (inline, local): exit 1 with a summary when any of them did not end ok."""
    from harness.launch import cell_statuses

    rows = [r for r in cell_statuses(reg, args.suite, Path(args.results)) if r["cell"] in set(submitted)]
    bad = [r for r in rows if r["state"] != "done"]
    if not bad:
        print(f"all {len(rows)} cells ok; next: sdd collect --suite {args.suite} && sdd tables --suite {args.suite}")
        return 0
    print(f"{len(bad)} of {len(rows)} cells failed:", file=sys.stderr)
    for r in bad[:20]:
        print(f"  {r['cell']}: {r['state']}: {r['reason'] or 'no record'}", file=sys.stderr)
    if len(bad) > 20:
        print(f"  ... {len(bad) - 20} more (sdd status --suite {args.suite} --all)", file=sys.stderr)
    print(f"retry: sdd submit --suite {args.suite} --cluster {args.cluster} --retry-failed", file=sys.stderr)
    return 1


def cmd_status(reg: Registry, args) -> int:
    import time

    from harness import ledger
    from harness.launch import STATES, cell_statuses, status_table
    from harness.suitedir import SuiteFolderError

    results = Path(args.results)
    if args.repair_ledger:
        moved, n = ledger.repair(results, args.suite)
        print(
            f"ledger {ledger.ledger_path(results, args.suite)} rebuilt from {n} record(s)"
            + (f"; the old file is kept as {moved}" if moved else "")
            + ". Jobs still queued have no record yet and are not in it: check `squeue` before resubmitting."
        )
    failing = 0  # consecutive refreshes in which the scheduler could not be asked
    read_only = False
    while True:
        try:
            ref = ledger.refresh(results, args.suite, write=not read_only)
        except SuiteFolderError as e:  # e.g. a read-only results folder: show what is there, change nothing
            print(f"note: {e}; the ledger is read, not updated", file=sys.stderr)
            read_only = True
            ref = ledger.refresh(results, args.suite, write=False)
        rows = cell_statuses(reg, args.suite, results, protocols=args.protocol, methods=args.method, refresh=ref)
        agg = status_table(rows)
        tot = {k: sum(a[k] for a in agg) for k in ("cells", *STATES)}
        if args.watch:
            print("\033[2J\033[H", end="")
        shown = [k for k in STATES if k not in ("imported", "live", "unknown", "corrupt", "stale") or tot[k]]
        print(table(agg + [{"protocol": "total", "method": "", **tot}], ["protocol", "method", "cells", *shown]))
        if ref.warning:
            print(f"\nwarning: {ref.warning}; their ledger entries were left as they were", file=sys.stderr)
        corrupt = [r for r in rows if r["state"] == "corrupt"]
        if corrupt:
            print(f"\n{len(corrupt)} corrupt record(s) (to do again; a re-run replaces them):")
            for r in corrupt[: None if args.all else 20]:
                print(f"  {r['reason']}")
        stale = {r["cell"]: r["reason"] or "?" for r in rows if r["state"] == "stale"}
        if stale:
            from harness.plan import reason_groups

            print(f"\n{len(stale)} stale cell(s) (their records no longer count; the next submit runs them):")
            for kind, n, example in reason_groups(stale):
                print(f"  {n:6d}  {kind}  (e.g. {example}: {stale[example]})")
        failed = [r for r in rows if r["state"] == "failed"]
        if failed:
            print(f"\n{len(failed)} failed cell(s):")
            for r in failed[: None if args.all else 20]:
                print(
                    f"  {r['cell']}  (attempts {r['attempts']})  {r['reason']}"
                    + (f"\n      log: {r['log']}" if r["log"] else "")
                    + (f"\n      cell log: {r['cell_log']}" if r.get("cell_log") and r["cell_log"] != r["log"] else "")
                )
            if len(failed) > 20 and not args.all:
                print(f"  ... {len(failed) - 20} more (--all)")
            print(f"retry: sdd submit --suite {args.suite} --cluster <profile> --retry-failed")
        failing = failing + 1 if ref.warning else 0
        if not args.watch or (tot["running"] + tot["pending"] + tot["unknown"]) == 0:
            return 0
        if failing >= 3:
            print(f"status --watch: gave up after {failing} refreshes in a row without job states", file=sys.stderr)
            return 1
        time.sleep(args.watch)


def preflight(reg: Registry, suite: str, load: bool = False) -> list[str]:
    """Everything a suite needs that is not right on disk, all at once: dataset roots and layouts (every
    split any of its protocols reads), checkpoint files; with `load`, also the first and the last
    checkpoint of each method read through its state-dict rule into its architecture (no forward pass:
    wrong keys, prefixes, shapes, epochs or non-finite weights show here, not in a job)."""
    from harness.datasets import DatasetError, check_layout
    from harness.kinds import PROTOCOL_KINDS
    from harness.models.checkpoints import checkpoint_path
    from harness.plan import build_plan

    problems = []
    cells = build_plan(reg, suite)
    for name in sorted({c.dataset for c in cells}):
        protocols = {reg.protocol(c.protocol) for c in cells if c.dataset == name}
        splits = tuple(sorted({s for p in protocols for s in PROTOCOL_KINDS[p.kind].splits_for(p.params)}))
        if not splits:
            continue
        try:
            check_layout(reg.dataset(name, suite), splits=splits)
        except (DatasetError, RegistryError) as e:
            problems.append(str(e))
    unset: dict[str, list[str]] = {}  # variable -> methods that need it: said once, not once per method
    for method in sorted({c.method for c in cells}):
        epochs = sorted({c.epoch for c in cells if c.method == method})
        try:
            missing = [e for e in epochs if not checkpoint_path(reg.method(method), e).is_file()]
        except RegistryError as e:
            var = re.search(r"environment variable (\w+) is not set", str(e))
            if var:
                unset.setdefault(var.group(1), []).append(method)
            else:
                problems.append(str(e))
            continue
        if missing:
            from harness.models.checkpoints import _missing_hint, broken_link

            spec = reg.method(method)
            first = checkpoint_path(spec, missing[0])
            problems.append(
                f"method '{method}': {len(missing)} of {len(epochs)} checkpoints missing "
                f"(first: {first}{broken_link(first) or _missing_hint(spec, first, missing[0])})"
            )
        if load:
            from harness.models.archs import ArchError
            from harness.models.checkpoints import CheckpointError, load_backbone

            for e in sorted({epochs[0], epochs[-1]} - set(missing)):
                try:
                    load_backbone(method, e, registry=reg)
                except (CheckpointError, ArchError) as err:
                    problems.append(f"method '{method}', epoch {e}: {err}")
    from harness.fingerprint import identical_checkpoints

    problems += identical_checkpoints(cells)  # two epochs, one content: a copy under the wrong name
    for var, methods in sorted(unset.items()):
        problems.append(
            f"environment variable {var} is not set: the checkpoints of {len(methods)} method(s) are "
            f"found through it ({', '.join(methods[:6])}{' ...' if len(methods) > 6 else ''}); "
            f"export {var}=/path/to/checkpoints"
        )
    return problems


def _print_problems(command: str, problems: list[str], when: str = "") -> None:
    print(f"sdd {command}: {len(problems)} problem(s){when}:", file=sys.stderr)
    for p in problems:
        print("  - " + p.replace("\n", "\n    "), file=sys.stderr)
    print("fix the paths (SDD_DATA_ROOT, SDD_CKPT_ROOT) or the registry files and run again", file=sys.stderr)


def cmd_reproduce(reg: Registry, args) -> int:
    problems = preflight(reg, args.suite, load=True)
    if problems:
        _print_problems("reproduce", problems, " before anything is submitted (nothing was)")
        if args.dry_run:  # still show what would run once they are fixed
            print("what would be submitted once these are fixed:")
            args.protocol = args.method = None
            args.retry_failed = args.no_wait = False
            args.max_attempts = 3
            cmd_submit(reg, args)
        return 1
    print(
        f"preflight: every dataset and checkpoint of suite {args.suite} is in place (first and last checkpoint "
        f"of each method loaded)"
    )
    args.protocol = args.method = None
    args.retry_failed = args.no_wait = False
    args.max_attempts = 3
    return cmd_submit(reg, args)


def cmd_import(reg: Registry, args) -> int:
    from harness.suitedir import suite_lock

    results = Path(args.results)
    reg.suite(args.suite)  # an unknown suite is a registry error before any folder is made for it
    if args.dry_run:
        return _import(reg, args, results)
    with suite_lock(results, args.suite, f"sdd import {args.path} --suite {args.suite}"):
        return _import(reg, args, results)


def _import(reg: Registry, args, results: Path) -> int:
    from harness.importer import ImportError_, plan_import, write_import

    try:
        plan = plan_import(
            reg,
            args.suite,
            Path(args.path),
            results,
            fmt=args.format,
            method=args.method,
            epoch=args.epoch,
            dataset=args.dataset,
            protocol=args.protocol,
            layer=args.layer,
            replace=args.replace,
            take=args.take,
            allow_outside_grid=args.allow_outside_grid,
            scale=args.scale,
        )
    except ImportError_ as e:
        print(f"sdd import: {e}\nnothing was imported", file=sys.stderr)
        return 1
    for n in plan.notes:
        print(f"note: {n}")
    by: dict[tuple, list] = {}
    for it in plan.items:
        by.setdefault((it.protocol, it.dataset, it.method), []).append(it)
    verb = "would import" if args.dry_run else "importing"
    print(f"{verb} {len(plan.items)} record(s) ({plan.format}) into suite {args.suite}:")
    for (proto, ds, method), items in sorted(by.items()):
        eps = tuple(sorted(it.epoch for it in items))
        metrics = sorted({k for it in items for k in it.metrics})
        files = sorted({o["file"] for it in items for o in it.origins.values()})
        print(
            f"  {proto}/{ds}/{method}: epochs {_epochs_text(eps)}; {', '.join(metrics)}"
            + (f"; from {files[0]}" if len(files) == 1 else f"; from {len(files)} files")
        )
        if items[0].outside_suite:
            print(
                f"      protocol {proto} is not run by suite {args.suite}: recorded as outside the suite, never "
                f"planned or run, kept apart in the tables (their own set or columns, named by the protocol)"
            )
        for of in sorted({it.outside_of for it in items if it.outside_grid}):
            eps = _epochs_text(tuple(sorted(it.epoch for it in items if it.outside_grid and it.outside_of == of)))
            print(
                f"      outside {of}, recorded as outside the grid (kept out of the tables unless "
                f"--include-outside-grid): epochs {eps}"
            )
        kept = sorted({m for it in items for m in plan.merges.get(it.key, [])})
        if kept:
            print(f"      merged into earlier imports, which keep: {', '.join(kept)}")
        replaced = sorted({m for it in items for m in plan.replaces.get(it.key, [])})
        if replaced:
            print(f"      replaces the earlier import of: {', '.join(replaced)}")
    if args.dry_run:
        return 0
    written = write_import(plan, reg, args.suite, results)  # all or none
    print(
        f"imported {len(written)} record(s) under {results / args.suite / 'imported'}; next: sdd collect --suite "
        f"{args.suite} && sdd tables --suite {args.suite}"
    )
    return 0


def cmd_demo(reg: Registry, args) -> int:
    from harness.mini import interventions
    from harness.mini.demo import run

    if args.methods and not args.interventions:
        raise HarnessError("--methods chooses the methods of --interventions: add --interventions")
    if args.methods:
        interventions.plan_for(args.methods)  # an unknown method fails before any work
    rc = run(suite=args.suite, cluster=args.cluster, results=Path(args.results))
    if not args.interventions:
        return rc
    return (
        interventions.run(results=Path(args.results), cluster=args.cluster, suite=args.suite, methods=args.methods)
        or rc
    )


def _tables_flags(p) -> None:
    p.add_argument("--suite", required=True)
    p.add_argument(
        "--protocol",
        help="the linear-probe protocol giving the mIoU (default: every protocol of kind linear in results.csv)",
    )
    p.add_argument(
        "--include-stale", action="store_true", help="keep records of an older recipe (left out and named by default)"
    )
    p.add_argument(
        "--prefer",
        choices=["computed", "imported"],
        default="computed",
        help="a cell with both a computed and an imported record uses this one",
    )
    p.add_argument(
        "--include-outside-grid",
        action="store_true",
        help="keep imported records of epochs outside the suite's grid (left out and named by default)",
    )


def _selection_flags(p, suite_required: bool = True) -> None:
    p.add_argument("--suite", required=suite_required)
    p.add_argument("--protocol", action="append", help="only this protocol (repeatable)")
    p.add_argument("--method", action="append", help="only this method (repeatable)")


def _import_parser(sub, results) -> None:
    p = sub.add_parser(
        "import",
        parents=[results],
        help="numbers you already have (official DSE files, spreadsheets, CSV, mmseg or detectron2 logs) -> records",
    )
    p.add_argument("path", help="a file or a folder")
    p.add_argument("--suite", required=True)
    p.add_argument("--format", default="auto", help="auto (default), dse-official, spreadsheet, csv, mmseg, detectron2")
    p.add_argument("--method", help="the method the file is of (when the file does not say)")
    p.add_argument("--epoch", type=int, help="mmseg / detectron2 runs: the checkpoint they evaluated")
    p.add_argument("--dataset", help="mmseg / detectron2 runs: the dataset they evaluated on")
    p.add_argument(
        "--protocol",
        help="the protocol the numbers belong to (default: the suite's one protocol of a kind that reports them, "
        "said in a note); a probe, dense or classification protocol of the registry that the suite does not run "
        "is recorded as outside the suite and kept apart in the tables",
    )
    p.add_argument("--layer", type=int, help="DSE files: the layer to take (default: the method's last)")
    p.add_argument(
        "--replace",
        action="store_true",
        help="replace the metrics imported before that this file gives again (the record's other metrics are kept)",
    )
    p.add_argument(
        "--take", help="mmseg / detectron2 logs with several evaluations: which one (last, best, or 'iter N')"
    )
    p.add_argument(
        "--scale",
        type=float,
        default=None,
        help="the file's percentages (mIoU, top-1, AP, ...): 100 = given as fractions (0.39 -> 39), "
        "1 = percentages even if all <= 1",
    )
    p.add_argument(
        "--allow-outside-grid",
        action="store_true",
        help="record epochs the suite's grid does not hold for that protocol and dataset, or the method file does "
        "not list, as outside the grid (kept out of every table unless the tables are asked to include them)",
    )
    p.add_argument("--dry-run", action="store_true", help="show what would be written")


def _demo_parser(sub, results) -> None:
    p = sub.add_parser(
        "demo",
        parents=[results],
        help="the whole pipeline in miniature (CPU): mini world, tiny pre-training, suite, tables",
    )
    p.add_argument("--suite", default="mini")
    p.add_argument("--cluster", default="local", help="local (default), inline, or a Slurm profile")
    p.add_argument(
        "--interventions",
        action="store_true",
        help="then the regularisers in the mini world: the degrading methods resumed from their DSE-selected "
        "checkpoints with and without -beta*DSE (and +lambda*W2), 3 seeds, probed; mini DirectCLR's spectrum "
        "(about 8 min more on 2 cores; docs/demo.md)",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        metavar="METHOD",
        help="with --interventions: these methods instead of the degrading ones (any method whose objective "
        "harness/mini/pretrain.py has, with metrics records in the suite)",
    )


def _validate_parser(sub) -> None:
    p = sub.add_parser("validate", help="validate every registry file")
    p.add_argument("--paths", action="store_true", help="also check checkpoint directories and dataset roots")
    p.add_argument(
        "--suite",
        help="check every checkpoint file and dataset split of this suite, and load the first "
        "and last checkpoint of each method",
    )
    p.add_argument("--strict", action="store_true", help="with --paths: exit 1 when a path is missing")
    p.add_argument(
        "--method",
        help="load one checkpoint of this method and print what matched, what was left out, the architecture",
    )
    p.add_argument("--epoch", type=int, help="with --method: the epoch (default: its last)")


def _parser() -> argparse.ArgumentParser:
    results = argparse.ArgumentParser(add_help=False)  # every command that reads or writes results
    results.add_argument(
        "--results", default=str(results_root()), help="results root (default: $SDD_RESULTS, else results/)"
    )
    ap = argparse.ArgumentParser(prog="sdd", description="SDD benchmark-reproduction harness")
    ap.add_argument("--registry", help="registry directory (default: benchmarks/ or $SDD_BENCHMARKS)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ls", help="list registry entries (every kind, or one)")
    p.add_argument("what", nargs="?", choices=[*KINDS, "archs"], help="archs: the architecture names `arch:` takes")
    _validate_parser(sub)
    p = sub.add_parser("plan", parents=[results], help="dry run: the cells of a suite, their state and GPU·h")
    _selection_flags(p)
    p.add_argument("--cells", action="store_true", help="list every cell with its state, config hash and reason")
    p.add_argument(
        "--guided",
        action="store_true",
        help="DSE-guided grid: metrics everywhere, downstream only on the DSE top-3 and the last checkpoint",
    )
    p = sub.add_parser("collect", parents=[results], help="records -> results/<suite>/results.csv (one row per cell)")
    p.add_argument("--suite", required=True)
    p.add_argument(
        "--skip-corrupt",
        action="store_true",
        help="write the table without the corrupt records (listed) instead of refusing",
    )
    p = sub.add_parser("tables", parents=[results], help="results.csv -> tables (Markdown, LaTeX, CSV) and REPORT.md")
    _tables_flags(p)
    p.add_argument("--figures", action="store_true", help="also draw the figures")
    p.add_argument("--show", nargs="*", default=[], help="print these tables (e.g. kendall_tau sdd)")
    _tables_flags(
        sub.add_parser("figures", parents=[results], help="results.csv -> figures (PNG, PDF), tables and REPORT.md")
    )
    p = sub.add_parser(
        "submit", parents=[results], help="submit the suite's cells that need running (one job array per profile)"
    )
    _selection_flags(p)
    p.add_argument("--cluster", required=True, help="profile in slurm/clusters/, or local / inline")
    p.add_argument("--dry-run", action="store_true", help="show what would be submitted")
    p.add_argument("--retry-failed", action="store_true", help="also resubmit failed cells")
    p.add_argument(
        "--replace-live",
        action="store_true",
        help="recompute from their checkpoint files the cells whose record the DSE monitor wrote during training",
    )
    p.add_argument("--max-attempts", type=int, default=3, help="give up on a cell after this many attempts")
    p.add_argument("--guided", action="store_true", help="DSE-guided grid (see `sdd plan --guided`)")
    p.add_argument(
        "--no-wait", action="store_true", help="local executor: return at once instead of waiting for the workers"
    )
    p = sub.add_parser(
        "reproduce", parents=[results], help="check every dataset and checkpoint of a suite, then submit it"
    )
    p.add_argument("--suite", default="sdd")
    p.add_argument("--dry-run", action="store_true", help="check, and say what would be submitted")
    p.add_argument("--cluster", required=True)
    p.add_argument("--guided", action="store_true")
    p = sub.add_parser(
        "status", parents=[results], help="cells done / running / pending / failed per protocol and method"
    )
    _selection_flags(p)
    p.add_argument("--watch", type=float, default=0, metavar="SECONDS", help="refresh until nothing is queued")
    p.add_argument("--all", action="store_true", help="list every failed cell")
    p.add_argument(
        "--repair-ledger", action="store_true", help="move an unreadable ledger aside and rebuild it from the records"
    )
    _import_parser(sub, results)
    _demo_parser(sub, results)
    return ap


COMMANDS = {
    "ls": cmd_ls,
    "validate": cmd_validate,
    "plan": cmd_plan,
    "collect": cmd_collect,
    "tables": cmd_tables,
    "figures": cmd_figures,
    "submit": cmd_submit,
    "status": cmd_status,
    "reproduce": cmd_reproduce,
    "demo": cmd_demo,
    "import": cmd_import,
}


def _say_whose_registry(args) -> None:
    """An `sdd` runs the code, registry and results of the clone it was installed from: said once when that is
    not the current directory's (a second clone sharing one .venv would otherwise read the first one's)."""
    import os

    from harness.registry import DEFAULT_BENCHMARKS

    if args.registry or os.environ.get("SDD_BENCHMARKS"):
        return  # chosen explicitly
    here = Path.cwd() / "benchmarks"
    if here.is_dir() and here.resolve() == Path(DEFAULT_BENCHMARKS).resolve():
        return
    results = (
        getattr(args, "results", None) or os.environ.get("SDD_RESULTS") or Path(DEFAULT_BENCHMARKS).parent / "results"
    )
    other = (
        f"; this directory has a registry of its own: `{here.parent}/.venv/bin/sdd` or --registry {here}"
        if here.is_dir()
        else ""
    )
    print(
        f"sdd: registry {DEFAULT_BENCHMARKS}, results under {results} (the clone this sdd was installed from){other}",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # as a command: `sdd ... | head` ends quietly instead of a BrokenPipeError
        import signal

        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    args = _parser().parse_args(argv)
    try:
        reg = load_registry(args.registry)
        _say_whose_registry(args)
        return COMMANDS[args.cmd](reg, args)
    except FileNotFoundError as e:
        print(f"sdd: {e}", file=sys.stderr)
        return 2
    except RegistryError as e:
        print(f"sdd: registry error:\n{e}", file=sys.stderr)
        return 2
    except HarnessError as e:  # every other error of the harness names the input and the way out
        print(f"sdd: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file or folder that cannot be read or written: named, with the way out
        from harness.atomic import write_error

        print(f"sdd: {write_error(e.filename or '(a file)', e, 'use')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\nsdd: interrupted. Nothing is half-written: finished cells have their records, a cell that was "
            "running has none (its saved progress is kept). Run the same command again to resume.",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
