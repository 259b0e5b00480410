"""DuckDB: the embedded default warehouse.

- Bulk path: Arrow tables are scanned in place by DuckDB (registered as views), no row-by-row inserts.
- Merge, without indexes: append-only tables insert the staged rows whose key is absent (anti-join);
  current-state tables delete the rows the staged ones supersede (same key, `log_id` not higher) and insert
  the staged rows whose key is then absent. The whole batch and the sync state are one DuckDB transaction.
  Keys are not declared: DuckDB maintains a PRIMARY KEY with an ART index that made these loads 5 to 10
  times slower (measured on 400k moves); uniqueness comes from the merge and is proven by the asset checks.
- Money: DECIMAL(38,0), DuckDB's widest exact type (Arrow's decimal256 is cast to decimal128 on the way
  in); a wider value stops the pipeline with ValueOutOfRange naming the log, after loading every log before
  it. The exporter setting `"money": "text"` stores money columns as VARCHAR holding every digit instead (up
  to the ledger's 76), converted in place by `setup()` when the setting changes; cast them to compute
  (`CAST(balance AS HUGEINT)` for values within 38 digits).
- JSON: the JSON type; timestamps: TIMESTAMPTZ (UTC).
A DuckDB file admits one writing process at a time, so the loader opens it per sync and closes it after.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from ledger_pipelines.errors import InvalidExporterConfig, LoadError, TransientLoadError
from ledger_pipelines.loaders.base import ConfigField, Dialect, Loader, SyncState, local_path
from ledger_pipelines.tables import ALL_TABLES, BY_NAME, MONEY_DIGITS, SYNC_STATE, Kind, Table
from ledger_pipelines.transforms import Batch

DIALECT = Dialect(
    name="duckdb",
    types={Kind.STRING: "VARCHAR", Kind.INT32: "INTEGER", Kind.INT64: "BIGINT", Kind.BOOL: "BOOLEAN",
           Kind.TIMESTAMP: "TIMESTAMPTZ", Kind.JSON: "JSON", Kind.MONEY: "DECIMAL(38,0)"},
    money_digits=38,
    declare_primary_keys=False,
)
ARROW_MONEY = pa.decimal128(38, 0)
MONEY_TEXT = "VARCHAR"


def merge_sql(target: str, table: Table, staged: str) -> list[str]:
    """Index-free merge: per key the row with the highest log_id wins, ties to the incoming row."""
    key = ", ".join(DIALECT.ident(k) for k in table.key)
    columns = ", ".join(DIALECT.ident(c) for c in table.column_names)
    insert_absent = f"INSERT INTO {target} ({columns}) SELECT s.* FROM {staged} s ANTI JOIN {target} t USING ({key})"
    if not table.mutable:
        return [insert_absent]
    matches = " AND ".join(f"{target}.{DIALECT.ident(k)} = s.{DIALECT.ident(k)}" for k in table.key)
    log_id = DIALECT.ident("log_id")
    supersede = f"DELETE FROM {target} USING {staged} s WHERE {matches} AND {target}.{log_id} <= s.{log_id}"
    return [supersede, insert_absent]


@contextmanager
def translate_errors() -> Iterator[None]:
    """The one place DuckDB's exceptions become pipeline errors."""
    try:
        yield
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower():  # another process (an analyst's session) holds the file: it will let go
            raise TransientLoadError(f"duckdb: {exc}; close other sessions on the file, or open it read-only "
                                     "and briefly") from exc
        raise LoadError(f"duckdb: {exc}") from exc  # a folder where the file should be, no permission: terminal
    except duckdb.Error as exc:
        raise LoadError(f"duckdb: {exc}") from exc


class DuckDBLoader(Loader):
    driver = "duckdb"
    dialect = DIALECT
    config_fields = (
        ConfigField("path", str, required=True),
        ConfigField("schema", str, default="ledger"),
        ConfigField("money", str, default="decimal"),  # or "text": exact digits as VARCHAR, any width
    )

    @classmethod
    def validate(cls, config: Any) -> dict[str, Any]:
        checked = super().validate(config)
        if checked["money"] not in ("decimal", "text"):
            raise InvalidExporterConfig(cls.driver, f"'money' is 'decimal' (DECIMAL(38,0)) or 'text' (exact digits "
                                                    f"as VARCHAR), got {checked['money']!r}")
        path = checked["path"]
        if not path.strip():
            raise InvalidExporterConfig(cls.driver, "'path' must not be empty")
        if "token" in path.partition("?")[2].lower():
            raise InvalidExporterConfig(cls.driver, "'path' must not carry a token; DuckDB exports to a local file")
        return checked

    @classmethod
    def prepare(cls, config: dict[str, Any], base_dir: Path) -> dict[str, Any]:
        if config["path"] == ":memory:":
            return config
        return {**config, "path": local_path(cls.driver, "path", config["path"], base_dir)}

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        path = self.config["path"]
        if path != ":memory:":
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise LoadError(f"duckdb: cannot create the folder of {path!r} ({exc.strerror or exc}); "
                                "point the exporter at a writable folder") from None
        with translate_errors():
            self.con = duckdb.connect(path)
            self.con.execute("SET TimeZone = 'UTC'")

    def close(self) -> None:
        self.con.close()

    @property
    def money_as_text(self) -> bool:
        return bool(self.config["money"] == "text")

    @property
    def money_digits(self) -> int:
        return MONEY_DIGITS if self.money_as_text else self.dialect.money_digits

    def wide_money_remedy(self, exporter_id: str) -> str:
        return (f"store money as exact text in this warehouse (`ledgerctl exporters update {exporter_id} --config "
                "'{\"money\": \"text\"}'`, then sync again: money columns become VARCHAR holding every digit), or "
                "export this ledger to a destination with 76-digit money (postgres, clickhouse)")

    def column_type(self, kind: Kind) -> str:
        return MONEY_TEXT if kind is Kind.MONEY and self.money_as_text else super().column_type(kind)

    def setup(self) -> None:
        money = self.column_type(Kind.MONEY)
        with translate_errors():
            self.con.execute(f"CREATE SCHEMA IF NOT EXISTS {self.dialect.ident(self.schema)}")
            for table in ALL_TABLES:
                self.con.execute(self.create_table_sql(table))
            # The money setting may have changed since the tables were made: convert them in place.
            found = self.con.execute(
                "SELECT table_name, column_name, data_type FROM information_schema.columns WHERE table_schema = ?",
                [self.schema]).fetchall()
            for name, column, data_type in found:
                table = BY_NAME.get(name)
                if table and column in table.money_columns and data_type != money:
                    self.con.execute(f"ALTER TABLE {self.qualified(table)} ALTER COLUMN {self.dialect.ident(column)} "
                                     f"TYPE {money}")

    def _arrow_in(self, table: Table, data: pa.Table) -> pa.Table:
        """DuckDB reads decimal128 only: narrow money columns (values were checked against 38 digits), or
        turn them into their exact digits when money is stored as text."""
        target = pa.string() if self.money_as_text else ARROW_MONEY
        for column in table.money_columns:
            index = data.schema.get_field_index(column)
            data = data.set_column(index, pa.field(column, target), data.column(column).cast(target))
        return data

    def fetch_current(self, table: Table, ledger: str, keys: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
        key_columns = [k for k in table.key if k != "ledger"]
        wanted = pa.table({name: [k[i] for k in keys] for i, name in enumerate(key_columns)})
        join = " AND ".join(f"t.{self.dialect.ident(k)} = w.{self.dialect.ident(k)}" for k in key_columns)
        with translate_errors():
            self.con.register("wanted_keys", wanted)
            try:
                result = self.con.sql(
                    f"SELECT t.* FROM {self.qualified(table)} t JOIN wanted_keys w ON {join} WHERE t.ledger = ?",
                    params=[ledger],
                ).to_arrow_table()
            finally:
                self.con.unregister("wanted_keys")
        return result.to_pylist()

    def load(self, batch: Batch, state: SyncState) -> None:
        self.check_money(batch)
        with translate_errors():
            self.con.begin()
            try:
                for index, (name, data) in enumerate([*batch.tables.items(), (SYNC_STATE.name, state.as_table())]):
                    table = next(t for t in ALL_TABLES if t.name == name)
                    self.con.register("staged", self._arrow_in(table, data))
                    try:
                        for statement in merge_sql(self.qualified(table), table, "staged"):
                            self.con.execute(statement)
                    finally:
                        self.con.unregister("staged")
                    if index == 0:
                        self.fault("mid_load")
                self.con.commit()
            except BaseException:
                self.con.rollback()
                raise

    def read_table(self, table: Table, ledger: str | None = None) -> pa.Table:
        order = ", ".join(self.dialect.ident(k) for k in table.key)
        where, params = ("WHERE ledger = ?", [ledger]) if ledger else ("", [])
        with translate_errors():
            return self.con.sql(f"SELECT * FROM {self.qualified(table)} {where} ORDER BY {order}",
                                params=params).to_arrow_table()
