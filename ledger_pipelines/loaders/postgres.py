"""PostgreSQL as a warehouse.

- Bulk path: each Arrow table is written as CSV by Arrow's C++ writer and streamed with `COPY … FROM STDIN`
  into a temporary staging table (`LIKE` the target), never row by row.
- Merge: `INSERT INTO target SELECT … FROM staging ON CONFLICT (key) DO UPDATE … WHERE excluded.log_id >=
  target.log_id`; every table and the sync state in one transaction.
- Money: NUMERIC(76,0): exact, as wide as the pipeline's Arrow decimal256 carries.
- JSON: JSONB; timestamps: TIMESTAMPTZ.
The password is never stored: the config names an environment variable (`{"password": {"env": "PG_PASSWORD"}}`).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv
from psycopg.conninfo import conninfo_to_dict

from ledger_pipelines.errors import InvalidExporterConfig, LoadError, TransientLoadError
from ledger_pipelines.loaders.base import PORT_BOUNDS, ConfigField, Dialect, Loader, SyncState, upsert_sql
from ledger_pipelines.tables import ALL_TABLES, SYNC_STATE, Kind, Table
from ledger_pipelines.transforms import Batch

DIALECT = Dialect(
    name="postgres",
    types={Kind.STRING: "TEXT", Kind.INT32: "INTEGER", Kind.INT64: "BIGINT", Kind.BOOL: "BOOLEAN",
           Kind.TIMESTAMP: "TIMESTAMPTZ", Kind.JSON: "JSONB", Kind.MONEY: "NUMERIC(76,0)"},
    money_digits=76,
)
CSV_OPTIONS = pa_csv.WriteOptions(include_header=False)
SECRET_PARAMETERS = frozenset({"password", "sslpassword"})  # libpq parameters that carry a secret


@contextmanager
def translate_errors() -> Iterator[None]:
    """The one place psycopg's exceptions become pipeline errors."""
    try:
        yield
    except psycopg.OperationalError as exc:
        raise TransientLoadError(f"postgres: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}") from exc
    except psycopg.Error as exc:
        raise LoadError(f"postgres: {str(exc).strip()}") from exc


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
        with translate_errors():
            self.conn = psycopg.connect(self.config.get("dsn", ""), autocommit=True, **params)
            self.conn.execute("SET TIME ZONE 'UTC'")

    def close(self) -> None:
        self.conn.close()

    def setup(self) -> None:
        with translate_errors(), self.conn.transaction():
            self.conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.dialect.ident(self.schema)}")
            for table in ALL_TABLES:
                self.conn.execute(self.create_table_sql(table))

    def _temp_copy(self, name: str, source: Table, data: pa.Table) -> str:
        """A temporary table (dropped at commit) typed like `source`'s columns in `data`, filled by one CSV COPY."""
        temp = self.dialect.ident(name)
        columns = ", ".join(self.dialect.ident(c) for c in data.column_names)
        # Typed from the target, without its NOT NULL constraints (key-only tables leave the rest empty).
        self.conn.execute(f"CREATE TEMP TABLE {temp} ON COMMIT DROP AS "
                          f"SELECT {columns} FROM {self.qualified(source)} WITH NO DATA")
        buffer = io.BytesIO()
        pa_csv.write_csv(data, buffer, CSV_OPTIONS)
        with self.conn.cursor().copy(f"COPY {temp} ({columns}) FROM STDIN WITH (FORMAT csv)") as copy:
            copy.write(buffer.getbuffer())
        return temp

    def fetch_current(self, table: Table, ledger: str, keys: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
        key_columns = [k for k in table.key if k != "ledger"]
        wanted = pa.table({name: [k[i] for k in keys] for i, name in enumerate(key_columns)})
        join = " AND ".join(f"t.{self.dialect.ident(k)} = w.{self.dialect.ident(k)}" for k in key_columns)
        with translate_errors(), self.conn.transaction():
            wanted_keys = self._temp_copy("wanted_keys", table, wanted)
            columns = ", ".join(f"t.{self.dialect.ident(c)}" for c in table.column_names)
            cursor = self.conn.execute(
                f"SELECT {columns} FROM {self.qualified(table)} t JOIN {wanted_keys} w ON {join} WHERE t.ledger = %s",
                (ledger,),
            )
            return [dict(zip(table.column_names, _plain(row), strict=True)) for row in cursor.fetchall()]

    def load(self, batch: Batch, state: SyncState) -> None:
        self.check_money(batch)
        with translate_errors(), self.conn.transaction():
            for index, (name, data) in enumerate([*batch.tables.items(), (SYNC_STATE.name, state.as_table())]):
                table = next(t for t in ALL_TABLES if t.name == name)
                staging = self._temp_copy(f"staging_{table.name}", table, data)
                self.conn.execute(upsert_sql(self.dialect, self.qualified(table), table, staging))
                if index == 0:
                    self.fault("mid_load")

    def read_table(self, table: Table, ledger: str | None = None) -> pa.Table:
        order = ", ".join(self.dialect.ident(k) for k in table.key)
        columns = ", ".join(self.dialect.ident(c) for c in table.column_names)
        where, params = ("WHERE ledger = %s", (ledger,)) if ledger else ("", ())
        with translate_errors():
            rows = self.conn.execute(
                f"SELECT {columns} FROM {self.qualified(table)} {where} ORDER BY {order}", params
            ).fetchall()
        return pa.Table.from_pylist([dict(zip(table.column_names, _plain(r), strict=True)) for r in rows],
                                    schema=table.arrow_schema)


def _plain(row: Sequence[Any]) -> list[Any]:
    """JSONB comes back parsed; the pipeline carries JSON as text."""
    import json

    return [json.dumps(v, sort_keys=True, ensure_ascii=False) if isinstance(v, dict | list) else v for v in row]
