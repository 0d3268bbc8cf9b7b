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


def view(cell, reg) -> dict:
    """The recipe fields of what the cell's job would build (its kind's `recipe_view`)."""
    module = importlib.import_module(PROTOCOL_KINDS[cell.config["protocol"]["kind"]].job)
    if not hasattr(module, "recipe_view"):
        raise NotImplementedError(f"the job of kind {cell.config['protocol']['kind']} has no recipe_view")
    return module.recipe_view(cell, reg, planning_context(cell, reg))


def golden(protocol: str) -> dict | None:
    """The transcription of a protocol's source (None when there is none)."""
    import yaml

    path = GOLDEN / f"{protocol}.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def covered(field: str, deviations) -> bool:
    """Whether the protocol file lists a deviation for this field (or a field it belongs to)."""
    return any(field == d.field or field.startswith(d.field + ".") for d in deviations)


def compare(ours: dict, source: dict, deviations=()) -> list[str]:
    """Every field of the source transcription that the built recipe does not match, unless listed as a
    deviation: "field: harness <value> vs source <value> (<file>:<line>)"."""
    problems = []
    path = Path(source["follows"]["path"]).name
    for field, entry in source["values"].items():
        where = entry.get("line")
        where = where if isinstance(where, str) and ":" in where else f"{path}:{where}"
        if field not in ours:
            problems.append(f"{field}: the built recipe has no such field (source {entry['value']!r}, {where})")
        elif not _same(ours[field], entry["value"]) and not covered(field, deviations):
            problems.append(f"{field}: harness {ours[field]!r} vs source {entry['value']!r} ({where})")
    return problems
