"""Sync throughput: our pipeline into DuckDB against dlt and against the physical ceiling, same data, same run.

A fresh database holds one ledger of TRANSACTIONS 2-posting transactions (some metadata, some reverts).
Three ways move it into DuckDB, first in full, then after 10% more transactions, incrementally:

- ours: `sync_pipeline` (log reader -> transforms -> DuckDB merge), six typed tables;
- dlt: its `sql_database` source with `backend="pyarrow"` copying the ledger's own tables (logs,
  transactions and moves incrementally on their ids, accounts and volumes merged on their keys), JSON
  kept as text (see run_dlt for why the defaults cannot load this ledger at all);
- ceiling: binary COPY of those same tables out of PostgreSQL into Arrow (ADBC) and straight into DuckDB,
  the least work any tool can do.

Rows are counted the same way for all three: the rows of the ledger's tables the warehouse reflects
(logs + transactions + moves + accounts + volumes), so rows/s and the ratios compare like with like.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import adbc_driver_postgresql.dbapi as adbc
import duckdb

from bench.common import bench_database_url, migrated, print_table, save
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


def run_ours(url: str, state: dict, pipeline_id: str) -> float:
    started = time.perf_counter()
    sync_pipeline(url, pipeline_id, environ={})
    return time.perf_counter() - started


def run_dlt(url: str, state: dict, warehouse: str, workdir: str) -> float:
    import dlt
    import sqlalchemy as sa
    from dlt.sources.sql_database import sql_database
    from sqlalchemy.dialects.postgresql import JSONB

    # JSON stays text at the driver. With dlt's defaults, psycopg parses the JSONB columns and pyarrow infers
    # a struct with one field per distinct key; pre/post-commit volumes are keyed by account address, so the
    # schema grows with the accounts, and a 20,000-transaction ledger was OOM-killed at 23 GB on this machine.
    def json_as_text(query, table, *_):
        return query.with_only_columns(*[sa.cast(c, sa.Text).label(c.name) if isinstance(c.type, JSONB | sa.JSON)
                                         else c for c in table.c])

    source = sql_database(credentials=url.replace("postgresql://", "postgresql+psycopg://"), schema="ledger_core",
                          table_names=list(SOURCE_TABLES), backend="pyarrow", query_adapter_callback=json_as_text,
                          type_adapter_callback=lambda t: sa.Text() if isinstance(t, JSONB | sa.JSON) else t)
    for table, key in APPEND_KEYS.items():
        source.resources[table].apply_hints(incremental=dlt.sources.incremental(key), write_disposition="append")
    source.resources["accounts"].apply_hints(primary_key=["ledger", "address"], write_disposition="merge")
    source.resources["volumes"].apply_hints(primary_key=["ledger", "account", "asset"], write_disposition="merge")
    pipeline = dlt.pipeline(pipeline_name="bench_dlt", destination=dlt.destinations.duckdb(warehouse),
                            dataset_name="ledger", pipelines_dir=workdir)
    started = time.perf_counter()
    pipeline.run(source)
    return time.perf_counter() - started


def run_ceiling(url: str, state: dict, warehouse: str) -> float:
    """Binary COPY (ADBC) into Arrow, straight into DuckDB; append tables by id high-water mark."""
    high_water = state.setdefault("high_water", {})
    started = time.perf_counter()
    with adbc.connect(url) as source, duckdb.connect(warehouse) as target:
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


def _child(function, args, state, results) -> None:
    seconds = function(*args[:1], state, *args[1:])
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results.put((seconds, peak_mib, state))


def isolated(function, *args, state: dict) -> dict:
    """Run one contender in its own process: its memory is its own, and its failure is reported, not fatal."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_child, args=(function, args, state, results))
    process.start()
    process.join()
    if process.exitcode != 0:
        reason = "killed: out of memory" if process.exitcode == -9 else f"exit code {process.exitcode}"
        return {"seconds": None, "peak_mib": None, "error": reason}
    seconds, peak_mib, new_state = results.get()
    state.update(new_state)
    return {"seconds": seconds, "peak_mib": peak_mib, "error": None}


def main() -> None:
    base = bench_database_url()
    admin = base.rsplit("/", 1)[0] + "/postgres"
    with connect(admin, check_schema=False) as conn:
        conn.execute("DROP DATABASE IF EXISTS ledger_bench_sync WITH (FORCE)")
    ensure_database(admin, "ledger_bench_sync")
    url = migrated(base.rsplit("/", 1)[0] + "/ledger_bench_sync")
    workdir = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    rng = random.Random(7)
    try:
        with connect(url) as conn:
            create_ledger(conn, LEDGER)
            started = time.perf_counter()
            fill(conn, 0, TRANSACTIONS, rng)
            print(f"ledger: {TRANSACTIONS:,} transactions written in {time.perf_counter() - started:.1f}s", flush=True)
            exporter = registry.create_exporter(conn, "duckdb", {"path": str(workdir / "ours.duckdb")})
            pipeline = registry.create_pipeline(conn, LEDGER, exporter.id)
            rows_full = source_rows(conn)
        states: dict[str, dict] = {"ours": {}, "dlt (pyarrow)": {}, "ceiling (COPY->Arrow->DuckDB)": {}}
        ways = {"ours": (run_ours, url, pipeline.id),
                "dlt (pyarrow)": (run_dlt, url, str(workdir / "dlt.duckdb"), str(workdir / "dlt")),
                "ceiling (COPY->Arrow->DuckDB)": (run_ceiling, url, str(workdir / "ceiling.duckdb"))}
        full = {}
        for name, (function, *args) in ways.items():
            full[name] = isolated(function, *args, state=states[name])
            print(f"  full  {name}: {full[name]}", flush=True)
        with connect(url) as conn:
            fill(conn, TRANSACTIONS, TRANSACTIONS // 10, rng)
            rows_incremental = source_rows(conn) - rows_full
        incremental = {}
        for name, (function, *args) in ways.items():
            incremental[name] = isolated(function, *args, state=states[name])
            print(f"  incr  {name}: {incremental[name]}", flush=True)
        # Every contender must hold every log, or its time means nothing.
        with connect(url) as conn:
            expected = conn.execute("SELECT count(*) FROM ledger_core.logs").fetchone()[0]
        for name, path, table in (("ours", "ours.duckdb", "ledger.logs"),
                                  ("dlt (pyarrow)", "dlt.duckdb", "ledger.logs"),
                                  ("ceiling (COPY->Arrow->DuckDB)", "ceiling.duckdb", "logs")):
            if incremental[name]["error"] is None:
                with duckdb.connect(str(workdir / path), read_only=True) as warehouse:
                    found = warehouse.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                assert found == expected, f"{name} holds {found} logs of {expected}"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results = []
    for phase, timings, rows in (("full", full, rows_full), ("incremental +10%", incremental, rows_incremental)):
        ours = timings["ours"]["seconds"]
        for name, run in timings.items():
            seconds = run["seconds"]
            results.append({"phase": phase, "way": name, "rows": rows, **run,
                            "rows_per_s": rows / seconds if seconds else None,
                            "ours_speed_vs_this": seconds / ours if seconds and ours else None})
    print_table(
        f"Sync of a {TRANSACTIONS:,}-transaction ledger into DuckDB (rows = ledger table rows reflected)",
        ["phase", "way", "seconds", "rows", "rows/s", "peak MiB", "ours speed vs this"],
        [[r["phase"], r["way"], r["seconds"] if r["seconds"] else r["error"], r["rows"], r["rows_per_s"] or "-",
          r["peak_mib"] or "-", f"{r['ours_speed_vs_this']:.2f}x" if r["ours_speed_vs_this"] else "-"]
         for r in results],
    )
    save("sync", {"transactions": TRANSACTIONS, "results": results})


if __name__ == "__main__":
    main()
