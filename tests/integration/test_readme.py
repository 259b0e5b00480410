"""Every example in the README runs, exactly as written, in README order, in a fresh folder.

`sh` blocks run in bash (`set -euo pipefail`) in a folder whose `.venv` is this project's; `sql` blocks run on
the engine their first comment names. The two commands (`make demo`, `make test`) are the exception: the
test suite is `make test` itself, and the demo runs below through its module, as `make demo` runs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANALYST_ENGINES = {"bigquery", "snowflake", "redshift"}
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def readme_blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer((ROOT / "README.md").read_text())]


def test_the_readme_has_the_examples_this_test_runs():
    kinds = [kind for kind, _ in readme_blocks()]
    assert kinds.count("sh") >= 4 and "sql" in kinds


def _statements(sql: str) -> list[str]:
    body = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


def test_every_readme_example_runs_as_written(fresh_db_url, tmp_path):
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    env = {**os.environ, "LEDGER_DATABASE_URL": fresh_db_url, "LEDGER_HOME": str(tmp_path)}
    ran = []
    for kind, body in readme_blocks():
        if kind == "sh":
            if re.search(r"^make ", body, re.MULTILINE):
                continue  # the two commands: see the module docstring
            result = subprocess.run(["bash", "-c", "set -euo pipefail\n" + body], cwd=tmp_path, env=env,
                                    capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
            assert result.returncode == 0, f"README block failed:\n{body}\nstderr:\n{result.stderr}"
            ran.append(body)
        elif kind == "sql":
            engine = body.strip().splitlines()[0].removeprefix("--").strip().split(":")[0].split(",")[0].lower()
            if engine in ANALYST_ENGINES:
                continue  # each runs on its warehouse's stand-in after a sync: tests/contract/test_readme_queries.py
            assert engine == "clickhouse", f"a README sql block names no engine this test knows: {engine!r}"
            import clickhouse_connect

            client = clickhouse_connect.get_client(dsn=f"chdb:///{tmp_path / '.ledger' / 'clickhouse'}")
            try:
                results = [client.query(statement).result_rows for statement in _statements(body)]
            finally:
                client.close()
            assert all(results), f"a README query returned nothing:\n{body}"
            ran.append(body)
    assert len(ran) >= 5
    assert (tmp_path / "warehouse.duckdb").exists()  # the relative path, resolved where it was typed


@pytest.mark.slow
def test_the_demo_runs_and_its_checks_pass(fresh_db_url, tmp_path):
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(ROOT / "dagster_project" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {**os.environ, "LEDGER_DATABASE_URL": fresh_db_url, "LEDGER_HOME": str(tmp_path),
           "DAGSTER_HOME": str(dagster_home)}
    for run in ("first", "second"):  # twice-safe: the second run replays the writes and loads nothing
        result = subprocess.run([sys.executable, "-m", "dagster_project.demo"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.count(" passed") == 6 and "FAILED" not in result.stdout
        top = result.stdout.split("-- Top 4 balances")[1].split("\n\n")[0]
        assert {"EUR/2", "USD/2"} <= {line.split(" | ")[0].strip() for line in top.splitlines()[2:]}  # every asset
        if run == "second":
            assert "0 new writes" in result.stdout and "loaded 0 logs" in result.stdout
