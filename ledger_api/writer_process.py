"""The writer process: the one process of a server that writes, gathering every HTTP process's writes.

Group commit gathers concurrent requests into one database transaction, but in the HTTP process its writer
thread shares one interpreter lock with the event loop: each database round trip of a batch waited for the
lock on its return while the loop parsed requests and rendered answers (a batch of 32 took 57 ms there
against 21 ms alone). And HTTP processes each with a committer of their own contend on the
ledger's lock as separate writers do. So `ledgerctl serve` starts one writer process holding the
`GroupCommitter`; every HTTP process sends it its commands over a Unix socket and awaits the outcomes.

Frames are a 4-byte big-endian length and a pickle: (id, ledger, command) one way, (id, outcome) the other,
where an outcome is the answer's JSON body (`answer_body`: rendered here, so neither process pickles a
`WriteResult` or builds its JSON twice), a `LedgerError`, or `Unavailable` (anything else that went wrong,
the database being down among them). Pickles are trusted because only this server's processes can reach the
socket: it lives in a directory only the server's user can open.

The writer process exits when its parent's pipe on its standard input closes, so a killed server leaves no
writer behind; the parent starts a new writer if one dies, and the HTTP processes connect again.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import pickle
import queue
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from ledger_core.errors import LedgerError
from ledger_core.group_commit import GroupCommitter
from ledger_core.requests import Command
from ledger_core.writer import WriteResult

log = logging.getLogger("ledger_api")

HEADER = struct.Struct(">I")
SOCKET_NAME = "writer.sock"
START_SECONDS = 30.0


@dataclass(frozen=True)
class Unavailable:
    """A write's outcome when it failed for a reason that is not the ledger's refusal: retry it later."""

    reason: str


def frame(payload: object) -> bytes:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def answer_body(result: WriteResult) -> bytes:
    """A write's answer as the API sends it: `{"data": ...}` in JSON, rendered as Starlette's JSONResponse
    renders (compact, UTF-8), so the body is the same whichever process wrote it."""
    return json.dumps({"data": result.to_json()}, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode()


# -- the writer process ---------------------------------------------------------------------------------------

def serve_writes(database_url: str, socket_path: Path) -> None:
    """Accept HTTP processes on `socket_path` and write what they send through one group committer."""
    committer = GroupCommitter(database_url)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Bound under another name and renamed once listening: the path the parent waits for appears only when
    # connecting to it works.
    binding = socket_path.with_suffix(".binding")
    listener.bind(str(binding))
    listener.listen(64)
    binding.rename(socket_path)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_serve_connection, args=(conn, committer), daemon=True,
                         name="writer-connection").start()


def _serve_connection(conn: socket.socket, committer: GroupCommitter) -> None:
    answers: queue.SimpleQueue[tuple[int, Future[WriteResult]] | None] = queue.SimpleQueue()
    # Answers are pickled and sent by a thread of their own, not by the committer's writer thread (which sets
    # the futures): its next batch starts at once, and the pickling runs while it waits on the database.
    sender = threading.Thread(target=_send_answers, args=(conn, answers), daemon=True, name="writer-answers")
    sender.start()
    try:
        with conn, conn.makefile("rb") as stream:
            while True:
                header = stream.read(HEADER.size)
                if len(header) < HEADER.size:
                    return
                request_id, ledger, command = pickle.loads(stream.read(HEADER.unpack(header)[0]))
                try:
                    future = committer.submit(ledger, command)
                except RuntimeError as exc:  # the committer is closing: this request fails alone
                    future = Future()
                    future.set_exception(exc)
                future.add_done_callback(lambda f, rid=request_id: answers.put((rid, f)))
    finally:
        answers.put(None)
        sender.join()


def _send_answers(conn: socket.socket, answers: queue.SimpleQueue[tuple[int, Future[WriteResult]] | None]) -> None:
    done = False
    while not done:
        ready = [answers.get()]
        while True:  # everything answered meanwhile goes in one send
            try:
                ready.append(answers.get_nowait())
            except queue.Empty:
                break
        frames = []
        for item in ready:
            if item is None:
                done = True
                continue
            request_id, future = item
            error = future.exception()
            outcome: object = answer_body(future.result()) if error is None else error
            if error is not None and not isinstance(error, LedgerError):
                reason = str(error).strip()
                outcome = Unavailable(reason.splitlines()[0] if reason else type(error).__name__)
            frames.append(frame((request_id, outcome)))
        try:
            conn.sendall(b"".join(frames))
        except OSError:  # the HTTP process went away: its requests' outcomes are in the log
            return


def _main() -> None:
    socket_path = Path(sys.argv[1])
    # The parent holds our standard input open: when it is gone, whatever the way it went, so are we.
    threading.Thread(target=lambda: (sys.stdin.buffer.read(), os._exit(0)), daemon=True).start()
    serve_writes(os.environ["LEDGER_DATABASE_URL"], socket_path)


# -- the parent's side: start it, keep it running -------------------------------------------------------------

class WriterProcess:
    """Starts the writer process, starts it again if it dies, and stops it with the server."""

    def __init__(self, database_url: str):
        self.database_url = database_url
        self.directory = Path(tempfile.mkdtemp(prefix="ledger-writer-"))  # mode 0700: ours alone
        self.socket_path = self.directory / SOCKET_NAME
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="writer-watcher")

    def start(self) -> WriterProcess:
        self._spawn()
        self._watcher.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._process is not None:
            self._process.stdin.close()  # type: ignore[union-attr]
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
        for leftover in self.directory.iterdir():
            leftover.unlink()
        self.directory.rmdir()

    def _spawn(self) -> None:
        self.socket_path.unlink(missing_ok=True)
        self.socket_path.with_suffix(".binding").unlink(missing_ok=True)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "ledger_api.writer_process", str(self.socket_path)], stdin=subprocess.PIPE,
            env={**os.environ, "LEDGER_DATABASE_URL": self.database_url})
        deadline = time.monotonic() + START_SECONDS
        while not self.socket_path.exists():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the writer process did not start (exit status {self._process.poll()})")
            time.sleep(0.01)

    def _watch(self) -> None:
        while not self._stopping.is_set():
            assert self._process is not None
            status = self._process.wait()
            if self._stopping.is_set():
                return
            log.warning("the writer process exited (status %s); starting a new one", status)
            time.sleep(0.5)
            try:
                self._spawn()
            except RuntimeError as exc:
                log.warning("%s; trying again", exc)


# -- an HTTP process's side ----------------------------------------------------------------------------------

class WriterClient:
    """An HTTP process's connection to the writer process, made when first needed and again after a loss."""

    def __init__(self, socket_path: Path):
        self.socket_path = socket_path
        self._ids = itertools.count()
        self._link: _Link | None = None
        self._connecting = asyncio.Lock()

    async def write(self, ledger: str, command: Command) -> bytes:
        """The command written by the writer process: its answer's JSON body (see `answer_body`)."""
        link = self._link or await self._connect()
        request_id = next(self._ids)
        outcome = link.pending[request_id] = asyncio.get_running_loop().create_future()
        link.send(frame((request_id, ledger, command)))
        result = await outcome
        if isinstance(result, bytes):
            return result
        if isinstance(result, Unavailable):
            raise psycopg.OperationalError(result.reason)
        raise result  # type: ignore[misc]

    async def _connect(self) -> _Link:
        async with self._connecting:
            if self._link is None:
                try:
                    reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
                except OSError as exc:
                    raise psycopg.OperationalError(f"the writer process cannot be reached: {exc}") from exc
                self._link = _Link(writer, {})
                self._link.reading = asyncio.get_running_loop().create_task(self._read(reader, self._link))
            return self._link

    async def _read(self, reader: asyncio.StreamReader, link: _Link) -> None:
        try:
            while True:
                header = await reader.readexactly(HEADER.size)
                request_id, outcome = pickle.loads(await reader.readexactly(HEADER.unpack(header)[0]))
                waiting = link.pending.pop(request_id, None)
                if waiting is not None and not waiting.done():
                    waiting.set_result(outcome)
        except (asyncio.IncompleteReadError, OSError):
            pass
        finally:
            if self._link is link:
                self._link = None
            link.writer.close()
            # What was in flight may or may not have been written: a client retries with its Idempotency-Key.
            for waiting in link.pending.values():
                if not waiting.done():
                    waiting.set_result(Unavailable("the writer process went away; retry with the same key"))

    def close(self) -> None:
        if self._link is not None:
            self._link.writer.close()


@dataclass
class _Link:
    writer: asyncio.StreamWriter
    pending: dict[int, asyncio.Future[object]]
    reading: asyncio.Task[None] | None = None  # held: the event loop keeps only a weak reference to a task
    outbox: list[bytes] = field(default_factory=list)

    def send(self, data: bytes) -> None:
        """Queue a frame; every frame queued in this turn of the event loop leaves in one write."""
        self.outbox.append(data)
        if len(self.outbox) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        if not self.writer.is_closing():
            self.writer.write(b"".join(self.outbox))
        self.outbox.clear()


if __name__ == "__main__":
    _main()
