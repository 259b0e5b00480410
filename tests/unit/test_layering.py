"""The layers stay apart: the core never imports the pipelines or the API, and only dagster_project imports Dagster.

The API is an edge, like the CLI: it may use the core and the pipelines, and no one imports it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE_TABLE = re.compile(r"ledger_core\.(logs|ledgers|transactions|moves|volumes|accounts|schema_migrations)\b")
RULES = {  # package -> top-level packages it must never import
    "ledger_core": {"ledger_pipelines", "ledger_api", "dagster_project", "dagster", "fastapi", "starlette"},
    "ledger_pipelines": {"ledger_api", "dagster_project", "dagster", "fastapi", "starlette"},
    "ledger_api": {"dagster_project", "dagster"},
    "dagster_project": {"ledger_api"},
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


@pytest.mark.parametrize("package", ["ledger_pipelines", "ledger_api"])
def test_only_the_core_names_its_tables(package):
    """The pipelines read the ledger through its export interface, the API through its reads and writer."""
    found = {str(p.relative_to(ROOT)): _sql_naming_core_tables(p)
             for p in sorted((ROOT / package).rglob("*.py"))}
    assert {path: sql for path, sql in found.items() if sql} == {}
