"""Reads: transactions, accounts, balances (current and point-in-time), volumes, logs, and chain checks."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
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
from ledger_core.validation import address as check_address
from ledger_core.validation import address_pattern, asset, format_timestamp, ledger_name, text, timestamp

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
    ledger_name(ledger)
    if conn.execute("SELECT 1 FROM ledger_core.ledgers WHERE name = %s", (ledger,)).fetchone() is None:
        raise LedgerNotFound(ledger)


def get_transaction(conn: psycopg.Connection, ledger: str, transaction_id: int) -> Transaction:
    ledger_name(ledger)
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


def encode_cursor(last: int | str, kind: str = "before") -> str:
    return base64.urlsafe_b64encode(f"{kind}:{last}".encode()).decode()


def _decode_cursor(cursor: str, kind: str = "before") -> int:
    return int(decode_text_cursor(cursor, kind))


def decode_text_cursor(cursor: str, kind: str) -> str:
    try:
        found, _, value = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
        if found != kind or (kind == "before" and not value.isdigit()):
            raise ValueError(found)
        return text(value, field="cursor")
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
        params.append(text(reference, field="reference"))
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
    return Page(items, page_size, has_more, encode_cursor(items[-1].id) if has_more else None)


def get_account(conn: psycopg.Connection, ledger: str, account: str, *,
                effective_at: datetime | None = None) -> Account:
    """An account with its volumes per asset: now, or (`effective_at`) as of that effective time."""
    ledger_name(ledger)
    check_address(account)
    row = conn.execute(
        """SELECT metadata, first_usage, insertion_date, updated_at FROM ledger_core.accounts
           WHERE ledger = %s AND address = %s""",
        (ledger, account),
    ).fetchone()
    if row is None:
        require_ledger(conn, ledger)
        raise AccountNotFound(ledger, account)
    if effective_at is not None:
        volumes = {b.asset: b.volumes for b in balances(conn, ledger, address=account, effective_at=effective_at)}
        return Account(account, dict(row[0]), volumes, row[1], row[2], row[3])
    volumes = {
        a: Volumes(int(i), int(o))
        for a, i, o in conn.execute(
            """SELECT asset, input::text, output::text FROM ledger_core.volumes
               WHERE ledger = %s AND account = %s ORDER BY asset""",
            (ledger, account),
        )
    }
    return Account(account, dict(row[0]), volumes, row[1], row[2], row[3])


def stats(conn: psycopg.Connection, ledger: str) -> dict[str, int]:
    """How many accounts and transactions the ledger holds."""
    require_ledger(conn, ledger)
    row = conn.execute(
        """SELECT (SELECT count(*) FROM ledger_core.accounts WHERE ledger = %s),
                  (SELECT count(*) FROM ledger_core.transactions WHERE ledger = %s)""",
        (ledger, ledger),
    ).fetchone()
    assert row is not None
    return {"accounts": row[0], "transactions": row[1]}


def list_accounts(conn: psycopg.Connection, ledger: str, *, address: str | None = None, page_size: int = 15,
                  cursor: str | None = None) -> Page:
    """Accounts in address order, with their volumes; `address` is an address or a pattern (users:)."""
    require_ledger(conn, ledger)
    page_size = _page_size(page_size)
    clauses, params = ["ledger = %s"], [ledger]
    if address:
        clauses.append("address ~ %s")
        params.append(address_pattern(address))
    if cursor:
        clauses.append("address > %s")
        params.append(decode_text_cursor(cursor, "after"))
    rows = conn.execute(
        f"""SELECT address, metadata, first_usage, insertion_date, updated_at FROM ledger_core.accounts
            WHERE {' AND '.join(clauses)} ORDER BY address LIMIT %s""",
        [*params, page_size + 1],
    ).fetchall()
    rows, has_more = rows[:page_size], len(rows) > page_size
    volumes: dict[str, dict[str, Volumes]] = {r[0]: {} for r in rows}
    if rows:
        for account, asset_name, i, o in conn.execute(
            """SELECT account, asset, input::text, output::text FROM ledger_core.volumes
               WHERE ledger = %s AND account = ANY(%s) ORDER BY account, asset""",
            (ledger, list(volumes)),
        ):
            volumes[account][asset_name] = Volumes(int(i), int(o))
    items = [Account(r[0], dict(r[1]), volumes[r[0]], r[2], r[3], r[4]) for r in rows]
    return Page(items, page_size, has_more, encode_cursor(items[-1].address, "after") if has_more else None)


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
        # Whole days before T's (UTC) day from the daily volumes, then that day's moves up to T.
        where = " AND ".join(clauses)
        day_start = effective_at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        sql = f"""SELECT account, asset, sum(input)::text, sum(output)::text FROM (
                      SELECT account, asset, input, output FROM ledger_core.daily_volumes
                      WHERE {where} AND day < %s::date
                      UNION ALL
                      SELECT account, asset, CASE WHEN is_source THEN 0 ELSE amount END,
                             CASE WHEN is_source THEN amount ELSE 0 END
                      FROM ledger_core.moves WHERE {where} AND effective_date >= %s AND effective_date <= %s) v
                  GROUP BY account, asset ORDER BY account, asset"""
        params = [*params, day_start.date(), *params, day_start, effective_at]
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


def list_logs_page(conn: psycopg.Connection, ledger: str, *, page_size: int = 15, cursor: str | None = None) -> Page:
    """Logs newest first, a page at a time (Formance's log listing)."""
    require_ledger(conn, ledger)
    page_size = _page_size(page_size)
    before = _decode_cursor(cursor) if cursor else None
    rows = conn.execute(
        f"""SELECT {_LOG_COLUMNS} FROM ledger_core.logs WHERE ledger = %s AND (%s::bigint IS NULL OR id < %s)
            ORDER BY id DESC LIMIT %s""",
        (ledger, before, before, page_size + 1),
    ).fetchall()
    items = [_log_from_row(ledger, r) for r in rows[:page_size]]
    has_more = len(rows) > page_size
    return Page(items, page_size, has_more, encode_cursor(items[-1].id) if has_more else None)


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


def stored_log(row: Sequence[Any]) -> hashing.StoredLog:
    """A row of (id, type, date, idempotency_key, data::text, hash, hash_version) as the hash sees it."""
    log_id, log_type, date, key, data_text, hash_, version = row
    return hashing.StoredLog(log_id, log_type, format_timestamp(date), key, data_text, bytes(hash_), version)


_STORED_LOGS = """SELECT id, type, date, idempotency_key, data::text, hash, hash_version FROM ledger_core.logs
                  WHERE ledger = %s AND id > %s AND hash_version = ANY(%s) ORDER BY id LIMIT %s"""


def iter_stored_logs(conn: psycopg.Connection, ledger: str, *, after: int = 0, batch: int = 5000,
                     versions: Sequence[int] = (1, 2)) -> Iterator[hashing.StoredLog]:
    """Every log after `after` (of the given hash versions), in id order, as its hash covers it."""
    while True:
        rows = conn.execute(_STORED_LOGS, (ledger, after, list(versions), batch)).fetchall()
        yield from (stored_log(r) for r in rows)
        if len(rows) < batch:
            return
        after = rows[-1][0]


def verify_chain(conn: psycopg.Connection, ledger: str, *, in_database: bool = True) -> ChainReport:
    """Check every link of the chain; raise ChainBroken at the first log that does not match.

    `in_database` checks the version-2 links set-based in PostgreSQL (`ledger_core.log_canonical`), which is
    what `logs verify` runs; otherwise every link is recomputed here, by the code the pipelines run on what
    they export. Both must agree (tested). Runs in one REPEATABLE READ snapshot, so writers committing
    meanwhile cannot make it disagree with itself.
    """
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        require_ledger(conn, ledger)
        return verify_chain_in_snapshot(conn, ledger, in_database=in_database)


def verify_chain_in_snapshot(conn: psycopg.Connection, ledger: str, *, in_database: bool = True) -> ChainReport:
    """verify_chain inside the caller's transaction (which should be REPEATABLE READ)."""
    broken = _broken_in_database(conn, ledger) if in_database else _broken_in_python(conn, ledger)
    if broken is not None:
        raise ChainBroken(ledger, broken.log_id, broken.reason)
    count, last_id, last_hash = conn.execute(
        """SELECT count(*), coalesce(max(id), 0),
                  (SELECT hash FROM ledger_core.logs WHERE ledger = %(l)s ORDER BY id DESC LIMIT 1)
           FROM ledger_core.logs WHERE ledger = %(l)s""", {"l": ledger}).fetchone() or (0, 0, None)
    head = conn.execute("SELECT last_log_id, last_log_hash FROM ledger_core.ledgers WHERE name = %s",
                        (ledger,)).fetchone()
    if head and head[0] != count:
        raise ChainBroken(ledger, count + 1, f"the ledger counts {head[0]} logs, the log table has {count}")
    if head and (bytes(head[1]) if head[1] is not None else None) != (bytes(last_hash) if last_hash else None):
        raise ChainBroken(ledger, last_id, "the ledger's head hash differs from its last log's hash")
    return ChainReport(ledger, count, last_id, bytes(last_hash).hex() if last_hash else None)


def _broken_in_python(conn: psycopg.Connection, ledger: str) -> hashing.BrokenLink | None:
    return hashing.first_broken_link(ledger, iter_stored_logs(conn, ledger), previous=None, previous_id=0)


def _broken_in_database(conn: psycopg.Connection, ledger: str) -> hashing.BrokenLink | None:
    row = conn.execute(
        """WITH l AS (
               SELECT id, hash, hash_version, lag(id, 1, 0::bigint) OVER w AS prev_id, lag(hash) OVER w AS prev_hash,
                      lag(hash_version, 1, 1::smallint) OVER w AS prev_version,
                      CASE WHEN hash_version = 2 THEN sha256(coalesce(lag(hash) OVER w, ''::bytea)
                           || ledger_core.log_canonical(ledger, id, type, date, idempotency_key, data)) END AS computed
               FROM ledger_core.logs WHERE ledger = %s WINDOW w AS (ORDER BY id))
           SELECT id, prev_id, hash_version, prev_version, encode(hash, 'hex'), encode(computed, 'hex') FROM l
           WHERE id <> prev_id + 1 OR hash_version < prev_version OR hash_version NOT IN (1, 2)
              OR (hash_version = 2 AND hash <> computed)
           ORDER BY id LIMIT 1""",
        (ledger,),
    ).fetchone()
    found = None
    if row is not None:
        log_id, prev_id, version, prev_version, stored, computed = row
        if log_id != prev_id + 1:
            found = hashing.BrokenLink(prev_id + 1, f"log ids jump from {prev_id} to {log_id}")
        elif version < prev_version or version not in (1, 2):
            found = hashing.BrokenLink(log_id, f"hash version {version} after version {prev_version}")
        else:
            found = hashing.BrokenLink(log_id, f"stored hash {stored[:16]}… recomputed {computed[:16]}…")
    # Version-1 links (logs written before migration 3) have no SQL form: recompute them here.
    old = hashing.first_broken_link(ledger, iter_stored_logs(conn, ledger, versions=(1,)), previous=None,
                                    previous_id=0)
    if old is not None and (found is None or old.log_id < found.log_id):
        return old
    return found
