"""Sync throughput: our pipeline into DuckDB against dlt and against the physical ceiling, same data, same run.

A fresh database holds one ledger of TRANSACTIONS 2-posting transactions (some metadata, some reverts).
Three ways move it into DuckDB, first in full, then after 10% more transactions, incrementally:

- ours: `sync_pipeline` (log reader -> transforms -> DuckDB merge), six typed tables;
- dlt: its `sql_database` source with `backend="pyarrow"` copying the ledger's own tables (logs,
  transactions and moves incrementally on their ids, accounts and volumes merged on their keys);
- ceiling: binary COPY of those same tables out of PostgreSQL into Arrow (ADBC) and straight into DuckDB,
  the least work any tool can do.

Rows are counted the same way for all three: the rows of the ledger's tables the warehouse reflects
(logs + transactions + moves + accounts + volumes), so rows/s and the ratios compare like with like.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import adbc_driver_postgresql.dbapi as adbc
import duckdb

from bench.common import bench_database_url, print_table, save
from ledger_core.db import connect, ensure_database
from ledger_core.ledgers import create_ledger
from ledger_core.requests import NewTransaction, RevertTransaction, SetMetadata
from ledger_core.writer import write
from ledger_pipelines import registry
from ledger_pipelines.sync import sync_pipeline

TRANSACTIONS = int(os.environ.get("BENCH_SYNC_TRANSACTIONS", "200000"))
LEDGER = "bench-sync"
SOURCE_TABLES = ("logs", "transactions", "moves", "accounts", "volumes")
APPEND_KEYS = {"logs": "id", "transactions": "id", "moves": "seq"}


def fill(conn, start: int, count: int, rng: random.Random) -> None:
    bulk = []
    for i in range(start, start + count):
        account = f"users:{rng.randrange(20_000)}"
        bulk.append(NewTransaction.from_json({
            "postings": [
                {"source": "world", "destination": account, "amount": rng.randint(100, 99_999), "asset": "USD/2"},
                {"source": account, "destination": "fees", "amount": 7, "asset": "USD/2"}],
            "metadata": {"order": str(i)}, "reference": f"order-{i}"}))
        if i % 50 == 0:
            bulk.append(SetMetadata.build("ACCOUNT", account, {"tier": rng.choice(["gold", "silver"])}))
        if len(bulk) >= 5_000:
            write(conn, LEDGER, bulk)
            bulk = []
    if bulk:
        write(conn, LEDGER, bulk)
    last = conn.execute("SELECT last_transaction_id FROM ledger_core.ledgers WHERE name = %s", (LEDGER,)).fetchone()[0]
    write(conn, LEDGER, [RevertTransaction(tx_id, force=True) for tx_id in range(last - count + 1, last + 1, 997)])


def source_rows(conn) -> int:
    return sum(conn.execute(f"SELECT count(*) FROM ledger_core.{t}").fetchone()[0] for t in SOURCE_TABLES)


def run_ours(url: str, pipeline_id: str) -> float:
    started = time.perf_counter()
    sync_pipeline(url, pipeline_id, environ={})
    return time.perf_counter() - started


def make_dlt(url: str, warehouse: Path, workdir: Path):
    import dlt
    from dlt.sources.sql_database import sql_database

    def run() -> float:
        source = sql_database(credentials=url.replace("postgresql://", "postgresql+psycopg://"), schema="ledger_core",
                              table_names=list(SOURCE_TABLES), backend="pyarrow")
        for table, key in APPEND_KEYS.items():
            source.resources[table].apply_hints(incremental=dlt.sources.incremental(key), write_disposition="append")
        source.resources["accounts"].apply_hints(primary_key=["ledger", "address"], write_disposition="merge")
        source.resources["volumes"].apply_hints(primary_key=["ledger", "account", "asset"], write_disposition="merge")
        pipeline = dlt.pipeline(pipeline_name="bench_dlt", destination=dlt.destinations.duckdb(str(warehouse)),
                                dataset_name="ledger", pipelines_dir=str(workdir))
        started = time.perf_counter()
        pipeline.run(source)
        return time.perf_counter() - started

    return run


def make_ceiling(url: str, warehouse: Path):
    high_water: dict[str, int] = {}

    def run() -> float:
        started = time.perf_counter()
        with adbc.connect(url) as source, duckdb.connect(str(warehouse)) as target:
            for table in SOURCE_TABLES:
                key = APPEND_KEYS.get(table)
                where = f"WHERE {key} > {high_water.get(table, 0)}" if key else ""
                with source.cursor() as cursor:
                    cursor.execute(f"SELECT * FROM ledger_core.{table} {where}")
                    data = cursor.fetch_arrow_table()
                if key and data.num_rows:
                    high_water[table] = max(high_water.get(table, 0), max(data.column(key).to_pylist()))
                target.register("incoming", data)
                exists = target.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?",
                                        [table]).fetchone()[0]
                if not exists:
                    target.execute(f"CREATE TABLE {table} AS SELECT * FROM incoming")
                elif key:
                    target.execute(f"INSERT INTO {table} SELECT * FROM incoming")
                else:  # small current-state tables: replaced whole, the cheapest correct refresh
                    target.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM incoming")
                target.unregister("incoming")
        return time.perf_counter() - started

    return run


def main() -> None:
    base = bench_database_url()
    admin = base.rsplit("/", 1)[0] + "/postgres"
    with connect(admin, migrate=False) as conn:
        conn.execute("DROP DATABASE IF EXISTS ledger_bench_sync WITH (FORCE)")
    ensure_database(admin, "ledger_bench_sync")
    url = base.rsplit("/", 1)[0] + "/ledger_bench_sync"
    workdir = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    rng = random.Random(7)
    try:
        with connect(url) as conn:
            registry.migrate_pipelines(conn)
            create_ledger(conn, LEDGER)
            started = time.perf_counter()
            fill(conn, 0, TRANSACTIONS, rng)
            print(f"ledger: {TRANSACTIONS:,} transactions written in {time.perf_counter() - started:.1f}s", flush=True)
            exporter = registry.create_exporter(conn, "duckdb", {"path": str(workdir / "ours.duckdb")})
            pipeline = registry.create_pipeline(conn, LEDGER, exporter.id)
            rows_full = source_rows(conn)
        ways = {"ours": lambda: run_ours(url, pipeline.id),
                "dlt (pyarrow)": make_dlt(url, workdir / "dlt.duckdb", workdir / "dlt"),
                "ceiling (COPY->Arrow->DuckDB)": make_ceiling(url, workdir / "ceiling.duckdb")}
        full = {name: run() for name, run in ways.items()}
        for name, seconds in full.items():
            print(f"  full  {name}: {seconds:.2f}s", flush=True)
        with connect(url, migrate=False) as conn:
            fill(conn, TRANSACTIONS, TRANSACTIONS // 10, rng)
            rows_incremental = source_rows(conn) - rows_full
        incremental = {name: run() for name, run in ways.items()}
        for name, seconds in incremental.items():
            print(f"  incr  {name}: {seconds:.2f}s", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results = []
    for phase, timings, rows in (("full", full, rows_full), ("incremental +10%", incremental, rows_incremental)):
        for name, seconds in timings.items():
            results.append({"phase": phase, "way": name, "seconds": seconds, "rows": rows, "rows_per_s": rows / seconds,
                            "ours_vs_this": seconds / timings["ours"]})
    print_table(
        f"Sync of a {TRANSACTIONS:,}-transaction ledger into DuckDB (rows = ledger table rows reflected)",
        ["phase", "way", "seconds", "rows", "rows/s", "ours speed vs this"],
        [[r["phase"], r["way"], r["seconds"], r["rows"], r["rows_per_s"], f"{r['ours_vs_this']:.2f}x"]
         for r in results],
    )
    save("sync", {"transactions": TRANSACTIONS, "results": results})


if __name__ == "__main__":
    main()
