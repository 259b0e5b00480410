"""Snowflake, through snowflake-connector-python.

- Bulk path: each Arrow table is written as Parquet, `PUT` (as is: Parquet compresses inside) to a
  temporary stage, and loaded with `COPY INTO … MATCH_BY_COLUMN_NAME` into a transient staging table, dropped
  after the merge: what `write_pandas` does, without a detour through pandas.
- Merge: the shared delete-superseded + insert-absent inside `BEGIN … COMMIT`. Staging happens before
  `BEGIN`: DDL such as `CREATE TABLE` commits an open transaction in Snowflake.
- Names fold to upper case (Snowflake's rule for unquoted identifiers): tables and columns are created as
  `LEDGER.BALANCES` / `BALANCE`, so analysts write `select balance from ledger.balances` without quotes.
- Money: NUMBER(38,0); wider values stop the pipeline (VALUE_OUT_OF_RANGE). JSON: VARIANT, filled with
  `PARSE_JSON` from staged text.
- Credentials by environment variable only: `password`, or key-pair auth with `private_key_path` (a PEM file)
  and `private_key_passphrase`.
- The local stand-in (fakesnow, DuckDB underneath) stores NUMBER(38,0) as BIGINT, so values of 2^63 and
  more cannot round-trip there; the contract suite skips those cases on it and `make check-cloud` runs them
  against a real account (`LEDGER_CHECK_SNOWFLAKE`).
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import snowflake.connector
from snowflake.connector import errors as sf_errors

from ledger_pipelines.errors import InvalidExporterConfig, LoadError, TransientLoadError
from ledger_pipelines.loaders.base import Dialect, Fold, Loader
from ledger_pipelines.loaders.config import ConfigField, local_file
from ledger_pipelines.tables import Kind, Table

DIALECT = Dialect(
    name="snowflake",
    types={Kind.STRING: "VARCHAR", Kind.INT32: "NUMBER(10,0)", Kind.INT64: "NUMBER(19,0)", Kind.BOOL: "BOOLEAN",
           Kind.TIMESTAMP: "TIMESTAMP_TZ", Kind.DATE: "DATE", Kind.JSON: "VARIANT", Kind.MONEY: "NUMBER(38,0)"},
    money_digits=38,
    arrow_money=pa.decimal128(38, 0),  # Parquet's decimal for NUMBER(38,0)
    max_identifier_length=255,
    fold=Fold.UPPER,
    staging_types={Kind.JSON: "VARCHAR"},
    insert_casts={Kind.JSON: "PARSE_JSON({})"},
    select_casts={Kind.JSON: "TO_JSON({})", Kind.MONEY: "CAST({} AS VARCHAR)"},
)
LOAD_STAGE = "ledger_load"  # a temporary stage: gone with the session


@contextmanager
def translate_errors() -> Iterator[None]:
    """The one place the connector's exceptions become pipeline errors."""
    try:
        yield
    except (sf_errors.OperationalError, sf_errors.InterfaceError) as exc:  # network, timeouts, throttling
        raise TransientLoadError(f"snowflake: {exc}") from exc
    except sf_errors.Error as exc:  # SQL, permissions, a missing object: not fixed by retrying
        raise LoadError(f"snowflake: {exc}") from exc


class SnowflakeLoader(Loader):
    driver = "snowflake"
    dialect = DIALECT
    config_fields = (
        ConfigField("account", str, required=True),
        ConfigField("user", str, required=True),
        ConfigField("password", str, secret=True),
        ConfigField("private_key_path", str),
        ConfigField("private_key_passphrase", str, secret=True),
        ConfigField("database", str, required=True),
        ConfigField("schema", str, default="ledger"),
        ConfigField("warehouse", str),
        ConfigField("role", str),
    )

    @classmethod
    def validate(cls, config: Any) -> dict[str, Any]:
        checked = super().validate(config)
        if ("password" in checked) == ("private_key_path" in checked):
            raise InvalidExporterConfig(cls.driver, "give 'password' ({\"env\": …}) or 'private_key_path' "
                                                    "(key-pair auth), one of them")
        for key in ("account", "database", "warehouse", "role"):
            if key in checked and not checked[key].strip():
                raise InvalidExporterConfig(cls.driver, f"'{key}' must not be empty")
        return checked

    @classmethod
    def prepare(cls, config: dict[str, Any], base_dir: Path) -> dict[str, Any]:
        return local_file(cls.driver, "private_key_path", config, base_dir)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        params = {k: self.config[k] for k in ("account", "user", "database", "warehouse", "role") if k in self.config}
        if "password" in self.config:
            params["password"] = self.secret("password")
        else:
            params["private_key_file"] = self.config["private_key_path"]
            if "private_key_passphrase" in self.config:
                params["private_key_file_pwd"] = self.secret("private_key_passphrase")
        with translate_errors():
            # Bounded waits: an unreachable account is a transient failure the sync retries, not a hang.
            self.conn = snowflake.connector.connect(schema=self._folded(self.schema), timezone="UTC",
                                                    login_timeout=30, network_timeout=120, **params)
            self.cursor = self.conn.cursor()
        self.stage_made = False

    def close(self) -> None:
        self.conn.close()

    def errors(self) -> Any:
        return translate_errors()

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        self.cursor.execute(sql, params)

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return list(self.cursor.execute(sql, params).fetchall())  # type: ignore[union-attr]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.cursor.execute("BEGIN")
        try:
            yield
            self.cursor.execute("COMMIT")
        except BaseException:
            self.cursor.execute("ROLLBACK")
            raise

    def after_setup(self) -> None:
        self.execute(f"USE SCHEMA {self.ident(self.schema)}")  # the temporary load stage lives in it

    def arrow_in(self, table: Table, data: pa.Table) -> pa.Table:
        """Upper-case column names (as created), and decimal128 money (values were checked against 38 digits)."""
        data = super().arrow_in(table, data)
        return data.rename_columns([self._folded(c) for c in data.column_names])

    staging_table = "TRANSIENT TABLE"  # no fail-safe copies of rows dropped minutes later

    def stage(self, table: Table, data: pa.Table) -> str:
        """Parquet, `PUT` to a temporary stage, `COPY INTO` a transient staging table (no fail-safe copies)."""
        name = f"staged_{table.name}_{uuid.uuid4().hex[:12]}"
        staged = self.qualified(name)
        if not self.stage_made:
            self.execute(f"CREATE TEMPORARY STAGE IF NOT EXISTS {LOAD_STAGE}")
            self.stage_made = True
        self.execute(self.create_staging_sql(table, staged))
        with tempfile.TemporaryDirectory(prefix="ledger-snowflake-") as folder:
            path = Path(folder) / f"{name}.parquet"
            pq.write_table(data, path)
            self.execute(put_sql(path, name))
            self.execute(copy_into_sql(staged, name))
        return staged

    def unstage(self, staged: str) -> None:
        self.execute(f"DROP TABLE IF EXISTS {staged}")


def put_sql(path: Path, folder: str) -> str:
    """Upload one Parquet file as it is (already compressed inside) to the load stage."""
    return f"PUT 'file://{path}' @{LOAD_STAGE}/{folder} AUTO_COMPRESS = FALSE OVERWRITE = TRUE"


def copy_into_sql(staged: str, folder: str) -> str:
    return (f"COPY INTO {staged} FROM @{LOAD_STAGE}/{folder} FILE_FORMAT = (TYPE = PARQUET) "
            "MATCH_BY_COLUMN_NAME = CASE_SENSITIVE PURGE = TRUE")
