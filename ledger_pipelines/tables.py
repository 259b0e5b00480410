"""The warehouse tables, as data: columns with logical types, natural keys, and how rows merge.

Every warehouse gets these tables from this one description through its dialect's type map, so
the six warehouses cannot drift apart. Rows carry `log_id`, the log that last changed them; a load
keeps, per key, the row with the highest `log_id` (ties: the incoming row), which makes replays and
resets idempotent: loading the same logs twice, or older logs after newer ones, changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

import pyarrow as pa
import pyarrow.compute as pc


class Kind(StrEnum):
    STRING = "string"
    INT32 = "int32"
    INT64 = "int64"
    BOOL = "bool"
    TIMESTAMP = "timestamp"  # UTC, microseconds, time-zone aware
    DATE = "date"  # a calendar day (UTC)
    JSON = "json"
    MONEY = "money"  # exact integer; carried as decimal256(76, 0) in Arrow, or as a warehouse takes it (Money)


MONEY_DIGITS = 76  # what Arrow's decimal256 carries; each dialect may hold fewer

ARROW_TYPES: dict[Kind, pa.DataType] = {
    Kind.STRING: pa.string(),
    Kind.INT32: pa.int32(),
    Kind.INT64: pa.int64(),
    Kind.BOOL: pa.bool_(),
    Kind.TIMESTAMP: pa.timestamp("us", tz="UTC"),
    Kind.DATE: pa.date32(),
    Kind.JSON: pa.string(),
    Kind.MONEY: pa.decimal256(MONEY_DIGITS, 0),
}


@dataclass(frozen=True)
class Money:
    """How a warehouse takes money: values of at most `digits` digits, in Arrow as `arrow_type` (a decimal, or
    the exact digits as text). Batches are made in that type, so no column is cast twice on its way in."""

    digits: int = MONEY_DIGITS
    arrow_type: pa.DataType = ARROW_TYPES[Kind.MONEY]


WIDEST_MONEY = Money()  # every value the ledger holds, as decimal256(76, 0)


def wider_than(values: pa.ChunkedArray, digits: int) -> pa.ChunkedArray:
    """Which money values (decimals, or their digits as text) have more than `digits` digits (`digits` < 76)."""
    if pa.types.is_decimal(values.type):
        return pc.greater_equal(pc.abs(values), pa.scalar(10**digits, pa.decimal256(MONEY_DIGITS, 0)))
    return pc.greater(pc.binary_length(pc.utf8_ltrim(values, "-")), digits)


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    nullable: bool = False


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    mutable: bool  # False: rows never change once written (logs, postings, moves)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def arrow_schema(self) -> pa.Schema:
        return self.arrow_schema_with(ARROW_TYPES[Kind.MONEY])

    def arrow_schema_with(self, money: pa.DataType) -> pa.Schema:
        """The Arrow schema with money columns of type `money`."""
        return pa.schema([pa.field(c.name, money if c.kind is Kind.MONEY else ARROW_TYPES[c.kind], nullable=c.nullable)
                          for c in self.columns])

    @property
    def money_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.kind is Kind.MONEY]

    def kind_of(self, column: str) -> Kind:
        return next(c.kind for c in self.columns if c.name == column)


def _c(name: str, kind: Kind, nullable: bool = False) -> Column:
    return Column(name, kind, nullable)


S, I32, I64, B, T, D, J, M = (Kind.STRING, Kind.INT32, Kind.INT64, Kind.BOOL, Kind.TIMESTAMP, Kind.DATE, Kind.JSON,
                              Kind.MONEY)

LOGS = Table("logs", (
    _c("ledger", S), _c("id", I64), _c("type", S), _c("date", T), _c("idempotency_key", S, True),
    _c("hash", S), _c("data", J), _c("log_id", I64),
), key=("ledger", "id"), mutable=False)

TRANSACTIONS = Table("transactions", (
    _c("ledger", S), _c("id", I64), _c("timestamp", T), _c("inserted_at", T), _c("reference", S, True),
    _c("metadata", J), _c("reverted_at", T, True), _c("reverts_transaction_id", I64, True),
    _c("reverted_by_transaction_id", I64, True), _c("log_id", I64),
), key=("ledger", "id"), mutable=True)

POSTINGS = Table("postings", (
    _c("ledger", S), _c("transaction_id", I64), _c("posting_index", I32), _c("source", S),
    _c("destination", S), _c("asset", S), _c("amount", M), _c("timestamp", T), _c("log_id", I64),
), key=("ledger", "transaction_id", "posting_index"), mutable=False)

MOVES = Table("moves", (
    _c("ledger", S), _c("transaction_id", I64), _c("posting_index", I32), _c("is_source", B),
    _c("account", S), _c("asset", S), _c("asset_scale", I32), _c("amount", M), _c("signed_amount", M),
    _c("display_amount", S), _c("timestamp", T), _c("inserted_at", T),
    _c("post_commit_input", M), _c("post_commit_output", M), _c("post_commit_balance", M), _c("log_id", I64),
), key=("ledger", "transaction_id", "posting_index", "is_source"), mutable=False)

ACCOUNTS = Table("accounts", (
    _c("ledger", S), _c("address", S), _c("metadata", J), _c("first_usage", T, True), _c("last_update", T),
    _c("log_id", I64),
), key=("ledger", "address"), mutable=True)

BALANCES = Table("balances", (
    _c("ledger", S), _c("account", S), _c("asset", S), _c("asset_scale", I32), _c("input", M), _c("output", M),
    _c("balance", M), _c("display_balance", S), _c("log_id", I64),
), key=("ledger", "account", "asset"), mutable=True)

# What each (account, asset) received and sent on each UTC day, by effective date (a transaction's `timestamp`):
# a backdated write changes its own day's row only. The `daily_balances` view sums these into closing balances.
DAILY_VOLUMES = Table("daily_volumes", (
    _c("ledger", S), _c("account", S), _c("asset", S), _c("day", D), _c("asset_scale", I32), _c("input", M),
    _c("output", M), _c("log_id", I64),
), key=("ledger", "account", "asset", "day"), mutable=True)

SYNC_STATE = Table("sync_state", (
    _c("pipeline_id", S), _c("ledger", S), _c("last_log_id", I64), _c("last_log_hash", S), _c("synced_at", T),
    _c("log_id", I64), _c("schema_version", I32, True),
), key=("pipeline_id",), mutable=True)

DATA_TABLES: tuple[Table, ...] = (LOGS, TRANSACTIONS, POSTINGS, MOVES, ACCOUNTS, BALANCES, DAILY_VOLUMES)
ALL_TABLES: tuple[Table, ...] = (*DATA_TABLES, SYNC_STATE)
BY_NAME = {t.name: t for t in ALL_TABLES}

# The version of these descriptions. A warehouse records, per pipeline, the version it was built with (in
# `sync_state`); a loader runs its setup (DDL, views, columns added in place) only when that is missing or
# older, never on every sync. Bump it whenever a table, column or view changes.
# 1: the first tables; 2: `sync_state.schema_version`; 3: signed amounts and asset scale, reversal links,
# `daily_volumes`, and the views `daily_balances` and `moves_effective`.
SCHEMA_VERSION = 3
# A warehouse built before this version is emptied and replayed from the first log rather than upgraded in place:
# its rows lack values (signed amounts, reversal links, daily volumes) that only a replay of the logs gives.
REPLAY_BELOW = 3


@dataclass(frozen=True)
class Batch:
    """The warehouse rows for the logs `first_log_id..last_log_id` of one ledger.

    `new_rows`: per folded table, how many of its first rows have a key no earlier log wrote (a transaction
    the batch creates, an account or a day's volumes the warehouse held no row for when the batch was folded).
    A warehouse holding none of the batch's logs cannot hold those rows: a load may append them instead of
    merging them. A table not named has none known (balances are not fetched: a zero move leaves a row that
    the logs' volumes cannot tell from none).
    """

    ledger: str
    first_log_id: int
    last_log_id: int
    last_log_hash: str
    tables: dict[str, pa.Table]
    new_rows: dict[str, int] = field(default_factory=dict)

    def row_counts(self) -> dict[str, int]:
        return {name: table.num_rows for name, table in self.tables.items()}


@dataclass(frozen=True)
class SyncState:
    """The row a load writes last: which log the warehouse holds up to, its hash, and the schema version."""

    pipeline_id: str
    ledger: str
    last_log_id: int
    last_log_hash: str
    synced_at: datetime

    def as_table(self) -> pa.Table:
        return pa.Table.from_pylist(
            [{"pipeline_id": self.pipeline_id, "ledger": self.ledger, "last_log_id": self.last_log_id,
              "last_log_hash": self.last_log_hash, "synced_at": self.synced_at, "log_id": self.last_log_id,
              "schema_version": SCHEMA_VERSION}],
            schema=SYNC_STATE.arrow_schema,
        )
