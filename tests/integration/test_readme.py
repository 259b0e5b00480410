"""Every example in the README runs, exactly as written, in README order, in a fresh folder.

`sh` blocks run in bash (`set -euo pipefail`) in a folder whose `.venv` is this project's (what they start in
the background, the API server, is stopped at the end); `python` blocks run with the project's Python in the
same folder; `sql` blocks run on the engine their first comment names. The two commands (`make demo`,
`make test`) are the exception: the test suite is `make test` itself, and the demo runs below through its
module, as `make demo` runs it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
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
    ran, sessions = [], []
    try:
        for kind, body in readme_blocks():
            ran += _run_block(kind, body, tmp_path, env, sessions)
    finally:
        for session in sessions:  # what a block left running in the background (`ledgerctl serve … &`)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(session, signal.SIGTERM)
    assert len(ran) >= 7
    assert (tmp_path / "warehouse.duckdb").exists()  # the relative path, resolved where it was typed


def _run_block(kind: str, body: str, tmp_path: Path, env: dict, sessions: list[int]) -> list[str]:
    if kind in ("sh", "python"):
        if re.search(r"^make ", body, re.MULTILINE):
            return []  # the two commands: see the module docstring
        command = ["bash", "-c", "set -euo pipefail\n" + body] if kind == "sh" else [
            str(ROOT / ".venv" / "bin" / "python"), "-c", body]
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        sessions.append(process.pid)
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, f"README block failed:\n{body}\nstdout:\n{out}\nstderr:\n{err}"
        return [body]
    if kind == "sql":
        if re.match(r"-- Q\d+\. ", body):
            return []  # the analysts' questions run on every warehouse: tests/contract/test_readme_queries.py
        engine = body.strip().splitlines()[0].removeprefix("--").strip().split(":")[0].split(",")[0].lower()
        assert engine == "clickhouse", f"a README sql block names no engine this test knows: {engine!r}"
        import clickhouse_connect

        client = clickhouse_connect.get_client(dsn=f"chdb:///{tmp_path / '.ledger' / 'clickhouse'}")
        try:
            results = [client.query(statement).result_rows for statement in _statements(body)]
        finally:
            client.close()
        assert all(results), f"a README query returned nothing:\n{body}"
        return [body]
    return []


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
    assert_demo_warehouse_answers_balances_at_every_day(fresh_db_url, tmp_path / ".ledger" / "warehouse.duckdb")


def assert_demo_warehouse_answers_balances_at_every_day(database_url: str, warehouse: Path) -> None:
    """Every (account, asset, day) of the demo: the warehouse's effective-order answers equal `balances
    --effective-at` at the end of that day, while the obvious query over insertion-order volumes does not."""
    from datetime import UTC, datetime, timedelta

    import duckdb

    from dagster_project.demo import LEDGER
    from ledger_core import reads
    from ledger_core.db import connect

    with duckdb.connect(str(warehouse), read_only=True) as wh, connect(database_url) as conn:
        days = [d for (d,) in wh.execute("SELECT DISTINCT day FROM ledger.daily_volumes WHERE ledger = ? ORDER BY day",
                                         [LEDGER]).fetchall()]
        compared, trapped = 0, 0
        for day in days:
            end = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1, microseconds=-1)
            expected = {(b.address, b.asset): b.volumes.balance for b in reads.balances(conn, LEDGER, effective_at=end)}
            daily = dict(((a, s), int(b)) for a, s, b in wh.execute(
                """SELECT account, asset, arg_max(closing_balance, day) FROM ledger.daily_balances
                   WHERE ledger = ? AND day <= ? GROUP BY account, asset""", [LEDGER, day]).fetchall())
            by_move = dict(((a, s), int(b)) for a, s, b in wh.execute(
                """SELECT account, asset, arg_max(post_commit_effective_balance,
                                                  (timestamp, transaction_id, posting_index, NOT is_source))
                   FROM ledger.moves_effective WHERE ledger = ? AND timestamp <= ? GROUP BY account, asset""",
                [LEDGER, end]).fetchall())
            obvious = dict(((a, s), int(b)) for a, s, b in wh.execute(
                """SELECT account, asset, arg_max(post_commit_balance,
                                                  (timestamp, transaction_id, posting_index, NOT is_source))
                   FROM ledger.moves WHERE ledger = ? AND timestamp <= ? GROUP BY account, asset""",
                [LEDGER, end]).fetchall())
            assert daily == expected and by_move == expected, day
            compared += len(expected)
            trapped += sum(obvious[k] != v for k, v in expected.items())
    assert len(days) == 7 and compared > 10_000  # the seven simulated days (refunds dated at their order's)
    assert trapped > 0  # the late payments and dated refunds: insertion order is not the balance on a date
