"""Reads: transactions, accounts, balances (current and point-in-time), volumes, logs, and chain checks."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from ledger_core import hashing
from ledger_core.errors import (
    AccountNotFound,
    ChainBroken,
    LedgerNotFound,
    TransactionNotFound,
    ValidationError,
)
from ledger_core.models import (
    Account,
    Balance,
    Log,
    LogType,
    Posting,
    Transaction,
    Volumes,
    volumes_from_json,
)
from ledger_core.validation import address_pattern, asset, timestamp

MAX_PAGE_SIZE = 1000


def transaction_from_json(data: Mapping[str, Any]) -> Transaction:
    return Transaction(
        id=int(data["id"]),
        postings=tuple(Posting(p["source"], p["destination"], int(p["amount"]), p["asset"])
                       for p in data["postings"]),
        metadata=dict(data.get("metadata") or {}),
        timestamp=timestamp(data["timestamp"]),
        inserted_at=timestamp(data["insertedAt"]),
        reference=data.get("reference"),
        reverted_at=timestamp(data["revertedAt"]) if data.get("revertedAt") else None,
        pre_commit_volumes=volumes_from_json(data.get("preCommitVolumes") or {}),
        post_commit_volumes=volumes_from_json(data.get("postCommitVolumes") or {}),
    )


_TX_COLUMNS = """id, timestamp, inserted_at, reference, metadata, postings, pre_commit_volumes,
                 post_commit_volumes, reverted_at"""


def transaction_from_row(row: Sequence[Any]) -> Transaction:
    tx_id, ts, inserted_at, reference, metadata, postings, pre, post, reverted_at = row[:9]
    return Transaction(
        id=tx_id,
        postings=tuple(Posting(p["source"], p["destination"], int(p["amount"]), p["asset"]) for p in postings),
        metadata=dict(metadata),
        timestamp=ts,
        inserted_at=inserted_at,
        reference=reference,
        reverted_at=reverted_at,
        pre_commit_volumes=volumes_from_json(pre),
        post_commit_volumes=volumes_from_json(post),
    )


def require_ledger(conn: psycopg.Connection, ledger: str) -> None:
    if conn.execute("SELECT 1 FROM ledger_core.ledgers WHERE name = %s", (ledger,)).fetchone() is None:
        raise LedgerNotFound(ledger)


def get_transaction(conn: psycopg.Connection, ledger: str, transaction_id: int) -> Transaction:
    row = conn.execute(
        f"SELECT {_TX_COLUMNS} FROM ledger_core.transactions WHERE ledger = %s AND id = %s",
        (ledger, transaction_id),
    ).fetchone()
    if row is None:
        require_ledger(conn, ledger)
        raise TransactionNotFound(ledger, transaction_id)
    return transaction_from_row(row)


@dataclass(frozen=True)
class Page:
    """One page of a listing, newest first; `next` is the opaque cursor of the following page."""

    data: list[Any]
    page_size: int
    has_more: bool
    next: str | None

    def to_json(self) -> dict[str, Any]:
        return {"cursor": {"pageSize": self.page_size, "hasMore": self.has_more, "next": self.next,
                           "data": [item.to_json() for item in self.data]}}


def _encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"before:{last_id}".encode()).decode()


def _decode_cursor(cursor: str) -> int:
    try:
        kind, _, value = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
        if kind != "before":
            raise ValueError(kind)
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationError(f"invalid cursor {cursor!r}", field="cursor") from None


def _page_size(page_size: int) -> int:
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValidationError(f"must be between 1 and {MAX_PAGE_SIZE}", field="page size")
    return page_size


def list_transactions(
    conn: psycopg.Connection, ledger: str, *, account: str | None = None, reference: str | None = None,
    start: datetime | None = None, end: datetime | None = None, page_size: int = 15, cursor: str | None = None,
) -> Page:
    """Transactions newest first; `start` inclusive and `end` exclusive bound the effective timestamp."""
    require_ledger(conn, ledger)
    page_size = _page_size(page_size)
    clauses, params = ["t.ledger = %s"], [ledger]
    if account:
        clauses.append("""t.id IN (SELECT m.transaction_id FROM ledger_core.moves m
                                   WHERE m.ledger = %s AND m.account ~ %s)""")
        params += [ledger, address_pattern(account)]
    if reference:
        clauses.append("t.reference = %s")
        params.append(reference)
    if start:
        clauses.append("t.timestamp >= %s")
        params.append(start)
    if end:
        clauses.append("t.timestamp < %s")
        params.append(end)
    if cursor:
        clauses.append("t.id < %s")
        params.append(_decode_cursor(cursor))
    rows = conn.execute(
        f"""SELECT {_TX_COLUMNS} FROM ledger_core.transactions t WHERE {' AND '.join(clauses)}
            ORDER BY t.id DESC LIMIT %s""",
        [*params, page_size + 1],
    ).fetchall()
    items = [transaction_from_row(r) for r in rows[:page_size]]
    has_more = len(rows) > page_size
    return Page(items, page_size, has_more, _encode_cursor(items[-1].id) if has_more else None)


def get_account(conn: psycopg.Connection, ledger: str, address: str) -> Account:
    row = conn.execute(
        """SELECT metadata, first_usage, insertion_date, updated_at FROM ledger_core.accounts
           WHERE ledger = %s AND address = %s""",
        (ledger, address),
    ).fetchone()
    if row is None:
        require_ledger(conn, ledger)
        raise AccountNotFound(ledger, address)
    volumes = {
        a: Volumes(int(i), int(o))
        for a, i, o in conn.execute(
            """SELECT asset, input::text, output::text FROM ledger_core.volumes
               WHERE ledger = %s AND account = %s ORDER BY asset""",
            (ledger, address),
        )
    }
    return Account(address, dict(row[0]), volumes, row[1], row[2], row[3])


def balances(
    conn: psycopg.Connection, ledger: str, *, address: str | None = None, asset_filter: str | None = None,
    effective_at: datetime | None = None, inserted_at: datetime | None = None,
) -> list[Balance]:
    """Per account and asset volumes: now, as of an effective time, or as of an insertion time.

    As of effective time T counts every transaction whose `timestamp` is <= T, including ones recorded
    later (backdated); as of insertion time T counts what the ledger had recorded by T.
    """
    require_ledger(conn, ledger)
    if effective_at and inserted_at:
        raise ValidationError("give either an effective time or an insertion time, not both", field="at")
    clauses, params = ["ledger = %s"], [ledger]
    if address:
        clauses.append("account ~ %s")
        params.append(address_pattern(address))
    if asset_filter:
        clauses.append("asset = %s")
        params.append(asset(asset_filter))
    if effective_at is not None:
        clauses.append("effective_date <= %s")
        params.append(effective_at)
        sql = f"""SELECT DISTINCT ON (account, asset) account, asset, post_commit_effective_input::text,
                         post_commit_effective_output::text
                  FROM ledger_core.moves WHERE {' AND '.join(clauses)}
                  ORDER BY account, asset, effective_date DESC, seq DESC"""
    elif inserted_at is not None:
        clauses.append("insertion_date <= %s")
        params.append(inserted_at)
        sql = f"""SELECT DISTINCT ON (account, asset) account, asset, post_commit_input::text,
                         post_commit_output::text
                  FROM ledger_core.moves WHERE {' AND '.join(clauses)}
                  ORDER BY account, asset, seq DESC"""
    else:
        sql = f"""SELECT account, asset, input::text, output::text FROM ledger_core.volumes
                  WHERE {' AND '.join(clauses)} ORDER BY account, asset"""
    return [Balance(a, s, Volumes(int(i), int(o))) for a, s, i, o in conn.execute(sql, params)]


def aggregate(balance_rows: Sequence[Balance]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for row in balance_rows:
        totals[row.asset] = totals.get(row.asset, 0) + row.volumes.balance
    return dict(sorted(totals.items()))


def volumes_between(
    conn: psycopg.Connection, ledger: str, *, start: datetime | None = None, end: datetime | None = None,
    address: str | None = None, by_insertion: bool = False,
) -> list[Balance]:
    """What flowed in and out of each account per asset in [start, end), by effective or insertion time."""
    require_ledger(conn, ledger)
    column = "insertion_date" if by_insertion else "effective_date"
    clauses, params = ["ledger = %s"], [ledger]
    if start:
        clauses.append(f"{column} >= %s")
        params.append(start)
    if end:
        clauses.append(f"{column} < %s")
        params.append(end)
    if address:
        clauses.append("account ~ %s")
        params.append(address_pattern(address))
    rows = conn.execute(
        f"""SELECT account, asset,
                   coalesce(sum(amount) FILTER (WHERE NOT is_source), 0)::text,
                   coalesce(sum(amount) FILTER (WHERE is_source), 0)::text
            FROM ledger_core.moves WHERE {' AND '.join(clauses)}
            GROUP BY account, asset ORDER BY account, asset""",
        params,
    )
    return [Balance(a, s, Volumes(int(i), int(o))) for a, s, i, o in rows]


_LOG_COLUMNS = "id, type, date, data, hash, idempotency_key"


def _log_from_row(ledger: str, row: Sequence[Any]) -> Log:
    return Log(ledger, row[0], LogType(row[1]), row[2], row[3], bytes(row[4]), row[5])


def list_logs(conn: psycopg.Connection, ledger: str, *, after: int = 0, limit: int = 100) -> list[Log]:
    require_ledger(conn, ledger)
    if not 1 <= limit <= 100_000:
        raise ValidationError("must be between 1 and 100000", field="limit")
    rows = conn.execute(
        f"SELECT {_LOG_COLUMNS} FROM ledger_core.logs WHERE ledger = %s AND id > %s ORDER BY id LIMIT %s",
        (ledger, after, limit),
    ).fetchall()
    return [_log_from_row(ledger, r) for r in rows]


def iter_logs(conn: psycopg.Connection, ledger: str, *, after: int = 0, batch: int = 5000) -> Iterator[Log]:
    """Every log after `after` in id order, fetched in batches by key (no long-lived cursor)."""
    while True:
        page = list_logs(conn, ledger, after=after, limit=batch)
        yield from page
        if len(page) < batch:
            return
        after = page[-1].id


@dataclass(frozen=True)
class ChainReport:
    ledger: str
    logs: int
    last_log_id: int
    last_hash: str | None

    def to_json(self) -> dict[str, Any]:
        return {"ledger": self.ledger, "valid": True, "logs": self.logs, "lastLogID": self.last_log_id,
                "lastHash": self.last_hash}


def verify_chain(conn: psycopg.Connection, ledger: str) -> ChainReport:
    """Recompute every hash from the first log; raise ChainBroken at the first log that does not match.

    Runs in one REPEATABLE READ snapshot so writers committing meanwhile cannot make it disagree with itself.
    """
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        require_ledger(conn, ledger)
        return _verify_snapshot(conn, ledger)


def _verify_snapshot(conn: psycopg.Connection, ledger: str) -> ChainReport:
    previous: bytes | None = None
    expected_id = 1
    count = 0
    for log in iter_logs(conn, ledger):
        if log.id != expected_id:
            raise ChainBroken(ledger, expected_id, f"log ids jump from {expected_id - 1} to {log.id}")
        canonical = hashing.canonical_bytes(
            ledger=ledger, log_id=log.id, log_type=str(log.type), date=log.date, data=log.data,
            idempotency_key=log.idempotency_key,
        )
        computed = hashing.chain_hash(previous, canonical)
        if computed != log.hash:
            raise ChainBroken(ledger, log.id, f"stored hash {log.hash.hex()[:16]}… recomputed "
                                              f"{computed.hex()[:16]}…")
        previous = log.hash
        expected_id += 1
        count += 1
    row = conn.execute("SELECT last_log_id FROM ledger_core.ledgers WHERE name = %s", (ledger,)).fetchone()
    if row and row[0] != count:
        raise ChainBroken(ledger, count + 1, f"the ledger counts {row[0]} logs, the log table has {count}")
    return ChainReport(ledger, count, expected_id - 1, previous.hex() if previous else None)
