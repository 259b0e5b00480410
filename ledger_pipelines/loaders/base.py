"""The one loader interface every warehouse implements, and the dialect facts it is built from.

A `Dialect` is data: how identifiers are quoted and how long they may be, the SQL type of each logical
kind, how many digits the exact money type holds, and whether a load is one transaction. A `Loader`
owns a connection and implements four operations over the shared table descriptions (`tables.py`):
`setup` (create schema and tables, idempotently), `fetch_current` (current rows by key, for folding),
`load` (merge a batch and the sync state), and `read_table` (what an analyst would read, deduplicated).
Warehouse quirks live in the warehouse's own module and nowhere else.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from ledger_core.errors import ValidationError
from ledger_core.validation import text
from ledger_pipelines.errors import InvalidExporterConfig, MissingSecret, ValueOutOfRange
from ledger_pipelines.tables import ALL_TABLES, MONEY_DIGITS, SYNC_STATE, Kind, Table
from ledger_pipelines.transforms import Batch


@dataclass(frozen=True)
class Dialect:
    name: str
    types: Mapping[Kind, str]
    money_digits: int  # exact digits of the money type: larger values stop the pipeline
    max_identifier_length: int = 63
    quote: str = '"'
    transactional: bool = True  # a batch and its sync state land together or not at all
    declare_primary_keys: bool = True  # False where an index costs bulk loads more than it protects

    def ident(self, name: str) -> str:
        if len(name) > self.max_identifier_length:
            raise ValueError(f"identifier {name!r} is longer than {self.max_identifier_length} for {self.name}")
        return f"{self.quote}{name.replace(self.quote, self.quote * 2)}{self.quote}"

    def column_type(self, kind: Kind) -> str:
        return self.types[kind]


@dataclass(frozen=True)
class SyncState:
    pipeline_id: str
    ledger: str
    last_log_id: int
    last_log_hash: str
    synced_at: datetime

    def as_table(self) -> pa.Table:
        return pa.Table.from_pylist(
            [{"pipeline_id": self.pipeline_id, "ledger": self.ledger, "last_log_id": self.last_log_id,
              "last_log_hash": self.last_log_hash, "synced_at": self.synced_at, "log_id": self.last_log_id}],
            schema=SYNC_STATE.arrow_schema,
        )


# Called by the sync engine at named points of a load, so tests can fail a sync exactly there.
FaultHook = Callable[[str], None]


@dataclass(frozen=True)
class ConfigField:
    name: str
    kind: type | tuple[type, ...]
    required: bool = False
    secret: bool = False  # may be {"env": "VAR"}; a secret must be
    default: Any = None
    bounds: tuple[int, int] | None = None  # inclusive range for an integer setting


PORT_BOUNDS = (1, 65535)


SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def _check_strings(driver: str, value: Any, where: str) -> None:
    """Every string of a config, keys included, must be storable (no NUL) and encodable (no lone surrogate)."""
    if isinstance(value, str):
        try:
            text(value, field=where)  # the ledger's one rule for storable text
        except ValidationError as exc:
            raise InvalidExporterConfig(driver, str(exc)) from None
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_strings(driver, key, f"a key of {where}")
            _check_strings(driver, item, f"'{key}'" if where == "the config" else where)


def check_config(driver: str, fields: Sequence[ConfigField], config: Any) -> dict[str, Any]:
    """Validate a config against its fields: required keys, types, no unknown keys, secrets by env name."""
    if not isinstance(config, Mapping):
        raise InvalidExporterConfig(driver, "config must be a JSON object")
    _check_strings(driver, config, "the config")
    known = {f.name: f for f in fields}
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise InvalidExporterConfig(driver, f"unknown setting(s) {unknown}; known: {sorted(known)}")
    checked: dict[str, Any] = {}
    for f in fields:
        if f.name not in config or config[f.name] is None:
            if f.required:
                raise InvalidExporterConfig(driver, f"'{f.name}' is required")
            if f.default is not None:
                checked[f.name] = f.default
            continue
        value = config[f.name]
        if isinstance(value, Mapping) and set(value) == {"env"}:
            if not f.secret:
                raise InvalidExporterConfig(driver, f"'{f.name}' cannot be read from the environment")
            if not isinstance(value["env"], str) or not ENV_NAME.fullmatch(value["env"]):
                raise InvalidExporterConfig(driver, f"'{f.name}': {{\"env\": …}} must name an environment "
                                                    f"variable (letters, digits, '_'), got {value['env']!r}")
            checked[f.name] = {"env": value["env"]}
            continue
        if f.secret:
            raise InvalidExporterConfig(
                driver, f"'{f.name}' is a secret: give {{\"env\": \"VARIABLE\"}}, never the value itself"
            )
        if (isinstance(value, bool) and f.kind is not bool) or not isinstance(value, f.kind):
            raise InvalidExporterConfig(driver, f"'{f.name}' must be {_kind_name(f.kind)}, got {value!r}")
        if f.bounds and not f.bounds[0] <= value <= f.bounds[1]:
            raise InvalidExporterConfig(driver, f"'{f.name}' must be between {f.bounds[0]} and {f.bounds[1]}, "
                                                f"got {value}")
        checked[f.name] = value
    schema = checked.get("schema")
    if schema is not None and not SCHEMA_NAME.fullmatch(schema):
        raise InvalidExporterConfig(driver, f"'schema' must be a plain identifier, got {schema!r}")
    return checked


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({str: "a string", int: "an integer", bool: "true or false"}.get(k, k.__name__) for k in kinds)


def local_path(driver: str, key: str, value: str, base_dir: Path, *, folder: bool = False) -> str:
    """`value` made absolute against `base_dir`, after checking files can be created where it points.

    `folder`: the path is a data folder (created now), else a file (its folder is created now).
    """
    path = Path(value).expanduser()
    path = (path if path.is_absolute() else base_dir / path).resolve()
    where = path if folder else path.parent
    if not folder and path.is_dir():
        raise InvalidExporterConfig(driver, f"'{key}': {str(path)!r} is a folder; give a file path")
    try:
        where.mkdir(parents=True, exist_ok=True)
        probe = where / f".ledger-probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise InvalidExporterConfig(driver, f"'{key}': cannot create files in {str(where)!r} "
                                            f"({exc.strerror or exc}); choose a writable folder") from None
    return str(path)


def resolve_secret(driver: str, key: str, value: Any, environ: Mapping[str, str]) -> Any:
    if isinstance(value, Mapping) and "env" in value:
        found = environ.get(value["env"])
        if found is None:
            raise MissingSecret(driver, key, value["env"])
        return found
    return value


class Loader(ABC):
    """A warehouse destination. Subclasses set `driver`, `dialect`, `config_fields` and the four operations."""

    driver: ClassVar[str]
    dialect: ClassVar[Dialect]
    config_fields: ClassVar[tuple[ConfigField, ...]]

    def __init__(self, config: Mapping[str, Any], environ: Mapping[str, str], fault: FaultHook | None = None):
        self.config = self.validate(config)
        self.environ = environ
        self.schema: str = self.config.get("schema", "ledger")
        self.fault: FaultHook = fault or (lambda point: None)

    @classmethod
    def validate(cls, config: Any) -> dict[str, Any]:
        return check_config(cls.driver, cls.config_fields, config)

    @classmethod
    def prepare(cls, config: dict[str, Any], base_dir: Path) -> dict[str, Any]:
        """At `exporters create`, once: resolve relative paths against `base_dir` (where the user typed them)
        and check that what the config points at can be used. The result is what is stored."""
        return config

    def secret(self, key: str) -> Any:
        return resolve_secret(self.driver, key, self.config.get(key), self.environ)

    def column_type(self, kind: Kind) -> str:
        """The SQL type of a logical kind: the dialect's, unless this loader's config changes it."""
        return self.dialect.column_type(kind)

    @property
    def money_digits(self) -> int:
        """Exact digits this loader's money columns hold (its dialect's, unless its config widens them)."""
        return self.dialect.money_digits

    def wide_money_remedy(self, exporter_id: str) -> str:
        """What a user can do when a value is wider than `money_digits` (said in the error)."""
        return ("export this ledger to a destination whose money holds 76 digits (postgres, clickhouse), then "
                f"delete this pipeline; exporter '{exporter_id}' cannot hold the value")

    def qualified(self, table: Table | str) -> str:
        name = table if isinstance(table, str) else table.name
        return f"{self.dialect.ident(self.schema)}.{self.dialect.ident(name)}"

    def create_table_sql(self, table: Table) -> str:
        """Default DDL: typed columns, NOT NULL where required, the natural key as primary key."""
        columns = [
            f"{self.dialect.ident(c.name)} {self.column_type(c.kind)}{'' if c.nullable else ' NOT NULL'}"
            for c in table.columns
        ]
        if self.dialect.declare_primary_keys:
            columns.append(f"PRIMARY KEY ({', '.join(self.dialect.ident(k) for k in table.key)})")
        return f"CREATE TABLE IF NOT EXISTS {self.qualified(table)} ({', '.join(columns)})"

    def check_money(self, batch: Batch) -> None:
        """Refuse a batch holding a money value wider than this warehouse's exact type."""
        if self.money_digits >= MONEY_DIGITS:
            return
        limit = pa.scalar(10**self.money_digits, pa.decimal256(MONEY_DIGITS, 0))
        for name, data in batch.tables.items():
            table = next(t for t in ALL_TABLES if t.name == name)
            for column in table.money_columns:
                values = pc.abs(data.column(column))
                too_big = pc.greater_equal(values, limit)
                if data.num_rows and pc.any(too_big).as_py():
                    first = pc.index(too_big, True).as_py()
                    row = data.slice(first, 1).to_pylist()[0]
                    raise ValueOutOfRange(int(row["log_id"]), name, column, int(row[column]), self.money_digits)

    @abstractmethod
    def setup(self) -> None:
        """Create the schema and tables if missing; safe to call on every sync."""

    @abstractmethod
    def fetch_current(self, table: Table, ledger: str, keys: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
        """The current (deduplicated) rows of `table` for `ledger` whose key (after `ledger`) is in `keys`."""

    @abstractmethod
    def load(self, batch: Batch, state: SyncState) -> None:
        """Merge the batch and the sync state: per key, the row with the highest log_id wins."""

    @abstractmethod
    def read_table(self, table: Table, ledger: str | None = None) -> pa.Table:
        """The table as an analyst reads it (current rows only), ordered by key."""

    def read_sync_state(self, pipeline_id: str) -> dict[str, Any] | None:
        rows = [r for r in self.read_table(SYNC_STATE).to_pylist() if r["pipeline_id"] == pipeline_id]
        return rows[0] if rows else None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the connection."""

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class LoaderRegistry:
    """Driver name -> loader class, imported lazily so a missing extra only matters when it is used."""

    modules: dict[str, str] = field(default_factory=dict)

    def get(self, driver: str) -> type[Loader]:
        import importlib

        if driver not in self.modules:
            raise InvalidExporterConfig(driver, f"unknown driver; available: {', '.join(sorted(self.modules))}")
        module_name, _, class_name = self.modules[driver].partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise InvalidExporterConfig(
                driver, f"its client library is not installed ({exc.name}); install the '{driver}' extra"
            ) from None
        loader: type[Loader] = getattr(module, class_name)
        return loader


def upsert_sql(dialect: Dialect, target: str, table: Table, source: str) -> str:
    """`INSERT … ON CONFLICT` merge, for the warehouses that have it (DuckDB, PostgreSQL).

    Immutable tables ignore rows they already hold; mutable ones take the incoming row unless the row
    they hold was written by a later log.
    """
    columns = ", ".join(dialect.ident(c) for c in table.column_names)
    key = ", ".join(dialect.ident(k) for k in table.key)
    insert = f"INSERT INTO {target} ({columns}) SELECT {columns} FROM {source} ON CONFLICT ({key})"
    if not table.mutable:
        return f"{insert} DO NOTHING"
    updates = ", ".join(
        f"{dialect.ident(c)} = excluded.{dialect.ident(c)}" for c in table.column_names if c not in table.key
    )
    log_id = dialect.ident("log_id")
    return f"{insert} DO UPDATE SET {updates} WHERE excluded.{log_id} >= {target}.{log_id}"
