"""DuckDB: the embedded default warehouse.

- Bulk path: Arrow tables are scanned in place by DuckDB (registered as views), no row-by-row inserts.
- Merge, without indexes: the shared delete-superseded + insert-absent (`base.Loader.merge_statements`), which
  DuckDB plans as hash anti-joins. The whole batch and the sync state are one DuckDB transaction.
  Keys are not declared: DuckDB maintains a PRIMARY KEY with an ART index that made these loads 5 to 10
  times slower (measured on 400k moves); uniqueness comes from the merge and is proven by the asset checks.
- Money: DECIMAL(38,0), DuckDB's widest exact type (batches are made with decimal128 money, which DuckDB
  reads); a wider value stops the pipeline with ValueOutOfRange naming the log, after loading every log before
  it. The exporter setting `"money": "text"` stores money columns as VARCHAR holding every digit instead (up
  to the ledger's 76), converted in place by `setup()` when the setting changes; cast them to compute
  (`CAST(balance AS HUGEINT)` for values within 38 digits).
- JSON: the JSON type; timestamps: TIMESTAMPTZ (UTC).
A DuckDB file admits one writing process at a time, so the loader opens it per sync and closes it after.

No write-ahead log: the file is attached with `RECOVERY_MODE no_wal_writes`, so a commit keeps the batch in
memory and the next checkpoint (at 256 MB of such data, and when the loader closes at the end of a sync)
writes it to the file, compressed, once. With a WAL every batch was written twice, the second time at the
checkpoint (a full sync of 247,000 logs spent 5.3 s committing; 2.8 s without). What a crash loses is what
the warehouse committed since its last checkpoint, never a torn file: the `sync_state` row is checkpointed
with the rows it describes, so the next sync finds the warehouse behind the cursor and replays from where it
really is (`sync._reconcile`). A WAL left by an older version is still replayed when the file is opened.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from ledger_pipelines.errors import InvalidExporterConfig, LoadError, TransientLoadError
from ledger_pipelines.loaders.base import Dialect, Loader
from ledger_pipelines.loaders.config import ConfigField, local_path
from ledger_pipelines.tables import BY_NAME, MONEY_DIGITS, Kind, Table

DIALECT = Dialect(
    name="duckdb",
    types={Kind.STRING: "VARCHAR", Kind.INT32: "INTEGER", Kind.INT64: "BIGINT", Kind.BOOL: "BOOLEAN",
           Kind.TIMESTAMP: "TIMESTAMPTZ", Kind.DATE: "DATE", Kind.JSON: "JSON", Kind.MONEY: "DECIMAL(38,0)"},
    money_digits=38,
    arrow_money=pa.decimal128(38, 0),  # DuckDB reads decimal128 only
    placeholder="${name}",
    declare_primary_keys=False,
)
MONEY_TEXT = "VARCHAR"
JSON_TEXT = pa.json_(pa.string())  # Arrow's canonical JSON type, which DuckDB reads as its JSON


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


def attach(path: str) -> duckdb.DuckDBPyConnection:
    """The warehouse file, attached without a write-ahead log (see the module's docstring)."""
    con, quoted = duckdb.connect(), "'" + path.replace("'", "''") + "'"
    try:
        con.execute(f"ATTACH {quoted} AS warehouse (RECOVERY_MODE no_wal_writes)")
        con.execute("USE warehouse")
    except BaseException:
        con.close()
        raise
    return con


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
            self.con = duckdb.connect(path) if path == ":memory:" else attach(path)
            self.con.execute("SET TimeZone = 'UTC'")
            # DuckDB checkpoints when the data it would have logged passes this. Its default, 16 MB,
            # checkpointed at almost every batch's commit (a third of a full sync's time); 256 MB halves that
            # cost, and the memory held until a checkpoint stays bounded by it (the peak stops growing after
            # 6 batches).
            self.con.execute("SET checkpoint_threshold = '256MB'")

    def close(self) -> None:
        self.con.close()

    def errors(self) -> Any:
        return translate_errors()

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        self.con.execute(sql, params or {})

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return self.con.execute(sql, params or {}).fetchall()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.con.begin()
        try:
            yield
            self.con.commit()
        except BaseException:
            self.con.rollback()
            raise

    def stage(self, table: Table, data: pa.Table) -> str:
        """DuckDB scans the Arrow table in place: no copy, no staging table."""
        name = f"staged_{table.name}"
        self.con.register(name, data)
        return name

    def unstage(self, staged: str) -> None:
        self.con.unregister(staged)

    appends = True

    def append(self, table: Table, data: pa.Table) -> None:
        columns = ", ".join(self.ident(c) for c in table.column_names)
        self.con.register("appended", data)
        try:
            self.execute(f"INSERT INTO {self.qualified(table)} ({columns}) SELECT {columns} FROM appended")
        finally:
            self.con.unregister("appended")

    @property
    def money_as_text(self) -> bool:
        return bool(self.config["money"] == "text")

    @property
    def money_digits(self) -> int:
        return MONEY_DIGITS if self.money_as_text else self.dialect.money_digits

    def wide_money_remedy(self, exporter_id: str) -> str:
        return (f"store money as exact text in this warehouse (`ledgerctl exporters update {exporter_id} --config "
                "'{\"money\": \"text\"}'`, then sync again: money columns become VARCHAR holding every digit), or "
                "export this ledger to a warehouse with 76-digit money (postgres, clickhouse)")

    def column_type(self, kind: Kind) -> str:
        return MONEY_TEXT if kind is Kind.MONEY and self.money_as_text else super().column_type(kind)

    def ensure_schema(self, pipeline_id: str) -> dict[str, Any] | None:
        """As for every warehouse, plus the money setting: an `exporters update` to or from text converts the
        money columns at the next sync, whatever the schema version says (one catalog query, local). Setup
        creates new tables with the setting's type already, so this is the one place conversion happens."""
        state = super().ensure_schema(pipeline_id)
        with translate_errors():
            self.convert_money()
        return state

    def convert_money(self) -> None:
        """Money columns of another type than the setting asks for are converted in place."""
        money = self.column_type(Kind.MONEY)
        found = self.query("SELECT table_name, column_name, data_type FROM information_schema.columns "
                           "WHERE table_schema = $schema", {"schema": self.schema})
        converted = False
        for name, column, data_type in found:
            table = BY_NAME.get(name)
            if table and column in table.money_columns and data_type != money:
                self.execute(f"ALTER TABLE {self.qualified(table)} ALTER COLUMN {self.ident(column)} TYPE {money}")
                converted = True
        if converted:  # the views sum money as its type now is
            self.create_analyst_views()

    def arrow_in(self, table: Table, data: pa.Table) -> pa.Table:
        """Money as every warehouse takes it, and JSON columns typed as Arrow's JSON: DuckDB then takes them as
        JSON without parsing each value again (a third of the time of appending the logs). They are JSON
        already: the ledger's jsonb as text, or DuckDB's own merges of it."""
        data = super().arrow_in(table, data)
        for column in table.columns:
            if column.kind is Kind.JSON:
                index = data.schema.get_field_index(column.name)
                values = pa.chunked_array([pa.ExtensionArray.from_storage(JSON_TEXT, chunk)
                                           for chunk in data.column(index).chunks], JSON_TEXT)
                data = data.set_column(index, pa.field(column.name, JSON_TEXT, column.nullable), values)
        return data

    @property
    def arrow_money(self) -> pa.DataType:
        return pa.string() if self.money_as_text else self.dialect.arrow_money

    def fetch_current(self, table: Table, ledger: str, keys: Sequence[Any],
                      within: tuple[str, Any, Any] | None = None) -> pa.Table:
        """One join against the wanted keys, scanned from Arrow: faster than IN lists for large batches.
        (Money comes as DuckDB holds it, decimal128 or text: the transforms read it as its digits.)"""
        column = self.ident(next(k for k in table.key if k != "ledger"))
        where, params = "t.ledger = ?", [ledger]
        if within is not None:
            where += f" AND t.{self.ident(within[0])} BETWEEN ? AND ?"
            params += [within[1], within[2]]
        with translate_errors():
            self.con.register("wanted_keys", pa.table({"key": keys}))
            try:
                result = self.con.sql(f"SELECT t.* FROM {self.qualified(table)} t JOIN wanted_keys w "
                                      f"ON t.{column} = w.key WHERE {where}", params=params).to_arrow_table()
            finally:
                self.con.unregister("wanted_keys")
        return result

    # Text money may be wider than DuckDB's DECIMAL: the views compute with it as BIGNUM, and show its digits.
    def money_value(self, column: str) -> str:
        return f"CAST({column} AS BIGNUM)" if self.money_as_text else column

    def summed_money(self, expression: str, window: str) -> str:
        if self.money_as_text:
            return f"CAST(SUM({expression}) {window} AS VARCHAR)"
        return super().summed_money(expression, window)

    def asset_sums(self, ledger: str) -> dict[str, int]:
        if not self.money_as_text:
            return super().asset_sums(ledger)
        # Text money may be wider than any DuckDB number: sum exactly in Python (a setting for wide values).
        sums: dict[str, int] = {}
        for row in self.balances(ledger):
            sums[row["asset"]] = sums.get(row["asset"], 0) + int(row["balance"])
        return sums
