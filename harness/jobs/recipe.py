"""What a protocol will run, read back as a recipe, and compared with a transcription of its source.

`view` builds what the job builds -- the mmseg config, the torchvision model and training plan, the
parameters a job reads -- on the CPU, without data or training, and returns it as flat recipe fields
(`optimizer.lr`, `schedule.iters`, `backbone.levels`, ...), by the kind's own `recipe_view`.
`compare` checks each field of a golden transcription (tests/golden/recipes/<protocol>.yaml: the source's
value and the line it came from) against it: a difference the protocol file does not list as a deviation
is a failure naming the field, the two values and the source line.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from types import SimpleNamespace

from harness.device import batch_plan, resolve
from harness.kinds import PROTOCOL_KINDS

GOLDEN = Path(__file__).resolve().parents[2] / "tests" / "golden" / "recipes"


def planning_context(cell, reg):
    """What a job's builders read from their context, for a cell built here without running it: the CPU,
    the protocol's typed parameters, and the recipe's global batch over its own GPUs."""
    kind = PROTOCOL_KINDS[cell.config["protocol"]["kind"]]
    resources = reg.protocol(cell.protocol).resources
    params = kind.params.model_validate(cell.config["protocol"]["params"])
    return SimpleNamespace(
        registry=reg,
        placement=resolve(0),
        resources=resources,
        params=params,
        batch=lambda g: batch_plan(g, resources.world_size, 1),
    )


def cell_for(reg, protocol: str, method: str, epoch: int = 0):
    """A cell of this protocol on its first dataset, outside any suite: what `view` reads a recipe from."""
    from harness.plan import Cell, config_hash, resolved_config

    spec = reg.protocol(protocol)
    cfg = resolved_config(reg, protocol, spec.datasets[0], method, epoch)
    return Cell("", protocol, spec.datasets[0], method, epoch, config_hash(cfg), 0.0, cfg, str(reg.root))


def check(reg, protocol: str, **options) -> list[str]:
    """The protocol's recipe against its golden transcription: [] when every value matches or is a listed
    deviation; else one line per difference (see `compare`)."""
    spec = reg.protocol(protocol)
    found = golden(spec)
    if found is None:
        return [f"{protocol}: no transcription of its source under {GOLDEN}"]
    path, source = found
    follows = spec.recipe.follows if spec.recipe else None
    mine = {k: getattr(follows, k) for k in ("repo", "commit", "path")} if follows else None
    theirs = {k: source["follows"][k] for k in ("repo", "commit", "path")}
    if mine != theirs:
        return [f"{protocol}: the protocol file follows {mine}, its transcription ({path.name}) {theirs}"]
    deviations = spec.recipe.deviations if spec.recipe else ()
    return compare(view(cell_for(reg, protocol, source["method"]), reg, **options), source, deviations)


def view(cell, reg, **options) -> dict:
    """The recipe fields of what the cell's job would build (its kind's `recipe_view`; `options` such as
    Mask R-CNN's `backend` go to it)."""
    module = importlib.import_module(PROTOCOL_KINDS[cell.config["protocol"]["kind"]].job)
    if not hasattr(module, "recipe_view"):
        raise NotImplementedError(f"the job of kind {cell.config['protocol']['kind']} has no recipe_view")
    return module.recipe_view(cell, reg, planning_context(cell, reg), **options)


def golden(spec) -> tuple[Path, dict] | None:
    """The transcription of a protocol's source: tests/golden/recipes/<protocol>.yaml, else the one of
    another protocol that follows the same file (upernet_udi reads iBOT's UperNet config as upernet does);
    None when there is none."""
    import yaml

    own = GOLDEN / f"{spec.name}.yaml"
    if own.is_file():
        return own, yaml.safe_load(own.read_text())
    if spec.recipe is None:
        return None
    key = (spec.recipe.follows.repo, spec.recipe.follows.commit, spec.recipe.follows.path)
    for path in sorted(GOLDEN.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        if tuple(data["follows"][k] for k in ("repo", "commit", "path")) == key:
            return path, data
    return None


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def covered(field: str, deviations) -> bool:
    """Whether the protocol file lists a deviation for this field (or a field it belongs to)."""
    return any(field == d.field or field.startswith(d.field + ".") for d in deviations)


def where(entry: dict, source_file: str) -> str:
    """The source line of a transcribed value: "file:line" (a bare line is in the followed file)."""
    line = entry.get("line")
    return line if isinstance(line, str) and ":" in line.split(";")[0] else f"{source_file}:{line}"


def compare(ours: dict, source: dict, deviations=()) -> list[str]:
    """Every field of the source transcription that the built recipe does not match, unless listed as a
    deviation: "field: harness <value> vs source <value> (<file>:<line>)"."""
    problems = []
    path = Path(source["follows"]["path"]).name
    for field, entry in source["values"].items():
        line = where(entry, path)
        if covered(field, deviations):
            continue
        if field not in ours:
            problems.append(f"{field}: the built recipe has no such field (source {entry['value']!r}, {line})")
        elif not _same(ours[field], entry["value"]):
            problems.append(f"{field}: harness {ours[field]!r} vs source {entry['value']!r} ({line})")
    return problems


# ---- docs/protocols.md: one table per protocol, harness value vs source value -------------------------------

MARKER = (
    "<!-- generated by tools/protocol_docs.py from benchmarks/protocols and tests/golden/recipes: do not edit below -->"
)


def _fmt(v) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v).replace("|", "\\|")


def _protocol_section(reg, spec) -> list[str]:
    f = spec.recipe.follows
    url = f"https://github.com/{f.repo}/blob/{f.commit}/{f.path}"
    out = [f"### `{spec.name}` — {spec.title}", "", f"Source: [{f.repo}@{f.commit[:7]} `{f.path}`]({url})"]
    if f.also:
        out.append(f"(also {', '.join(f'`{a}`' for a in f.also)})")
    out += ["", f"Paper: {f.paper}", ""]
    found = golden(spec)
    if found is not None:
        path, source = found
        ours = view(cell_for(reg, spec.name, source["method"]), reg)
        name = Path(source["follows"]["path"]).name
        out += [
            f"Read back from what the job builds for `{source['method']}` "
            f"(`{reg.method(source['method']).arch}`), against `tests/golden/recipes/{path.name}`:",
            "",
            "| field | harness | source | source line | |",
            "|---|---|---|---|---|",
        ]
        for field, entry in source["values"].items():
            line = where(entry, name)
            same = field in ours and _same(ours[field], entry["value"])
            mark = "=" if same else "deviation" if covered(field, spec.recipe.deviations) else "**differs**"
            note = f" ({entry['note']})" if entry.get("note") else ""
            out.append(
                f"| `{field}` | {_fmt(ours.get(field, '—'))} | {_fmt(entry['value'])}{_fmt(note)} | {line} | {mark} |"
            )
        extra = [k for k in ours if k not in source["values"]]
        if extra:
            out += ["", "Built but not in the transcription: " + "; ".join(f"`{k}` {_fmt(ours[k])}" for k in extra)]
        out.append("")
    if spec.recipe.deviations:
        out += ["Deviations:", ""]
        for d in spec.recipe.deviations:
            out.append(f"- **`{d.field}`** — {d.what}. *Why:* {d.why}. *Effect:* {d.effect}.")
        out.append("")
    return out


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def markdown(reg) -> str:
    """The generated part of docs/protocols.md."""
    out = [MARKER, "", "## Recipes and their sources", ""]
    out += [
        "Each protocol with a source, its recipe read back from what its job builds on the CPU (no data,",
        "no training) next to the transcription of the source, value by value (`=`: the same; `deviation`:",
        "different and listed below with why and its effect). `tests/test_recipes.py` fails on any other",
        "difference, naming the field, both values and the source line.",
        "",
    ]
    specs = sorted(reg.protocols.values(), key=lambda p: p.name)
    for spec in (s for s in specs if s.recipe is not None):
        out += _protocol_section(reg, spec)
    out += [
        "## Miniatures (the mini world)",
        "",
        "| protocol | scales down | parameters that differ |",
        "|---|---|---|",
    ]
    for spec in (s for s in specs if s.miniature_of):
        small = _flat(spec.params)
        big = _flat(reg.protocol(spec.miniature_of).params)
        diff = ", ".join(f"`{k}` {_fmt(small[k])} ({_fmt(big.get(k, '—'))})" for k in small if small[k] != big.get(k))
        out.append(f"| `{spec.name}` | `{spec.miniature_of}` | {diff or 'none'} |")
    others = [s for s in specs if s.recipe is None and not s.miniature_of]
    if others:
        out += ["", "Without a source: " + ", ".join(f"`{s.name}` ({s.title})" for s in others) + "."]
    return "\n".join(out) + "\n"
