"""The package's floors: a module imports only from its own floor or below, and MLflow only behind its doors.

Floors, lowest first (README, "Layout"): the ground floor (top-level modules), then streams, adapters,
model and tracking, then learners and routers, then run, then serving, then the commands. An import
that climbs a floor (at module level or inside a function) fails here, naming the file and line.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "continual"
FLOORS = {
    "": 0,  # the ground floor: continual/<module>.py
    "streams": 1,
    "adapters": 1,
    "model": 1,
    "tracking": 1,
    "learners": 2,
    "routers": 2,
    "run": 3,
    "serving": 4,
    "commands": 5,
}
# where `import mlflow` may appear: the tracking wing, and the pyfunc model MLflow loads and serves
MLFLOW_DOORS = ("tracking/", "serving/pyfunc.py", "serving/model_code.py")


def _wing(module: str) -> str:
    """``continual.run.sinks`` -> ``run``; a ground-floor module (``continual.files``) -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) >= 2 and parts[1] in FLOORS else ""


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import in ``path``, at any depth; ``from continual import x`` names
    module ``continual.x``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "continual":
                found += [(node.lineno, f"continual.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")


def _name(path: Path) -> str:
    return ".".join(("continual", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")


def test_every_wing_has_a_floor():
    wings = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()} - {"conf"}
    assert wings <= set(FLOORS), f"wings without a floor in this test and the README: {sorted(wings - set(FLOORS))}"


def test_no_module_imports_from_a_higher_floor():
    climbs = []
    for path in _modules():
        here = FLOORS[_wing(_name(path))]
        for line, module in _imports(path):
            if module.startswith("continual.") and FLOORS[_wing(module)] > here:
                climbs.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    assert not climbs, "imports that climb a floor:\n" + "\n".join(climbs)


def test_mlflow_is_imported_only_behind_its_doors():
    leaks = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path in _modules()
        for line, module in _imports(path)
        if module.split(".")[0] == "mlflow" and not str(path.relative_to(PACKAGE)).startswith(MLFLOW_DOORS)
    ]
    assert not leaks, "mlflow imported outside tracking/ and the pyfunc model: " + ", ".join(leaks)


@pytest.mark.parametrize("wing", sorted(w for w in FLOORS if w))
def test_a_wing_does_not_reach_into_a_sibling_of_its_floor_from_below(wing):
    """Wings of one floor may import each other, but never in a cycle (a cycle would make the floor one room)."""
    mine = [p for p in _modules() if _wing(_name(p)) == wing]
    siblings = {
        _wing(m)
        for p in mine
        for _, m in _imports(p)
        if m.startswith("continual.") and _wing(m) not in ("", wing) and FLOORS[_wing(m)] == FLOORS[wing]
    }
    for sibling in siblings:
        back = [
            f"{p.relative_to(PACKAGE.parent)} imports {m}"
            for p in _modules()
            if _wing(_name(p)) == sibling
            for _, m in _imports(p)
            if _wing(m) == wing and m.startswith("continual.")
        ]
        assert not back, f"{wing} and {sibling} import each other: " + ", ".join(back)


KIND_BY_NAME = re.compile(
    r"(==|!=|\bis\b|\bis not\b|\bin\b)\s*(TOKENS|SEQUENCE|[\"'](tokens|sequence)[\"'])|(TOKENS|SEQUENCE)\s*(==|!=)"
)


def test_task_kinds_are_asked_not_compared_by_name():
    """Only the kinds themselves (``streams/kinds/``) may know a kind by name: everywhere else asks the kind
    object (its metric, pooling, loss, score ...), so a new kind is one new file."""
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}"
        for path in _modules()
        if "kinds" not in path.relative_to(PACKAGE).parts
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if KIND_BY_NAME.search(line)
    ]
    assert not found, "task kinds compared by name:\n" + "\n".join(found)


def test_the_readme_layout_map_is_the_tree():
    """The README's layout map (the fenced block that starts with ``continual/``) names every wing and every
    ground-floor module, and nothing else."""
    readme = (PACKAGE.parent / "README.md").read_text()
    block = re.search(r"```[a-z]*\ncontinual/\n(.*?)```", readme, re.S)
    assert block, "README.md has no layout map (a fenced block starting with 'continual/')"
    named = set(re.findall(r"^\s+([A-Za-z_]+/|[A-Za-z_]+\.py)", block.group(1), re.M))
    tree = {f"{p.name}/" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    tree |= {p.name for p in PACKAGE.glob("*.py")}
    assert named == tree, f"missing from the map: {sorted(tree - named)}; not in the tree: {sorted(named - tree)}"
