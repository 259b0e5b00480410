"""From logs to warehouse rows, set-based.

A batch of logs (the reader's Arrow table) becomes one Arrow table per warehouse table, computed by SQL in
an in-process DuckDB over that Arrow table, with no Python per row:

- every log's JSON is unpacked once (`json_transform` to typed structs), then postings and moves are
  unnested, and each move's post-commit volumes are its transaction's post-commit volumes less a window sum
  over the moves after it (sources before destinations within a posting, as the writer applies them);
- current-state tables are folded: transactions, accounts and daily volumes start from the rows the
  warehouse holds (fetched by key through the loader), then every change the batch makes to them with a
  newer log id is applied in log order (metadata as JSON merge patches, first use as a minimum, the last
  change's date, reversal links, a day's inflow and outflow added); balances come whole from each
  transaction's post-commit volumes, the last per key. Each row carries the id of the last log that changed
  it, so a batch replayed over a warehouse that has it changes nothing.

Why here and not in PostgreSQL: the logs' text is read anyway (it is the `logs` table), and DuckDB unpacks
it on the sync's own cores, on threads of their own while the batch before loads. Computing five of the six
tables (and the chain check) with jsonb functions in PostgreSQL took about 6 s of the ledger database's
single backend on 50,000 three-posting logs (the moves alone 2.7 s), more than this whole sync of them
takes. Why not the ledger's own typed tables: the warehouse would then receive values the hash chain does
not vouch for; every value computed here comes from log text the sync checked link by link.

Money is never a float: JSON numbers are read as their digits, summed as BIGNUM (arbitrary precision), and
cast once from their text to the Arrow type the warehouse takes (`Money`: decimal256(76, 0) by default,
DuckDB's decimal128, or the digits as text). A value wider than the warehouse holds stops the batch naming
the earliest log that carries one.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from ledger_pipelines.errors import LogIncomplete, MissingBaseRow, ValueOutOfRange
from ledger_pipelines.tables import (
    ACCOUNTS,
    ARROW_TYPES,
    BALANCES,
    BY_NAME,
    DAILY_VOLUMES,
    DATA_TABLES,
    LOGS,
    MONEY_DIGITS,
    MOVES,
    POSTINGS,
    TRANSACTIONS,
    WIDEST_MONEY,
    Batch,
    Kind,
    Money,
    Table,
    wider_than,
)

# fetch_current(table, ledger, keys, within) -> the warehouse's current rows of `table` whose first key column
# after `ledger` is in `keys` and, if `within` = (column, low, high) is given, whose `column` is in low..high
FetchCurrent = Callable[[Table, str, Sequence[Any], "tuple[str, Any, Any] | None"], pa.Table]

_VOLUMES = "MAP(VARCHAR, MAP(VARCHAR, STRUCT(input VARCHAR, output VARCHAR)))"
_TRANSACTION = {
    "id": "BIGINT", "timestamp": "TIMESTAMPTZ", "insertedAt": "TIMESTAMPTZ", "reference": "VARCHAR",
    "metadata": "JSON", "revertedAt": "TIMESTAMPTZ",
    "postings": [{"source": "VARCHAR", "destination": "VARCHAR", "asset": "VARCHAR", "amount": "VARCHAR"}],
    "postCommitVolumes": _VOLUMES,  # a move's volumes are these less the moves after it: one map, not two
}
# What the transforms read of a log's data (Formance v2 log payloads); numbers as VARCHAR keep their digits.
LOG_SHAPE = json.dumps({
    "transaction": _TRANSACTION,
    "revertedTransaction": {"id": "BIGINT", "revertedAt": "TIMESTAMPTZ"},
    "accountMetadata": "MAP(VARCHAR, JSON)",
    "targetType": "VARCHAR", "targetId": "VARCHAR", "metadata": "JSON", "key": "VARCHAR",
})

_TRANSACTION_LOGS = "('NEW_TRANSACTION', 'REVERTED_TRANSACTION')"

# An asset's scale is its name's precision (`USD/2` -> 2, `JPY` -> 0). A display amount is an amount's digits
# with the point set by the scale, and its sign: exact text, never a float. Past 76 places (no amount has more
# digits, and a scale may have 6) it is `<digits>E-<scale>`, which any decimal parser reads exactly.
# A macro repeats its arguments' expressions wherever it names them: callers pass columns, computed once (the
# scale as an expression made display amounts six times slower).
_MACROS = """
CREATE MACRO asset_scale(asset) AS coalesce(TRY_CAST(nullif(split_part(asset, '/', 2), '') AS INTEGER), 0);
CREATE MACRO pointed(digits, scale) AS
    substr(digits, 1, length(digits) - scale) || '.' || substr(digits, length(digits) - scale + 1);
CREATE MACRO display_amount(digits, negative, scale) AS
    (CASE WHEN negative THEN '-' ELSE '' END) || CASE
        WHEN scale = 0 THEN digits
        WHEN scale > 76 THEN digits || 'E-' || scale
        ELSE main.pointed(CASE WHEN length(digits) > scale THEN digits ELSE lpad(digits, scale + 1, '0') END,
                          scale) END;
"""

# The batch, unpacked once, into tables of the batch's own schema; `log` is the reader's Arrow table.
_PREPARE = f"""
CREATE TABLE parsed AS
    SELECT log_id, type, date, d,
           CASE WHEN d.targetType = 'TRANSACTION' THEN d.targetId::BIGINT END AS target_transaction
    FROM (SELECT id AS log_id, type, date, json_transform(data, '{LOG_SHAPE}') AS d FROM log);
CREATE TABLE tx_logs AS
    SELECT log_id, date, d.transaction AS tx,
           CASE WHEN type = 'REVERTED_TRANSACTION' THEN d.revertedTransaction.id END AS reverts
    FROM parsed WHERE type IN {_TRANSACTION_LOGS};
-- transactions the batch changes (reverts, metadata) without creating them: the warehouse must hold them
CREATE TABLE earlier_transactions AS
    SELECT id, log_id FROM (
        SELECT d.revertedTransaction.id AS id, log_id FROM parsed WHERE type = 'REVERTED_TRANSACTION'
        UNION ALL SELECT target_transaction, log_id FROM parsed
        WHERE type IN ('SET_METADATA', 'DELETE_METADATA') AND target_transaction IS NOT NULL)
    WHERE id NOT IN (SELECT tx.id FROM tx_logs);
CREATE TABLE posting_rows AS
    SELECT log_id, date, transaction_id, (posting_index - 1)::INTEGER AS posting_index, p.source, p.destination,
           p.asset, p.amount, timestamp, inserted_at
    FROM (SELECT log_id, date, tx.id AS transaction_id, tx.timestamp, tx.insertedAt AS inserted_at,
                 unnest(tx.postings) AS p, generate_subscripts(tx.postings, 1) AS posting_index
          FROM tx_logs);
CREATE TABLE move_rows AS
    SELECT log_id, date, transaction_id, posting_index, s.is_source,
           CASE WHEN s.is_source THEN source ELSE destination END AS account, asset, amount, timestamp,
           inserted_at, timestamp::DATE AS day
    FROM posting_rows CROSS JOIN (VALUES (true), (false)) s(is_source);
CREATE TABLE post_volumes AS
    SELECT log_id, account, a.key AS asset, a.value.input AS input, a.value.output AS output
    FROM (SELECT log_id, v.key AS account, unnest(map_entries(v.value)) AS a
          FROM (SELECT log_id, unnest(map_entries(tx.postCommitVolumes)) AS v FROM tx_logs));
"""

# Every log's canonical form (`hashing.canonical`, hash version 2) spelled in DuckDB's SQL, as bytes. Its hash
# over the previous log's stored hash is then taken by `hashlib`: OpenSSL uses the CPU's SHA instructions, and
# was four times faster than DuckDB's `sha256` on the same bytes (0.13 s against 0.53 s for 60,000 logs).
# A fast path only: where it finds no match (a version-1 log, a character DuckDB escapes otherwise, or a real
# break), `export.first_broken_link` gives the verdict.
_CANONICAL = """
    SELECT encode('{"id": ' || id || ', "data": ' || data || ', "date": "'
                  || rtrim(rtrim(strftime(date, '%Y-%m-%dT%H:%M:%S.%f'), '0'), '.')
                  || 'Z", "type": ' || to_json(type) || ', "ledger": ' || to_json($ledger::VARCHAR)
                  || ', "idempotencyKey": ' || coalesce(to_json(idempotency_key)::VARCHAR, 'null') || '}')
    FROM log"""  # in the batch's order: DuckDB preserves insertion order (and a misorder is only no verdict)

_TABLE_SQL: dict[str, str] = {
    POSTINGS.name: """
        SELECT $ledger AS ledger, transaction_id, posting_index, source, destination, asset, amount, timestamp, log_id
        FROM posting_rows""",
    MOVES.name: """
        WITH volumes AS (
            SELECT m.*,
                   post.input::BIGNUM - coalesce(sum(CASE WHEN is_source THEN 0::BIGNUM ELSE amount::BIGNUM END)
                                                 OVER later, 0::BIGNUM) AS input,
                   post.output::BIGNUM - coalesce(sum(CASE WHEN is_source THEN amount::BIGNUM ELSE 0::BIGNUM END)
                                                  OVER later, 0::BIGNUM) AS output
            FROM move_rows m LEFT JOIN post_volumes post USING (log_id, account, asset)
            WINDOW later AS (PARTITION BY m.log_id, m.account, m.asset ORDER BY posting_index, is_source DESC
                             ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING))
        SELECT $ledger AS ledger, transaction_id, posting_index, is_source, account, asset, asset_scale, amount,
               CASE WHEN negative THEN '-' || amount ELSE amount END AS signed_amount,
               main.display_amount(amount, negative, asset_scale) AS display_amount, timestamp,
               inserted_at, input::VARCHAR AS post_commit_input, output::VARCHAR AS post_commit_output,
               (input - output)::VARCHAR AS post_commit_balance, log_id
        FROM (SELECT *, main.asset_scale(asset) AS asset_scale, is_source AND amount <> '0' AS negative
              FROM volumes)""",
    BALANCES.name: """
        SELECT $ledger AS ledger, account, asset, asset_scale, input, output, balance,
               main.display_amount(ltrim(balance, '-'), starts_with(balance, '-'), asset_scale) AS display_balance,
               log_id
        FROM (SELECT *, main.asset_scale(asset) AS asset_scale, (input::BIGNUM - output::BIGNUM)::VARCHAR AS balance
              FROM post_volumes QUALIFY row_number() OVER (PARTITION BY account, asset ORDER BY log_id DESC) = 1)""",
    # Per (account, asset, day): the warehouse's row, plus what the batch's moves with a newer log id add.
    DAILY_VOLUMES.name: """
        WITH touched AS (
            SELECT k.account, k.asset, k.day, coalesce(b.input, '0')::BIGNUM AS input,
                   coalesce(b.output, '0')::BIGNUM AS output, coalesce(b.log_id, 0) AS log_id,
                   b.account IS NULL AS is_new
            FROM (SELECT DISTINCT account, asset, day FROM move_rows) k
            LEFT JOIN base_daily_volumes b USING (account, asset, day))
        SELECT $ledger AS ledger, t.account, t.asset, t.day, main.asset_scale(t.asset) AS asset_scale,
               (t.input + sum(CASE WHEN m.is_source THEN 0::BIGNUM ELSE m.amount::BIGNUM END))::VARCHAR AS input,
               (t.output + sum(CASE WHEN m.is_source THEN m.amount::BIGNUM ELSE 0::BIGNUM END))::VARCHAR AS output,
               max(m.log_id) AS log_id, t.is_new
        FROM touched t JOIN move_rows m ON m.account = t.account AND m.asset = t.asset AND m.day = t.day
                                       AND m.log_id > t.log_id
        GROUP BY t.account, t.asset, t.day, t.input, t.output, t.is_new
        ORDER BY t.is_new DESC""",
    # Changes to transactions: created (whole rows), reverted, metadata set or deleted (JSON merge patches).
    TRANSACTIONS.name: """
        WITH created AS (
            SELECT tx.id, tx.timestamp, tx.insertedAt AS inserted_at, tx.reference,
                   coalesce(tx.metadata, '{}')::JSON AS metadata, tx.revertedAt AS reverted_at,
                   reverts AS reverts_transaction_id, NULL::BIGINT AS reverted_by_transaction_id, log_id
            FROM tx_logs),
        changes AS (
            SELECT d.revertedTransaction.id AS id, log_id, NULL::JSON AS patch,
                   coalesce(d.revertedTransaction.revertedAt, date) AS reverted_at, d.transaction.id AS reverted_by
            FROM parsed WHERE type = 'REVERTED_TRANSACTION'
            UNION ALL
            SELECT target_transaction, log_id,
                   CASE type WHEN 'SET_METADATA' THEN d.metadata ELSE json_object(d.key, NULL) END, NULL, NULL
            FROM parsed WHERE type IN ('SET_METADATA', 'DELETE_METADATA') AND target_transaction IS NOT NULL),
        starts AS (
            SELECT *, true AS is_new FROM created
            UNION ALL
            SELECT id, timestamp, inserted_at, reference, metadata::JSON, reverted_at, reverts_transaction_id,
                   reverted_by_transaction_id, log_id, false
            FROM base_transactions WHERE id NOT IN (SELECT id FROM created))
        SELECT $ledger AS ledger, s.id, s.timestamp, s.inserted_at, s.reference,
               list_reduce(list_prepend(s.metadata, coalesce(list(c.patch ORDER BY c.log_id)
                                        FILTER (c.patch IS NOT NULL), [])),
                           lambda m, p: json_merge_patch(m, p))::VARCHAR AS metadata,
               coalesce(arg_max(c.reverted_at, c.log_id) FILTER (c.reverted_at IS NOT NULL), s.reverted_at)
                   AS reverted_at,
               s.reverts_transaction_id,
               coalesce(arg_max(c.reverted_by, c.log_id) FILTER (c.reverted_by IS NOT NULL),
                        s.reverted_by_transaction_id) AS reverted_by_transaction_id,
               greatest(s.log_id, max(c.log_id)) AS log_id, s.is_new
        FROM starts s LEFT JOIN changes c ON c.id = s.id AND c.log_id > s.log_id
        GROUP BY s.id, s.timestamp, s.inserted_at, s.reference, s.metadata, s.reverted_at, s.reverts_transaction_id,
                 s.reverted_by_transaction_id, s.log_id, s.is_new
        HAVING s.is_new OR count(c.log_id) > 0
        ORDER BY s.is_new DESC""",
    # Changes to accounts: used by a move (first use, last update), metadata set or deleted.
    ACCOUNTS.name: """
        WITH changes AS (
            SELECT DISTINCT account AS address, log_id, date, timestamp, NULL::JSON AS patch FROM move_rows
            UNION ALL
            SELECT e.key, log_id, date, NULL, e.value
            FROM (SELECT log_id, date, unnest(map_entries(d.accountMetadata)) AS e FROM parsed
                  WHERE type = 'NEW_TRANSACTION')
            UNION ALL
            SELECT d.targetId, log_id, date, NULL,
                   CASE type WHEN 'SET_METADATA' THEN d.metadata ELSE json_object(d.key, NULL) END
            FROM parsed WHERE type IN ('SET_METADATA', 'DELETE_METADATA') AND d.targetType = 'ACCOUNT'),
        touched AS (
            SELECT t.address, coalesce(b.metadata, '{}')::JSON AS metadata, b.first_usage,
                   coalesce(b.log_id, 0) AS log_id, b.address IS NULL AS is_new
            FROM (SELECT DISTINCT address FROM changes) t LEFT JOIN base_accounts b USING (address))
        SELECT $ledger AS ledger, t.address,
               list_reduce(list_prepend(t.metadata, coalesce(list(c.patch ORDER BY c.log_id)
                                        FILTER (c.patch IS NOT NULL), [])),
                           lambda m, p: json_merge_patch(m, p))::VARCHAR AS metadata,
               least(t.first_usage, min(c.timestamp)) AS first_usage, arg_max(c.date, c.log_id) AS last_update,
               max(c.log_id) AS log_id, t.is_new
        FROM touched t JOIN changes c ON c.address = t.address AND c.log_id > t.log_id
        GROUP BY t.address, t.metadata, t.first_usage, t.log_id, t.is_new
        ORDER BY t.is_new DESC""",
}

# A fold's rows come with this column, new rows first (`ORDER BY is_new DESC`): true where the row's key is
# written for the first time by the batch (a transaction it creates, an account or a day's volumes the
# warehouse held no row for), so a warehouse holding none of the batch's logs cannot hold the row (`Batch.new_rows`).
NEW_ROW = "is_new"

# What the folds need of the warehouse's rows, and which rows they need.
_BASE_SCHEMAS = {
    TRANSACTIONS.name: pa.schema([("id", pa.int64()), ("timestamp", ARROW_TYPES[Kind.TIMESTAMP]),
                                  ("inserted_at", ARROW_TYPES[Kind.TIMESTAMP]), ("reference", pa.string()),
                                  ("metadata", pa.string()), ("reverted_at", ARROW_TYPES[Kind.TIMESTAMP]),
                                  ("reverts_transaction_id", pa.int64()),
                                  ("reverted_by_transaction_id", pa.int64()), ("log_id", pa.int64())]),
    ACCOUNTS.name: pa.schema([("address", pa.string()), ("metadata", pa.string()),
                              ("first_usage", ARROW_TYPES[Kind.TIMESTAMP]), ("log_id", pa.int64())]),
    # money as its digits (BIGNUM in the SQL): DuckDB's DECIMAL stops at 38 digits
    DAILY_VOLUMES.name: pa.schema([("account", pa.string()), ("asset", pa.string()), ("day", pa.date32()),
                                   ("input", pa.string()), ("output", pa.string()), ("log_id", pa.int64())]),
}
_BASE_KEYS = {
    TRANSACTIONS.name: "SELECT DISTINCT id FROM earlier_transactions ORDER BY id",
    # every account the batch touches
    # every account the batch moves, with the days it moves them (a superset of the rows needed)
    DAILY_VOLUMES.name: "SELECT DISTINCT account FROM move_rows ORDER BY account",
    ACCOUNTS.name: """
        SELECT DISTINCT address FROM (
            SELECT account AS address FROM move_rows
            UNION ALL SELECT unnest(map_keys(d.accountMetadata)) FROM parsed WHERE type = 'NEW_TRANSACTION'
            UNION ALL SELECT d.targetId FROM parsed
            WHERE type IN ('SET_METADATA', 'DELETE_METADATA') AND d.targetType = 'ACCOUNT') ORDER BY address""",
}

# Where a fold's key has more columns than the one fetched by: bounds on another, so the warehouse returns the
# rows of the batch's accounts on the batch's days only (the fold then joins on the whole key).
_BASE_WITHIN = {DAILY_VOLUMES.name: ("day", "SELECT min(day), max(day) FROM move_rows")}


# A sync works on three threads at once (reading and checking the links; unpacking and the batch-only tables;
# folding and loading: see `sync._verified_batches`), all three in this database, beside the warehouse and
# PostgreSQL. Half the cores keeps them from crowding each other out: on 2 cores, 10% less CPU and 5% less time
# for a full sync than DuckDB's default of every core.
TRANSFORM_THREADS = max(1, len(os.sched_getaffinity(0)) // 2)


# Tables computed from the batch's logs alone, with no warehouse row to start from: `batch_tables` computes them
# (checked and typed for the warehouse), on a thread of the sync's own while `transform` folds the same batch.
BATCH_ONLY = (LOGS, POSTINGS, MOVES, BALANCES)


@dataclass(frozen=True)
class Prepared:
    """A batch of logs unpacked into its own schema of the transformer's database (`Transformer.unpack`), with
    its BATCH_ONLY tables for a ledger and a warehouse's money: computed (`Transformer.prepare`), or being
    computed on another thread (`ahead`, see `sync._verified_batches`). With no schema, the logs alone, not
    unpacked (what a delivery needs; `transform` unpacks them if given one)."""

    logs: pa.Table
    schema: str | None
    ledger: str | None = None
    money: Money = WIDEST_MONEY
    tables: dict[str, pa.Table] = field(default_factory=dict)
    ahead: Future[dict[str, pa.Table]] | None = None

    def batch_only(self, ledger: str, money: Money) -> dict[str, pa.Table]:
        """The BATCH_ONLY tables made ahead for this ledger and money (waiting for them if they are being made);
        none if they were made for another, or not at all."""
        if (self.ledger, self.money) != (ledger, money):
            return {}
        return self.ahead.result() if self.ahead is not None else self.tables


class Transformer:
    """Turns batches of logs into warehouse rows; holds one in-memory DuckDB for the sync's lifetime.

    `unpack` (the logs' JSON into tables) and `batch_tables` (the tables computed from the batch alone), the bulk
    of the work, may run on other threads than `transform`, each on a connection of its own to the database: the
    sync unpacks the next batches while it loads one, and computes a batch's BATCH_ONLY tables while it folds
    it. `prepare` does both in turn.
    """

    def __init__(self) -> None:
        self._db = duckdb.connect(":memory:")
        self._db.execute(f"SET TimeZone = 'UTC'; SET threads = {TRANSFORM_THREADS}")
        self._db.execute(_MACROS)
        self._batches = itertools.count()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Transformer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection of the calling thread's own to the database, in UTC (a cursor does not inherit its
        connection's time zone: timestamps would print in the machine's)."""
        with self._db.cursor() as db:
            db.execute("SET TimeZone = 'UTC'")
            yield db

    def unpack(self, logs: pa.Table) -> Prepared:
        """Unpack a contiguous batch of logs (the reader's Arrow table) into a schema of its own; safe to call
        from any thread."""
        if not logs.num_rows:
            raise ValueError("transform needs at least one log")
        unpacked = Prepared(logs, f"batch_{next(self._batches)}")
        with self._cursor() as db:
            db.execute(f"CREATE SCHEMA {unpacked.schema}; SET schema = '{unpacked.schema}'")
            # Small record batches let DuckDB unpack the JSON on every core it has.
            db.register("log", pa.Table.from_batches(logs.to_batches(max_chunksize=1024)))
            db.execute(_PREPARE)
        return unpacked

    def prepare(self, logs: pa.Table | Prepared, ledger: str, money: Money = WIDEST_MONEY) -> Prepared:
        """A batch unpacked (by `unpack`, if it is not yet) with its BATCH_ONLY tables computed for `ledger` and
        a warehouse taking `money`; safe to call from any thread."""
        unpacked = logs if isinstance(logs, Prepared) and logs.schema is not None else self.unpack(
            logs.logs if isinstance(logs, Prepared) else logs)
        return replace(unpacked, ledger=ledger, money=money, tables=self.batch_tables(unpacked, ledger, money))

    def batch_tables(self, unpacked: Prepared, ledger: str, money: Money = WIDEST_MONEY) -> dict[str, pa.Table]:
        """An unpacked batch's BATCH_ONLY tables for `ledger`, typed for a warehouse taking `money`; none when a
        value is too wide for it (`transform` then names the earliest log of all). Safe to call from any thread,
        while `transform` folds the same batch."""
        with self._cursor() as db:
            db.execute(f"SET schema = '{unpacked.schema}'")
            db.register("log", unpacked.logs)
            tables = {table.name: _computed(db, table, ledger, unpacked.logs) for table in BATCH_ONLY}
        if _widest(tables, money.digits) is not None:
            return {}
        return {name: _typed(BY_NAME[name], data, money.arrow_type) for name, data in tables.items()}

    def links_hold(self, ledger: str, logs: pa.Table, previous: bytes | None) -> bool:
        """Whether every log of the batch (in id order) has the hash its canonical form and the previous log's
        hash give (`previous`: the hash of the log before the batch). False is no verdict: check it with
        `export.first_broken_link`. Safe to call from any thread."""
        if not pc.all(pc.equal(logs.column("hash_version"), 2)).as_py():
            return False
        with self._cursor() as db:
            db.register("log", pa.Table.from_batches(logs.to_batches(max_chunksize=1024)))
            canonical = db.sql(_CANONICAL, params={"ledger": ledger}).to_arrow_table().column(0)
        link = previous or b""
        for text, stored in zip(canonical.to_pylist(), logs.column("hash").to_pylist(), strict=True):
            digest = hashlib.sha256(link)
            digest.update(text)
            if digest.hexdigest() != stored:
                return False
            link = digest.digest()
        return True

    def transform(self, ledger: str, logs: pa.Table | Prepared, fetch_current: FetchCurrent,
                  money: Money = WIDEST_MONEY) -> Batch:
        """Turn a contiguous batch of logs (the reader's Arrow table, or prepared) into warehouse rows.

        `money` is how the warehouse takes it: a wider value stops the batch naming the earliest log carrying
        one, and money columns come in its Arrow type.
        """
        if isinstance(logs, Prepared) and logs.schema is not None:
            prepared = logs
        else:
            prepared = self.unpack(logs.logs if isinstance(logs, Prepared) else logs)
        db = self._db
        db.execute(f"SET schema = '{prepared.schema}'")
        db.register("log", prepared.logs)
        try:
            for name, schema in _BASE_SCHEMAS.items():
                db.register(f"base_{name}", self._base_rows(ledger, name, schema, fetch_current))
            self._refuse_missing_transactions()
            computed = {table.name: _computed(db, table, ledger, prepared.logs)
                        for table in DATA_TABLES if table not in BATCH_ONLY}
            new_rows = {name: pc.sum(data.column(NEW_ROW)).as_py() or 0 for name, data in computed.items()}
            ahead = prepared.batch_only(ledger, money)  # made on another thread meanwhile, if at all
            computed.update({table.name: _computed(db, table, ledger, prepared.logs)
                             for table in BATCH_ONLY if table.name not in ahead})
        finally:
            for name in ("log", *(f"base_{n}" for n in _BASE_SCHEMAS)):
                db.unregister(name)
            if prepared.ahead is not None:  # its thread reads the schema until it is done
                wait([prepared.ahead])
            db.execute(f"RESET schema; DROP SCHEMA {prepared.schema} CASCADE")
        widest = _widest(computed, money.digits)
        if widest is not None:
            raise ValueOutOfRange(*widest, min(money.digits, MONEY_DIGITS))
        typed = {name: _typed(BY_NAME[name], data, money.arrow_type) for name, data in computed.items()}
        ids = prepared.logs.column("id")
        return Batch(ledger, ids[0].as_py(), ids[-1].as_py(), prepared.logs.column("hash")[-1].as_py(),
                     {t.name: ahead[t.name] if t.name in ahead else typed[t.name] for t in DATA_TABLES}, new_rows)

    def _base_rows(self, ledger: str, name: str, schema: pa.Schema, fetch_current: FetchCurrent) -> pa.Table:
        keys = self._db.sql(_BASE_KEYS[name]).to_arrow_table().column(0).to_pylist()
        if not keys:
            return schema.empty_table()
        within = None
        if name in _BASE_WITHIN:
            column, bounds = _BASE_WITHIN[name]
            [(low, high)] = self._db.sql(bounds).fetchall()
            within = (column, low, high)
        rows = fetch_current(BY_NAME[name], ledger, keys, within)
        return pa.Table.from_arrays([rows.column(f.name).cast(f.type) for f in schema], schema=schema)

    def _refuse_missing_transactions(self) -> None:
        missing = self._db.sql("""SELECT log_id, id FROM earlier_transactions
                                  WHERE id NOT IN (SELECT id FROM base_transactions)
                                  ORDER BY log_id LIMIT 1""").fetchall()
        if missing:
            [(log_id, tx_id)] = missing
            raise MissingBaseRow(f"log {log_id} changes transaction {tx_id}, which the warehouse does not hold; "
                                 "reset the pipeline to 0 to rebuild it")


def _computed(db: duckdb.DuckDBPyConnection, table: Table, ledger: str, logs: pa.Table) -> pa.Table:
    if table is LOGS:  # the reader's columns as they are: through DuckDB, every log's text was copied twice
        return logs.append_column("ledger", pa.repeat(pa.scalar(ledger), logs.num_rows)).append_column(
            "log_id", logs.column("id")).select(table.column_names)
    rows = db.sql(_TABLE_SQL[table.name], params={"ledger": ledger}).to_arrow_table()
    return rows.select([*table.column_names, *([NEW_ROW] if NEW_ROW in rows.schema.names else [])])


def _widest(tables: dict[str, pa.Table], digits: int) -> tuple[int, str, str, int] | None:
    """Where `tables` (money still as text) hold a value wider than `digits`: the earliest log carrying one, with
    its table, column and value; None when none does."""
    digits = min(digits, MONEY_DIGITS)
    worst: tuple[int, str, str, int] | None = None
    for name, data in tables.items():
        for column in BY_NAME[name].money_columns:
            values = data.column(column)
            if not data.num_rows or pc.max(pc.binary_length(values)).as_py() <= digits:  # no sign needed to tell
                continue
            wide = wider_than(values, digits)
            if not pc.any(wide).as_py():
                continue
            offending = data.filter(wide)
            at = pc.index(offending.column("log_id"), pc.min(offending.column("log_id")))
            log_id = offending.column("log_id")[at.as_py()].as_py()
            if worst is None or log_id < worst[0]:
                worst = (log_id, name, column, int(offending.column(column)[at.as_py()].as_py()))
    return worst


def _typed(table: Table, data: pa.Table, money: pa.DataType) -> pa.Table:
    """The warehouse table's Arrow schema, money as `money` (cast once from its digits), time zones named alike.
    A value missing where the table requires one means a log lacked a field: refused, naming the earliest such
    log."""
    for column in table.columns:
        if not column.nullable and data.column(column.name).null_count:
            missing = data.filter(pc.is_null(data.column(column.name)))
            raise LogIncomplete(pc.min(missing.column("log_id")).as_py(), table.name, column.name)
    schema = table.arrow_schema_with(money)
    return pa.Table.from_arrays([data.column(f.name).cast(f.type) for f in schema], schema=schema)
