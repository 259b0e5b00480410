"""What the checks after a sync cost on a large warehouse: whole tables read into Python (how they worked before)
against aggregates over what the sync loaded (how they work now), on the sync benchmark's ledger (200,000
transactions; BENCH_SYNC_TRANSACTIONS to change it) with 1,000 new transactions synced on top.

On a warehouse that bills by bytes scanned, what matters is what each check makes the warehouse read and send:
rows sent to Python are counted here; the time is DuckDB's and PostgreSQL's, on this machine.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_database_url, migrated, print_table, save
from bench.sync import LEDGER, SIMPLE, TRANSACTIONS, fill
from ledger_core.db import connect, ensure_database
from ledger_core.ledgers import create_ledger
from ledger_pipelines import registry
from ledger_pipelines.loaders import open_loader
from ledger_pipelines.sync import sync_pipeline
from ledger_pipelines.tables import DATA_TABLES
from ledger_pipelines.verify import verify

NEW = 1_000


class Counting:
    """Counts the rows a loader's queries send back to Python."""

    def __init__(self, loader: Any):
        self.rows = 0
        query = loader.query

        def counted(sql: str, params: Any = None) -> list[tuple[Any, ...]]:
            found = query(sql, params)
            self.rows += len(found)
            return found

        loader.query = counted


def measure(url: str, driver: str, config: dict[str, Any]) -> list[list[Any]]:
    with connect(url) as conn:
        exporter = registry.create_exporter(conn, driver, config)
        pipeline = registry.create_pipeline(conn, LEDGER, exporter.id)
        began = time.perf_counter()
        sync_pipeline(url, pipeline.id, environ=os.environ)
        print(f"  {driver}: full sync in {time.perf_counter() - began:.0f} s", flush=True)
        before = conn.execute("SELECT last_transaction_id FROM ledger_core.ledgers WHERE name = %s",
                              (LEDGER,)).fetchone()
        fill(conn, SIMPLE, int(before[0]) + 1 if before and before[0] is not None else 0, NEW, random.Random(11))
        report = sync_pipeline(url, pipeline.id, environ=os.environ)
        # The accounts the sync's batches moved: what the sync engine collects and hands to the checks.
        accounts = [r[0] for r in conn.execute(
            "SELECT DISTINCT account FROM ledger_core.moves WHERE ledger = %s AND transaction_id > "
            "(SELECT max((data->'transaction'->>'id')::bigint) FROM ledger_core.logs WHERE ledger = %s AND id < %s "
            " AND type = 'NEW_TRANSACTION')", (LEDGER, LEDGER, report.from_log_id))]
        rows = []
        with open_loader(driver, exporter.config, os.environ) as loader:
            began = time.perf_counter()
            whole = sum(loader.read_table(t, LEDGER).num_rows for t in DATA_TABLES)
            rows.append([driver, "before: the six tables read whole", whole, time.perf_counter() - began])
            counting = Counting(loader)
            began = time.perf_counter()
            results = verify(conn, loader, LEDGER, report.to_log_id, since=report.from_log_id - 1, accounts=accounts)
            assert all(r.passed for r in results), [r for r in results if not r.passed]
            rows.append([driver, f"after: aggregates over the sync's {report.logs:,} logs", counting.rows,
                         time.perf_counter() - began])
            counting.rows = 0
            began = time.perf_counter()
            assert all(r.passed for r in verify(conn, loader, LEDGER, report.to_log_id))
            rows.append([driver, "after, full check (check_pipeline): every balance", counting.rows,
                         time.perf_counter() - began])
        registry.delete_pipeline(conn, pipeline.id)
        registry.delete_exporter(conn, exporter.id)
    return rows


def main() -> None:
    base = bench_database_url().rsplit("/", 1)[0]
    ensure_database(base + "/postgres", f"ledger_bench_checks_{TRANSACTIONS}")
    url = migrated(f"{base}/ledger_bench_checks_{TRANSACTIONS}")
    with connect(url) as conn:
        if not conn.execute("SELECT count(*) FROM ledger_core.ledgers WHERE name = %s", (LEDGER,)).fetchone()[0]:
            create_ledger(conn, LEDGER)  # built once; each run adds NEW transactions on top
            fill(conn, SIMPLE, 0, TRANSACTIONS, random.Random(7))
        logs = conn.execute("SELECT count(*) FROM ledger_core.logs WHERE ledger = %s", (LEDGER,)).fetchone()[0]
    with tempfile.TemporaryDirectory() as folder:
        rows = measure(url, "duckdb", {"path": str(Path(folder) / "checks.duckdb")})
    print_table(f"Checks after a sync of {NEW:,} transactions onto a {logs:,}-log ledger",
                ["warehouse", "checks", "rows sent to Python", "seconds"], rows)
    save("check_cost", {"logs": logs, "new": NEW, "results": rows})


if __name__ == "__main__":
    main()
