"""Group commit: concurrent writes to one ledger gathered into one database transaction, each with its own outcome.

One commit per request pays a WAL flush for each, and the per-ledger lock is held through it, so concurrent
single writers queue behind one another (bench/concurrent_write.py: 32 of them manage fewer transactions per
second than one). Here each ledger has one writer thread with its own connection. While it commits a batch,
new requests queue up; the next batch takes every queued request (up to `max_batch`) and commits them
together. Nothing waits for a batch to fill: a lone request is written at once.

Each request keeps its own outcome. A command the ledger refuses (insufficient funds, a conflicting
idempotency key or reference, an unknown transaction) is taken out and the rest are written again, in
their arrival order, as if the refused one had never arrived. The refused request gets its own error; the
others are not failed with it. An error that names no command (the database is unreachable, say) fails the
batch's requests, each with that error, and the next batch tries again with a new connection.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import psycopg

from ledger_core.db import connect
from ledger_core.errors import LedgerError
from ledger_core.requests import Command
from ledger_core.writer import WriteResult, write

MAX_BATCH = 1_000  # commands per database transaction: a bulk's cost, one commit


def write_each(conn: psycopg.Connection, ledger: str, commands: Sequence[Command]) -> list[WriteResult | LedgerError]:
    """Write `commands` in one transaction, leaving out those the ledger refuses; one outcome per command, in order.

    A refused command is named by the writer (`LedgerError.command_index`); it is taken out and the others are
    written again, so one refusal costs one rolled-back attempt. A refusal naming no command (an unknown ledger;
    a conflict only the database caught) sends every command on its own, each in a transaction of its own.
    """
    outcomes: list[WriteResult | LedgerError | None] = [None] * len(commands)
    pending = list(range(len(commands)))
    while pending:
        try:
            results = write(conn, ledger, [commands[i] for i in pending])
        except LedgerError as refused:
            if refused.command_index is not None:
                outcomes[pending.pop(refused.command_index)] = refused
                continue
            if len(pending) == 1:
                outcomes[pending.pop()] = refused
                continue
            for i in pending:
                outcomes[i] = write_each(conn, ledger, [commands[i]])[0]
            break
        for i, result in zip(pending, results, strict=True):
            outcomes[i] = result
        break
    assert all(o is not None for o in outcomes)
    return outcomes  # type: ignore[return-value]


def write_until_refused(conn: psycopg.Connection, ledger: str,
                        commands: Sequence[Command]) -> list[WriteResult | LedgerError | None]:
    """Write `commands` in order up to the first the ledger refuses (Formance's bulk without continueOnFailure):
    those before it are written, it gets its error, those after it are not run (None)."""
    try:
        return list(write(conn, ledger, commands))
    except LedgerError as refused:
        index = refused.command_index
        if index is None:  # the refusal names no command: one at a time finds it
            outcomes: list[WriteResult | LedgerError | None] = [None] * len(commands)
            for i, command in enumerate(commands):
                try:
                    outcomes[i] = write(conn, ledger, [command])[0]
                except LedgerError as exc:
                    outcomes[i] = exc
                    break
            return outcomes
        before = write_until_refused(conn, ledger, commands[:index]) if index else []
        if any(not isinstance(o, WriteResult) for o in before):  # the state moved under us: stopped earlier
            return [*before, *[None] * (len(commands) - index)]
        return [*before, refused, *[None] * (len(commands) - index - 1)]


@dataclass
class _Request:
    command: Command
    future: Future[WriteResult]


class GroupCommitter:
    """Writes submitted from any thread (or event loop) to each ledger, gathered by one writer thread per ledger.

    `submit` returns a `Future` holding the request's `WriteResult`, or raising its own refusal.
    """

    def __init__(self, database_url: str, *, max_batch: int = MAX_BATCH):
        self.database_url = database_url
        self.max_batch = max_batch
        self._queues: dict[str, queue.SimpleQueue[_Request | None]] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, ledger: str, command: Command) -> Future[WriteResult]:
        future: Future[WriteResult] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the group committer is closed")
            requests = self._queues.get(ledger)
            if requests is None:
                requests = self._queues[ledger] = queue.SimpleQueue()
                thread = threading.Thread(target=self._run, args=(ledger, requests), daemon=True,
                                          name=f"group-commit-{ledger}")
                self._threads.append(thread)
                thread.start()
        requests.put(_Request(command, future))
        return future

    def write(self, ledger: str, command: Command, timeout: float | None = None) -> WriteResult:
        return self.submit(ledger, command).result(timeout)

    def close(self) -> None:
        """Write what is queued, then stop the writer threads."""
        with self._lock:
            self._closed = True
            for requests in self._queues.values():
                requests.put(None)
        for thread in self._threads:
            thread.join()

    def __enter__(self) -> GroupCommitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, ledger: str, requests: queue.SimpleQueue[_Request | None]) -> None:
        conn: psycopg.Connection | None = None
        stopping = False
        while not stopping:
            first = requests.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.max_batch:  # whatever queued while the last batch committed
                try:
                    item = requests.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            try:
                if conn is None or conn.closed:
                    conn = connect(self.database_url)
                outcomes = write_each(conn, ledger, [r.command for r in batch])
            except Exception as exc:
                for request in batch:
                    request.future.set_exception(exc)
                if conn is not None and not isinstance(exc, LedgerError):
                    conn.close()
                    conn = None
                continue
            for request, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, LedgerError):
                    request.future.set_exception(outcome)
                else:
                    request.future.set_result(outcome)
        if conn is not None:
            conn.close()
