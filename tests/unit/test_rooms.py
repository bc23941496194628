"""The package's rooms (issue 16): sensors and operators share errors (neoxflow.errors) and checkpoint
assets (neoxflow.neox.checkpoint_assets) through their own modules, never by importing each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "plugins" / "neoxflow"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports count too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize(("room", "other"), [("sensors", "operators"), ("operators", "sensors")])
def test_sensors_and_operators_do_not_import_each_other(room, other):
    offenders = {
        path.name: sorted(m for m in imported_modules(path) if m.startswith(f"neoxflow.{other}"))
        for path in sorted((PACKAGE / room).glob("*.py"))
    }
    assert {name: mods for name, mods in offenders.items() if mods} == {}


def test_imported_modules_sees_function_level_imports(tmp_path):
    """The check above would pass vacuously if the scan missed imports inside functions."""
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from neoxflow.operators.slurm import SlurmOperator\n")
    assert imported_modules(sample) == {"neoxflow.operators.slurm"}


#: The ground floor: pure builders and parsers (command lines, configs, logs, data selections), with no
#: Airflow machinery. Everything above may use it; it never imports what is above it.
GROUND = {"slurm", "data", "neox", "paths", "errors", "backoff"}
#: Connections to the outside (SSH, FSx): the ground floor and nothing else.
HOOKS = {"hooks"}


def room_imports(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Which rooms of the package each room imports (itself left out): the import graph, room by room.
    A room is a sub-package (``slurm``) or a top-level module (``paths``)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).parts
        room = parts[0] if len(parts) > 1 else path.stem
        others = {m.split(".")[1] for m in imported_modules(path) if m.startswith("neoxflow.")} - {room}
        graph.setdefault(room, set()).update(others)
    return graph


def test_the_ground_floor_imports_nothing_above_it():
    graph = room_imports()
    assert GROUND <= set(graph), f"a ground-floor room is missing: {GROUND - set(graph)}"
    assert {room: sorted(graph[room] - GROUND) for room in GROUND if graph[room] - GROUND} == {}


def test_hooks_stand_on_the_ground_floor_only():
    graph = room_imports()
    assert {room: sorted(graph[room] - GROUND) for room in HOOKS if graph[room] - GROUND} == {}


def test_room_imports_sees_a_climb(tmp_path):
    """The two checks above would pass vacuously if the graph missed an edge."""
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "parse.py").write_text("def f():\n    from neoxflow.operators.slurm import X\n")
    (tmp_path / "paths.py").write_text("import neoxflow.slurm.parse\n")
    assert room_imports(tmp_path) == {"slurm": {"operators"}, "paths": {"slurm"}}


@pytest.mark.parametrize("folder", ["plugins/neoxflow", "include/cluster"])
def test_no_module_is_over_500_lines(folder):
    """Issue 16's target: a module a newcomer can read in one sitting; more means two jobs in one room."""
    sizes = {
        str(p.relative_to(REPO)): len(p.read_text(encoding="utf-8").splitlines())
        for p in sorted((REPO / folder).rglob("*.py"))
    }
    assert len(sizes) > 5
    assert {path: n for path, n in sizes.items() if n > 500} == {}
