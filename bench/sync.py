"""Sync throughput: our pipeline against dlt and against the physical ceiling, same data, same run.

Two ledger shapes, each a fresh database of TRANSACTIONS transactions (BENCH_SYNC_TRANSACTIONS, default
200,000), metadata on every transaction, account metadata on every 50th, a revert every 997th:
- "2 postings, 1 asset": world -> user -> fees, in USD/2 (the shape of the first benchmark);
- "3 postings, 5 assets": world -> user -> seller, and a fee, in one of five assets (ETH/18 among them).

Each contender runs in its own process (its peak memory is its own), first in full, then after 10% more
transactions, incrementally. The contenders the goals compare (ours -> DuckDB, connectorx, the ceiling) run
ROUNDS times in each phase (BENCH_SYNC_ROUNDS, default 3), in turn, each round from the state the phase began
in (their files put back, ours' cursor reset); the median round counts. Single runs moved by up to 25% on a
2-core virtual machine, and turned a goal's verdict over from one run to the next.
Contenders:
- ours -> DuckDB, PostgreSQL, ClickHouse (chdb): `sync_pipeline`: every log checked against the hash chain,
  six typed tables computed set-based, merged idempotently;
- dlt, `sql_database` with the connectorx and pyarrow backends, copying the ledger's own tables (logs,
  transactions and moves incrementally on their ids, accounts and volumes merged on their keys), JSON kept
  as text (see run_dlt for why the defaults cannot load this ledger at all); dlt loads into DuckDB;
- ceiling: binary COPY of those same tables out of PostgreSQL into Arrow (ADBC) and straight into DuckDB,
  the least work any tool can do.

Rows are counted the same way for all: the rows of the ledger's tables the warehouse reflects (logs +
transactions + moves + accounts + volumes), so rows/s and the ratios compare like with like.
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
from copy import deepcopy
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
from ledger_pipelines.sync import DEFAULT_BATCH_SIZE, sync_pipeline

TRANSACTIONS = int(os.environ.get("BENCH_SYNC_TRANSACTIONS", "200000"))
CONTENDERS = os.environ.get("BENCH_SYNC_ONLY", "")  # comma-separated names, for a quick look at a few
ROUNDS = int(os.environ.get("BENCH_SYNC_ROUNDS", "3"))
LEDGER = "bench-sync"
SOURCE_TABLES = ("logs", "transactions", "moves", "accounts", "volumes")
APPEND_KEYS = {"logs": "id", "transactions": "id", "moves": "seq"}
CEILING = "ceiling (COPY->Arrow->DuckDB)"
OURS_DUCKDB, CONNECTORX, PYARROW = "ours -> DuckDB", "dlt (connectorx)", "dlt (pyarrow)"
# Each DuckDB contender's warehouse file, in the bench's folder.
WAREHOUSE_FILE = {OURS_DUCKDB: "ours.duckdb", CONNECTORX: "dlt-cx.duckdb", PYARROW: "dlt-pa.duckdb",
                  CEILING: "ceiling.duckdb"}
# What each repeated contender leaves in the bench's folder (its warehouse, dlt's pipeline state): put back
# before each round after the first.
REPEATED = {name: (WAREHOUSE_FILE[name], f"{WAREHOUSE_FILE[name]}.wal", *extra)
            for name, extra in ((OURS_DUCKDB, ()), (CONNECTORX, ("dlt/bench_dlt_connectorx",)), (CEILING, ()))}


ASSETS = ["USD/2", "EUR/2", "GBP/2", "JPY", "ETH/18"]


def _simple(i: int, rng: random.Random) -> tuple[str, list[dict]]:
    account = f"users:{rng.randrange(20_000)}"
    return account, [
        {"source": "world", "destination": account, "amount": rng.randint(100, 99_999), "asset": "USD/2"},
        {"source": account, "destination": "fees", "amount": 7, "asset": "USD/2"}]


def _marketplace(i: int, rng: random.Random) -> tuple[str, list[dict]]:
    account, seller, asset = f"users:{rng.randrange(20_000)}", f"sellers:{rng.randrange(500)}", rng.choice(ASSETS)
    amount = rng.randint(1_000, 999_999) * (10**12 if asset == "ETH/18" else 1)
    return account, [
        {"source": "world", "destination": account, "amount": amount, "asset": asset},
        {"source": account, "destination": seller, "amount": amount - 100, "asset": asset},
        {"source": account, "destination": "fees", "amount": 100, "asset": asset}]


SHAPES = {"2 postings, 1 asset": _simple, "3 postings, 5 assets": _marketplace}
SIMPLE = "2 postings, 1 asset"  # the shape the other benchmarks share


def fill(conn, shape: str, start: int, count: int, rng: random.Random) -> None:
    bulk = []
    for i in range(start, start + count):
        account, postings = SHAPES[shape](i, rng)
        bulk.append(NewTransaction.from_json({"postings": postings, "metadata": {"order": str(i)},
                                              "reference": f"order-{i}"}))
        if i % 50 == 0:
            bulk.append(SetMetadata.build("ACCOUNT", account, {"tier": rng.choice(["gold", "silver"])}))
        if len(bulk) >= 5_000:
            write(conn, LEDGER, bulk)
            bulk = []
    if bulk:
        write(conn, LEDGER, bulk)
    last = conn.execute("SELECT last_transaction_id FROM ledger_core.ledgers WHERE name = %s", (LEDGER,)).fetchone()[0]
    write(conn, LEDGER, [RevertTransaction(tx_id, force=True) for tx_id in range(last - count + 1, last + 1, 997)])


def settle(conn) -> None:
    """Vacuum the ledger just written, then checkpoint: the first reader of freshly written rows sets their hint
    bits (writing the pages again), and it would be whichever contender runs first (the ceiling, run first after
    a fill of 100,000 transactions, took 3.78 s; right after, 2.98 s)."""
    conn.execute("VACUUM (ANALYZE)")
    conn.execute("CHECKPOINT")


def source_rows(conn) -> int:
    return sum(conn.execute(f"SELECT count(*) FROM ledger_core.{t}").fetchone()[0] for t in SOURCE_TABLES)


def run_ours(url: str, state: dict, pipeline_id: str) -> float:
    """The sync; `state["warehouse_seconds"]` says how much of it the warehouse took (loads, and closing:
    DuckDB checkpoints then), the rest being reading, checking and transforming."""
    from ledger_pipelines.loaders import DRIVERS

    spent = [0.0]

    def timed(method):
        def run(*args, **kwargs):
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - started
        return run

    for loader in {DRIVERS.get(driver) for driver in ("duckdb", "postgres", "clickhouse")}:
        loader.load, loader.close = timed(loader.load), timed(loader.close)
    peaks: list[int] = []  # peak memory after each batch: flat once the working set is reached

    def after_batch(*_: object) -> None:
        peaks.append(round(peak_mib()))

    started = time.perf_counter()
    sync_pipeline(url, pipeline_id, environ={}, progress=after_batch)
    state["warehouse_seconds"], state["peak_mib_by_batch"] = spent[0], peaks
    return time.perf_counter() - started


def run_dlt(url: str, state: dict, backend: str, warehouse: str, workdir: str) -> float:
    import dlt
    import sqlalchemy as sa
    from dlt.sources.sql_database import sql_database
    from sqlalchemy.dialects.postgresql import JSONB

    # JSON stays text at the driver. With dlt's defaults, psycopg parses the JSONB columns and pyarrow infers
    # a struct with one field per distinct key; pre/post-commit volumes are keyed by account address, so the
    # schema grows with the accounts, and a 20,000-transaction ledger was OOM-killed at 23 GB on this machine.
    # connectorx also fails on unconstrained NUMERIC once values differ in scale ("decimal scale is not equal to
    # expected scale", on the ETH/18 volumes): for it, money travels as text too.
    as_text = (JSONB, sa.JSON, sa.Numeric) if backend == "connectorx" else (JSONB, sa.JSON)

    def json_as_text(query, table, *_):
        return query.with_only_columns(*[sa.cast(c, sa.Text).label(c.name) if isinstance(c.type, as_text)
                                         else c for c in table.c])

    source = sql_database(credentials=url.replace("postgresql://", "postgresql+psycopg://"), schema="ledger_core",
                          table_names=list(SOURCE_TABLES), backend=backend, query_adapter_callback=json_as_text,
                          type_adapter_callback=lambda t: sa.Text() if isinstance(t, as_text) else t)
    for table, key in APPEND_KEYS.items():
        source.resources[table].apply_hints(incremental=dlt.sources.incremental(key), write_disposition="append")
    source.resources["accounts"].apply_hints(primary_key=["ledger", "address"], write_disposition="merge")
    source.resources["volumes"].apply_hints(primary_key=["ledger", "account", "asset"], write_disposition="merge")
    pipeline = dlt.pipeline(pipeline_name=f"bench_dlt_{backend}", destination=dlt.destinations.duckdb(warehouse),
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


def peak_mib() -> float:
    """This process's peak resident memory (VmHWM). Not `ru_maxrss`: a spawned process inherits its parent's,
    which made every contender report at least what the benchmark's own process held when it started them."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(function, args, state, results) -> None:
    seconds = function(*args[:1], state, *args[1:])
    results.put((seconds, peak_mib(), state))


def isolated(function, *args, state: dict) -> dict:
    """Run one contender in its own process: its memory is its own, and its failure is reported, not fatal."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_child, args=(function, args, state, results))
    process.start()
    process.join()
    if process.exitcode != 0:
        reason = "killed: out of memory" if process.exitcode == -9 else f"exit code {process.exitcode}"
        return {"seconds": None, "peak_mib": None, "error": reason, "warehouse_seconds": None,
                "peak_mib_by_batch": None}
    seconds, peak, new_state = results.get()
    measured = {key: new_state.pop(key, None) for key in ("warehouse_seconds", "peak_mib_by_batch")}
    state.update(new_state)
    return {"seconds": seconds, "peak_mib": peak, "error": None, **measured}


def run_phase(phase: str, ways: dict, states: dict[str, dict], url: str, ours_duckdb: str | None,
              workdir: Path) -> dict[str, dict]:
    """Every contender once, in order; then the REPEATED ones again, in turn, until each has run ROUNDS times,
    each round starting from what the phase began with. A repeated contender's result is its median round (with
    every round's seconds, and the highest peak of them all)."""
    saved = workdir / f"before-{phase}"
    repeated = [name for name in ways if name in REPEATED] if ROUNDS > 1 else []
    with connect(url) as conn:
        start_cursor = registry.get_pipeline(conn, ours_duckdb).last_log_id if ours_duckdb else 0
    start_states = {name: deepcopy(states[name]) for name in repeated}
    for name in repeated:
        for relative in REPEATED[name]:
            _copy_if_present(workdir / relative, saved / relative)
    rounds: dict[str, list[dict]] = {}
    for number in range(ROUNDS if repeated else 1):
        for name, (function, *args) in ways.items():
            if number and name not in repeated:
                continue
            if number:  # back to the phase's start: the same work again
                states[name].clear()
                states[name].update(deepcopy(start_states[name]))
                for relative in REPEATED[name]:
                    shutil.rmtree(workdir / relative, ignore_errors=True)
                    (workdir / relative).unlink(missing_ok=True)
                    _copy_if_present(saved / relative, workdir / relative)
                if name == OURS_DUCKDB:
                    with connect(url) as conn:
                        registry.reset_pipeline(conn, ours_duckdb, start_cursor)
            result = isolated(function, *args, state=states[name])
            rounds.setdefault(name, []).append(result)
            print(f"  {phase:5s} {name}{f' (round {number + 1})' if name in repeated else ''}: {result}", flush=True)
    shutil.rmtree(saved, ignore_errors=True)
    return {name: _median_round(results) for name, results in rounds.items()}


def _copy_if_present(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target)
    elif source.exists():
        shutil.copy2(source, target)


def _median_round(results: list[dict]) -> dict:
    failed = [r for r in results if r["error"]]
    if failed:
        return failed[0]
    ordered = sorted(results, key=lambda r: r["seconds"])
    median = ordered[(len(ordered) - 1) // 2]  # of an even count, the faster of the middle two
    return {**median, "peak_mib": max(r["peak_mib"] for r in results),
            "round_seconds": [r["seconds"] for r in results]}


def run_shape(base: str, shape: str) -> list[dict]:
    admin = base.rsplit("/", 1)[0] + "/postgres"
    with connect(admin, check_schema=False) as conn:
        for name in ("ledger_bench_sync", "ledger_bench_sync_wh"):
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            ensure_database(admin, name)
    url = migrated(base.rsplit("/", 1)[0] + "/ledger_bench_sync")
    warehouse_url = base.rsplit("/", 1)[0] + "/ledger_bench_sync_wh"
    workdir = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    rng = random.Random(7)
    try:
        with connect(url) as conn:
            create_ledger(conn, LEDGER)
            started = time.perf_counter()
            fill(conn, shape, 0, TRANSACTIONS, rng)
            print(f"{shape}: {TRANSACTIONS:,} transactions written in {time.perf_counter() - started:.1f}s", flush=True)
            settle(conn)
            pipelines = {}
            for name, driver, config in (
                    (OURS_DUCKDB, "duckdb", {"path": str(workdir / WAREHOUSE_FILE[OURS_DUCKDB])}),
                    ("ours -> PostgreSQL", "postgres", {"dsn": warehouse_url, "schema": "ledger"}),
                    ("ours -> ClickHouse", "clickhouse", {"chdb_path": str(workdir / "chdb")})):
                exporter = registry.create_exporter(conn, driver, config)
                pipelines[name] = registry.create_pipeline(conn, LEDGER, exporter.id).id
            rows_full = source_rows(conn)
        ways = {**{name: (run_ours, url, pipeline_id) for name, pipeline_id in pipelines.items()},
                CONNECTORX: (run_dlt, url, "connectorx", str(workdir / WAREHOUSE_FILE[CONNECTORX]),
                             str(workdir / "dlt")),
                PYARROW: (run_dlt, url, "pyarrow", str(workdir / WAREHOUSE_FILE[PYARROW]), str(workdir / "dlt")),
                CEILING: (run_ceiling, url, str(workdir / WAREHOUSE_FILE[CEILING]))}
        if CONTENDERS:
            ways = {k: v for k, v in ways.items() if k in CONTENDERS.split(",") or k == CEILING}
        states: dict[str, dict] = {name: {} for name in ways}
        full = run_phase("full", ways, states, url, pipelines.get(OURS_DUCKDB), workdir)
        if "ours -> PostgreSQL" in ways and not full["ours -> PostgreSQL"]["error"]:
            floor = postgres_floor(warehouse_url)
            print(f"  PostgreSQL's own ingestion of the same rows (COPY into empty tables of the same definition, "
                  f"one transaction): {floor:.2f}s", flush=True)
            full["ours -> PostgreSQL"]["postgres_floor_seconds"] = floor
        with connect(url) as conn:
            fill(conn, shape, TRANSACTIONS, TRANSACTIONS // 10, rng)
            settle(conn)
            rows_incremental = source_rows(conn) - rows_full
        incremental = run_phase("incr", ways, states, url, pipelines.get(OURS_DUCKDB), workdir)
        check_every_log_arrived(url, warehouse_url, workdir, {n: r for n, r in incremental.items() if not r["error"]})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results = []
    for phase, timings, rows in (("full", full, rows_full), ("incremental +10%", incremental, rows_incremental)):
        ceiling = timings[CEILING]["seconds"]
        for name, run in timings.items():
            seconds = run["seconds"]
            results.append({"shape": shape, "phase": phase, "way": name, "rows": rows, **run,
                            "rows_per_s": rows / seconds if seconds else None,
                            "vs_ceiling": ceiling / seconds if seconds and ceiling else None})
    return results


def postgres_floor(warehouse_url: str) -> float:
    """What PostgreSQL itself takes to ingest what ours loaded: every warehouse table's rows, copied out as CSV,
    then COPYed (timed) into empty tables of the same definition (keys, types, JSONB) in one transaction. A
    floor for any loader into this server: no transform, no merge, nothing read back."""
    with connect(warehouse_url, check_schema=False) as conn:
        tables = [t for (t,) in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'ledger' "
            "AND table_type = 'BASE TABLE' AND table_name <> 'sync_state' ORDER BY table_name")]
        dumps = {}
        for table in tables:
            with conn.cursor().copy(f"COPY ledger.{table} TO STDOUT WITH (FORMAT csv)") as copy:
                dumps[table] = b"".join(bytes(chunk) for chunk in copy)
        conn.execute("DROP SCHEMA IF EXISTS floor CASCADE")
        conn.execute("CREATE SCHEMA floor")
        for table in tables:
            conn.execute(f"CREATE TABLE floor.{table} (LIKE ledger.{table} INCLUDING ALL)")
        started = time.perf_counter()
        with conn.transaction():
            for table, data in dumps.items():
                with conn.cursor().copy(f"COPY floor.{table} FROM STDIN WITH (FORMAT csv)") as copy:
                    for start in range(0, len(data), 1 << 20):
                        copy.write(data[start:start + (1 << 20)])
        elapsed = time.perf_counter() - started
        conn.execute("DROP SCHEMA floor CASCADE")
    return elapsed


def check_every_log_arrived(url: str, warehouse_url: str, workdir: Path, finished: dict) -> None:
    """Every contender must hold every log, or its time means nothing."""
    with connect(url) as conn:
        expected = conn.execute("SELECT count(*) FROM ledger_core.logs").fetchone()[0]
    for name in finished:
        if name == "ours -> PostgreSQL":
            with connect(warehouse_url, check_schema=False) as conn:
                found = conn.execute("SELECT count(*) FROM ledger.logs").fetchone()[0]
        elif name == "ours -> ClickHouse":
            import chdb.session
            session = chdb.session.Session(str(workdir / "chdb"))
            found = int(session.query("SELECT count() FROM ledger.logs FINAL", "CSV").data().strip())
            session.close()
        else:
            table = "logs" if name == CEILING else "ledger.logs"
            with duckdb.connect(str(workdir / WAREHOUSE_FILE[name]), read_only=True) as warehouse:
                found = warehouse.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        assert found == expected, f"{name} holds {found} logs of {expected}"


def main() -> None:
    base = bench_database_url()
    results = [r for shape in SHAPES for r in run_shape(base, shape)]
    print_table(
        f"Sync of {TRANSACTIONS:,}-transaction ledgers (rows = ledger table rows reflected; vs ceiling = ceiling's "
        "time / this one's: 1.00 is the ceiling's speed; seconds: the median of the rounds where there are several)",
        ["shape", "phase", "way", "seconds", "rounds", "of it warehouse", "rows", "rows/s", "peak MiB", "vs ceiling"],
        [[r["shape"], r["phase"], r["way"], r["seconds"] if r["seconds"] else r["error"],
          " / ".join(f"{s:.2f}" for s in r["round_seconds"]) if r.get("round_seconds") else "-",
          r["warehouse_seconds"] if r["warehouse_seconds"] is not None else "-", r["rows"],
          r["rows_per_s"] or "-", r["peak_mib"] or "-", f"{r['vs_ceiling']:.2f}" if r["vs_ceiling"] else "-"]
         for r in results],
    )
    print(f"\nours syncs in batches of {DEFAULT_BATCH_SIZE:,} logs. Its peak memory (MiB) after each batch of the full "
          "syncs, flat once the batches in flight and DuckDB's data awaiting a checkpoint (at 256 MB) are reached:")
    for r in results:
        if r["phase"] == "full" and r["peak_mib_by_batch"]:
            print(f"  {r['shape']}, {r['way']}: {r['peak_mib_by_batch']}")
    for r in results:
        if r.get("postgres_floor_seconds"):
            print(f"  {r['shape']}: ours -> PostgreSQL {r['seconds']:.1f}s in full, "
                  f"{r['warehouse_seconds']:.1f}s of it in the warehouse; PostgreSQL's own ingestion of the "
                  f"same rows: {r['postgres_floor_seconds']:.1f}s")
    save("sync", {"transactions": TRANSACTIONS, "batch_size": DEFAULT_BATCH_SIZE, "results": results})


if __name__ == "__main__":
    main()
