"""The one load loop every warehouse shares, and the dialect facts and hooks it is built from.

A `Dialect` is data: how identifiers are quoted, folded and bounded, how a query names a parameter, the SQL
type of each logical kind (and how it is staged, inserted and read), how many digits the exact money type
holds, and whether a load is one transaction. A `Loader` owns a connection to one warehouse. The loop lives
here, once: check money against the dialect's digits, stage each table of the batch, then, in one transaction
where the warehouse has them, merge every table and the sync state last, with the fault points tests use.
A warehouse module implements only its edges:

- `execute` and `query` (named parameters), and `errors()`: where its driver's exceptions become
  `LoadError` (terminal) or `TransientLoadError` (retried), in one place;
- `stage`, its bulk path into a staging relation, and where it needs them `unstage`, `transaction`, `merge`;
- `delete_superseded_sql` / `insert_absent_sql` only where its SQL differs from the shared shape.

Merge: delete the rows a staged row supersedes (same natural key, `log_id` not higher), then insert the staged
rows whose key is absent. It is the one shape that runs transactionally on every warehouse and stand-in, and
it keeps, per key, the row with the highest `log_id` whatever order batches arrive in.

Setup (tables, views, columns added in place) runs when the warehouse has no recorded schema version for
the pipeline or an older one (`tables.SCHEMA_VERSION`), not on every sync. The checks ask the warehouse for
aggregates over what a sync touched (`row_counts`, `log_span`, `log_hash`, `balances`, `asset_sums`), never
for whole tables: on a warehouse that bills by bytes scanned, their cost follows the batch.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from functools import partial
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from ledger_pipelines.errors import InvalidExporterConfig, LoadError, TransientLoadError, ValueOutOfRange
from ledger_pipelines.loaders.config import Configured, FaultHook
from ledger_pipelines.tables import (
    ALL_TABLES,
    ARROW_TYPES,
    BALANCES,
    BY_NAME,
    DAILY_VOLUMES,
    LOGS,
    MONEY_DIGITS,
    MOVES,
    REPLAY_BELOW,
    SCHEMA_VERSION,
    SYNC_STATE,
    Batch,
    Kind,
    Money,
    SyncState,
    Table,
    wider_than,
)

# Called by the sync engine at named points of a load, so tests can fail a sync exactly there.

IN_LIST_CHUNK = 1000  # values per IN (…) list: within every warehouse's parameter limits


class Fold(StrEnum):
    """How a warehouse folds unquoted identifiers. Names are created folded, so analysts never quote them."""

    NONE = "none"
    UPPER = "upper"  # Snowflake: `select balance from ledger.balances` finds "BALANCE" in "BALANCES"
    LOWER = "lower"


@dataclass(frozen=True)
class Dialect:
    name: str
    types: Mapping[Kind, str]
    money_digits: int  # exact digits of the money type: larger values stop the pipeline
    arrow_money: pa.DataType = ARROW_TYPES[Kind.MONEY]  # the Arrow type its bulk path takes money in
    max_identifier_length: int = 63
    quote: str = '"'
    fold: Fold = Fold.NONE
    placeholder: str = "%({name})s"  # a named query parameter; {type} is its SQL type where the syntax needs it
    staging_types: Mapping[Kind, str] = field(default_factory=dict)  # a kind staged as another type
    insert_casts: Mapping[Kind, str] = field(default_factory=dict)  # staged value -> column value ("{}": it)
    select_casts: Mapping[Kind, str] = field(default_factory=dict)  # column value -> what the client reads
    declare_primary_keys: bool = True  # False where an index costs bulk loads more than it protects

    def ident(self, name: str) -> str:
        if len(name) > self.max_identifier_length:
            raise ValueError(f"identifier {name!r} is longer than {self.max_identifier_length} for {self.name}")
        folded = {Fold.UPPER: name.upper(), Fold.LOWER: name.lower()}.get(self.fold, name)
        return f"{self.quote}{folded.replace(self.quote, self.quote * 2)}{self.quote}"

    def column_type(self, kind: Kind) -> str:
        return self.types[kind]

    def param(self, name: str, kind: Kind) -> str:
        return self.placeholder.format(name=name, type=self.types[kind])

    def inserted(self, kind: Kind, expression: str) -> str:
        return self.insert_casts.get(kind, "{}").format(expression)

    def selected(self, kind: Kind, expression: str) -> str:
        return self.select_casts.get(kind, "{}").format(expression)


def cast_money(table: Table, data: pa.Table, to: pa.DataType) -> pa.Table:
    """`data` with its money columns cast to `to` (a narrower decimal after `check_money`, or exact digits)."""
    for column in table.money_columns:
        index = data.schema.get_field_index(column)
        if data.schema.field(index).type != to:
            data = data.set_column(index, pa.field(column, to), data.column(column).cast(to))
    return data


def from_warehouse(kind: Kind, value: Any) -> Any:
    """A value as a warehouse client returns it, in the pipeline's terms (never a float for money)."""
    if value is None:
        return None
    if kind is Kind.MONEY:
        if isinstance(value, float):
            raise LoadError("a money column came back as a float: the warehouse's type is not exact")
        exact = value if isinstance(value, Decimal) else Decimal(value)
        if exact != exact.to_integral_value():
            raise LoadError(f"a money column came back with a fraction ({exact}): the warehouse's type is not exact")
        return Decimal(int(exact))  # "5.000…" from a scaled type is the integer 5
    if kind is Kind.JSON and not isinstance(value, str):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    if kind is Kind.TIMESTAMP and isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)  # stored in UTC; some clients return it naive
    if kind is Kind.DATE:
        if isinstance(value, datetime):
            return value.date()
        return value if isinstance(value, date) else date.fromisoformat(str(value))
    if kind in (Kind.INT32, Kind.INT64) and not isinstance(value, int):
        return int(value)
    return value


class Loader(Configured, ABC):
    """One warehouse, through its driver: `driver`, `dialect`, `config_fields`, and the edges named above."""

    dialect: ClassVar[Dialect]

    def __init__(self, config: Mapping[str, Any], environ: Mapping[str, str], fault: FaultHook | None = None):
        super().__init__(config, environ, fault)
        self.schema: str = self.config.get("schema", "ledger")

    # -- dialect facts, overridable per loader -------------------------------------------------------------

    def column_type(self, kind: Kind) -> str:
        """The SQL type of a logical kind: the dialect's, unless this loader's config changes it."""
        return self.dialect.column_type(kind)

    def staging_type(self, kind: Kind) -> str:
        return self.dialect.staging_types.get(kind) or self.column_type(kind)

    @property
    def money_digits(self) -> int:
        """Exact digits this loader's money columns hold (its dialect's, unless its config widens them)."""
        return self.dialect.money_digits

    @property
    def arrow_money(self) -> pa.DataType:
        """The Arrow type money has in the batches this loader takes (its dialect's, unless its config says)."""
        return self.dialect.arrow_money

    @property
    def money(self) -> Money:
        """How this warehouse takes money: what the transforms make batches for."""
        return Money(self.money_digits, self.arrow_money)

    def wide_money_remedy(self, exporter_id: str) -> str:
        """What a user can do when a value is wider than `money_digits` (said in the error)."""
        return ("export this ledger to a warehouse whose money holds 76 digits (postgres, clickhouse), then "
                f"delete this pipeline; exporter '{exporter_id}' cannot hold the value")

    def ident(self, name: str) -> str:
        return self.dialect.ident(name)

    def qualified(self, table: Table | str) -> str:
        name = table if isinstance(table, str) else table.name
        return f"{self.ident(self.schema)}.{self.ident(name)}"

    def relation(self, table: Table) -> str:
        """What reads select from: the table, or a deduplicating form of it (ClickHouse's FINAL)."""
        return self.qualified(table)

    # -- the warehouse's edges -----------------------------------------------------------------------

    @abstractmethod
    def errors(self) -> Any:
        """A context manager turning the driver's exceptions into LoadError / TransientLoadError."""

    @abstractmethod
    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        """Run one statement."""

    @abstractmethod
    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one query; its rows."""

    @abstractmethod
    def stage(self, table: Table, data: pa.Table) -> Any:
        """Put `data` (the batch's rows of `table`) where the merge reads them; return what the merge needs
        (a staging relation's name, usually)."""

    def unstage(self, staged: Any) -> None:
        """Drop what `stage` made, if it outlives the load."""

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """The batch's merges together: all or nothing (a no-op where the warehouse has no transactions)."""
        yield

    appends: bool = False  # whether `append` is implemented (see `load`)

    def append(self, table: Table, data: pa.Table) -> None:
        """Insert rows known to be new straight into `table`, inside the load's transaction."""
        raise NotImplementedError(f"{self.driver} does not append")

    def merge(self, table: Table, staged: Any) -> None:
        for statement in self.merge_statements(table, staged):
            self.execute(statement)

    # -- shared SQL ------------------------------------------------------------------------------------

    def merge_statements(self, table: Table, staged: str) -> list[str]:
        """Delete what the staged rows supersede (mutable tables only), then insert the absent keys."""
        superseded = [self.delete_superseded_sql(table, staged)] if table.mutable else []
        return [*superseded, self.insert_absent_sql(table, staged)]

    def delete_superseded_sql(self, table: Table, staged: str) -> str:
        target = self.qualified(table)
        same_key = " AND ".join(f"{target}.{self.ident(k)} = s.{self.ident(k)}" for k in table.key)
        log_id = self.ident("log_id")
        return f"DELETE FROM {target} USING {staged} s WHERE {same_key} AND {target}.{log_id} <= s.{log_id}"

    def insert_absent_sql(self, table: Table, staged: str) -> str:
        target = self.qualified(table)
        columns = ", ".join(self.ident(c.name) for c in table.columns)
        values = ", ".join(self.dialect.inserted(c.kind, f"s.{self.ident(c.name)}") for c in table.columns)
        same_key = " AND ".join(f"t.{self.ident(k)} = s.{self.ident(k)}" for k in table.key)
        return (f"INSERT INTO {target} ({columns}) SELECT {values} FROM {staged} s "
                f"WHERE NOT EXISTS (SELECT 1 FROM {target} t WHERE {same_key})")

    def create_table_sql(self, table: Table) -> str:
        """Default DDL: typed columns, NOT NULL where required, the natural key as primary key."""
        columns = [f"{self.ident(c.name)} {self.column_type(c.kind)}{'' if c.nullable else ' NOT NULL'}"
                   for c in table.columns]
        if self.dialect.declare_primary_keys:
            columns.append(f"PRIMARY KEY ({', '.join(self.ident(k) for k in table.key)})")
        return f"CREATE TABLE IF NOT EXISTS {self.qualified(table)} ({', '.join(columns)})"

    def create_schema_sql(self) -> str:
        return f"CREATE SCHEMA IF NOT EXISTS {self.ident(self.schema)}"

    staging_table: ClassVar[str] = "TEMPORARY TABLE"  # what kind of table a staging table is

    def create_staging_sql(self, table: Table, staged: str) -> str:
        """A staging table typed as the batch is staged (JSON as text where the column type parses it)."""
        columns = ", ".join(f"{self.ident(c.name)} {self.staging_type(c.kind)}" for c in table.columns)
        return f"CREATE {self.staging_table} {staged} ({columns})"

    def add_column_sql(self, table: Table, column: str) -> str:
        kind = table.kind_of(column)
        return f"ALTER TABLE {self.qualified(table)} ADD COLUMN {self.ident(column)} {self.column_type(kind)}"

    def columns_catalog(self) -> tuple[str, dict[str, Any]]:
        """The query listing (table_name, column_name) of this loader's schema, and its parameters."""
        return ("SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = "
                f"{self.dialect.param('schema', Kind.STRING)}", {"schema": self._folded(self.schema)})

    def existing_columns(self) -> dict[str, set[str]]:
        """Table name -> its column names, as the warehouse has them now (names unfolded to ours)."""
        found: dict[str, set[str]] = {}
        for name, column in self.query(*self.columns_catalog()):
            found.setdefault(str(name).lower(), set()).add(str(column).lower())
        return found

    def _folded(self, name: str) -> str:
        return self.ident(name)[1:-1]

    # -- setup -----------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Create the schema and missing tables, add missing columns in place, then `after_setup` (views)."""
        with self.errors():
            self.execute(self.create_schema_sql())
            for table in ALL_TABLES:
                self.execute(self.create_table_sql(table))
            have = self.existing_columns()
            for table in ALL_TABLES:
                for column in table.column_names:
                    if column not in have.get(table.name, set()):
                        self.execute(self.add_column_sql(table, column))  # additive: a new, nullable column
            self.after_setup()
            self.create_analyst_views()

    def after_setup(self) -> None:
        """Views of a warehouse's own, or converting columns whose type a setting changed."""

    upgraded_from: int | None = None  # set by `ensure_schema` when it emptied tables built by an older version

    def ensure_schema(self, pipeline_id: str) -> dict[str, Any] | None:
        """Set the warehouse up if its recorded schema version for the pipeline is missing or older; return
        the pipeline's sync state (None for a warehouse never loaded or wiped).

        Tables built before `REPLAY_BELOW` are emptied (every pipeline's rows and sync state, not dropped:
        analysts' own views on them stay) and the sync replays every log into the new shape."""
        state = self.read_sync_state(pipeline_id)
        if state is None or (state.get("schema_version") or 0) < SCHEMA_VERSION:
            self.setup()
            state = self.read_sync_state(pipeline_id)  # readable now, if a column was missing before
            if state is not None and (state.get("schema_version") or 0) < REPLAY_BELOW:
                with self.errors():
                    for table in ALL_TABLES:
                        self.execute(self.truncate_sql(table))
                self.upgraded_from, state = state.get("schema_version") or 0, None
        return state

    def truncate_sql(self, table: Table) -> str:
        return f"TRUNCATE TABLE {self.qualified(table)}"

    # -- the analysts' views -------------------------------------------------------------------------------

    def create_analyst_views(self) -> None:
        """(Re)create the views of `analyst_views`."""
        for name, select in self.analyst_views().items():
            for statement in self.create_view_sql(name, select):
                self.execute(statement)

    def create_view_sql(self, name: str, select: str) -> list[str]:
        """Replace a view (dropped first: PostgreSQL and Redshift cannot replace one whose columns change)."""
        return [f"DROP VIEW IF EXISTS {self.qualified(name)}", f"CREATE VIEW {self.qualified(name)} AS {select}"]

    def money_value(self, column: str) -> str:
        """A money column as a number to compute with (a hook for money kept as text)."""
        return column

    def summed_money(self, expression: str, window: str) -> str:
        """A window `SUM` of a money expression, as a view's money column (a hook for money kept as text)."""
        return f"SUM({expression}) {window}"

    def analyst_views(self) -> dict[str, str]:
        """Views answering effective-date questions, in SQL every warehouse runs (window sums):

        - `moves_effective`: every move with the account's volumes after it in effective order (by `timestamp`,
          then the order moves were recorded): `post_commit_effective_*`. A backdated transaction changes these
          for every later move, so they are computed when read, never stored and restated.
        - `daily_balances`: `daily_volumes` with each day's closing input, output and balance (running sums).
        """
        i = self.ident
        pair = f"{i('ledger')}, {i('account')}, {i('asset')}"
        effective = (f"OVER (PARTITION BY {pair} ORDER BY {i('timestamp')}, {i('transaction_id')}, "
                     f"{i('posting_index')}, {i('is_source')} DESC ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)")
        by_day = f"OVER (PARTITION BY {pair} ORDER BY {i('day')} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
        source = i("is_source")
        amount, signed, inflow, outflow = (self.money_value(i(c)) for c in ("amount", "signed_amount", "input",
                                                                             "output"))
        moves = ", ".join(i(c) for c in MOVES.column_names)
        daily = ", ".join(i(c) for c in DAILY_VOLUMES.column_names if c != "log_id")
        return {
            "moves_effective": (
                f"SELECT {moves}, "
                f"{self.summed_money(f'CASE WHEN {source} THEN 0 ELSE {amount} END', effective)} "
                f"AS {i('post_commit_effective_input')}, "
                f"{self.summed_money(f'CASE WHEN {source} THEN {amount} ELSE 0 END', effective)} "
                f"AS {i('post_commit_effective_output')}, "
                f"{self.summed_money(signed, effective)} AS {i('post_commit_effective_balance')} "
                f"FROM {self.relation(MOVES)}"),
            "daily_balances": (
                f"SELECT {daily}, {self.summed_money(inflow, by_day)} AS {i('closing_input')}, "
                f"{self.summed_money(outflow, by_day)} AS {i('closing_output')}, "
                f"{self.summed_money(f'{inflow} - {outflow}', by_day)} AS {i('closing_balance')} "
                f"FROM {self.relation(DAILY_VOLUMES)}"),
        }

    # -- the load loop ---------------------------------------------------------------------------------

    def load(self, batch: Batch, state: SyncState, *, new_logs: bool = False) -> None:
        """Merge the batch and, last, the sync state: per key, the row with the highest log_id wins.

        `new_logs`: the warehouse holds no log of this batch (its `logs` table stands below the first), so the
        rows of immutable tables cannot be there yet, nor the rows of mutable ones the batch writes first
        (`Batch.new_rows`: in a full sync, nearly all of them). Where the warehouse `appends`, those go straight
        into their tables inside the load's transaction: no staging, and no merge that would compare them
        with every row already loaded (work that grew with the warehouse, batch after batch).
        """
        self.check_money(batch)
        appending = new_logs and self.appends
        direct: list[tuple[Table, pa.Table]] = []
        parts: list[tuple[Table, pa.Table]] = []
        for name, data in batch.tables.items():
            table = BY_NAME[name]
            new = batch.new_rows.get(name, 0) if table.mutable else data.num_rows
            if appending and new:
                direct.append((table, data.slice(0, new)))
                data = data.slice(new)
            if data.num_rows:  # an empty table has nothing to merge: no staging, no statement (a round trip each)
                parts.append((table, data))
        parts.append((SYNC_STATE, state.as_table()))
        staged: list[Any] = []
        with self.errors():
            try:
                for table, data in parts:
                    staged.append(self.stage(table, self.arrow_in(table, data)))
                with self.transaction():
                    steps = [*(partial(self.append, t, self.arrow_in(t, d)) for t, d in direct),
                             *(partial(self.merge, t, handle) for (t, _), handle in zip(parts, staged, strict=True))]
                    for index, step in enumerate(steps):
                        step()
                        if index == 0:
                            self.fault("mid_load")
            finally:
                for handle in staged:
                    self.unstage(handle)

    def arrow_in(self, table: Table, data: pa.Table) -> pa.Table:
        """The batch's Arrow table as this warehouse's bulk path takes it: money as `arrow_money` (a batch the
        transforms made for this warehouse has it so already)."""
        return cast_money(table, data, self.arrow_money)

    def check_money(self, batch: Batch) -> None:
        """Refuse a batch holding a money value wider than this warehouse's exact type (a decimal type no wider
        than it holds none: a batch the transforms made for this warehouse is checked by its type)."""
        if self.money_digits >= MONEY_DIGITS:
            return
        for name, data in batch.tables.items():
            for column in BY_NAME[name].money_columns:
                values = data.column(column)
                if not data.num_rows or (pa.types.is_decimal(values.type)
                                         and values.type.precision <= self.money_digits):
                    continue
                too_big = wider_than(values, self.money_digits)
                if pc.any(too_big).as_py():
                    row = data.slice(pc.index(too_big, True).as_py(), 1).to_pylist()[0]
                    raise ValueOutOfRange(int(row["log_id"]), name, column, int(row[column]), self.money_digits)

    # -- reads -----------------------------------------------------------------------------------------

    def select_rows(self, table: Table, where: str = "", params: Mapping[str, Any] | None = None,
                    columns: Sequence[str] | None = None, order: bool = True) -> list[dict[str, Any]]:
        """Rows of `table` (deduplicated, as analysts read it), normalised to the pipeline's values."""
        wanted = [c for c in table.columns if columns is None or c.name in columns]
        listed = ", ".join(f"{self.dialect.selected(c.kind, self.ident(c.name))} AS {self.ident(c.name)}"
                           for c in wanted)
        order_by = f" ORDER BY {', '.join(self.ident(k) for k in table.key)}" if order else ""
        with self.errors():
            rows = self.query(f"SELECT {listed} FROM {self.relation(table)}{where}{order_by}", params)
        return [{c.name: from_warehouse(c.kind, v) for c, v in zip(wanted, row, strict=True)} for row in rows]

    def _ledger_is(self, ledger: str) -> tuple[str, dict[str, Any]]:
        return f" WHERE {self.ident('ledger')} = {self.dialect.param('ledger', Kind.STRING)}", {"ledger": ledger}

    def _in_list(self, column: str, kind: Kind, values: Sequence[Any], prefix: str) -> tuple[str, dict[str, Any]]:
        names = [f"{prefix}{i}" for i in range(len(values))]
        placeholders = ", ".join(self.dialect.param(n, kind) for n in names)
        return f"{self.ident(column)} IN ({placeholders})", dict(zip(names, values, strict=True))

    def read_table(self, table: Table, ledger: str | None = None) -> pa.Table:
        """The table as an analyst reads it (current rows only), ordered by key. For tests and tools: the
        checks never read whole tables."""
        where, params = self._ledger_is(ledger) if ledger else ("", {})
        return pa.Table.from_pylist(self.select_rows(table, where, params), schema=table.arrow_schema)

    def read_sync_state(self, pipeline_id: str) -> dict[str, Any] | None:
        """This pipeline's sync state; None if the warehouse has none (never loaded, wiped, or built before
        the current schema: `ensure_schema` then sets it up)."""
        where = f" WHERE {self.ident('pipeline_id')} = {self.dialect.param('pipeline_id', Kind.STRING)}"
        try:
            rows = self.select_rows(SYNC_STATE, where, {"pipeline_id": pipeline_id}, order=False)
        except TransientLoadError:
            raise
        except LoadError:  # no such table or column yet
            return None
        return rows[0] if rows else None

    def last_log_id(self, ledger: str) -> int:
        """The highest id of `ledger`'s logs in the `logs` table; 0 if none."""
        where, params = self._ledger_is(ledger)
        with self.errors():
            [(highest,)] = self.query(f"SELECT MAX({self.ident('id')}) FROM {self.relation(LOGS)}{where}", params)
        return int(highest or 0)

    def rows_in(self, table: Table, ledger: str, column: str, values: Sequence[Any],
                within: tuple[str, Any, Any] | None = None) -> list[dict[str, Any]]:
        """Rows of `table` for `ledger` whose `column` is one of `values` (in IN lists of bounded length) and,
        with `within` = (column, low, high), whose other column lies in low..high."""
        kind = table.kind_of(column)
        where, params = self._ledger_is(ledger)
        if within is not None:
            bound, low, high = within
            bound_kind = table.kind_of(bound)
            where += (f" AND {self.ident(bound)} BETWEEN {self.dialect.param('low', bound_kind)} "
                      f"AND {self.dialect.param('high', bound_kind)}")
            params = {**params, "low": low, "high": high}
        found: list[dict[str, Any]] = []
        for start in range(0, len(values), IN_LIST_CHUNK):
            listed_in, listed = self._in_list(column, kind, values[start:start + IN_LIST_CHUNK], "v")
            found += self.select_rows(table, f"{where} AND {listed_in}", {**params, **listed}, order=False)
        return found

    def fetch_current(self, table: Table, ledger: str, keys: Sequence[Any],
                      within: tuple[str, Any, Any] | None = None) -> pa.Table:
        """The current rows of `table` for `ledger` whose first key column after `ledger` is in `keys` (and
        whose `within` column lies in its bounds): every row a batch's fold may start from, maybe more."""
        column = next(k for k in table.key if k != "ledger")
        return pa.Table.from_pylist(self.rows_in(table, ledger, column, keys, within), schema=table.arrow_schema)

    # -- aggregates for the checks ---------------------------------------------------------------------

    def row_counts(self, ledger: str, tables: Sequence[Table]) -> dict[str, int]:
        where, params = self._ledger_is(ledger)
        union = " UNION ALL ".join(f"SELECT '{t.name}' AS t, COUNT(*) AS n FROM {self.relation(t)}{where}"
                                   for t in tables)
        with self.errors():
            return {str(name): int(n) for name, n in self.query(union, params)}

    def log_span(self, ledger: str, first: int, last: int) -> tuple[int, int, int | None, int | None]:
        """Over logs `first..last`: (rows, distinct ids, lowest id, highest id)."""
        where, params = self._ledger_is(ledger)
        log_id = self.ident("id")
        low, high = self.dialect.param("first", Kind.INT64), self.dialect.param("last", Kind.INT64)
        with self.errors():
            [row] = self.query(f"SELECT COUNT(*), COUNT(DISTINCT {log_id}), MIN({log_id}), MAX({log_id}) "
                               f"FROM {self.relation(LOGS)}{where} AND {log_id} BETWEEN {low} AND {high}",
                               {**params, "first": first, "last": last})
        count, distinct, lowest, highest = row
        return (int(count), int(distinct), None if lowest is None else int(lowest),
                None if highest is None else int(highest))

    def log_hash(self, ledger: str, log_id: int) -> str | None:
        where, params = self._ledger_is(ledger)
        rows = self.select_rows(LOGS, f"{where} AND {self.ident('id')} = {self.dialect.param('id', Kind.INT64)}",
                                {**params, "id": log_id}, columns=["hash"], order=False)
        return rows[0]["hash"] if rows else None

    def balances(self, ledger: str, accounts: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Balance rows of `ledger`: of `accounts` only when given (what a batch touched), else all."""
        if accounts is None:
            where, params = self._ledger_is(ledger)
            return self.select_rows(BALANCES, where, params, order=False)
        return self.rows_in(BALANCES, ledger, "account", accounts)

    def asset_sums(self, ledger: str) -> dict[str, int]:
        """Per asset, the sum of balances: two columns of the balances table, summed in the warehouse."""
        where, params = self._ledger_is(ledger)
        total = self.dialect.selected(Kind.MONEY, f"SUM({self.ident('balance')})")
        with self.errors():
            rows = self.query(f"SELECT {self.ident('asset')}, {total} FROM {self.relation(BALANCES)}{where} "
                              f"GROUP BY {self.ident('asset')}", params)
        return {str(asset): int(from_warehouse(Kind.MONEY, value)) for asset, value in rows}

    # -- lifetime --------------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the connection."""

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Drivers:
    """Driver name -> loader class, imported lazily so a missing client library only matters when used."""

    modules: dict[str, str] = field(default_factory=dict)

    def get(self, driver: str) -> Any:
        """The driver's class: a `Loader`, or a `delivery.LogSink` for a driver that receives the logs as they are."""
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
        return getattr(module, class_name)
