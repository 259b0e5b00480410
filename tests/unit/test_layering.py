"""The layers stay apart: the core never imports the pipelines, and only dagster_project imports Dagster."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE_TABLE = re.compile(r"ledger_core\.(logs|ledgers|transactions|moves|volumes|accounts|schema_migrations)\b")
RULES = {  # package -> top-level packages it must never import
    "ledger_core": {"ledger_pipelines", "dagster_project", "dagster"},
    "ledger_pipelines": {"dagster_project", "dagster"},
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_imports_respect_the_layers(package):
    offenders = {str(path.relative_to(ROOT)): sorted(_imports(path) & RULES[package])
                 for path in sorted((ROOT / package).rglob("*.py"))}
    assert {path: found for path, found in offenders.items() if found} == {}


def _sql_naming_core_tables(path: Path) -> list[str]:
    """String constants that name the core's tables, outside the pipelines' own migrations (a foreign key)."""
    tree = ast.parse(path.read_text(), str(path))
    migrations = {id(node) for assign in ast.walk(tree) if isinstance(assign, ast.Assign)
                  and any(isinstance(t, ast.Name) and t.id.endswith("MIGRATIONS") for t in assign.targets)
                  for node in ast.walk(assign)}
    return [node.value[:60] for node in ast.walk(tree) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and CORE_TABLE.search(node.value) and id(node) not in migrations]


def test_the_pipelines_read_the_ledger_only_through_its_export_interface():
    found = {str(p.relative_to(ROOT)): _sql_naming_core_tables(p)
             for p in sorted((ROOT / "ledger_pipelines").rglob("*.py"))}
    assert {path: sql for path, sql in found.items() if sql} == {}
