"""The house's floors (docs/architecture.md): no module imports one on a higher floor, lazy imports
inside functions included; and each concern has one owner."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "harness"

# module (or package) prefix -> floor; the longest matching prefix wins
FLOORS = {
    "harness.atomic": 0, "harness.paths": 0, "harness.params": 0, "harness.device": 0, "harness.fingerprint": 0, "harness.kinds": 0, "harness.selection": 0, "harness.metrics": 0, "harness.mmcv_shim": 0,
    "harness.registry": 1, "harness.records": 1,
    "harness.clusters": 2, "harness.datasets": 2, "harness.models": 2, "harness.ledger": 2, "harness.plan": 2,
    "harness.features": 3,
    "harness.jobs": 4,
    "harness.launch": 5,
    "harness.collect": 6, "harness.importer": 6,
    "harness.analysis": 7,
    "harness.mini": 8,
    "harness.cli": 9, "harness.__main__": 9,
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
                bad.append(f"{path.relative_to(ROOT)}:{line}: {name} (floor {own}) imports {target} "
                           f"(floor {floor_of(target)})")
    assert not bad, "imports that run upwards:\n" + "\n".join(bad)


def test_the_floor_list_matches_the_architecture_doc():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for prefix in FLOORS:
        short = prefix.removeprefix("harness.")
        assert re.search(rf"\b{re.escape(short)}\b", doc), f"docs/architecture.md does not place `{short}`"


def test_one_owner_for_imagenet_normalisation_and_the_selection_rule():
    """The constants and the λ / top-3 rule are written once; everything else imports them."""
    owners = {r"0\.485": "harness/datasets.py", r"123\.675": None, r"pstdev": "harness/selection.py",
              r"def local_maxima": "harness/selection.py", r"def dse_lambda": "harness/selection.py"}
    for pattern, owner in owners.items():
        hits = sorted(str(p.relative_to(ROOT)) for p in PKG.rglob("*.py") if re.search(pattern, p.read_text()))
        assert hits == ([owner] if owner else []), f"{pattern} written in {hits}, expected only in {owner}"
