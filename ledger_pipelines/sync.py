"""The sync engine: logs after a pipeline's cursor -> warehouse rows -> merge -> only then move the cursor.

Exactly once in effect: the cursor moves only after the warehouse accepted the batch (and the batch's
sync-state row), and every load is an idempotent merge keyed on natural keys with `log_id` as version.

Nothing unverified is exported: every log of a batch is checked against the hash chain, link by link,
starting from the hash of the log at the cursor, which must be the hash the warehouse received for it (its
`sync_state`). A broken link stops the pipeline with CHAIN_BROKEN naming the log, before anything of the
batch is loaded.
Whatever a sync is killed at, re-running it replays at most the last batch, which changes nothing that
was already there. A session advisory lock keeps two processes from syncing one pipeline at once, and
the cursor moves by compare-and-set, so a reset during a sync is never overwritten.
"""

from __future__ import annotations

import time
import zlib
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import psycopg

from ledger_core import hashing, reads
from ledger_core.db import connect
from ledger_core.validation import format_timestamp
from ledger_core.writer import LOGS_CHANNEL
from ledger_pipelines import registry
from ledger_pipelines.errors import LogChainBroken, LogGap, PipelineBusy, PipelineError, PipelineStopped
from ledger_pipelines.loaders import FaultHook, open_loader
from ledger_pipelines.loaders.base import Loader, SyncState
from ledger_pipelines.reader import LogReader
from ledger_pipelines.transforms import transform
from ledger_pipelines.verify import CheckResult, verify

DEFAULT_BATCH_SIZE = 20_000

# progress(pipeline_id, logs_done, logs_total, seconds_elapsed)
Progress = Callable[[str, int, int, float], None]


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

    @property
    def checks_passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {"pipelineID": self.pipeline_id, "ledger": self.ledger, "fromLogID": self.from_log_id,
                "toLogID": self.to_log_id, "logs": self.logs, "rows": self.rows, "lag": self.lag,
                "seconds": round(self.seconds, 3),
                **({"checks": {c.name: c.passed for c in self.checks}} if self.checks else {})}


def _lock_key(pipeline_id: str) -> int:
    return zlib.crc32(f"ledger-pipeline:{pipeline_id}".encode())


def sync_pipeline(
    database_url: str, pipeline_id: str, *, environ: Mapping[str, str], batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None, fault: FaultHook | None = None, verify_after: bool = False,
    reader: LogReader | None = None,
) -> SyncReport:
    """Load every log committed before the call that the pipeline has not exported yet.

    With `verify_after`, then prove the warehouse equals the ledger at the new cursor (still under the
    pipeline's lock, so no other sync moves it meanwhile); the results are in `report.checks`.
    A long-lived caller (`follow`) may pass its own `reader` to save a connection per sync.
    """
    fail_at: FaultHook = fault or (lambda point: None)
    started = time.perf_counter()
    with connect(database_url) as conn:
        registry.migrate_pipelines(conn)
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (_lock_key(pipeline_id),)).fetchone()
        if not got or not got[0]:
            raise PipelineBusy(pipeline_id)
        try:
            pipeline = registry.get_pipeline(conn, pipeline_id)
            if not pipeline.enabled:
                raise PipelineStopped(pipeline_id)
            try:
                if pipeline.last_log_id >= pipeline.ledger_last_log_id and not verify_after:
                    return SyncReport(pipeline.id, pipeline.ledger, None, pipeline.last_log_id, 0, {}, 0,
                                      time.perf_counter() - started)
                exporter = registry.get_exporter(conn, pipeline.exporter_id)
                with open_loader(exporter.driver, exporter.config, environ, fail_at) as loader:
                    loader.setup()
                    report = _sync(conn, database_url, pipeline, loader, batch_size, progress, fail_at, started,
                                   reader)
                    if verify_after:
                        report = replace(report, checks=verify(conn, loader, pipeline.ledger, report.to_log_id))
                return report
            except Exception as exc:  # recorded whatever it is, so `pipelines get` shows it; then re-raised
                registry.record_error(conn, pipeline_id, f"{type(exc).__name__}: {exc}")
                raise
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_lock_key(pipeline_id),))


def _sync(conn: psycopg.Connection, database_url: str, pipeline: registry.Pipeline, loader: Loader, batch_size: int,
          progress: Progress | None, fault: FaultHook, started: float,
          shared_reader: LogReader | None) -> SyncReport:
    cursor, target = pipeline.last_log_id, pipeline.ledger_last_log_id
    rows: Counter[str] = Counter()
    first: int | None = None
    if cursor < target:
        previous_hash, previous_version = _chain_anchor(conn, loader, pipeline)
        with nullcontext(shared_reader) if shared_reader else LogReader(database_url) as reader:
            while cursor < target:
                logs = reader.read(pipeline.ledger, after=cursor, up_to=target, limit=batch_size).to_pylist()
                if not logs:
                    raise LogGap(pipeline.ledger, cursor + 1, cursor)
                stored = [hashing.StoredLog(r["id"], r["type"], format_timestamp(r["date"]), r["idempotency_key"],
                                            r["data"], bytes.fromhex(r["hash"]), r["hash_version"]) for r in logs]
                broken = hashing.first_broken_link(pipeline.ledger, stored, previous=previous_hash,
                                                   previous_id=cursor, previous_version=previous_version)
                if broken is not None:
                    raise LogChainBroken(pipeline.ledger, broken.log_id, broken.reason)
                previous_hash, previous_version = stored[-1].hash, stored[-1].hash_version
                batch = transform(pipeline.ledger, logs, loader.fetch_current, loader.dialect.money_digits)
                fault("before_load")
                loader.load(batch, SyncState(pipeline.id, pipeline.ledger, batch.last_log_id, batch.last_log_hash,
                                             datetime.now(UTC)))
                fault("after_load")
                registry.advance_cursor(conn, pipeline.id, cursor, batch.last_log_id)
                first = batch.first_log_id if first is None else first
                cursor = batch.last_log_id
                rows.update(batch.row_counts())
                if progress:
                    progress(pipeline.id, cursor - pipeline.last_log_id, target - pipeline.last_log_id,
                             time.perf_counter() - started)
    after = registry.get_pipeline(conn, pipeline.id)
    return SyncReport(pipeline.id, pipeline.ledger, first, cursor, cursor - pipeline.last_log_id, dict(rows),
                      after.lag, time.perf_counter() - started)


def _chain_anchor(conn: psycopg.Connection, loader: Loader, pipeline: registry.Pipeline) -> tuple[bytes | None, int]:
    """The hash (and hash version) the first log after the cursor must link to.

    That is the ledger's stored hash of the log at the cursor; if the warehouse holds that log as its last,
    the hash it received must be the same, or the ledger's copy was altered after it was exported.
    """
    cursor = pipeline.last_log_id
    if cursor == 0:
        return None, 1
    link = reads.log_link(conn, pipeline.ledger, cursor)
    if link is None:
        raise LogChainBroken(pipeline.ledger, cursor, "the ledger no longer holds this exported log")
    state = loader.read_sync_state(pipeline.id)
    if state and state["last_log_id"] == cursor and state["last_log_hash"] != link[0].hex():
        raise LogChainBroken(pipeline.ledger, cursor, f"the warehouse received hash {state['last_log_hash'][:16]}… "
                                                      f"for it, the ledger now stores {link[0].hex()[:16]}…")
    return link


@dataclass(frozen=True)
class SyncFailure:
    pipeline_id: str
    error: str

    def to_json(self) -> dict[str, Any]:
        return {"pipelineID": self.pipeline_id, "error": self.error}


def sync_all(database_url: str, *, environ: Mapping[str, str], batch_size: int = DEFAULT_BATCH_SIZE,
             progress: Progress | None = None) -> tuple[list[SyncReport], list[SyncFailure]]:
    """Sync every enabled pipeline that has new logs; one failing pipeline does not hold the others back."""
    with connect(database_url) as conn:
        registry.migrate_pipelines(conn)
        pipelines = [p for p in registry.list_pipelines(conn) if p.enabled and p.lag > 0]
    reports: list[SyncReport] = []
    failures: list[SyncFailure] = []
    for p in pipelines:
        try:
            reports.append(sync_pipeline(database_url, p.id, environ=environ, batch_size=batch_size,
                                         progress=progress))
        except PipelineError as exc:  # recorded on the pipeline as lastError; reported, and the next one runs
            failures.append(SyncFailure(p.id, f"{type(exc).__name__}: {exc}"))
    return reports, failures


def follow(database_url: str, pipeline_ids: list[str] | None, *, environ: Mapping[str, str],
           on_report: Callable[[SyncReport], None], should_stop: Callable[[], bool] = lambda: False,
           idle_timeout: float = 30.0, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
    """Keep pipelines synced: wake on each commit's NOTIFY (and every `idle_timeout` seconds as a safety net)."""
    with connect(database_url) as listener, LogReader(database_url) as reader:
        listener.execute(f"LISTEN {LOGS_CHANNEL}")
        while not should_stop():
            with connect(database_url, migrate=False) as conn:
                pipelines = [p for p in registry.list_pipelines(conn)
                             if p.enabled and p.lag > 0 and (pipeline_ids is None or p.id in pipeline_ids)]
            for pipeline in pipelines:
                on_report(sync_pipeline(database_url, pipeline.id, environ=environ, batch_size=batch_size,
                                        reader=reader))
            if pipelines:
                continue  # more may have committed while we loaded
            deadline = time.monotonic() + idle_timeout
            for _ in listener.notifies(timeout=max(deadline - time.monotonic(), 0.01), stop_after=1):
                break
            # Drain what else arrived so one burst of commits causes one sync.
            for _ in listener.notifies(timeout=0.001):
                pass
