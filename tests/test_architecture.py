"""The house's floors (docs/architecture.md): no module imports one on a higher floor, lazy imports
inside functions included; and each concern has one owner."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "harness"

# module (or package) prefix -> floor; the longest matching prefix wins
FLOORS = {
    "harness.atomic": 0,
    "harness.errors": 0,
    "harness.paths": 0,
    "harness.params": 0,
    "harness.device": 0,
    "harness.fingerprint": 0,
    "harness.kinds": 0,
    "harness.archnames": 0,
    "harness.selection": 0,
    "harness.metrics": 0,
    "harness.mmcv_shim": 0,
    "harness.registry": 1,
    "harness.records": 1,
    "harness.suitedir": 1,
    "harness.clusters": 2,
    "harness.datasets": 2,
    "harness.models": 2,
    "harness.ledger": 2,
    "harness.plan": 2,
    "harness.features": 3,
    "harness.jobs": 4,
    "harness.launch": 5,
    "harness.monitor": 5,
    "harness.collect": 6,
    "harness.importer": 6,
    "harness.analysis": 7,
    "harness.mini": 8,
    "harness.cli": 9,
    "harness.__main__": 9,
}


def floor_of(module: str) -> int:
    if module == "harness":  # the empty package root
        return 0
    best = max((p for p in FLOORS if module == p or module.startswith(p + ".")), key=len, default=None)
    assert best is not None, f"module {module} has no floor in tests/test_architecture.py (and docs/architecture.md)"
    return FLOORS[best]


def modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        yield name, path


def harness_imports(name: str, path: Path):
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                targets = [f"{base}.{node.module}" if node.module else base]
            else:
                targets = [node.module or ""]
            # `from harness import records` imports the module harness.records
            if targets[0] == "harness":
                targets = [f"harness.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            if t.startswith("harness"):
                yield node.lineno, t


def test_every_module_has_a_floor_and_imports_only_its_floor_or_below():
    bad = []
    for name, path in modules():
        own = floor_of(name)
        for line, target in harness_imports(name, path):
            if floor_of(target) > own:
                bad.append(
                    f"{path.relative_to(ROOT)}:{line}: {name} (floor {own}) imports {target} (floor {floor_of(target)})"
                )
    assert not bad, "imports that run upwards:\n" + "\n".join(bad)


def test_the_floor_list_matches_the_architecture_doc():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for prefix in FLOORS:
        short = prefix.removeprefix("harness.")
        assert re.search(rf"\b{re.escape(short)}\b", doc), f"docs/architecture.md does not place `{short}`"


def test_one_owner_for_imagenet_normalisation_and_the_selection_rule():
    """The constants and the λ / top-3 rule are written once; everything else imports them."""
    owners = {
        r"0\.485": "harness/datasets.py",
        r"123\.675": None,
        r"pstdev": "harness/selection.py",
        r"def local_maxima": "harness/selection.py",
        r"def dse_lambda": "harness/selection.py",
    }
    for pattern, owner in owners.items():
        hits = sorted(str(p.relative_to(ROOT)) for p in PKG.rglob("*.py") if re.search(pattern, p.read_text()))
        assert hits == ([owner] if owner else []), f"{pattern} written in {hits}, expected only in {owner}"


def _parents(tree):
    out = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            out[child] = node
    return out


def test_no_protocol_kind_name_is_written_outside_kinds_and_its_own_job():
    """A kind describes itself in harness/kinds.py; the planner, importer and tables read that table. A kind
    name written elsewhere (`kind == "linear"`) is knowledge leaking out of its one place. The record field
    `metrics` (a subscript, a dict key, `.get("metrics")`) is not the kind of the same name."""
    from harness.kinds import PROTOCOL_KINDS

    own = {k: {v.job} | ({"harness.jobs.maskrcnn_d2"} if k == "maskrcnn" else set()) for k, v in PROTOCOL_KINDS.items()}
    bad = []
    for name, path in modules():
        if name == "harness.kinds":
            continue
        tree = ast.parse(path.read_text())
        parents = _parents(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in PROTOCOL_KINDS):
                continue
            if name in own[node.value]:
                continue
            par = parents.get(node)
            if isinstance(par, ast.Subscript) and par.slice is node:
                continue  # rec["metrics"]
            if isinstance(par, ast.Dict) and node in par.keys:
                continue  # {"metrics": ...}
            if (
                isinstance(par, ast.Call)
                and isinstance(par.func, ast.Attribute)
                and par.func.attr in ("get", "pop", "setdefault")
                and par.args
                and par.args[0] is node
            ):
                continue  # results.get("metrics")
            if isinstance(par, ast.Assign) and all(isinstance(t, ast.Attribute) for t in par.targets):
                continue  # a framework's own setting, e.g. cfg.SOLVER.WARMUP_METHOD = "linear"
            bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: the kind name {node.value!r}")
    assert not bad, "protocol kind names outside harness/kinds.py and the kind's own job:\n" + "\n".join(bad)


ADAPTERS = {
    "mmengine": "harness.jobs.mm_adapter",
    "mmseg": "harness.jobs.mm_adapter",
    "detectron2": "harness.jobs.d2_adapter",
}


def test_private_framework_attributes_only_in_their_adapter():
    """mmengine's / mmseg's / detectron2's private or version-sensitive parts (an attribute starting with
    `_`, a module global in capitals) are touched in one adapter module per framework, nowhere else."""
    bad = []
    for name, path in modules():
        tree = ast.parse(path.read_text())
        framework_names = set()  # local names bound to a framework module or object
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mod = node.module if isinstance(node, ast.ImportFrom) else None
                for a in node.names:
                    root = (mod or a.name).split(".")[0]
                    if root in ADAPTERS:
                        framework_names.add((a.asname or a.name).split(".")[0])
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in framework_names
            ):
                attr = node.attr
                private = attr.startswith("_") and not attr.startswith("__")
                constant = attr.isupper() and len(attr) > 1
                if (private or constant) and name not in ADAPTERS.values():
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{attr}")
        for node in ast.walk(tree):  # the runner's loop internals, and model wrappers guessed by attribute
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("_iter", "_LOCAL_PROCESS_GROUP")
                and name not in ADAPTERS.values()
            ):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "hasattr"
                and len(node.args) == 2
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value == "module"
            ):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: hasattr(..., 'module') (use is_model_wrapper)")
    assert not bad, "private framework parts outside the adapters:\n" + "\n".join(bad)


def test_no_import_cycle_among_the_jobs():
    graph: dict[str, set] = {}
    for name, path in modules():
        if name.startswith("harness.jobs"):
            graph[name] = {t for _, t in harness_imports(name, path) if t.startswith("harness.jobs.") and t != name}

    def reach(start, node, seen):
        for nxt in graph.get(node, ()):
            if nxt == start:
                return True
            if nxt not in seen:
                seen.add(nxt)
                if reach(start, nxt, seen):
                    return True
        return False

    cyclic = sorted(n for n in graph if reach(n, n, set()))
    assert not cyclic, f"modules of harness/jobs/ in an import cycle: {cyclic}"


NUMERIC_KERNELS = {("harness/metrics/dse.py", "dse_batch")}  # a transcription kept line for line with its source


def test_no_function_is_longer_than_a_screen():
    long = []
    for _, path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80 and (str(path.relative_to(ROOT)), node.name) not in NUMERIC_KERNELS:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.name} ({n} lines)")
    assert not long, "functions over 80 lines (outside numeric kernels):\n" + "\n".join(long)


# what writes a file in place: only harness/atomic.py may (the generated mini datasets and a cell's
# append-only log are not results: they are named here with the reason)
_WRITES = re.compile(r"\.write_text\(|\.write_bytes\(|torch\.save\(|\.savefig\([^t]|open\([^)]*[\"'][wax]b?[\"']")
_MAY_WRITE = {
    "harness/atomic.py": "the one writer",
    "harness/mini/generate.py": "the mini world's datasets (inputs; the world's marker is written last, atomically)",
    "harness/jobs/__init__.py": "a cell's log, appended line by line while its job runs",
}


def test_every_file_the_harness_writes_goes_through_the_atomic_writer():
    hits = []
    for path in sorted(PKG.rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        if rel in _MAY_WRITE:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if _WRITES.search(line) and "tmp" not in line:
                hits.append(f"{rel}:{i}: {line.strip()}")
    assert not hits, "written in place (use harness.atomic):\n" + "\n".join(hits)
