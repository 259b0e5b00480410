"""The sync engine: logs after a pipeline's cursor -> warehouse rows -> merge -> only then move the cursor.

Exactly once in effect: the cursor moves only after the warehouse accepted the batch (and the batch's
sync-state row), and every load is an idempotent merge keyed on natural keys with `log_id` as version.
Whatever a sync is killed at, re-running it replays at most the last batch, which changes nothing that
was already there. A session advisory lock keeps two processes from syncing one pipeline at once, and
the cursor moves by compare-and-set, so a reset during a sync is never overwritten.

Made to run unattended:
- **The warehouse knows where it is.** Every sync starts by reading the warehouse's own `sync_state`. A
  warehouse behind the cursor (wiped, restored from an older backup, a new database) is replayed from where
  it really is; one whose last log is not the ledger's (a different hash, or a log the ledger does not have)
  stops the pipeline with a precise error.
- **Nothing unverified is exported.** Every log of a batch is checked against the hash chain, link by link,
  from the hash the warehouse received last; a broken link stops the pipeline before anything loads.
- **One log does not block the others.** A value the warehouse cannot hold stops the pipeline right
  before its log: every log before it is loaded, and the error says how to go on without losing anything.
- **Transient failures are retried** with backoff inside the sync (a locked DuckDB file, a restarting
  warehouse); if they persist, the error is recorded and the next sync (scheduled, sensor, `follow`'s
  idle wake-up) tries again without waiting for a new write.
- **Every attempt is recorded** in the ledger database's sync history, whoever started it.
"""

from __future__ import annotations

import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import psycopg
import pyarrow as pa

from ledger_core import export
from ledger_core.db import connect
from ledger_pipelines import registry
from ledger_pipelines.delivery import LogSink
from ledger_pipelines.errors import (
    LedgerUnreachable,
    LogChainBroken,
    LogGap,
    PipelineBusy,
    PipelineError,
    PipelineStopped,
    TransientLoadError,
    ValueOutOfRange,
    WarehouseAhead,
    first_line,
)
from ledger_pipelines.loaders import FaultHook, open_loader
from ledger_pipelines.loaders.base import Loader
from ledger_pipelines.reader import LogReader
from ledger_pipelines.tables import BALANCES, SCHEMA_VERSION, Batch, Money, SyncState
from ledger_pipelines.transforms import Prepared, Transformer
from ledger_pipelines.verify import CheckResult, freshness, verify

DEFAULT_BATCH_SIZE = 20_000

# progress(pipeline_id, logs_done, logs_total, seconds_elapsed)
Progress = Callable[[str, int, int, float], None]


@dataclass(frozen=True)
class RetryPolicy:
    """How often a transient failure is retried inside one sync, and how long to wait between attempts."""

    attempts: int = 5
    first_delay: float = 0.5
    max_delay: float = 8.0

    def delay(self, attempt: int) -> float:
        return min(self.first_delay * 2 ** (attempt - 1), self.max_delay)


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(attempts=1)


@dataclass(frozen=True)
class SyncReport:
    pipeline_id: str
    ledger: str
    from_log_id: int | None  # first log loaded by this run, None if there was nothing to do
    to_log_id: int  # the cursor after the run
    logs: int
    rows: dict[str, int] = field(default_factory=dict)
    lag: int = 0  # logs committed and not exported after the run
    seconds: float = 0.0
    checks: list[CheckResult] = field(default_factory=list)  # warehouse vs ledger at the cursor, if asked
    attempts: int = 1
    note: str | None = None  # what the sync noticed and did on its own (a warehouse replayed, say)

    @property
    def checks_passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"pipelineID": self.pipeline_id, "ledger": self.ledger, "fromLogID": self.from_log_id,
                "toLogID": self.to_log_id, "logs": self.logs, "rows": self.rows, "lag": self.lag,
                "seconds": round(self.seconds, 3), "attempts": self.attempts,
                **({"note": self.note} if self.note else {}),
                **({"checks": {c.name: c.passed for c in self.checks}} if self.checks else {})}


def _lock_key(pipeline_id: str) -> int:
    return zlib.crc32(f"ledger-pipeline:{pipeline_id}".encode())


@contextmanager
def _pipeline_lock(conn: psycopg.Connection, pipeline_id: str) -> Iterator[None]:
    """The pipeline's session advisory lock: one sync (or check) of a pipeline at a time, across processes."""
    got = conn.execute("SELECT pg_try_advisory_lock(%s)", (_lock_key(pipeline_id),)).fetchone()
    if not got or not got[0]:
        raise PipelineBusy(pipeline_id)
    try:
        yield
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_lock_key(pipeline_id),))


def sync_pipeline(
    database_url: str, pipeline_id: str, *, environ: Mapping[str, str], batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None, fault: FaultHook | None = None, verify_after: bool = False,
    reader: LogReader | None = None, trigger: str = "api", retry: RetryPolicy = DEFAULT_RETRY,
    sleep: Callable[[float], None] = time.sleep,
) -> SyncReport:
    """Load every log committed before the call that the pipeline (id or name) has not exported yet.

    With `verify_after`, then prove the warehouse equals the ledger at the new cursor (still under the
    pipeline's lock, so no other sync moves it meanwhile); the results are in `report.checks`.
    A long-lived caller (`follow`) may pass its own `reader` to save a connection per sync. `trigger` names
    the caller in the sync history (cli, follow, dagster, api).
    """
    fail_at: FaultHook = fault or (lambda point: None)
    started, started_at = time.perf_counter(), datetime.now(UTC)
    with connect(database_url) as conn:
        registry.require_schema(conn)
        pipeline_id = registry.get_pipeline(conn, pipeline_id).id  # a name resolves to the id: one lock each
        with _pipeline_lock(conn, pipeline_id):
            done = _Progress()
            try:
                pipeline = registry.get_pipeline(conn, pipeline_id)
                if not pipeline.enabled:
                    raise PipelineStopped(pipeline_id)
                exporter = registry.get_exporter(conn, pipeline.exporter_id)
                done.start = pipeline.last_log_id
                while True:
                    done.attempts += 1
                    try:
                        # The reader connects in the background while the warehouse opens (none if caught up:
                        # `_sync` opens one if the warehouse turns out to be behind).
                        with (LogReader(database_url) if reader is None and pipeline.lag else nullcontext(reader)
                              ) as opened_reader, \
                                open_loader(exporter.driver, exporter.config, environ, fail_at) as loader:
                            if isinstance(loader, LogSink):  # no warehouse: nothing to check but freshness
                                report = _deliver(conn, database_url, pipeline, loader, batch_size, progress,
                                                  fail_at, started, opened_reader, done)
                                if verify_after:
                                    report = replace(report, checks=[
                                        freshness(registry.get_pipeline(conn, pipeline_id))])
                            else:
                                report = _sync(conn, database_url, pipeline, loader, batch_size, progress,
                                               fail_at, started, opened_reader, done)
                            if verify_after and not isinstance(loader, LogSink):
                                checks = verify(conn, loader, pipeline.ledger, report.to_log_id,
                                                **done.check_scope(report.to_log_id))
                                report = replace(report, checks=[*checks,
                                                                  freshness(registry.get_pipeline(conn, pipeline_id))])
                        break
                    except (TransientLoadError, LedgerUnreachable):
                        if done.attempts >= retry.attempts:
                            raise
                        sleep(retry.delay(done.attempts))
                        pipeline = registry.get_pipeline(conn, pipeline_id)
                report = replace(report, attempts=done.attempts, note=done.note)
                registry.record_sync(conn, pipeline_id, trigger=trigger, started_at=started_at,
                                     from_log_id=report.from_log_id, to_log_id=report.to_log_id, logs=report.logs,
                                     rows=report.rows, attempts=done.attempts, note=report.note)
                return report
            except (PipelineStopped, PipelineBusy):
                raise  # not a sync attempt: nothing to record
            except Exception as exc:  # recorded whatever it is, so `pipelines get` and the history show it
                if getattr(exc, "stops_pipeline", False):  # retrying cannot help (a receiver's 4xx)
                    registry.set_enabled(conn, pipeline_id, False)
                registry.record_sync(conn, pipeline_id, trigger=trigger, started_at=started_at, from_log_id=done.first,
                                     to_log_id=registry.get_pipeline(conn, pipeline_id).last_log_id, logs=done.logs,
                                     rows=dict(done.rows), attempts=max(done.attempts, 1), note=done.note,
                                     error_code=getattr(exc, "error_code", None) or "INTERNAL",
                                     error=f"{type(exc).__name__}: {exc}")
                raise


@dataclass
class _Progress:
    """What one sync has loaded so far, across its attempts."""

    start: int = 0
    attempts: int = 0
    first: int | None = None
    logs: int = 0
    rows: Counter[str] = field(default_factory=Counter)
    accounts: set[str] = field(default_factory=set)  # whose balances the loaded batches changed
    note: str | None = None

    def check_scope(self, cursor: int) -> dict[str, Any]:
        """What the checks after this sync look at: what it loaded (the cost follows the batch), or all of it
        when it loaded from the first log."""
        if self.first is None:
            return {"since": cursor, "accounts": []}
        if self.first == 1:
            return {"since": 0, "accounts": None}
        return {"since": self.first - 1, "accounts": sorted(self.accounts)}

    def delivered(self, first: int, last: int) -> None:
        self.first = first if self.first is None else min(self.first, first)
        self.logs += last - first + 1
        self.rows.update({"logs": last - first + 1, "requests": 1})

    def loaded(self, batch: Batch) -> None:
        self.first = batch.first_log_id if self.first is None else min(self.first, batch.first_log_id)
        self.logs += batch.last_log_id - batch.first_log_id + 1
        self.rows.update(batch.row_counts())
        if self.first != 1:  # from the first log, the checks look at every account (check_scope)
            self.accounts.update(batch.tables[BALANCES.name].column("account").to_pylist())


def _reconcile(conn: psycopg.Connection, loader: Loader, pipeline: registry.Pipeline,
               done: _Progress) -> tuple[int, bytes | None, int]:
    """Where this sync starts, and the hash (and hash version) the first log after it must link to.

    The warehouse's `sync_state` says which log it holds last (W). Its hash must be the ledger's hash of
    log W, or the two have diverged. A warehouse behind the cursor is replayed from W (loads are
    idempotent); one at or ahead of it (ahead: after a reset) continues from the cursor.
    """
    cursor, ledger = pipeline.last_log_id, pipeline.ledger
    state = loader.ensure_schema(pipeline.id)  # builds or upgrades the warehouse's tables only when needed
    held = int(state["last_log_id"]) if state else 0
    if held > pipeline.ledger_last_log_id:
        raise WarehouseAhead(pipeline.id, ledger, held, pipeline.ledger_last_log_id)
    if held:
        link = export.log_link(conn, ledger, held)
        if link is None or link[0].hex() != state["last_log_hash"]:  # type: ignore[index]
            now = link[0].hex()[:16] + "…" if link else "no such log"
            raise LogChainBroken(ledger, held, f"the warehouse received hash {state['last_log_hash'][:16]}… "  # type: ignore[index]
                                               f"for it, the ledger now stores {now}; either the ledger was altered "
                                               "after export or the warehouse holds another copy of this ledger")
    if held < cursor:
        registry.move_cursor(conn, pipeline.id, cursor, held)
        if loader.upgraded_from is not None:
            done.note = (f"the warehouse's tables were built by schema version {loader.upgraded_from}; emptied and "
                         f"replayed from log 1 into version {SCHEMA_VERSION}")
        else:
            done.note = (f"the warehouse held logs up to {held} only (wiped, restored or new?), the cursor stood "
                         f"at {cursor}: replayed from log {held + 1}")
        cursor = held
    if cursor == 0:
        return 0, None, 1
    link = export.log_link(conn, ledger, cursor)
    if link is None:
        raise LogChainBroken(ledger, cursor, "the ledger no longer holds this exported log")
    return cursor, link[0], link[1]


def _sync(conn: psycopg.Connection, database_url: str, pipeline: registry.Pipeline, loader: Loader, batch_size: int,
          progress: Progress | None, fault: FaultHook, started: float, opened_reader: LogReader | None,
          done: _Progress) -> SyncReport:
    cursor, previous_hash, previous_version = _reconcile(conn, loader, pipeline, done)
    target = pipeline.ledger_last_log_id
    # The last log whose rows the warehouse holds, from its `logs` table rather than a sync state: a deleted
    # pipeline's rows stay when its state is gone. Only batches after it may be appended (see Loader.load).
    held = loader.last_log_id(pipeline.ledger) if loader.appends and cursor < target else target
    if cursor < target:
        with nullcontext(opened_reader) if opened_reader else LogReader(database_url) as reader, \
                Transformer() as transformer, closing(_verified_batches(
                    reader, transformer, pipeline.ledger, cursor, target, batch_size, previous_hash,
                    previous_version, loader.money)) as batches:
            for prepared in batches:
                try:
                    cursor = _load(conn, pipeline, loader, transformer, prepared, cursor, held, fault, done)
                except ValueOutOfRange as exc:
                    # Everything before the log that does not fit still goes in; the cursor stops right before it.
                    # (The first value found may not be in the batch's earliest such log: shrink until it loads.)
                    first_bad = exc
                    while (before := prepared.logs.slice(0, first_bad.log_id - cursor - 1)).num_rows:
                        try:
                            cursor = _load(conn, pipeline, loader, transformer, before, cursor, held, fault, done)
                            break
                        except ValueOutOfRange as earlier:
                            first_bad = earlier
                    raise first_bad.after_loading(cursor, loader.wide_money_remedy(pipeline.exporter_id)) from None
                held = max(held, cursor)
                if progress:
                    progress(pipeline.id, cursor - done.start, target - done.start, time.perf_counter() - started)
    after = registry.get_pipeline(conn, pipeline.id)
    return SyncReport(pipeline.id, pipeline.ledger, done.first, cursor, done.logs, dict(done.rows), after.lag,
                      time.perf_counter() - started)


def _deliver(conn: psycopg.Connection, database_url: str, pipeline: registry.Pipeline, sink: LogSink,
             batch_size: int, progress: Progress | None, fault: FaultHook, started: float,
             opened_reader: LogReader | None, done: _Progress) -> SyncReport:
    """The logs after the cursor to a sink, one delivery per batch (at most the sink's size), each checked link
    by link first; the cursor moves after each acknowledged delivery. Killed between the two, the next sync
    delivers the same logs again (at least once; the sink's receiver deduplicates by log id)."""
    cursor, target = pipeline.last_log_id, pipeline.ledger_last_log_id
    if cursor < target:
        link = export.log_link(conn, pipeline.ledger, cursor) if cursor else None
        if cursor and link is None:
            raise LogChainBroken(pipeline.ledger, cursor, "the ledger no longer holds this exported log")
        with nullcontext(opened_reader) if opened_reader else LogReader(database_url) as reader, \
                Transformer() as transformer, closing(_verified_batches(
                    reader, transformer, pipeline.ledger, cursor, target,
                    min(batch_size, sink.max_logs_per_delivery), link[0] if link else None,
                    link[1] if link else 1, None)) as batches:
            for prepared in batches:
                logs = prepared.logs
                fault("before_load")
                sink.deliver(pipeline.id, pipeline.ledger, logs)
                fault("after_load")
                last = logs.column("id")[-1].as_py()
                registry.move_cursor(conn, pipeline.id, cursor, last)
                done.delivered(cursor + 1, last)
                cursor = last
                if progress:
                    progress(pipeline.id, cursor - done.start, target - done.start, time.perf_counter() - started)
    after = registry.get_pipeline(conn, pipeline.id)
    return SyncReport(pipeline.id, pipeline.ledger, done.first, cursor, done.logs, dict(done.rows), after.lag,
                      time.perf_counter() - started)


# Batches read ahead of the one the caller is loading: enough for every stage to have work, few enough that memory
# follows the batch size (measured: as with one batch prepared ahead).
LOOKAHEAD = 2


def _verified_batches(reader: LogReader, transformer: Transformer, ledger: str, after: int, up_to: int, limit: int,
                      previous: bytes | None, previous_version: int, money: Money | None) -> Iterator[Prepared]:
    """The logs `after < id <= up_to` in contiguous batches, each checked link by link (continuing from the
    hash `previous` of log `after`) before it is handed over; given a warehouse's `money`, also unpacked, with its
    BATCH_ONLY tables for that warehouse (`Prepared.ahead`: maybe still being computed).

    Every stage of the next batches runs while the caller folds and loads one, on two threads: one reads each
    batch from PostgreSQL (whose own process does most of that work) and checks its links, the other unpacks it
    and computes its BATCH_ONLY tables, the latter while the caller folds the same batch. Batch boundaries are
    known in advance (log ids are contiguous, which the reader checks), so a batch is read as soon as the
    thread is free, at most LOOKAHEAD batches ahead. (Reading, checking, unpacking and computing on one thread,
    a batch ahead, had set the pace of a full sync, and a sync of one batch had done everything in turn.)
    """

    def read(after: int, size: int) -> pa.Table:
        logs = reader.read(ledger, after=after, up_to=up_to, limit=size)
        if logs.num_rows != size:
            raise LogGap(ledger, after + logs.num_rows + 1, after + logs.num_rows)
        return logs

    def check(read_logs: Future[pa.Table], after: int, link: Future[pa.Table] | tuple[bytes | None, int]) -> None:
        logs = read_logs.result()
        if isinstance(link, Future):  # the batch before, read (and checked) already: the same thread, in order
            before = link.result()
            link = bytes.fromhex(before.column("hash")[-1].as_py()), before.column("hash_version")[-1].as_py()
        # Every link, recomputed set-based; only a batch where that finds a mismatch (a version-1 log counts as
        # one) is checked log by log, which gives the verdict and names the log.
        if not transformer.links_hold(ledger, logs, link[0]):
            broken = export.first_broken_link(ledger, logs, previous=link[0], previous_id=after,
                                              previous_version=link[1])
            if broken is not None:
                raise LogChainBroken(ledger, broken.log_id, broken.reason)

    def unpack(read_logs: Future[pa.Table]) -> Prepared:
        # A delivery sends the logs as read: unpacking them would only fill the transformer's database, batch
        # after batch, until the sync ends (nothing drops what `transform` never sees).
        logs = read_logs.result()
        return Prepared(logs, None) if money is None else replace(transformer.unpack(logs), ledger=ledger,
                                                                  money=money)

    def batch_tables(unpacked: Future[Prepared]) -> dict[str, pa.Table]:
        batch = unpacked.result()
        return transformer.batch_tables(batch, ledger, batch.money)

    with ThreadPoolExecutor(1, thread_name_prefix="log-reader") as reading, \
            ThreadPoolExecutor(1, thread_name_prefix="log-preparer") as preparing:
        pending: deque[tuple[Future[None], Future[Prepared], Future[dict[str, pa.Table]] | None]] = deque()
        link: Future[pa.Table] | tuple[bytes | None, int] = (previous, previous_version)
        try:
            while pending or after < up_to:
                while after < up_to and len(pending) <= LOOKAHEAD:
                    # No runt batch: what would be left after this one, if under a quarter of a batch, comes with it.
                    size = up_to - after if up_to - after <= limit * 5 // 4 else limit
                    read_logs = reading.submit(read, after, size)
                    checked = reading.submit(check, read_logs, after, link)
                    unpacked = preparing.submit(unpack, read_logs)
                    tables = None if money is None else preparing.submit(batch_tables, unpacked)
                    pending.append((checked, unpacked, tables))
                    after, link = after + size, read_logs
                checked, unpacked, tables = pending.popleft()
                checked.result()  # nothing of a batch is handed over before its links are checked
                yield replace(unpacked.result(), ahead=tables)
        finally:  # what was read ahead is not needed: the caller stopped
            reading.shutdown(cancel_futures=True)
            preparing.shutdown(cancel_futures=True)


def _load(conn: psycopg.Connection, pipeline: registry.Pipeline, loader: Loader, transformer: Transformer,
          logs: pa.Table | Prepared, cursor: int, held: int, fault: FaultHook, done: _Progress) -> int:
    """Transform and merge one contiguous batch, then move the cursor to its last log; return the new cursor.
    `held` is the last log the warehouse holds: a batch entirely after it is new to the warehouse."""
    batch = transformer.transform(pipeline.ledger, logs, loader.fetch_current, loader.money)
    fault("before_load")
    loader.load(batch, SyncState(pipeline.id, pipeline.ledger, batch.last_log_id, batch.last_log_hash,
                                 datetime.now(UTC)), new_logs=batch.first_log_id > held)
    fault("after_load")
    registry.move_cursor(conn, pipeline.id, cursor, batch.last_log_id)
    done.loaded(batch)
    return batch.last_log_id


def verify_pipeline(database_url: str, pipeline_ref: str, *, environ: Mapping[str, str]) -> list[CheckResult]:
    """Re-run the checks of a pipeline's warehouse at its cursor, without syncing (under its lock, so no sync
    moves the cursor meanwhile), and its freshness."""
    with connect(database_url) as conn:
        registry.require_schema(conn)
        pipeline = registry.get_pipeline(conn, pipeline_ref)
        with _pipeline_lock(conn, pipeline.id):
            pipeline = registry.get_pipeline(conn, pipeline.id)
            exporter = registry.get_exporter(conn, pipeline.exporter_id)
            with open_loader(exporter.driver, exporter.config, environ) as loader:
                if isinstance(loader, LogSink):  # a receiver cannot be read back: freshness is what there is
                    return [freshness(pipeline)]
                loader.ensure_schema(pipeline.id)  # a warehouse never synced (or wiped) is checked as empty
                return [*verify(conn, loader, pipeline.ledger, pipeline.last_log_id), freshness(pipeline)]


@dataclass(frozen=True)
class SyncFailure:
    pipeline_id: str | None  # None: every pipeline (the ledger's database could not be reached)
    error_code: str
    error: str

    def to_json(self) -> dict[str, Any]:
        return {"pipelineID": self.pipeline_id, "errorCode": self.error_code, "error": self.error}


def sync_all(database_url: str, *, environ: Mapping[str, str], batch_size: int = DEFAULT_BATCH_SIZE,
             progress: Progress | None = None, trigger: str = "api",
             retry: RetryPolicy = DEFAULT_RETRY) -> tuple[list[SyncReport], list[SyncFailure]]:
    """Sync every enabled pipeline; one failing pipeline does not hold the others back.

    Every enabled pipeline is visited, not only those with new logs: a sync with nothing to load still
    proves its warehouse holds what the cursor says (and replays it if it does not).
    """
    with connect(database_url) as conn:
        registry.require_schema(conn)
        pipelines = [p for p in registry.list_pipelines(conn) if p.enabled]
    reports: list[SyncReport] = []
    failures: list[SyncFailure] = []
    for p in pipelines:
        try:
            reports.append(sync_pipeline(database_url, p.id, environ=environ, batch_size=batch_size,
                                         progress=progress, trigger=trigger, retry=retry))
        except PipelineError as exc:  # recorded on the pipeline as lastError; reported, and the next one runs
            failures.append(SyncFailure(p.id, exc.error_code, f"{type(exc).__name__}: {exc}"))
    return reports, failures


def follow_backoff(failures_in_a_row: int, idle_timeout: float) -> float:
    """Seconds `follow` waits before trying a failing pipeline again: idle_timeout, doubling, at most 15 min."""
    return float(min(idle_timeout * 2 ** (failures_in_a_row - 1), 900.0))


def follow(database_url: str, pipeline_ids: list[str] | None, *, environ: Mapping[str, str],
           on_report: Callable[[SyncReport], None], on_failure: Callable[[SyncFailure], None] = lambda f: None,
           should_stop: Callable[[], bool] = lambda: False, idle_timeout: float = 30.0,
           batch_size: int = DEFAULT_BATCH_SIZE, retry: RetryPolicy = DEFAULT_RETRY) -> None:
    """Keep pipelines synced: wake on each commit's NOTIFY, and every `idle_timeout` seconds as a safety net.

    A failing pipeline is reported and tried again at a later wake-up without waiting for a new write: after
    `idle_timeout`, then twice as long each time it fails again, up to 15 minutes (so a failure that needs a
    person does not fill the history); it never stops the others. A ledger database that cannot be reached (a
    restart, a failover) is reported once per attempt, for no pipeline in particular, and connected to again
    after 1 s, then twice as long each time, up to `idle_timeout`: follow resumes on its own once it is back.
    """
    failures: dict[str, tuple[int, float]] = {}  # pipeline id -> (failures in a row, not before this monotonic time)
    outages = 0  # attempts in a row to reach the ledger's database that failed
    while not should_stop():
        try:
            with connect(database_url) as listener, LogReader(database_url) as reader:
                listener.execute(f"LISTEN {export.LOGS_CHANNEL}")
                outages = 0
                _follow(database_url, pipeline_ids, listener, reader, failures, environ=environ, on_report=on_report,
                        on_failure=on_failure, should_stop=should_stop, idle_timeout=idle_timeout,
                        batch_size=batch_size, retry=retry)
        except (psycopg.OperationalError, LedgerUnreachable) as exc:
            outages += 1
            on_failure(SyncFailure(None, LedgerUnreachable.error_code,
                                   f"{type(exc).__name__}: {first_line(exc, 'connection lost')}"))
            pause = min(2.0 ** (outages - 1), idle_timeout)
            deadline = time.monotonic() + pause
            while time.monotonic() < deadline and not should_stop():
                time.sleep(min(0.1, pause))


def _follow(database_url: str, pipeline_ids: list[str] | None, listener: psycopg.Connection, reader: LogReader,
            failures: dict[str, tuple[int, float]], *, environ: Mapping[str, str],
            on_report: Callable[[SyncReport], None], on_failure: Callable[[SyncFailure], None],
            should_stop: Callable[[], bool], idle_timeout: float, batch_size: int, retry: RetryPolicy) -> None:
    """`follow` on one set of connections to the ledger's database, until told to stop or one is lost."""
    while not should_stop():
        with connect(database_url) as conn:
            due = [p for p in registry.list_pipelines(conn)
                   if p.enabled and (p.lag > 0 or p.failing) and (pipeline_ids is None or p.id in pipeline_ids)
                   and time.monotonic() >= failures.get(p.id, (0, 0.0))[1]]
        moved = False
        for pipeline in due:
            try:
                report = sync_pipeline(database_url, pipeline.id, environ=environ, batch_size=batch_size,
                                       reader=reader, trigger="follow", retry=retry)
            except LedgerUnreachable:
                raise  # every pipeline's problem, not this one's: `follow` connects again
            except PipelineError as exc:
                in_a_row = failures.get(pipeline.id, (0, 0.0))[0] + 1
                failures[pipeline.id] = (in_a_row, time.monotonic() + follow_backoff(in_a_row, idle_timeout))
                on_failure(SyncFailure(pipeline.id, exc.error_code, f"{type(exc).__name__}: {exc}"))
                continue
            failures.pop(pipeline.id, None)
            moved = moved or report.logs > 0
            on_report(report)
        if moved:
            continue  # more may have committed while we loaded
        deadline = time.monotonic() + idle_timeout
        for _ in listener.notifies(timeout=max(deadline - time.monotonic(), 0.01), stop_after=1):
            break
        # Drain what else arrived so one burst of commits causes one sync.
        for _ in listener.notifies(timeout=0.001):
            pass
