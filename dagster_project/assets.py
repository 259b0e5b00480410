"""The warehouse tables of every pipeline, as one partitioned multi-asset.

Pipelines are created at run time (`ledgerctl pipelines create`), so each pipeline is a partition of a
dynamic partitions definition, registered by the sensor: a new pipeline appears in the UI without a code
change, and its six tables are materialized together (one sync loads them all), checked together, and
show lineage from the ledger's log.
"""


import dagster as dg

from dagster_project.resources import ExporterSecrets, LedgerDatabase
from ledger_pipelines import registry
from ledger_pipelines.sync import sync_pipeline
from ledger_pipelines.tables import DATA_TABLES

PIPELINES = dg.DynamicPartitionsDefinition(name="ledger_pipelines")

LEDGER_LOG = dg.AssetSpec(
    key=dg.AssetKey(["ledger", "log"]),
    group_name="ledger",
    description="The ledger's hash-chained log in PostgreSQL: the single source every warehouse table derives from.",
    kinds={"postgres"},
)

TABLE_DESCRIPTIONS = {
    "logs": "Every log entry: id, type, date, idempotency key, hash, data (JSON).",
    "transactions": "One row per transaction: timestamps, reference, current metadata, reverted_at.",
    "postings": "One row per posting: source, destination, asset, exact amount.",
    "moves": "One row per account side of a posting, with the account's post-commit volumes (balance history).",
    "accounts": "One row per account: current metadata, first use, last update.",
    "balances": "Current input, output and balance per account and asset, as of the pipeline's cursor.",
}


def table_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["warehouse", name])


# Which table each check reports on in the UI.
CHECK_ASSETS = {
    "row_counts": "transactions",
    "log_ids_contiguous": "logs",
    "last_log_hash": "logs",
    "balances_match": "balances",
    "asset_sums_zero": "balances",
}

WAREHOUSE_SPECS = [
    dg.AssetSpec(key=table_key(t.name), deps=[LEDGER_LOG.key], group_name="warehouse",
                 description=TABLE_DESCRIPTIONS[t.name], kinds={"table"})
    for t in DATA_TABLES
]
CHECK_SPECS = [
    dg.AssetCheckSpec(name=name, asset=table_key(table), blocking=False,
                      description=f"Warehouse equals the ledger as of the cursor: {name.replace('_', ' ')}.")
    for name, table in CHECK_ASSETS.items()
]


@dg.multi_asset(
    name="warehouse_sync",
    specs=WAREHOUSE_SPECS,
    check_specs=CHECK_SPECS,
    partitions_def=PIPELINES,
    can_subset=False,
    description="Sync one pipeline's new logs into its warehouse, then prove the warehouse equals the ledger.",
)
def warehouse_sync(context: dg.AssetExecutionContext, ledger_db: LedgerDatabase, exporter_secrets: ExporterSecrets):
    pipeline_id = context.partition_key
    url = ledger_db.database_url()
    with ledger_db.connect() as conn:
        registry.migrate_pipelines(conn)
        exporter = registry.get_exporter(conn, registry.get_pipeline(conn, pipeline_id).exporter_id)
    report = sync_pipeline(url, pipeline_id, environ=exporter_secrets.environ(exporter.secret_names()),
                           verify_after=True, trigger="dagster")
    context.log.info(f"pipeline {pipeline_id}: {report.logs} logs to log {report.to_log_id}, lag {report.lag}")
    for table in DATA_TABLES:
        yield dg.MaterializeResult(
            asset_key=table_key(table.name),
            metadata={
                "pipeline": pipeline_id,
                "ledger": report.ledger,
                "exporter": f"{exporter.id} ({exporter.driver})",
                "logs_loaded": report.logs,
                "from_log_id": report.from_log_id if report.from_log_id is not None else "nothing new",
                "to_log_id": report.to_log_id,
                "rows_loaded": report.rows.get(table.name, 0),
                "lag_after_run": report.lag,
                "duration_seconds": dg.MetadataValue.float(round(report.seconds, 3)),
                "attempts": report.attempts,
                **({"note": report.note} if report.note else {}),
            },
        )
    for check in report.checks:
        yield dg.AssetCheckResult(
            check_name=check.name,
            asset_key=table_key(CHECK_ASSETS[check.name]),
            passed=check.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=check.description,
            metadata={"cursor": report.to_log_id, "details": dg.MetadataValue.json(check.details),
                      "first_differences": dg.MetadataValue.json(check.first_differences)},
        )


sync_job = dg.define_asset_job(
    name="sync_pipeline",
    selection=dg.AssetSelection.assets(warehouse_sync),
    description="Sync one pipeline (a partition). The instance limits runs to one per partition at a time.",
)
