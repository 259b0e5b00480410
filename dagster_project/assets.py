"""The warehouse tables of every pipeline, as one partitioned multi-asset.

Pipelines are created at run time (`ledgerctl pipelines create`), so each pipeline is a partition of a
dynamic partitions definition, registered by the sensor: a new pipeline appears in the UI without a code
change, and its six tables are materialized together (one sync loads them all), checked together, and
show lineage from the ledger's log.
"""


import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import dagster as dg
from pydantic import Field

from dagster_project.resources import ExporterSecrets, LedgerDatabase
from ledger_pipelines import registry
from ledger_pipelines.errors import PipelineBusy, PipelineError, TransientLoadError
from ledger_pipelines.sync import RetryPolicy, sync_pipeline, verify_pipeline
from ledger_pipelines.tables import DATA_TABLES
from ledger_pipelines.verify import CheckResult

# Partition keys are pipeline names (`shop-warehouse`): readable in the partition list, run tags and backfills.
PIPELINES = dg.DynamicPartitionsDefinition(name="ledger_pipelines")

# Dagster retries a run's sync step only for failures that may pass (a locked DuckDB file, a warehouse
# restarting, another sync of the pipeline running); a terminal failure (a value that does not fit, a broken
# chain, a missing secret) fails at once, with its code and what to do in the failure's description.
SYNC_RETRY = dg.RetryPolicy(max_retries=3, delay=10, backoff=dg.Backoff.EXPONENTIAL)


@contextmanager
def failures_as_dagster_sees_them(pipeline: str) -> Iterator[None]:
    """A failure that may pass goes up as is (the step's retry policy runs it again); a terminal one becomes a
    Failure that is not retried, with its code and what to do in its description."""
    try:
        yield
    except (TransientLoadError, PipelineBusy):
        raise
    except PipelineError as exc:
        raise dg.Failure(description=f"{exc.error_code}: {exc}", allow_retries=False,
                         metadata={"pipeline": pipeline, "error_code": exc.error_code}) from exc


class SyncConfig(dg.Config):
    """Launchpad settings of one sync (all optional)."""

    reset_to_log_id: int | None = Field(
        default=None, ge=0,
        description="Before syncing, move the pipeline's cursor back to this log id: 0 is a full re-sync. "
                    "Only backwards; the warehouse absorbs the replayed logs.")
    retry_attempts: int = Field(
        default=5, ge=1, le=20,
        description="Attempts inside the sync for a transient failure, before Dagster's own retry policy.")

LEDGER_LOG = dg.AssetSpec(
    key=dg.AssetKey(["ledger", "log"]),
    group_name="ledger",
    description="The ledger's hash-chained log in PostgreSQL: the single source every warehouse table derives from.",
    kinds={"postgres"},
)

TABLE_DESCRIPTIONS = {
    "logs": "Every log entry: id, type, date, idempotency key, hash, data (JSON).",
    "transactions": "One row per transaction: timestamps, reference, current metadata, reverted_at, reversal links.",
    "postings": "One row per posting: source, destination, asset, exact amount.",
    "moves": "One row per account side of a posting: signed amount, asset scale, volumes after it in insertion "
             "order (effective order: the moves_effective view).",
    "accounts": "One row per account: current metadata, first use, last update.",
    "balances": "Current input, output and balance per account and asset, as of the pipeline's cursor.",
    "daily_volumes": "What each account received and sent per asset and UTC day, by effective date (closing "
                     "balances: the daily_balances view).",
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
    "freshness": "logs",
}

# Dagster's freshness policy is per asset (any pipeline's sync refreshes a table); each pipeline's own freshness,
# by its cadence, is the partitioned `freshness` check, which the sensor re-evaluates on every tick.
TABLE_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=26), warn_window=timedelta(hours=2))

WAREHOUSE_SPECS = [
    dg.AssetSpec(key=table_key(t.name), deps=[LEDGER_LOG.key], group_name="warehouse",
                 description=TABLE_DESCRIPTIONS[t.name], kinds={"table"}, freshness_policy=TABLE_FRESHNESS)
    for t in DATA_TABLES
]
with warnings.catch_warnings():
    # Partitioned checks are a preview in Dagster 1.13; they are what shows each check per pipeline.
    warnings.simplefilter("ignore", dg.PreviewWarning)
    CHECK_SPECS = [
        dg.AssetCheckSpec(name=name, asset=table_key(table), blocking=False, partitions_def=PIPELINES,
                          description="The pipeline keeps up with its cadence (no committed log waits too long)."
                          if name == "freshness" else
                          f"Warehouse equals the ledger as of the cursor: {name.replace('_', ' ')}.")
        for name, table in CHECK_ASSETS.items()
    ]


def check_evaluation(check: CheckResult, partition: str, cursor: int) -> dict:
    """The fields of a check's result in Dagster, the same from a sync, a check run or the sensor."""
    return {"check_name": check.name, "asset_key": table_key(CHECK_ASSETS[check.name]), "passed": check.passed,
            "severity": dg.AssetCheckSeverity.WARN if check.name == "freshness" else dg.AssetCheckSeverity.ERROR,
            "description": check.description,
            "metadata": {"pipeline": partition, "cursor": cursor, "details": dg.MetadataValue.json(check.details),
                         "first_differences": dg.MetadataValue.json(check.first_differences)}}


@dg.multi_asset(
    name="warehouse_sync",
    specs=WAREHOUSE_SPECS,
    check_specs=CHECK_SPECS,
    partitions_def=PIPELINES,
    can_subset=True,
    retry_policy=SYNC_RETRY,
    description="Sync one pipeline's new logs into its warehouse, then prove the warehouse equals the ledger.",
)
def warehouse_sync(context: dg.AssetExecutionContext, config: SyncConfig, ledger_db: LedgerDatabase,
                   exporter_secrets: ExporterSecrets):
    url = ledger_db.database_url()
    with ledger_db.connect() as conn:
        registry.require_schema(conn)
        pipeline = registry.get_pipeline(conn, context.partition_key)
        exporter = registry.get_exporter(conn, pipeline.exporter_id)
        if config.reset_to_log_id is not None:
            registry.reset_pipeline(conn, pipeline.id, config.reset_to_log_id)
            context.log.info(f"pipeline {pipeline.name}: cursor reset to log {config.reset_to_log_id}")
    with failures_as_dagster_sees_them(pipeline.name):
        report = sync_pipeline(url, pipeline.id, environ=exporter_secrets.environ(exporter.secret_names()),
                               verify_after=True, trigger="dagster", retry=RetryPolicy(attempts=config.retry_attempts))
    context.log.info(f"pipeline {pipeline.name}: {report.logs} logs to log {report.to_log_id}, lag {report.lag}")
    # One sync loads all six tables, whatever was selected: selected ones are this step's outputs, the others
    # are recorded as materialized too (they were), so any selection of warehouse tables works and tells the truth.
    selected, selected_checks = context.selected_asset_keys, context.selected_asset_check_keys
    for table in DATA_TABLES:
        metadata = materialization_metadata(pipeline, exporter, report.to_json(), table.name, "dagster")
        if table_key(table.name) in selected:
            yield dg.MaterializeResult(asset_key=table_key(table.name), metadata=metadata)
        else:
            context.log_event(dg.AssetMaterialization(asset_key=table_key(table.name), partition=pipeline.name,
                                                      metadata=metadata))
    for check in report.checks:
        fields = check_evaluation(check, pipeline.name, report.to_log_id)
        if dg.AssetCheckKey(fields["asset_key"], check.name) in selected_checks:
            yield dg.AssetCheckResult(**fields)
        else:
            context.log_event(dg.AssetCheckEvaluation(**fields, partition=pipeline.name))


def materialization_metadata(pipeline: registry.Pipeline, exporter: registry.Exporter | None, sync: dict,
                             table: str, trigger: str) -> dict:
    """What every materialization of a warehouse table says, whoever ran the sync (`sync` is its JSON)."""
    return {
        "pipeline": pipeline.name,
        "ledger": pipeline.ledger,
        "exporter": f"{exporter.name} ({exporter.driver})" if exporter else pipeline.exporter_id,
        "trigger": trigger,
        "logs_loaded": sync.get("logs", 0),
        "from_log_id": sync["fromLogID"] if sync.get("fromLogID") is not None else "nothing new",
        "to_log_id": sync["toLogID"],
        "rows_loaded": sync.get("rows", {}).get(table, 0),
        "lag_after_run": sync.get("lag", 0),
        "duration_seconds": dg.MetadataValue.float(round(float(sync.get("seconds", 0.0)), 3)),
        "attempts": sync.get("attempts", 1),
        **({"note": sync["note"]} if sync.get("note") else {}),
    }


sync_job = dg.define_asset_job(
    name="sync_pipeline",
    selection=dg.AssetSelection.assets(warehouse_sync),
    description="Sync one pipeline (a partition). The instance limits runs to one per partition at a time.",
)

@dg.op(retry_policy=SYNC_RETRY, description="Prove one pipeline's warehouse equals the ledger at its cursor, "
                                              "without syncing; and its freshness.")
def recheck_warehouse(context: dg.OpExecutionContext, ledger_db: LedgerDatabase, exporter_secrets: ExporterSecrets):
    with ledger_db.connect() as conn:
        registry.require_schema(conn)
        pipeline = registry.get_pipeline(conn, context.partition_key)
        exporter = registry.get_exporter(conn, pipeline.exporter_id)
    with failures_as_dagster_sees_them(pipeline.name):
        checks = verify_pipeline(ledger_db.database_url(), pipeline.id,
                                 environ=exporter_secrets.environ(exporter.secret_names()))
    for check in checks:
        context.log_event(dg.AssetCheckEvaluation(**check_evaluation(check, pipeline.name, pipeline.last_log_id),
                                                  partition=pipeline.name))


@dg.job(partitions_def=PIPELINES, description="Re-run one pipeline's checks (a partition) without a new sync.")
def check_pipeline():
    recheck_warehouse()


resync_job = dg.define_asset_job(
    name="resync_pipeline",
    selection=dg.AssetSelection.assets(warehouse_sync),
    config={"ops": {"warehouse_sync": {"config": {"reset_to_log_id": 0}}}},
    description="Full re-sync of one pipeline (a partition): reset its cursor to 0, then sync every log again. "
                "The warehouse absorbs the replayed logs; its checks run after.",
)
