"""What one API server process holds: its connections, its token authority, its link to the writer process, its limits.

Reads take a pooled connection in a worker thread. Writes go to the writer process (`writer_process`: one
process of the server gathers every HTTP process's concurrent requests into one database transaction per
ledger), or, with group commit off, each takes a pooled connection and commits alone: the server can be
measured both ways (bench/http_write.py).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from starlette.concurrency import run_in_threadpool

from ledger_api import MAX_BODY_BYTES
from ledger_api.auth import TOKEN_SECONDS, Authority
from ledger_api.writer_process import WriterClient, answer_body
from ledger_core.db import connect
from ledger_core.ledgers import get_ledger
from ledger_core.requests import Command
from ledger_core.validation import ledger_name
from ledger_core.writer import WriteResult, write


@dataclass(frozen=True)
class Settings:
    database_url: str
    writer_socket: str | None = None  # the writer process's socket; None: each write commits alone
    max_body_bytes: int = MAX_BODY_BYTES
    token_seconds: int = TOKEN_SECONDS
    pool_size: int = 16


class ConnectionPool:
    """Up to `size` autocommit connections, made when first needed; a broken one is dropped, not reused."""

    def __init__(self, url: str, size: int):
        self._url = url
        self._idle: queue.LifoQueue[psycopg.Connection] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        self._slots.acquire()
        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = connect(self._url)
            try:
                yield conn
            except BaseException:
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE or conn.broken:
                    conn.close()
                raise
            if conn.closed or conn.broken:
                return
            self._idle.put(conn)
        finally:
            self._slots.release()

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


class Server:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.pool = ConnectionPool(settings.database_url, settings.pool_size)
        self.authority = Authority(self.pool.connection, token_seconds=settings.token_seconds)
        self.writer = WriterClient(Path(settings.writer_socket)) if settings.writer_socket else None
        self._ledgers: set[str] = set()  # known to exist (ledgers are never deleted)

    async def run(self, func, *args, **kwargs):  # type: ignore[no-untyped-def]
        """Run a blocking read or write with a pooled connection, in a worker thread."""

        def call():  # type: ignore[no-untyped-def]
            with self.pool.connection() as conn:
                return func(conn, *args, **kwargs)

        return await run_in_threadpool(call)

    async def write(self, ledger: str, commands: Sequence[Command], *, dry_run: bool = False) -> list[WriteResult]:
        """Commands written atomically, in one database transaction of their own."""
        return await self.run(write, ledger, list(commands), dry_run=dry_run)

    async def write_one(self, ledger: str, command: Command, *, dry_run: bool = False) -> bytes:
        """One command, gathered with concurrent ones into a shared transaction when group commit is on; its
        answer's JSON body (`{"data": ...}`)."""
        if self.writer is None or dry_run:
            [result] = await self.write(ledger, [command], dry_run=dry_run)
            return answer_body(result)
        await self.known_ledger(ledger)  # so a made-up ledger name starts no thread in the writer process
        return await self.writer.write(ledger, command)

    async def known_ledger(self, ledger: str) -> None:
        if ledger in self._ledgers:
            return
        ledger_name(ledger)
        await self.run(get_ledger, ledger)  # LedgerNotFound when it does not exist
        self._ledgers.add(ledger)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.pool.close()

