"""Warehouse loaders: one module per destination, one interface (`base.Loader`).

How each of the six destinations loads (built ones are marked ✔):

| driver | bulk path | merge strategy | money type |
|---|---|---|---|
| duckdb ✔ | Arrow tables scanned in place | `INSERT … ON CONFLICT DO UPDATE WHERE newer log_id`, one transaction | DECIMAL(38,0) |
| postgres ✔ | Arrow → CSV → `COPY` into a temp staging table | `INSERT … SELECT … ON CONFLICT DO UPDATE WHERE newer log_id`, one transaction | NUMERIC(76,0) |
| clickhouse ✔ | Arrow inserts through clickhouse-connect, large blocks | ReplacingMergeTree(log_id): the highest version wins at merge time; analysts read with FINAL / dedup views | Int256 |
| bigquery | load job from Arrow/Parquet into a staging table | `MERGE … WHEN MATCHED AND S.log_id >= T.log_id`, multi-statement transaction | BIGNUMERIC(76,0) |
| snowflake | `write_pandas` (Parquet + COPY INTO) into a staging table | `MERGE INTO … WHEN MATCHED AND S.log_id >= T.log_id`, one transaction | NUMBER(38,0) |
| redshift | Parquet to S3, `COPY … FORMAT PARQUET` into a staging table | `MERGE` from staging (or delete+insert), one transaction | DECIMAL(38,0) |

Every destination keeps, per natural key, the row with the highest `log_id`; values wider than its
money type stop the pipeline (`ValueOutOfRange`) instead of being rounded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ledger_pipelines.loaders.base import Drivers, FaultHook, Loader

DRIVERS = Drivers({
    "duckdb": "ledger_pipelines.loaders.duckdb:DuckDBLoader",
    "postgres": "ledger_pipelines.loaders.postgres:PostgresLoader",
    "clickhouse": "ledger_pipelines.loaders.clickhouse:ClickHouseLoader",
    "redshift": "ledger_pipelines.loaders.redshift:RedshiftLoader",
    "snowflake": "ledger_pipelines.loaders.snowflake:SnowflakeLoader",
    "bigquery": "ledger_pipelines.loaders.bigquery:BigQueryLoader",
})


def validate_config(driver: str, config: Any) -> dict[str, Any]:
    """Check a config for `driver` without connecting anywhere; return it normalised."""
    return DRIVERS.get(driver).validate(config)


def prepare_config(driver: str, config: Any, base_dir: Path) -> dict[str, Any]:
    """What `exporters create` stores: the config validated, with paths made absolute against `base_dir`."""
    loader = DRIVERS.get(driver)
    return loader.prepare(loader.validate(config), base_dir)


def open_loader(driver: str, config: Any, environ: Any, fault: FaultHook | None = None) -> Loader:
    return DRIVERS.get(driver)(config, environ, fault)
