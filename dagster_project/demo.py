"""`make demo`: the whole product on the embedded defaults, twice-safe.

Starts the project's local PostgreSQL, writes a marketplace's activity into the ledger `demo-marketplace`,
creates (once) a DuckDB exporter and a pipeline, runs the sync through Dagster (the pipeline's partition
of the warehouse assets, with its asset checks), then prints a few analyst queries and how to open the UI.
Run by `make demo` with DAGSTER_HOME set, so the run shows up in the UI afterwards.
"""

import os
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb

from dagster_project.assets import PIPELINES
from dagster_project.definitions import defs
from dagster_project.resources import ledger_database_from_environment
from ledger_core import migrations, reads
from ledger_core.demo_activity import seed_marketplace
from ledger_pipelines import registry

LEDGER = "demo-marketplace"

ANALYST_QUERIES = {
    "Top 4 balances (sellers and platform) in each asset": """
        SELECT asset, account, display_balance FROM ledger.balances
        WHERE ledger = $ledger AND account NOT LIKE 'orders:%' AND account <> 'world'
        QUALIFY row_number() OVER (PARTITION BY asset ORDER BY balance DESC, account) <= 4
        ORDER BY asset, balance DESC, account""",
    "Daily pay-in volume per asset (effective date, refunds netted out)": """
        SELECT day, asset, output AS paid_in, input AS refunded, output - input AS net
        FROM ledger.daily_volumes WHERE ledger = $ledger AND account = 'world' ORDER BY day, asset""",
    "Closing balance of platform:fees in USD/2 per effective day (late payments included)": """
        SELECT day, closing_balance FROM ledger.daily_balances
        WHERE ledger = $ledger AND account = 'platform:fees' AND asset = 'USD/2' ORDER BY day""",
    "Refunds: the order each one reverses, dated at the order's effective time": """
        SELECT r.id AS refund, r.reverts_transaction_id AS order_transaction, r.timestamp, r.inserted_at
        FROM ledger.transactions r WHERE r.ledger = $ledger AND r.reverts_transaction_id IS NOT NULL
        ORDER BY r.id""",
}


def _pipeline(conn, warehouse: Path) -> registry.Pipeline:
    exporter = next((e for e in registry.list_exporters(conn)
                     if e.driver == "duckdb" and e.config.get("path") == str(warehouse)), None)
    if exporter is None:
        exporter = registry.create_exporter(conn, "duckdb", {"path": str(warehouse)}, name="demo-warehouse")
    existing = [p for p in registry.list_pipelines(conn, ledger=LEDGER) if p.exporter_id == exporter.id]
    return existing[0] if existing else registry.create_pipeline(conn, LEDGER, exporter.id, "realtime")


def main() -> int:
    started = time.perf_counter()
    ledger_db = ledger_database_from_environment()
    warehouse = (Path(os.environ.get("LEDGER_HOME", ".")) / ".ledger" / "warehouse.duckdb").resolve()
    with ledger_db.connect(check_schema=False) as conn:
        print(f"ledger database: {ledger_db.database_url()}")
        migrations.migrate_all(conn)  # the demo brings its database up to date, as `ledgerctl db migrate` does
        new = seed_marketplace(conn, LEDGER)
        chain = reads.verify_chain(conn, LEDGER)
        print(f"ledger '{LEDGER}': {new} new writes ({chain.logs} logs in all), hash chain verified")
        pipeline = _pipeline(conn, warehouse)
        print(f"pipeline {pipeline.name}: ledger '{LEDGER}' -> duckdb {warehouse} (lag {pipeline.lag} logs)")

    instance = dg.DagsterInstance.get()
    if not instance.has_dynamic_partition(PIPELINES.name, pipeline.name):
        instance.add_dynamic_partitions(PIPELINES.name, [pipeline.name])
    result = defs.resolve_job_def("sync_pipeline").execute_in_process(
        partition_key=pipeline.name, instance=instance, raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}})
    if not result.success:
        print("the Dagster run failed; see its events with `make dev`", file=sys.stderr)
        return 1
    materialization = next(e for e in result.get_asset_materialization_events()
                           if e.asset_key == dg.AssetKey(["warehouse", "logs"]))
    meta = materialization.materialization.metadata
    print(f"Dagster run {result.run_id[:8]}: loaded {meta['logs_loaded'].value} logs "
          f"(to log {meta['to_log_id'].value}), lag after run {meta['lag_after_run'].value}")
    checks = result.get_asset_check_evaluations()
    for check in checks:
        print(f"  check {check.check_name:<20} {'passed' if check.passed else 'FAILED'}")
    if not all(c.passed for c in checks):
        return 1

    with duckdb.connect(str(warehouse), read_only=True) as wh:
        for title, sql in ANALYST_QUERIES.items():
            cursor = wh.execute(sql, {"ledger": LEDGER})
            columns = [d[0] for d in cursor.description]
            rows = cursor.fetchall()
            print(f"\n-- {title}")
            print("  " + " | ".join(columns))
            for row in rows[:10]:
                print("  " + " | ".join(str(v) for v in row))
    print(f"\ndone in {time.perf_counter() - started:.1f}s. Open the Dagster UI with:  make dev   "
          "(then http://127.0.0.1:3000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
