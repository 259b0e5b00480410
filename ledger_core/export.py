"""The export interface: everything a consumer of the ledger (the pipelines) reads, in one place.

The log's format and the core's tables are known here and in the rest of `ledger_core`, nowhere else: the
pipelines read logs in batches (`LOG_BATCH_QUERY`), wake on the commit notification (`LOGS_CHANNEL`), anchor
their chain checks (`log_link`), follow the ledgers' heads (`progress`), and compute what a warehouse must hold
as of a cursor (`State`) through these functions, never by querying `ledger_core` themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from ledger_core import hashing

LOGS_CHANNEL = "ledger_core_logs"  # NOTIFY channel, sent in each write's transaction: payload "<ledger>:<last log id>"

# Logs `after < id <= up_to` of one ledger, at most `limit`, in id order, as the hash chain covers them (ADBC's
# positional parameters: ledger, after, up_to, limit). Binary COPY under the hood: columns straight into Arrow.
LOG_BATCH_QUERY = """
    SELECT id, type, date, idempotency_key, encode(hash, 'hex') AS hash, data::text AS data, hash_version
    FROM ledger_core.logs WHERE ledger = $1 AND id > $2 AND id <= $3 ORDER BY id LIMIT $4"""


def first_broken_link(ledger: str, logs: pa.Table, *, previous: bytes | None, previous_id: int,
                      previous_version: int) -> hashing.BrokenLink | None:
    """`hashing.first_broken_link` over a batch read with LOG_BATCH_QUERY (an Arrow table), continuing from
    log `previous_id` whose hash is `previous`: what the consumer received is what it checks."""
    stored = map(hashing.StoredLog, logs.column("id").to_pylist(), logs.column("type").to_pylist(),
                 rfc3339(logs.column("date")).to_pylist(), logs.column("idempotency_key").to_pylist(),
                 logs.column("data").to_pylist(), map(bytes.fromhex, logs.column("hash").to_pylist()),
                 logs.column("hash_version").to_pylist())
    return hashing.first_broken_link(ledger, stored, previous=previous, previous_id=previous_id,
                                     previous_version=previous_version)


def rfc3339(dates: pa.ChunkedArray) -> pa.ChunkedArray:
    """`validation.format_timestamp` column-wise: UTC, fraction without trailing zeros, `Z` (tested equal)."""
    text = pc.strftime(dates, "%Y-%m-%dT%H:%M:%S")  # microsecond timestamps print their 6-digit fraction
    text = pc.replace_substring_regex(text, r"(\.[0-9]*?)0*$", r"\1")
    text = pc.replace_substring_regex(text, r"\.$", "")
    return pc.binary_join_element_wise(text, "Z", "")


def ledger_exists(conn: psycopg.Connection, ledger: str) -> bool:
    return conn.execute("SELECT 1 FROM ledger_core.ledgers WHERE name = %s", (ledger,)).fetchone() is not None


def log_link(conn: psycopg.Connection, ledger: str, log_id: int) -> tuple[bytes, int] | None:
    """The stored hash and hash version of one log: where a check of the following logs starts."""
    row = conn.execute("SELECT hash, hash_version FROM ledger_core.logs WHERE ledger = %s AND id = %s",
                       (ledger, log_id)).fetchone()
    return (bytes(row[0]), int(row[1])) if row else None


@dataclass(frozen=True)
class Progress:
    """How far a ledger is ahead of a consumer's cursor."""

    head: int  # the ledger's last log id
    oldest_waiting_at: datetime | None  # commit time of the first log after the cursor (None: nothing waits)


def progress(conn: psycopg.Connection, cursors: Sequence[tuple[str, int]]) -> dict[tuple[str, int], Progress]:
    """For each (ledger, cursor): the ledger's head and when the first log after the cursor was committed."""
    if not cursors:
        return {}
    rows = conn.execute(
        """SELECT c.ledger, c.cursor, l.last_log_id,
                  (SELECT g.date FROM ledger_core.logs g WHERE g.ledger = c.ledger AND g.id = c.cursor + 1)
           FROM unnest(%s::text[], %s::bigint[]) AS c(ledger, cursor)
           JOIN ledger_core.ledgers l ON l.name = c.ledger""",
        ([ledger for ledger, _ in cursors], [cursor for _, cursor in cursors]),
    ).fetchall()
    return {(ledger, cursor): Progress(int(head), waiting) for ledger, cursor, head, waiting in rows}


@dataclass(frozen=True)
class State:
    """What a warehouse fed from logs 1..cursor must hold, computed from the ledger's own tables."""

    cursor: int
    last_transaction_id: int  # the last transaction a log <= cursor created
    last_hash: str | None  # hex hash of log `cursor`
    transactions: int
    moves: int
    balances: int  # (account, asset) pairs moved
    accounts: int  # accounts moved or given metadata
    days: int  # (account, asset, UTC day of the effective date) with a move

    @classmethod
    def as_of(cls, conn: psycopg.Connection, ledger: str, cursor: int) -> State:
        row = conn.execute(
            """SELECT coalesce(max((data->'transaction'->>'id')::bigint) FILTER (
                          WHERE type IN ('NEW_TRANSACTION', 'REVERTED_TRANSACTION')), 0),
                      max(encode(hash, 'hex')) FILTER (WHERE id = %s)
               FROM ledger_core.logs WHERE ledger = %s AND id <= %s""",
            (cursor, ledger, cursor),
        ).fetchone()
        assert row is not None
        last_tx, last_hash = int(row[0]), row[1]
        counts = conn.execute(
            """SELECT
                 (SELECT count(*) FROM ledger_core.transactions WHERE ledger = %(l)s AND id <= %(t)s),
                 (SELECT count(*) FROM ledger_core.moves WHERE ledger = %(l)s AND transaction_id <= %(t)s),
                 (SELECT count(DISTINCT (account, asset)) FROM ledger_core.moves
                   WHERE ledger = %(l)s AND transaction_id <= %(t)s),
                 (SELECT count(DISTINCT (account, asset, (effective_date AT TIME ZONE 'UTC')::date))
                   FROM ledger_core.moves WHERE ledger = %(l)s AND transaction_id <= %(t)s),
                 (SELECT count(*) FROM (
                    SELECT account FROM ledger_core.moves WHERE ledger = %(l)s AND transaction_id <= %(t)s
                    UNION SELECT data->>'targetId' FROM ledger_core.logs
                      WHERE ledger = %(l)s AND id <= %(c)s AND data->>'targetType' = 'ACCOUNT'
                    UNION SELECT jsonb_object_keys(data->'accountMetadata') FROM ledger_core.logs
                      WHERE ledger = %(l)s AND id <= %(c)s AND type = 'NEW_TRANSACTION') a)""",
            {"l": ledger, "t": last_tx, "c": cursor},
        ).fetchone()
        assert counts is not None
        transactions, moves, balances, days, accounts = (int(v) for v in counts)
        return cls(cursor, last_tx, last_hash, transactions, moves, balances, accounts, days)

    def balances_of(self, conn: psycopg.Connection, ledger: str,
                    accounts: Sequence[str] | None = None) -> dict[tuple[str, str], tuple[int, int]]:
        """(account, asset) -> (input, output) as of the cursor: of `accounts` only, when given."""
        rows = conn.execute(
            """SELECT DISTINCT ON (account, asset) account, asset, post_commit_input::text, post_commit_output::text
               FROM ledger_core.moves WHERE ledger = %s AND transaction_id <= %s
                 AND (%s::text[] IS NULL OR account = ANY(%s::text[]))
               ORDER BY account, asset, seq DESC""",
            (ledger, self.last_transaction_id, None if accounts is None else list(accounts),
             None if accounts is None else list(accounts)),
        ).fetchall()
        return {(a, s): (int(i), int(o)) for a, s, i, o in rows}
