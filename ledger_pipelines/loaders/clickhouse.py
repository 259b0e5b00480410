"""ClickHouse, through clickhouse-connect.

- Connection: production speaks HTTP(S) to a server (`host`, `port`, `username`, `password` from an
  environment variable, `database`, `secure`). `chdb_path` instead runs the real ClickHouse engine
  in-process (chdb) on a local directory, through the same client: the loader code is identical, only
  the connection differs. chdb allows one process per data directory, so use it for local work and tests;
  and because the engine runs inside Python, it can wait on the GIL that another busy Python thread of the
  same process holds (a known chdb hazard): run concurrent work in other processes, as a server would.
- Bulk path: each batch table is inserted with `insert_arrow` (Arrow straight to the native format), one
  block per table per batch, never row by row.
- Merge: tables are `ReplacingMergeTree(log_id)` ordered by the natural key, so for each key the row with
  the highest `log_id` survives background merges, whatever order batches arrive in; a replayed batch
  only adds rows with versions that already exist. Until merges run, duplicates can be visible to a plain
  SELECT: **analysts read with `FINAL`** (`SELECT … FROM ledger.balances FINAL`) **or through the views
  `<table>_final`** (`ledger.balances_final`), which this loader creates and which always deduplicate.
- Not transactional: data tables load first and `sync_state` last; a sync killed half-way leaves rows
  that the re-run replays with the same versions, which FINAL collapses.
- Money: Int256 (76 digits, the pipeline's full range), never Float. Timestamps: DateTime64(6, 'UTC').
- JSON columns (`data`, `metadata`) are String holding JSON text: keys differ per row and ledger, which
  the JSON type would turn into an ever-growing set of subcolumns; `JSONExtractString(metadata, 'key')`
  reads them.
- Partitioning: the append-only tables and `transactions` by month of their own timestamp (immutable per
  key, so deduplication, which works within a partition, is never split); `accounts`, `balances` and
  `sync_state` are small and unpartitioned.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import clickhouse_connect
import pyarrow as pa
import pyarrow.compute as pc
from clickhouse_connect.driver import exceptions as ch_errors

from ledger_pipelines.errors import InvalidExporterConfig, LoadError, TransientLoadError
from ledger_pipelines.loaders.base import Dialect, Loader
from ledger_pipelines.loaders.config import PORT_BOUNDS, ConfigField, local_path
from ledger_pipelines.tables import ALL_TABLES, ARROW_TYPES, MONEY_DIGITS, Kind, Table

DIALECT = Dialect(
    name="clickhouse",
    types={Kind.STRING: "String", Kind.INT32: "Int32", Kind.INT64: "Int64", Kind.BOOL: "Bool",
           Kind.TIMESTAMP: "DateTime64(6, 'UTC')", Kind.DATE: "Date32", Kind.JSON: "String", Kind.MONEY: "Int256"},
    money_digits=MONEY_DIGITS,
    max_identifier_length=255,
    quote="`",
    placeholder="{{{name}:{type}}}",
)

# Month partitions on a column that never changes for a key; tables not listed are unpartitioned.
PARTITION_BY = {"logs": "date", "transactions": "timestamp", "postings": "timestamp", "moves": "timestamp"}


# TabSeparated's escapes, the backslash first: a value holding any of these still reads back as itself.
TSV_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"))
# A query parameter's own escapes (ClickHouse reads a parameter's text unescaping them once), the backslash first;
# of the characters it escapes, only these can remain in TSV rows (a tab within a key is `\t` by then).
PARAMETER_ESCAPES = (("\\", "\\\\"), ("\n", "\\n"))
# clickhouse-connect sends parameters longer than 4 KiB in all as fields of an HTML form, and a ClickHouse server
# refuses a form field longer than `http_max_field_value_size` (128 KiB by default: "Field value too long"). So a
# fold's keys go in parameters of about this many bytes each, one more key at most (an address has at most 1,024).
MAX_KEYS_PARAMETER_BYTES = 64 * 1024


@dataclass(frozen=True)
class EscapedText:
    """A query parameter's value already escaped the way ClickHouse reads parameters. clickhouse-connect escapes
    a `str` parameter character by character in Python; a value of a type it does not know it sends as `str()`
    gives it, unchanged."""

    text: str

    def __str__(self) -> str:
        return self.text


def keys_as_tsv(keys: Sequence[Any], max_bytes: int = MAX_KEYS_PARAMETER_BYTES) -> list[EscapedText]:
    """`keys` as String parameters holding TabSeparated rows, each read back by `format(TSV, 'key <type>', …)`;
    a new parameter starts at the first row past `max_bytes`, so every row is whole in one of them.

    A fold asks for the current rows of every key a batch touches, 20,000 account addresses and more. Sent as an
    `Array(String)` parameter, 20,000 of them cost 50 ms before the query ran (20 ms of clickhouse-connect
    escaping each character in Python, 30 ms of ClickHouse parsing the array); as TSV, escaped with Arrow's string
    kernels, 8 ms (3.4 ms here, 4 to 7 ms for ClickHouse to read them). A full sync's reads of current rows took
    1.0 to 1.3 s with the array, 0.7 s now.
    """
    rows = pa.array(keys).cast(pa.string())  # a number or a date as its text, which TSV reads as the key's type
    for raw, escaped in TSV_ESCAPES:
        rows = pc.replace_substring(rows, raw, escaped)
    rows = pc.binary_join_element_wise(rows, "", "\n")  # each row ends with a line break
    for raw, escaped in PARAMETER_ESCAPES:  # the line breaks and the TSV escapes' backslashes are text in it
        rows = pc.replace_substring(rows, raw, escaped)
    lengths = pc.binary_length(rows)
    parameter = pc.divide(pc.subtract(pc.cumulative_sum(lengths), lengths), max_bytes)  # by where a row starts
    parameters, start = [], 0
    for end in pc.run_end_encode(parameter).run_ends.to_pylist() if len(rows) else []:
        parameters.append(EscapedText("".join(rows.slice(start, end - start).to_pylist())))
        start = end
    return parameters


@contextmanager
def translate_errors() -> Iterator[None]:
    """The one place clickhouse-connect's exceptions become pipeline errors."""
    try:
        yield
    except ch_errors.OperationalError as exc:  # unreachable server, timeouts
        raise TransientLoadError(f"clickhouse: {exc}") from exc
    except ch_errors.ClickHouseError as exc:
        raise LoadError(f"clickhouse: {exc}") from exc


class ClickHouseLoader(Loader):
    driver = "clickhouse"
    dialect = DIALECT
    config_fields = (
        ConfigField("host", str),
        ConfigField("port", int, bounds=PORT_BOUNDS),
        ConfigField("username", str, default="default"),
        ConfigField("password", str, secret=True),
        ConfigField("database", str, default="ledger"),
        ConfigField("secure", bool, default=False),
        ConfigField("chdb_path", str),
    )

    @classmethod
    def validate(cls, config: Any) -> dict[str, Any]:
        checked = super().validate(config)
        if ("host" in checked) == ("chdb_path" in checked):
            raise InvalidExporterConfig(cls.driver, "give 'host' (a ClickHouse server) or 'chdb_path' (embedded), "
                                                    "not both and not neither")
        if "chdb_path" in checked and ({"port", "password"} & set(checked) or checked["secure"]):
            raise InvalidExporterConfig(cls.driver, "'port', 'password' and 'secure' are for a server, "
                                                    "not for 'chdb_path'")
        if not checked["host" if "host" in checked else "chdb_path"].strip():
            raise InvalidExporterConfig(cls.driver, "'host' must not be empty")
        if "host" in checked and any(c in checked["host"] for c in "@/?# "):
            raise InvalidExporterConfig(cls.driver, "'host' is a host name only (no user, password, scheme or "
                                                    "path); give 'password': {\"env\": \"VARIABLE\"}")
        return checked

    @classmethod
    def prepare(cls, config: dict[str, Any], base_dir: Path) -> dict[str, Any]:
        if "chdb_path" not in config:
            return config
        return {**config, "chdb_path": local_path(cls.driver, "chdb_path", config["chdb_path"], base_dir,
                                                 folder=True)}

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.schema = self.config["database"]
        with translate_errors():
            if "chdb_path" in self.config:
                self.client = clickhouse_connect.get_client(dsn=f"chdb:///{self.config['chdb_path']}")
            else:
                secure = self.config["secure"]
                self.client = clickhouse_connect.get_client(
                    host=self.config["host"], port=self.config.get("port") or (8443 if secure else 8123),
                    username=self.config["username"], password=self.secret("password") or "", secure=secure,
                )

    def close(self) -> None:
        self.client.close()

    def errors(self) -> Any:
        return translate_errors()

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        self.client.command(sql, parameters=params)

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return list(self.client.query(sql, parameters=params).result_rows)

    def relation(self, table: Table) -> str:
        return f"{self.qualified(table)} FINAL"

    def stage(self, table: Table, data: pa.Table) -> pa.Table:
        """No staging: the insert is the merge (ReplacingMergeTree keeps the highest log_id per key)."""
        return data

    def merge(self, table: Table, staged: pa.Table) -> None:
        if staged.num_rows:
            self.client.insert_arrow(table.name, staged, database=self.schema)

    def fetch_current(self, table: Table, ledger: str, keys: Sequence[Any],
                      within: tuple[str, Any, Any] | None = None) -> pa.Table:
        """One query for all the wanted keys (TSV parameters, `keys_as_tsv`), answered in Arrow: no Python per
        row (the row-by-row read cost a full sync more than ClickHouse's own inserts). Money comes as its digits."""
        if not keys:
            return table.arrow_schema.empty_table()
        column = next(k for k in table.key if k != "ledger")
        kind = table.kind_of(column)
        texts = keys_as_tsv(keys, MAX_KEYS_PARAMETER_BYTES)
        wanted = [f"SELECT key FROM format(TSV, 'key {self.column_type(kind)}', {{keys_{i}:String}})"
                  for i in range(len(texts))]
        selected = ", ".join(f"toString({self.ident(c.name)})" if c.kind is Kind.MONEY else self.ident(c.name)
                             for c in table.columns)
        where = (f"{self.ident('ledger')} = {{ledger:String}} AND "
                 f"{self.ident(column)} IN ({' UNION ALL '.join(wanted)})")
        params: dict[str, Any] = {"ledger": ledger, **{f"keys_{i}": text for i, text in enumerate(texts)}}
        if within is not None:
            bound_kind = table.kind_of(within[0])
            where += (f" AND {self.ident(within[0])} BETWEEN {{low:{self.column_type(bound_kind)}}} "
                      f"AND {{high:{self.column_type(bound_kind)}}}")
            params |= {"low": within[1], "high": within[2]}
        with translate_errors():
            rows = self.client.query_arrow(f"SELECT {selected} FROM {self.relation(table)} WHERE {where}",
                                           parameters=params, use_strings=True)
        return pa.Table.from_arrays([rows.column(i).cast(ARROW_TYPES[c.kind]) for i, c in enumerate(table.columns)],
                                    schema=table.arrow_schema)

    def create_schema_sql(self) -> str:
        return f"CREATE DATABASE IF NOT EXISTS {self.ident(self.schema)}"

    def create_table_sql(self, table: Table) -> str:
        columns = []
        for c in table.columns:
            kind = self.column_type(c.kind)
            columns.append(f"{self.ident(c.name)} {f'Nullable({kind})' if c.nullable else kind}")
        order = ", ".join(self.ident(k) for k in table.key)
        partition = (f" PARTITION BY toYYYYMM({self.ident(PARTITION_BY[table.name])})"
                     if table.name in PARTITION_BY else "")
        return (f"CREATE TABLE IF NOT EXISTS {self.qualified(table)} ({', '.join(columns)}) "
                f"ENGINE = ReplacingMergeTree({self.ident('log_id')}){partition} ORDER BY ({order})")

    def add_column_sql(self, table: Table, column: str) -> str:
        kind = table.kind_of(column)
        return (f"ALTER TABLE {self.qualified(table)} ADD COLUMN IF NOT EXISTS {self.ident(column)} "
                f"Nullable({self.column_type(kind)})")

    def after_setup(self) -> None:
        for table in ALL_TABLES:
            self.execute(f"CREATE OR REPLACE VIEW {self.qualified(f'{table.name}_final')} AS "
                         f"SELECT * FROM {self.qualified(table)} FINAL")
