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
