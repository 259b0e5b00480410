"""PostgreSQL as a warehouse.

- Bulk path: each Arrow table is written as CSV by Arrow's C++ writer and streamed with `COPY … FROM STDIN`
  into a temporary staging table typed like the target, never row by row.
- Merge: `INSERT INTO target SELECT … FROM staging ON CONFLICT (key) DO UPDATE … WHERE excluded.log_id >=
  target.log_id`; every table and the sync state in one transaction.
- Money: NUMERIC(76,0): exact, as wide as the pipeline's Arrow decimal256 carries.
- JSON: JSONB; timestamps: TIMESTAMPTZ.
The password is never stored: the config names an environment variable (`{"password": {"env": "PG_PASSWORD"}}`).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from ledger_pipelines.errors import InvalidExporterConfig, LoadError, TransientLoadError, first_line
from ledger_pipelines.loaders.base import Dialect, Loader
from ledger_pipelines.loaders.config import PORT_BOUNDS, ConfigField
from ledger_pipelines.tables import ARROW_TYPES, Kind, Table

DIALECT = Dialect(
    name="postgres",
    types={Kind.STRING: "TEXT", Kind.INT32: "INTEGER", Kind.INT64: "BIGINT", Kind.BOOL: "BOOLEAN",
           Kind.TIMESTAMP: "TIMESTAMPTZ", Kind.DATE: "DATE", Kind.JSON: "JSONB", Kind.MONEY: "NUMERIC(76,0)"},
    money_digits=76,
    select_casts={Kind.JSON: "{}::text", Kind.MONEY: "{}::text"},
)
COPY_CHUNK_ROWS = 25_000
CSV_OPTIONS = pa_csv.WriteOptions(include_header=False)
CONNECT_TIMEOUT = 15  # s: an unreachable warehouse is a transient failure in seconds, not at the OS's TCP timeout
SECRET_PARAMETERS = frozenset({"password", "sslpassword"})  # libpq parameters that carry a secret


@contextmanager
def translate_errors(driver: str = "postgres") -> Iterator[None]:
    """The one place psycopg's exceptions become pipeline errors (for PostgreSQL and Redshift)."""
    try:
        yield
    except psycopg.OperationalError as exc:
        raise TransientLoadError(f"{driver}: {first_line(exc)}") from exc
    except psycopg.Error as exc:
        raise LoadError(f"{driver}: {str(exc).strip()}") from exc


def copy_csv(conn: psycopg.Connection, relation: str, data: pa.Table, quote: Any) -> None:
    """Arrow's C++ CSV writer into one `COPY … FROM STDIN`: the bulk path where no object store sits between."""
    columns = ", ".join(quote(c) for c in data.column_names)
    with conn.cursor().copy(f"COPY {relation} ({columns}) FROM STDIN WITH (FORMAT csv)") as copy:
        # In chunks: psycopg sends one from its writer thread while Arrow encodes the next (neither holds the GIL).
        for chunk in data.to_batches(max_chunksize=COPY_CHUNK_ROWS):
            buffer = io.BytesIO()
            pa_csv.write_csv(chunk, buffer, CSV_OPTIONS)
            copy.write(buffer.getbuffer())


class PostgresLoader(Loader):
    driver = "postgres"
    dialect = DIALECT
    config_fields = (
        ConfigField("dsn", str),
        ConfigField("host", str),
        ConfigField("port", int, bounds=PORT_BOUNDS),
        ConfigField("user", str),
        ConfigField("password", str, secret=True),
        ConfigField("database", str),
        ConfigField("sslmode", str),
        ConfigField("schema", str, default="ledger"),
    )

    @classmethod
    def validate(cls, config: Any) -> dict[str, Any]:
        checked = super().validate(config)
        if "dsn" not in checked and not ("host" in checked and "database" in checked):
            raise InvalidExporterConfig(cls.driver, "give 'dsn', or 'host' and 'database'")
        if "dsn" in checked:
            try:
                parsed = conninfo_to_dict(checked["dsn"])
            except psycopg.Error as exc:
                raise InvalidExporterConfig(cls.driver, f"'dsn' is not a connection string: {exc}") from None
            # In any form libpq accepts: key=value, a URI's user:password@, or ?password= in its query.
            embedded = sorted(SECRET_PARAMETERS & set(parsed))
            if embedded:
                raise InvalidExporterConfig(cls.driver, f"'dsn' must not hold a secret ({', '.join(embedded)}); "
                                                        "give 'password': {\"env\": \"VARIABLE\"} instead")
        return checked

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        params = {k: self.config[k] for k in ("host", "port", "user", "sslmode") if k in self.config}
        if "database" in self.config:
            params["dbname"] = self.config["database"]
        if "password" in self.config:
            params["password"] = self.secret("password")
        if "connect_timeout" not in conninfo_to_dict(self.config.get("dsn", "")):
            params["connect_timeout"] = CONNECT_TIMEOUT
        with translate_errors(self.driver):
            self.conn = psycopg.connect(self.config.get("dsn", ""), autocommit=True, **params)
            self.conn.execute("SET TIME ZONE 'UTC'")

    def close(self) -> None:
        self.conn.close()

    def errors(self) -> Any:
        return translate_errors(self.driver)

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        self.conn.execute(sql, params)

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, params).fetchall()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self.conn.transaction():
            yield

    def stage(self, table: Table, data: pa.Table) -> str:
        """A temporary table typed like the target's columns (without its NOT NULLs), filled by one CSV COPY."""
        staged = self.ident(f"staged_{table.name}")
        self.conn.execute(f"DROP TABLE IF EXISTS {staged}")  # left by a load that died before unstaging
        columns = ", ".join(self.ident(c) for c in data.column_names)
        self.conn.execute(f"CREATE TEMP TABLE {staged} AS SELECT {columns} FROM {self.qualified(table)} WITH NO DATA")
        copy_csv(self.conn, staged, data, self.ident)
        return staged

    def unstage(self, staged: str) -> None:
        self.conn.execute(f"DROP TABLE IF EXISTS {staged}")

    appends = True

    def append(self, table: Table, data: pa.Table) -> None:
        copy_csv(self.conn, self.qualified(table), data, self.ident)

    def merge_statements(self, table: Table, staged: str) -> list[str]:
        """`INSERT … ON CONFLICT` on the declared key: one statement where the shared shape takes two.

        Immutable tables ignore rows they already hold; mutable ones take the incoming row unless the row
        they hold was written by a later log.
        """
        target = self.qualified(table)
        columns = ", ".join(self.ident(c) for c in table.column_names)
        key = ", ".join(self.ident(k) for k in table.key)
        insert = f"INSERT INTO {target} ({columns}) SELECT {columns} FROM {staged} ON CONFLICT ({key})"
        if not table.mutable:
            return [f"{insert} DO NOTHING"]
        updates = ", ".join(f"{self.ident(c)} = excluded.{self.ident(c)}"
                            for c in table.column_names if c not in table.key)
        log_id = self.ident("log_id")
        return [f"{insert} DO UPDATE SET {updates} WHERE excluded.{log_id} >= {target}.{log_id}"]

    def fetch_current(self, table: Table, ledger: str, keys: Sequence[Any],
                      within: tuple[str, Any, Any] | None = None) -> pa.Table:
        """One join against the wanted keys (copied into a temporary table), its rows copied out as CSV and
        parsed by Arrow: no Python per row (the base class's row path took a sync's time in proportion to the
        rows a batch folds over)."""
        column = next(k for k in table.key if k != "ledger")
        columns = ", ".join(f"{self.dialect.selected(c.kind, f't.{self.ident(c.name)}')}" for c in table.columns)
        where = sql.SQL("t.ledger = {}").format(sql.Literal(ledger))
        if within is not None:
            where = sql.SQL("{} AND t.{} BETWEEN {} AND {}").format(
                where, sql.Identifier(within[0]), sql.Literal(within[1]), sql.Literal(within[2]))
        query = sql.SQL(f"COPY (SELECT {columns} FROM {self.qualified(table)} t JOIN wanted_keys w "
                        f"ON t.{self.ident(column)} = w.{self.ident(column)} WHERE {{}}) TO STDOUT WITH (FORMAT csv)"
                        ).format(where)
        rows = io.BytesIO()
        with translate_errors(self.driver), self.conn.transaction():
            self.conn.execute(f"CREATE TEMP TABLE wanted_keys ON COMMIT DROP AS SELECT {self.ident(column)} "
                              f"FROM {self.qualified(table)} WITH NO DATA")
            copy_csv(self.conn, "wanted_keys", pa.table({column: keys}), self.ident)
            with self.conn.cursor().copy(query) as copy:
                for data in copy:
                    rows.write(data)
        return read_csv(rows.getvalue(), table)


def read_csv(data: bytes, table: Table) -> pa.Table:
    """`table`'s rows as PostgreSQL's CSV writes them (money and JSON selected as text), typed by Arrow."""
    if not data:
        return table.arrow_schema.empty_table()
    parsed = pa_csv.read_csv(
        io.BytesIO(data),
        read_options=pa_csv.ReadOptions(column_names=table.column_names),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),  # JSON text may hold line breaks
        # An unquoted empty field is NULL; a quoted one ("") is the empty string, as COPY writes them.
        convert_options=pa_csv.ConvertOptions(
            # Money as its digits (Arrow's CSV reader makes no decimal256), cast exactly below.
            column_types={c.name: pa.string() if c.kind is Kind.MONEY else ARROW_TYPES[c.kind]
                          for c in table.columns}, true_values=["t"],
            false_values=["f"], null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False),
    )
    return parsed.cast(table.arrow_schema)
