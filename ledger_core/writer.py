"""The one write path: every change to a ledger goes through `write()`.

A call applies a list of commands (one for a single write, thousands for a bulk) in one database
transaction, all or nothing, and appends one log entry per command in that same transaction.

Locking, in this order, so that no two writers can wait on each other in a cycle:
1. the (account, asset) volume rows the commands touch, in sorted order (rows are created first if new);
2. the ledger's row, which serialises the log tail: log ids are allocated, hashed and committed one
   writer at a time, so per ledger they are contiguous and become visible in id order. A reader that
   takes `id > cursor` therefore never skips a log that commits later (the pipelines rely on this).
Then everything is computed in memory and written with a handful of set-based statements, so a bulk of
thousands of transactions costs one commit and a constant number of round trips: four. BEGIN; the locks and
the reads that decide the batch, sent together in psycopg's pipeline mode; every row written (one JSON
document per table: one `json.dumps`, where COPY rows and psycopg's arrays cost Python per value) with the
state updates, in another pipeline; COMMIT. (BEGIN and COMMIT inside an enclosing pipeline would save two
round trips, but under load the round trips changed little, and a database error must then cross two
pipelines' closing; see `_pipelined`.)

Deadlocks and serialization failures (which the order above makes rare) are retried with backoff and
never reach the caller.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from ledger_core import hashing
from ledger_core.errors import (
    AlreadyReverted,
    IdempotencyConflict,
    InsufficientFunds,
    LedgerError,
    LedgerNotFound,
    ReferenceConflict,
    TransactionNotFound,
    VolumesOutOfRange,
)
from ledger_core.export import LOGS_CHANNEL
from ledger_core.models import (
    Log,
    LogType,
    Posting,
    TargetType,
    Transaction,
    Volumes,
)
from ledger_core.reads import transaction_from_json, transaction_from_row
from ledger_core.requests import (
    OVERDRAFT_KEY,
    Command,
    DeleteMetadata,
    NewTransaction,
    PostingRequest,
    RevertTransaction,
    SetMetadata,
    overdraft_rule,
)
from ledger_core.validation import MAX_AMOUNT, MONEY_DIGITS, WORLD, format_timestamp, ledger_name

REVERTS_METADATA_KEY = "com.formance.spec/state/reverts"
MAX_ATTEMPTS = 20


@dataclass(frozen=True)
class WriteResult:
    """What one command produced: its log, the transaction it created (if any), and whether it was a replay."""

    log: Log
    transaction: Transaction | None
    replayed: bool = False

    def to_json(self) -> dict[str, Any]:
        if self.transaction is not None:
            return self.transaction.to_json()
        return {"log": self.log.to_json()}


def write(
    conn: psycopg.Connection, ledger: str, commands: Sequence[Command], *, dry_run: bool = False
) -> list[WriteResult]:
    """Apply `commands` atomically and return one result per command.

    With `dry_run`, everything is validated and computed (ids, volumes, hashes) and then rolled back.
    """
    ledger_name(ledger)
    if not commands:
        return []
    for attempt in range(MAX_ATTEMPTS):
        try:
            with conn.transaction():
                results = _Batch(conn, ledger, commands).run()
                if dry_run:
                    raise psycopg.Rollback()  # swallowed by the block after rolling back
            return results
        except pg_errors.ForeignKeyViolation:
            raise LedgerNotFound(ledger) from None  # every reference is to the ledger: a volumes row refused
        except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure):
            if attempt == MAX_ATTEMPTS - 1:
                raise
            time.sleep(random.uniform(0, 0.005 * 2 ** min(attempt, 6)))
        except pg_errors.UniqueViolation as exc:
            # Backstops for races the ledger lock already prevents; translated, never shown raw.
            constraint = exc.diag.constraint_name or ""
            if constraint == "transactions_reference":
                raise ReferenceConflict("(concurrent write)") from None
            if constraint == "logs_idempotency_key":
                raise IdempotencyConflict("(concurrent write)") from None
            raise
    raise AssertionError("unreachable")


@dataclass
class _AccountState:
    metadata: dict[str, str]
    first_usage: datetime | None
    insertion_date: datetime | None
    dirty: bool = False


@dataclass
class _VolumeState:
    input: int
    output: int

    @property
    def balance(self) -> int:
        return self.input - self.output


@dataclass
class _TransactionRow:
    transaction: Transaction
    metadata: dict[str, str]
    reverted_at: datetime | None
    log_id: int
    logged: dict[str, Any] = field(default_factory=dict)  # a new transaction's JSON as its log carries it


@dataclass
class _Batch:
    conn: psycopg.Connection
    ledger: str
    commands: Sequence[Command]
    volumes: dict[tuple[str, str], _VolumeState] = field(default_factory=dict)
    accounts: dict[str, _AccountState] = field(default_factory=dict)
    originals: dict[int, _TransactionRow] = field(default_factory=dict)  # existing txs this batch touches
    new_transactions: dict[int, _TransactionRow] = field(default_factory=dict)
    moves: list[dict[str, Any]] = field(default_factory=list)
    daily: dict[tuple[str, str, date], list[int]] = field(default_factory=dict)  # (account, asset, day) -> in, out
    logs: list[dict[str, Any]] = field(default_factory=list)
    results: list[WriteResult] = field(default_factory=list)

    # -- phases -----------------------------------------------------------------------------------

    def run(self) -> list[WriteResult]:
        self._load_originals()
        # Lock what the batch touches, then read what decides it: sent together, in this order, one round trip.
        pairs = sorted(self._touched_pairs())
        with _pipelined(self.conn):
            volumes = self._lock_volumes(pairs)
            ledger = self._lock_ledger()
            conflicts = self._check_conflicts()
            accounts = self._load_accounts(pairs)
        self._read_locked(volumes, ledger, conflicts, accounts)
        for index, command in enumerate(self.commands):
            try:
                self._apply(index, command)
            except LedgerError as refused:
                refused.command_index = index
                raise
        self._flush()
        return self.results

    def _load_originals(self) -> None:
        ids = {c.transaction_id for c in self.commands if isinstance(c, RevertTransaction)}
        ids |= {c.target_id for c in self.commands
                if isinstance(c, SetMetadata | DeleteMetadata) and c.target_type is TargetType.TRANSACTION
                and isinstance(c.target_id, int)}
        if not ids:
            return
        rows = self.conn.execute(
            """SELECT id, timestamp, inserted_at, reference, metadata, postings, pre_commit_volumes,
                      post_commit_volumes, reverted_at, log_id
               FROM ledger_core.transactions WHERE ledger = %s AND id = ANY(%s)""",
            (self.ledger, sorted(ids)),
        ).fetchall()
        for row in rows:
            tx = transaction_from_row(row)
            self.originals[tx.id] = _TransactionRow(tx, dict(tx.metadata), tx.reverted_at, row[9])

    def _touched_pairs(self) -> set[tuple[str, str]]:
        pairs: set[tuple[str, str]] = set()
        for command in self.commands:
            postings: Iterable[Posting] = ()
            if isinstance(command, NewTransaction):
                postings = (p.posting for p in command.postings)
            elif isinstance(command, RevertTransaction) and command.transaction_id in self.originals:
                postings = self.originals[command.transaction_id].transaction.postings
            for p in postings:
                pairs.add((p.source, p.asset))
                pairs.add((p.destination, p.asset))
        return pairs

    def _lock_volumes(self, pairs: list[tuple[str, str]]) -> psycopg.Cursor | None:
        if not pairs:
            return None
        accounts = [a for a, _ in pairs]
        assets = [s for _, s in pairs]
        self.conn.execute(
            """INSERT INTO ledger_core.volumes (ledger, account, asset)
               SELECT %s, a, s FROM unnest(%s::text[], %s::text[]) AS u(a, s) ORDER BY a, s
               ON CONFLICT DO NOTHING""",
            (self.ledger, accounts, assets),
        )
        return self.conn.execute(
            """SELECT v.account, v.asset, v.input::text, v.output::text
               FROM ledger_core.volumes v JOIN unnest(%s::text[], %s::text[]) AS u(a, s)
                 ON v.account = u.a AND v.asset = u.s
               WHERE v.ledger = %s ORDER BY v.account, v.asset FOR UPDATE OF v""",
            (accounts, assets, self.ledger),
        )

    def _lock_ledger(self) -> psycopg.Cursor:
        return self.conn.execute(
            """SELECT last_log_id, last_log_hash, last_transaction_id,
                      greatest(clock_timestamp(), last_log_date)
               FROM ledger_core.ledgers WHERE name = %s FOR NO KEY UPDATE""",
            (self.ledger,),
        )

    def _check_conflicts(self) -> tuple[psycopg.Cursor | None, psycopg.Cursor | None, psycopg.Cursor | None]:
        """Ask, under the ledger lock, what decides idempotency, references and reverts."""
        keys = sorted({c.idempotency_key for c in self.commands if c.idempotency_key})
        references = sorted({c.reference for c in self.commands if isinstance(c, NewTransaction) and c.reference})
        return (
            self.conn.execute(
                """SELECT idempotency_key, idempotency_hash, id, type, date, data, hash
                   FROM ledger_core.logs WHERE ledger = %s AND idempotency_key = ANY(%s)""",
                (self.ledger, keys),
            ) if keys else None,
            self.conn.execute(
                "SELECT reference, id FROM ledger_core.transactions WHERE ledger = %s AND reference = ANY(%s)",
                (self.ledger, references),
            ) if references else None,
            # Re-read what may have changed while we waited for the lock.
            self.conn.execute(
                "SELECT id, reverted_at, metadata FROM ledger_core.transactions WHERE ledger = %s AND id = ANY(%s)",
                (self.ledger, sorted(self.originals)),
            ) if self.originals else None,
        )

    def _load_accounts(self, pairs: list[tuple[str, str]]) -> psycopg.Cursor | None:
        addresses: set[str] = {a for a, _ in pairs}
        for command in self.commands:
            if isinstance(command, NewTransaction):
                addresses |= set(command.account_metadata)
            elif isinstance(command, SetMetadata | DeleteMetadata) and command.target_type is TargetType.ACCOUNT:
                addresses.add(str(command.target_id))
        if not addresses:
            return None
        return self.conn.execute(
            """SELECT address, metadata, first_usage, insertion_date FROM ledger_core.accounts
               WHERE ledger = %s AND address = ANY(%s)""",
            (self.ledger, sorted(addresses)),
        )

    def _read_locked(self, volumes: psycopg.Cursor | None, ledger: psycopg.Cursor,
                     conflicts: tuple[psycopg.Cursor | None, ...], accounts: psycopg.Cursor | None) -> None:
        for account, asset, input_, output in volumes.fetchall() if volumes else ():
            self.volumes[(account, asset)] = _VolumeState(int(input_), int(output))
        row = ledger.fetchone()
        if row is None:
            raise LedgerNotFound(self.ledger)
        self.last_log_id: int = row[0]
        self.last_hash: bytes | None = bytes(row[1]) if row[1] is not None else None
        self.last_transaction_id: int = row[2]
        self.date: datetime = row[3]
        by_key, by_reference, originals = conflicts
        self.previous_by_key: dict[str, tuple[bytes, Log]] = {}
        for key, fingerprint, log_id, log_type, date_, data, hash_ in by_key.fetchall() if by_key else ():
            log = Log(self.ledger, log_id, LogType(log_type), date_, data, bytes(hash_), key)
            self.previous_by_key[key] = (bytes(fingerprint), log)
        self.taken_references: dict[str, int] = dict(by_reference.fetchall()) if by_reference else {}
        for tx_id, reverted_at, metadata in originals.fetchall() if originals else ():
            self.originals[tx_id].reverted_at = reverted_at
            self.originals[tx_id].metadata = dict(metadata)
        for address, metadata, first_usage, insertion_date in accounts.fetchall() if accounts else ():
            self.accounts[address] = _AccountState(dict(metadata), first_usage, insertion_date)

    # -- applying one command -------------------------------------------------------------------------

    def _apply(self, index: int, command: Command) -> None:
        fingerprint = hashing.request_hash(command.fingerprint())
        key = command.idempotency_key
        if key and key in self.previous_by_key:
            previous_fingerprint, log = self.previous_by_key[key]
            if previous_fingerprint != fingerprint:
                raise IdempotencyConflict(key)
            self.results.append(WriteResult(log, _transaction_of(log), replayed=True))
            return
        if isinstance(command, NewTransaction):
            log_type, data, tx = self._new_transaction(index, command)
        elif isinstance(command, RevertTransaction):
            log_type, data, tx = self._revert(index, command)
        elif isinstance(command, SetMetadata):
            (log_type, data), tx = self._set_metadata(command), None
        else:
            (log_type, data), tx = self._delete_metadata(command), None
        log = self._append_log(log_type, data, key, fingerprint)
        if key:
            self.previous_by_key[key] = (fingerprint, log)
        self.results.append(WriteResult(log, tx))

    def _append_log(self, log_type: LogType, data: dict[str, Any], key: str | None, fingerprint: bytes) -> Log:
        self.last_log_id += 1
        data_text = hashing.jsonb_text(data)  # stored as is: the text jsonb will print is the text hashed
        canonical = hashing.canonical(
            ledger=self.ledger, log_id=self.last_log_id, log_type=str(log_type), date=format_timestamp(self.date),
            idempotency_key=key, data_text=data_text,
        )
        self.last_hash = hashing.chain_hash(self.last_hash, canonical)
        self.logs.append({"id": self.last_log_id, "type": str(log_type), "idempotency_key": key,
                          "idempotency_hash": fingerprint if key else None, "data": data_text,
                          "hash": self.last_hash})
        return Log(self.ledger, self.last_log_id, log_type, self.date, data, self.last_hash, key)

    def _touch_account(self, address: str, effective: datetime | None) -> _AccountState:
        state = self.accounts.get(address)
        if state is None:
            state = self.accounts[address] = _AccountState({}, effective, self.date)
        elif effective is not None and (state.first_usage is None or effective < state.first_usage):
            state.first_usage = effective
        state.dirty = True
        return state

    def _overdraft_floor(self, index: int, request: PostingRequest, force: bool) -> int | None:
        """The lowest balance the source may reach with this posting; None means unbounded."""
        source, asset = request.posting.source, request.posting.asset
        if force or source == WORLD or request.allow_overdraft:
            return None
        if request.overdraft_limit is not None:
            return -request.overdraft_limit
        metadata = self.accounts[source].metadata if source in self.accounts else {}
        rule = metadata.get(f"{OVERDRAFT_KEY}/{asset}", metadata.get(OVERDRAFT_KEY))
        if rule is None:
            return 0
        bound = overdraft_rule(rule, field=f"account {source} metadata {OVERDRAFT_KEY}")
        return None if bound is None else -bound

    def _post(self, index: int, transaction_id: int, timestamp: datetime,
              postings: Sequence[PostingRequest], force: bool) -> tuple[dict, dict]:
        """Apply postings in order, checking each source's balance; return pre and post volumes."""
        touched: list[tuple[str, str]] = []
        for request in postings:
            p = request.posting
            for pair in ((p.source, p.asset), (p.destination, p.asset)):
                if pair not in touched:
                    touched.append(pair)
        pre: dict[str, dict[str, Volumes]] = {}
        for account, asset in touched:
            state = self.volumes[(account, asset)]
            pre.setdefault(account, {})[asset] = Volumes(state.input, state.output)
        for posting_index, request in enumerate(postings):
            p = request.posting
            source = self.volumes[(p.source, p.asset)]
            floor = self._overdraft_floor(index, request, force)
            if floor is not None and source.balance - p.amount < floor:
                raise InsufficientFunds(p.source, p.asset, source.balance, p.amount,
                                        transaction_index=index + 1 if len(self.commands) > 1 else 0)
            source.output += p.amount
            if source.output > MAX_AMOUNT:
                raise VolumesOutOfRange(p.source, p.asset, "output", MONEY_DIGITS)
            self._move(transaction_id, posting_index, p.source, p.asset, p.amount, True, timestamp, source)
            destination = self.volumes[(p.destination, p.asset)]
            destination.input += p.amount
            if destination.input > MAX_AMOUNT:
                raise VolumesOutOfRange(p.destination, p.asset, "input", MONEY_DIGITS)
            self._move(transaction_id, posting_index, p.destination, p.asset, p.amount, False, timestamp,
                       destination)
        post: dict[str, dict[str, Volumes]] = {}
        for account, asset in touched:
            state = self.volumes[(account, asset)]
            post.setdefault(account, {})[asset] = Volumes(state.input, state.output)
        for account, _ in touched:
            self._touch_account(account, timestamp)
        return pre, post

    def _move(self, transaction_id: int, posting_index: int, account: str, asset: str, amount: int,
              is_source: bool, effective: datetime, state: _VolumeState) -> None:
        self.moves.append({
            "transaction_id": transaction_id, "posting_index": posting_index, "account": account, "asset": asset,
            "amount": amount, "is_source": is_source, "effective_date": effective, "post_commit_input": state.input,
            "post_commit_output": state.output,
        })
        # Effective-order history is kept per UTC day: a backdated move changes one day's row, never the moves
        # after it (see migration 4 and reads.balances).
        day = self.daily.setdefault((account, asset, effective.astimezone(UTC).date()), [0, 0])
        day[1 if is_source else 0] += amount

    def _new_transaction(self, index: int, command: NewTransaction) -> tuple[LogType, dict, Transaction]:
        if command.reference and command.reference in self.taken_references:
            raise ReferenceConflict(command.reference, self.taken_references[command.reference])
        self.last_transaction_id += 1
        tx_id = self.last_transaction_id
        if command.reference:
            self.taken_references[command.reference] = tx_id
        timestamp = command.timestamp or self.date
        pre, post = self._post(index, tx_id, timestamp, command.postings, command.force)
        for address, metadata in command.account_metadata.items():
            self._touch_account(address, None).metadata.update(metadata)
        tx = Transaction(
            id=tx_id, postings=tuple(r.posting for r in command.postings), metadata=dict(command.metadata),
            timestamp=timestamp, inserted_at=self.date, reference=command.reference,
            pre_commit_volumes=pre, post_commit_volumes=post,
        )
        logged = tx.to_json()
        self.new_transactions[tx_id] = _TransactionRow(tx, dict(command.metadata), None, self.last_log_id + 1,
                                                       logged)
        data = {"transaction": logged,
                "accountMetadata": {a: dict(m) for a, m in command.account_metadata.items()}}
        return LogType.NEW_TRANSACTION, data, tx

    def _find_transaction(self, tx_id: int) -> _TransactionRow:
        row = self.new_transactions.get(tx_id) or self.originals.get(tx_id)
        if row is None:
            raise TransactionNotFound(self.ledger, tx_id)
        return row

    def _revert(self, index: int, command: RevertTransaction) -> tuple[LogType, dict, Transaction]:
        original = self._find_transaction(command.transaction_id)
        if original.reverted_at is not None:
            raise AlreadyReverted(command.transaction_id)
        reversed_postings = tuple(
            PostingRequest(Posting(p.destination, p.source, p.amount, p.asset))
            for p in reversed(original.transaction.postings)
        )
        self.last_transaction_id += 1
        tx_id = self.last_transaction_id
        timestamp = original.transaction.timestamp if command.at_effective_date else self.date
        pre, post = self._post(index, tx_id, timestamp, reversed_postings, command.force)
        metadata = {REVERTS_METADATA_KEY: str(command.transaction_id)}
        tx = Transaction(id=tx_id, postings=tuple(r.posting for r in reversed_postings), metadata=metadata,
                         timestamp=timestamp, inserted_at=self.date, pre_commit_volumes=pre,
                         post_commit_volumes=post)
        logged = tx.to_json()
        self.new_transactions[tx_id] = _TransactionRow(tx, dict(metadata), None, self.last_log_id + 1, logged)
        original.reverted_at = self.date
        original.log_id = self.last_log_id + 1
        reverted = _current(original)
        data = {"revertedTransaction": reverted.to_json(), "transaction": logged}
        return LogType.REVERTED_TRANSACTION, data, tx

    def _metadata_target(self, command: SetMetadata | DeleteMetadata) -> dict[str, str]:
        if command.target_type is TargetType.ACCOUNT:
            return self._touch_account(str(command.target_id), None).metadata
        row = self._find_transaction(int(command.target_id))
        row.log_id = self.last_log_id + 1
        return row.metadata

    def _set_metadata(self, command: SetMetadata) -> tuple[LogType, dict]:
        self._metadata_target(command).update(command.metadata)
        return LogType.SET_METADATA, {"targetType": str(command.target_type), "targetId": command.target_id,
                                      "metadata": dict(command.metadata)}

    def _delete_metadata(self, command: DeleteMetadata) -> tuple[LogType, dict]:
        self._metadata_target(command).pop(command.key, None)
        return LogType.DELETE_METADATA, {"targetType": str(command.target_type), "targetId": command.target_id,
                                         "key": command.key}

    # -- writing --------------------------------------------------------------------------------------

    def _flush(self) -> None:
        """Write the batch: statements that need no answer but success, sent together in one pipeline. Rows go
        as one JSON document per table (exact: numbers keep their digits)."""
        with _pipelined(self.conn):
            self._write_rows()
            self._flush_state()

    def _write_rows(self) -> None:
        conn = self.conn
        if self.moves:
            conn.execute(_INSERT_MOVES, (self.ledger, self.date, _json(self.moves)))
        if self.new_transactions:
            conn.execute(_INSERT_TRANSACTIONS, (self.ledger, _json([{
                "id": row.transaction.id, "timestamp": row.transaction.timestamp,
                "inserted_at": row.transaction.inserted_at, "reference": row.transaction.reference,
                "metadata": row.metadata, "postings": row.logged["postings"],
                "pre_commit_volumes": row.logged["preCommitVolumes"],
                "post_commit_volumes": row.logged["postCommitVolumes"], "reverted_at": row.reverted_at,
                "log_id": row.log_id,
            } for row in self.new_transactions.values()])))
        changed = [row for row in self.originals.values()]
        if changed:
            conn.execute(
                """UPDATE ledger_core.transactions t
                   SET metadata = u.metadata::jsonb, reverted_at = u.reverted_at, log_id = u.log_id
                   FROM unnest(%s::bigint[], %s::text[], %s::timestamptz[], %s::bigint[])
                        AS u(id, metadata, reverted_at, log_id)
                   WHERE t.ledger = %s AND t.id = u.id""",
                ([r.transaction.id for r in changed], [json.dumps(r.metadata) for r in changed],
                 [r.reverted_at for r in changed], [r.log_id for r in changed], self.ledger),
            )
        conn.execute(_INSERT_LOGS, (self.ledger, self.date, hashing.HASH_VERSION, _json(self.logs)))

    def _flush_state(self) -> None:
        conn = self.conn
        if self.volumes:
            conn.execute(
                """UPDATE ledger_core.volumes v SET input = u.input, output = u.output
                   FROM json_to_recordset(%s::json) AS u(account text, asset text, input numeric, output numeric)
                   WHERE v.ledger = %s AND v.account = u.account AND v.asset = u.asset""",
                (_json([{"account": account, "asset": asset, "input": state.input, "output": state.output}
                        for (account, asset), state in sorted(self.volumes.items())]), self.ledger),
            )
        dirty = sorted((a, s) for a, s in self.accounts.items() if s.dirty)
        if dirty:
            conn.execute(
                """INSERT INTO ledger_core.accounts (ledger, address, metadata, first_usage, insertion_date,
                                                     updated_at)
                   SELECT %s, u.address, u.metadata, u.first_usage, coalesce(u.insertion_date, %s), %s
                   FROM json_to_recordset(%s::json)
                        AS u(address text, metadata jsonb, first_usage timestamptz, insertion_date timestamptz)
                   ON CONFLICT (ledger, address) DO UPDATE
                   SET metadata = excluded.metadata, first_usage = excluded.first_usage,
                       updated_at = excluded.updated_at""",
                (self.ledger, self.date, self.date, _json([
                    {"address": address, "metadata": state.metadata, "first_usage": state.first_usage,
                     "insertion_date": state.insertion_date} for address, state in dirty])),
            )
        self._add_daily_volumes()
        conn.execute(
            """UPDATE ledger_core.ledgers SET last_log_id = %s, last_log_hash = %s, last_log_date = %s,
                      last_transaction_id = %s WHERE name = %s""",
            (self.last_log_id, self.last_hash, self.date, self.last_transaction_id, self.ledger),
        )
        # Delivered at commit, never for a rolled-back write: lets `sync --follow` wake without polling.
        conn.execute("SELECT pg_notify(%s, %s)", (LOGS_CHANNEL, f"{self.ledger}:{self.last_log_id}"))

    def _add_daily_volumes(self) -> None:
        """Add the batch's moves to their (account, asset, day) rows: one row each, whatever the date. Only this
        writer can touch these rows now: it holds the lock of every (account, asset) they belong to."""
        if not self.daily:
            return
        self.conn.execute(
            """INSERT INTO ledger_core.daily_volumes AS d (ledger, account, asset, day, input, output)
               SELECT %s, u.account, u.asset, u.day, u.input, u.output
               FROM json_to_recordset(%s::json)
                    AS u(account text, asset text, day date, input numeric, output numeric)
               ON CONFLICT (ledger, account, asset, day) DO UPDATE
               SET input = d.input + excluded.input, output = d.output + excluded.output""",
            (self.ledger, _json([{"account": account, "asset": asset, "day": day, "input": flows[0],
                                  "output": flows[1]} for (account, asset, day), flows in sorted(self.daily.items())])),
        )


def _current(row: _TransactionRow) -> Transaction:
    tx = row.transaction
    return Transaction(
        id=tx.id, postings=tx.postings, metadata=dict(row.metadata), timestamp=tx.timestamp,
        inserted_at=tx.inserted_at, reference=tx.reference, reverted_at=row.reverted_at,
        pre_commit_volumes=tx.pre_commit_volumes, post_commit_volumes=tx.post_commit_volumes,
    )


def _transaction_of(log: Log) -> Transaction | None:
    if log.type in (LogType.NEW_TRANSACTION, LogType.REVERTED_TRANSACTION):
        return transaction_from_json(log.data["transaction"])
    return None


@contextmanager
def _pipelined(conn: psycopg.Connection) -> Iterator[None]:
    """psycopg's pipeline mode, where a database error is raised once. psycopg may raise it inside the block
    (reading results early), and then, failing again to close the aborted pipeline, logs it on stderr: a second
    line after a CLI's one clear line. Here an error in the block waits for the pipeline to close, and the
    block's own error wins over the closing's `PipelineAborted`."""
    failure: Exception | None = None
    try:
        with conn.pipeline():
            try:
                yield
            except Exception as exc:
                failure = exc
    except psycopg.Error:
        if failure is None:
            raise
    if failure is not None:
        raise failure


# The batch's rows, inserted from one JSON document per table in the order written (moves take their `seq` in
# it). Numbers are read as numeric from their digits; timestamps and bytes are written by `_json_value`.
_INSERT_MOVES = """
    INSERT INTO ledger_core.moves (ledger, insertion_date, transaction_id, posting_index, account, asset, amount,
                                   is_source, effective_date, post_commit_input, post_commit_output)
    SELECT %s, %s, transaction_id, posting_index, account, asset, amount, is_source, effective_date,
           post_commit_input, post_commit_output
    FROM ROWS FROM (json_to_recordset(%s::json) AS (
        transaction_id bigint, posting_index integer, account text, asset text, amount numeric, is_source boolean,
        effective_date timestamptz, post_commit_input numeric, post_commit_output numeric)) WITH ORDINALITY AS r(
        transaction_id, posting_index, account, asset, amount, is_source, effective_date, post_commit_input,
        post_commit_output, n)
    ORDER BY n"""
_INSERT_TRANSACTIONS = """
    INSERT INTO ledger_core.transactions (ledger, id, timestamp, inserted_at, reference, metadata, postings,
                                          pre_commit_volumes, post_commit_volumes, reverted_at, log_id)
    SELECT %s, r.* FROM json_to_recordset(%s::json) AS r(
        id bigint, timestamp timestamptz, inserted_at timestamptz, reference text, metadata jsonb, postings jsonb,
        pre_commit_volumes jsonb, post_commit_volumes jsonb, reverted_at timestamptz, log_id bigint)"""
_INSERT_LOGS = """
    INSERT INTO ledger_core.logs (ledger, date, hash_version, id, type, idempotency_key, idempotency_hash, data,
                                  hash)
    SELECT %s, %s, %s, id, type, idempotency_key, idempotency_hash, data::jsonb, hash
    FROM json_to_recordset(%s::json) AS r(
        id bigint, type text, idempotency_key text, idempotency_hash bytea, data text, hash bytea)"""


def _json_value(value: object) -> str:
    if isinstance(value, date):  # and datetime
        return value.isoformat()
    if isinstance(value, bytes):
        return "\\x" + value.hex()  # bytea's hex input
    raise TypeError(f"{type(value).__name__} is not written as JSON here")


def _json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, default=_json_value, ensure_ascii=False)
