"""Warehouse loaders: one module per driver, one interface (`base.Loader`).

How each of the six warehouses loads; the loop itself is `base.Loader.load`, once:

| driver | bulk path | merge | money type |
|---|---|---|---|
| duckdb | Arrow tables scanned in place | delete-superseded + insert-absent, one transaction | DECIMAL(38,0) (or exact text) |
| postgres | Arrow → CSV → `COPY FROM STDIN` into temporary staging | `INSERT … ON CONFLICT DO UPDATE WHERE newer log_id`, one transaction | NUMERIC(76,0) |
| clickhouse | Arrow inserts through clickhouse-connect | ReplacingMergeTree(log_id): the highest version wins; analysts read with FINAL / `*_final` views | Int256 |
| bigquery | Parquet → load job into a staging table | delete (EXISTS) + insert-absent, one multi-statement transaction | BIGNUMERIC(38,0) |
| snowflake | Parquet → `PUT` to a temporary stage → `COPY INTO` a transient staging table | delete-superseded + insert-absent in `BEGIN … COMMIT` | NUMBER(38,0) |
| redshift | Parquet → S3 → `COPY … FORMAT AS PARQUET` into temporary staging | delete-superseded + insert-absent, one transaction | DECIMAL(38,0) |

Every warehouse keeps, per natural key, the row with the highest `log_id`; values wider than its
money type stop the pipeline (`ValueOutOfRange`) instead of being rounded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ledger_pipelines.loaders.base import Drivers, FaultHook, Loader

__all__ = ["DRIVERS", "FaultHook", "Loader", "is_log_sink", "open_loader", "prepare_config", "validate_config"]

DRIVERS = Drivers({
    "duckdb": "ledger_pipelines.loaders.duckdb:DuckDBLoader",
    "postgres": "ledger_pipelines.loaders.postgres:PostgresLoader",
    "clickhouse": "ledger_pipelines.loaders.clickhouse:ClickHouseLoader",
    "redshift": "ledger_pipelines.loaders.redshift:RedshiftLoader",
    "snowflake": "ledger_pipelines.loaders.snowflake:SnowflakeLoader",
    "bigquery": "ledger_pipelines.loaders.bigquery:BigQueryLoader",
    "http": "ledger_pipelines.delivery:HttpSink",  # not a warehouse: the logs themselves, POSTed (delivery.py)
})


def validate_config(driver: str, config: Any) -> dict[str, Any]:
    """Check a config for `driver` without connecting anywhere; return it normalised."""
    return DRIVERS.get(driver).validate(config)


def prepare_config(driver: str, config: Any, base_dir: Path) -> dict[str, Any]:
    """What `exporters create` stores: the config validated, with paths made absolute against `base_dir`."""
    loader = DRIVERS.get(driver)
    return loader.prepare(loader.validate(config), base_dir)


def is_log_sink(driver: str) -> bool:
    """Whether the driver receives the logs as they are (no warehouse tables, nothing to read back)."""
    from ledger_pipelines.delivery import LogSink

    return driver in DRIVERS.modules and issubclass(DRIVERS.get(driver), LogSink)


def open_loader(driver: str, config: Any, environ: Any, fault: FaultHook | None = None) -> Any:
    """A `Loader` for a warehouse driver; a `delivery.LogSink` for one that receives the logs themselves."""
    return DRIVERS.get(driver)(config, environ, fault)
