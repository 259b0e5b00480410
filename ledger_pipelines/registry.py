"""Exporters and pipelines, stored beside the ledger in PostgreSQL (schema `ledger_pipelines`).

Formance semantics: an exporter is a driver plus its config; a pipeline connects one ledger to one
exporter and remembers `lastLogID`, the last log loaded. Stop and start keep the position; reset moves it
back (to 0 or a chosen log id); an exporter with pipelines cannot be deleted. Secrets are never stored:
a config value `{"env": "NAME"}` is read from the environment when the exporter runs.

Exporters and pipelines have an id (12 hex digits) and a readable, unique name (`warehouse`, `shop-warehouse`);
every function that takes one takes either, and names never look like ids, so the two cannot be confused.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from ledger_core import export, migrations
from ledger_core.errors import LedgerNotFound, ValidationError
from ledger_core.validation import format_timestamp, ledger_name
from ledger_pipelines.errors import (
    CursorMoved,
    ExporterInUse,
    ExporterNotFound,
    InvalidExporterConfig,
    InvalidReset,
    NameTaken,
    PipelineAlreadyExists,
    PipelineNotFound,
)
from ledger_pipelines.loaders import is_log_sink, prepare_config

PIPELINE_MIGRATIONS = (
    """
    CREATE TABLE ledger_pipelines.exporters (
        id         text PRIMARY KEY,
        driver     text NOT NULL,
        config     jsonb NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE ledger_pipelines.pipelines (
        id           text PRIMARY KEY,
        ledger       text NOT NULL REFERENCES ledger_core.ledgers(name),
        exporter_id  text NOT NULL REFERENCES ledger_pipelines.exporters(id),
        last_log_id  bigint NOT NULL DEFAULT 0,
        enabled      boolean NOT NULL DEFAULT true,
        cadence      text NOT NULL DEFAULT 'hourly' CHECK (cadence IN ('hourly', 'daily', 'realtime')),
        created_at   timestamptz NOT NULL DEFAULT now(),
        last_sync_at timestamptz,
        last_error   text,
        UNIQUE (ledger, exporter_id)
    );
    """,
    # 2: sync history (every attempt, whoever ran it) and the code of the last failure, so a stalled or
    # failing pipeline is visible and a scheduler can tell a transient failure from a terminal one.
    """
    ALTER TABLE ledger_pipelines.pipelines ADD COLUMN last_error_code text, ADD COLUMN last_error_at timestamptz;
    COMMENT ON COLUMN ledger_pipelines.pipelines.last_sync_at IS 'end of the last successful sync';
    CREATE TABLE ledger_pipelines.sync_runs (
        id           bigserial PRIMARY KEY,
        pipeline_id  text NOT NULL REFERENCES ledger_pipelines.pipelines(id) ON DELETE CASCADE,
        trigger      text NOT NULL,
        started_at   timestamptz NOT NULL,
        ended_at     timestamptz NOT NULL DEFAULT now(),
        from_log_id  bigint,
        to_log_id    bigint NOT NULL,
        logs         bigint NOT NULL DEFAULT 0,
        rows         jsonb NOT NULL DEFAULT '{}',
        outcome      text NOT NULL CHECK (outcome IN ('succeeded', 'failed')),
        error_code   text,
        error        text,
        attempts     integer NOT NULL DEFAULT 1,
        note         text
    );
    CREATE INDEX sync_runs_pipeline ON ledger_pipelines.sync_runs (pipeline_id, id DESC);
    """,
    # 3: readable, unique names; existing exporters and pipelines are named after their driver or ledger.
    """
    ALTER TABLE ledger_pipelines.exporters ADD COLUMN name text;
    UPDATE ledger_pipelines.exporters SET name = driver || '-' || left(id, 6);
    ALTER TABLE ledger_pipelines.exporters ALTER COLUMN name SET NOT NULL;
    ALTER TABLE ledger_pipelines.exporters ADD CONSTRAINT exporters_name UNIQUE (name);
    ALTER TABLE ledger_pipelines.pipelines ADD COLUMN name text;
    UPDATE ledger_pipelines.pipelines SET name = left(ledger, 100) || '-' || left(id, 6);
    ALTER TABLE ledger_pipelines.pipelines ALTER COLUMN name SET NOT NULL;
    ALTER TABLE ledger_pipelines.pipelines ADD CONSTRAINT pipelines_name UNIQUE (name);
    """,
)


migrations.register("pipelines", PIPELINE_MIGRATIONS, "ledger_pipelines")


def migrate_pipelines(conn: psycopg.Connection) -> int:
    """Apply the pipelines' missing migration steps (what `ledgerctl db migrate` does, with the core's)."""
    return migrations.migrate_component(conn, "pipelines")


def require_schema(conn: psycopg.Connection) -> None:
    """The pipelines' schema is the one this code expects (cheap, cached); else SchemaOutOfDate says what to run."""
    migrations.require(conn, "core", "pipelines")


class Cadence(StrEnum):
    HOURLY = "hourly"
    DAILY = "daily"
    REALTIME = "realtime"

    @property
    def allowed_staleness(self) -> float:
        """Seconds a committed log may wait before a pipeline of this cadence counts as behind: one period of
        its schedule plus a margin for the sync itself (realtime: the sensor's ticks and a few retries)."""
        return {Cadence.REALTIME: 300.0, Cadence.HOURLY: 2 * 3600.0, Cadence.DAILY: 26 * 3600.0}[self]


@dataclass(frozen=True)
class Exporter:
    id: str
    name: str
    driver: str
    config: dict[str, Any]
    created_at: datetime

    def secret_names(self) -> list[str]:
        """The environment variables this exporter's config reads ({"env": NAME})."""
        return sorted(v["env"] for v in self.config.values() if isinstance(v, dict) and "env" in v)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "driver": self.driver, "config": self.config,
                "createdAt": format_timestamp(self.created_at)}


@dataclass(frozen=True)
class Pipeline:
    id: str
    name: str
    ledger: str
    exporter_id: str
    last_log_id: int
    enabled: bool
    cadence: Cadence
    created_at: datetime
    last_sync_at: datetime | None  # end of the last successful sync
    last_error: str | None  # set by a failed sync, cleared by the next successful one
    last_error_code: str | None
    last_error_at: datetime | None
    ledger_last_log_id: int
    seconds_since_sync: float | None  # since last_sync_at, by the database's clock, when read
    staleness: float  # seconds since the oldest log not yet exported was committed (0: nothing waits)

    @property
    def lag(self) -> int:
        """Logs committed in the ledger and not yet exported."""
        return max(self.ledger_last_log_id - self.last_log_id, 0)

    @property
    def failing(self) -> bool:
        """The last sync failed (and none succeeded since)."""
        return self.last_error is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "ledger": self.ledger, "exporterID": self.exporter_id,
            "lastLogID": self.last_log_id,
            "enabled": self.enabled, "createdAt": format_timestamp(self.created_at), "cadence": str(self.cadence),
            "lag": self.lag, "lastSyncAt": format_timestamp(self.last_sync_at) if self.last_sync_at else None,
            "secondsSinceLastSync": None if self.seconds_since_sync is None else round(self.seconds_since_sync, 1),
            "failing": self.failing, "lastError": self.last_error, "lastErrorCode": self.last_error_code,
            "lastErrorAt": format_timestamp(self.last_error_at) if self.last_error_at else None,
            "stalenessSeconds": round(self.staleness, 1), "fresh": self.fresh,
        }

    @property
    def fresh(self) -> bool:
        """Nothing committed waits longer than the pipeline's cadence allows."""
        return self.staleness <= self.cadence.allowed_staleness


ID = re.compile(r"[0-9a-f]{12}")
NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_-]{0,126}")


def _new_id() -> str:
    return uuid.uuid4().hex[:12]


def _lookup(ref: Any) -> tuple[str, str] | None:
    """The column and value an id or a name is found by; None for what can be neither (no query needed)."""
    if not isinstance(ref, str):
        return None
    if ID.fullmatch(ref):
        return "id", ref
    return ("name", ref) if NAME.fullmatch(ref) else None


def check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value) or ID.fullmatch(value):
        raise ValidationError(f"{what} names are 1 to 127 letters, digits, '_' or '-', starting with a letter or "
                              f"digit, and not 12 hex digits (that is an id); got {value!r}", field="name")
    return value


def _free_name(conn: psycopg.Connection, table: str, base: str) -> str:
    """`base`, or `base-2`, `base-3`…: the first name no row of `table` has."""
    base = re.sub(r"[^a-zA-Z0-9_-]", "-", base)[:120].strip("-_") or "x"
    taken = {r[0] for r in conn.execute(f"SELECT name FROM ledger_pipelines.{table} WHERE name = %s "
                                        f"OR name LIKE %s", (base, base.replace("_", r"\_") + "-%"))}
    if base not in taken and not ID.fullmatch(base):
        return base
    return next(f"{base}-{n}" for n in range(2, len(taken) + 3) if f"{base}-{n}" not in taken)


_EXPORTER_COLUMNS = "id, name, driver, config, created_at"


def create_exporter(conn: psycopg.Connection, driver: str, config: Any, *, name: str | None = None,
                    base_dir: Path | None = None) -> Exporter:
    """Validate and store an exporter; relative paths in its config are resolved against `base_dir` (the
    folder the user typed them in, default the working folder) and stored absolute. Unnamed, it is named
    after its driver (`duckdb`, `duckdb-2`, …)."""
    if name is not None:
        check_name(name, "exporter")
    checked = prepare_config(driver, config, base_dir or Path.cwd())
    try:
        row = conn.execute(
            f"""INSERT INTO ledger_pipelines.exporters (id, name, driver, config) VALUES (%s, %s, %s, %s)
                RETURNING {_EXPORTER_COLUMNS}""",
            (_new_id(), name or _free_name(conn, "exporters", driver), driver, Jsonb(checked)),
        ).fetchone()
    except psycopg.errors.UniqueViolation:
        raise NameTaken("exporter", name or driver) from None
    assert row is not None
    return Exporter(*row)


def update_exporter(conn: psycopg.Connection, exporter_id: str, changes: Any, *,
                    base_dir: Path | None = None) -> Exporter:
    """Change some settings of an exporter: the keys given replace the stored ones (null removes one).

    The result is validated as a whole, as at creation; its pipelines pick it up at their next sync.
    """
    exporter = get_exporter(conn, exporter_id)
    if not isinstance(changes, dict):
        raise InvalidExporterConfig(exporter.driver, "the changes must be a JSON object")
    merged = {k: v for k, v in {**exporter.config, **changes}.items() if v is not None}
    checked = prepare_config(exporter.driver, merged, base_dir or Path.cwd())
    row = conn.execute(
        f"UPDATE ledger_pipelines.exporters SET config = %s WHERE id = %s RETURNING {_EXPORTER_COLUMNS}",
        (Jsonb(checked), exporter.id),
    ).fetchone()
    if row is None:
        raise ExporterNotFound(exporter_id)
    return Exporter(*row)


def get_exporter(conn: psycopg.Connection, exporter_ref: str) -> Exporter:
    """The exporter with this id or name."""
    lookup = _lookup(exporter_ref)
    if lookup is None:
        raise ExporterNotFound(exporter_ref)
    row = conn.execute(f"SELECT {_EXPORTER_COLUMNS} FROM ledger_pipelines.exporters WHERE {lookup[0]} = %s",
                       (lookup[1],)).fetchone()
    if row is None:
        raise ExporterNotFound(exporter_ref)
    return Exporter(*row)


def list_exporters(conn: psycopg.Connection) -> list[Exporter]:
    rows = conn.execute(
        f"SELECT {_EXPORTER_COLUMNS} FROM ledger_pipelines.exporters ORDER BY created_at, id"
    ).fetchall()
    return [Exporter(*r) for r in rows]


def delete_exporter(conn: psycopg.Connection, exporter_ref: str) -> None:
    with conn.transaction():
        exporter = get_exporter(conn, exporter_ref)
        attached = [r[0] for r in conn.execute(
            "SELECT name FROM ledger_pipelines.pipelines WHERE exporter_id = %s ORDER BY name FOR UPDATE",
            (exporter.id,))]
        if attached:
            raise ExporterInUse(exporter.name, attached)
        conn.execute("DELETE FROM ledger_pipelines.exporters WHERE id = %s", (exporter.id,))


_PIPELINE_SELECT = """
    SELECT p.id, p.name, p.ledger, p.exporter_id, p.last_log_id, p.enabled, p.cadence, p.created_at, p.last_sync_at,
           p.last_error, p.last_error_code, p.last_error_at, clock_timestamp()
    FROM ledger_pipelines.pipelines p"""


def _pipelines(conn: psycopg.Connection, rows: list[Any]) -> list[Pipeline]:
    """Pipelines from their rows, with each ledger's head and how long its oldest unexported log has waited."""
    ahead = export.progress(conn, [(row[2], row[4]) for row in rows])
    pipelines = []
    for row in rows:
        *values, now = row
        values[6] = Cadence(values[6])
        progress = ahead.get((row[2], row[4]), export.Progress(0, None))
        since_sync = (now - values[8]).total_seconds() if values[8] else None
        waited = (now - progress.oldest_waiting_at).total_seconds() if progress.oldest_waiting_at else 0.0
        pipelines.append(Pipeline(*values, progress.head, since_sync, max(waited, 0.0)))
    return pipelines


def create_pipeline(conn: psycopg.Connection, ledger: str, exporter_ref: str,
                    cadence: str = Cadence.HOURLY, *, name: str | None = None) -> Pipeline:
    """Connect `ledger` to an exporter (by id or name). Unnamed, it is named `<ledger>-<exporter name>`."""
    ledger_name(ledger)
    checked_cadence = _cadence(cadence)
    if name is not None:
        check_name(name, "pipeline")
    with conn.transaction():
        if not export.ledger_exists(conn, ledger):
            raise LedgerNotFound(ledger)
        exporter = get_exporter(conn, exporter_ref)
        existing = conn.execute(
            "SELECT name FROM ledger_pipelines.pipelines WHERE ledger = %s AND exporter_id = %s", (ledger, exporter.id)
        ).fetchone()
        if existing:
            raise PipelineAlreadyExists(ledger, exporter.name, existing[0])
        pipeline_id = _new_id()
        try:
            with conn.transaction():
                conn.execute(
                    """INSERT INTO ledger_pipelines.pipelines (id, name, ledger, exporter_id, cadence)
                       VALUES (%s, %s, %s, %s, %s)""",
                    (pipeline_id, name or _free_name(conn, "pipelines", f"{ledger}-{exporter.name}"), ledger,
                     exporter.id, str(checked_cadence)),
                )
        except psycopg.errors.UniqueViolation:
            raise NameTaken("pipeline", name or ledger) from None
    return get_pipeline(conn, pipeline_id)


def _cadence(value: str) -> Cadence:
    try:
        return Cadence(value)
    except ValueError:
        raise ValidationError(f"must be one of {', '.join(c.value for c in Cadence)}", field="cadence") from None


def get_pipeline(conn: psycopg.Connection, pipeline_ref: str) -> Pipeline:
    """The pipeline with this id or name."""
    lookup = _lookup(pipeline_ref)
    if lookup is None:
        raise PipelineNotFound(pipeline_ref)
    row = conn.execute(_PIPELINE_SELECT + f" WHERE p.{lookup[0]} = %s", (lookup[1],)).fetchone()
    if row is None:
        raise PipelineNotFound(pipeline_ref)
    return _pipelines(conn, [row])[0]


def list_pipelines(conn: psycopg.Connection, *, ledger: str | None = None,
                   warehouses_only: bool = False) -> list[Pipeline]:
    """Pipelines, oldest first; `warehouses_only` leaves out those whose exporter receives the logs as they are
    (`http`): they have no tables, so they are not warehouse assets (they run under `ledgerctl sync`)."""
    if ledger:
        rows = conn.execute(_PIPELINE_SELECT + " WHERE p.ledger = %s ORDER BY p.created_at, p.id", (ledger,))
    else:
        rows = conn.execute(_PIPELINE_SELECT + " ORDER BY p.created_at, p.id")
    pipelines = _pipelines(conn, rows.fetchall())
    if warehouses_only:
        sinks = {e.id for e in list_exporters(conn) if is_log_sink(e.driver)}
        pipelines = [p for p in pipelines if p.exporter_id not in sinks]
    return pipelines


def set_enabled(conn: psycopg.Connection, pipeline_ref: str, enabled: bool) -> Pipeline:
    pipeline = get_pipeline(conn, pipeline_ref)
    conn.execute("UPDATE ledger_pipelines.pipelines SET enabled = %s WHERE id = %s", (enabled, pipeline.id))
    return get_pipeline(conn, pipeline.id)


def set_cadence(conn: psycopg.Connection, pipeline_ref: str, cadence: str) -> Pipeline:
    checked = _cadence(cadence)
    pipeline = get_pipeline(conn, pipeline_ref)
    conn.execute("UPDATE ledger_pipelines.pipelines SET cadence = %s WHERE id = %s", (str(checked), pipeline.id))
    return get_pipeline(conn, pipeline.id)


def reset_pipeline(conn: psycopg.Connection, pipeline_ref: str, to_log_id: int = 0) -> Pipeline:
    """Move the cursor back so the next sync replays from `to_log_id + 1`; loads absorb the duplicates.

    Only backwards (or to where it is): moving it forward would skip logs for good.
    """
    pipeline = get_pipeline(conn, pipeline_ref)
    if to_log_id < 0 or to_log_id > pipeline.last_log_id:
        raise InvalidReset(
            f"cannot reset pipeline '{pipeline.name}' to log {to_log_id}: a reset only moves the cursor back, "
            f"and it stands at log {pipeline.last_log_id} (give 0 to {pipeline.last_log_id}; logs are never skipped)"
        )
    move_cursor(conn, pipeline.id, pipeline.last_log_id, to_log_id)
    return get_pipeline(conn, pipeline.id)


def delete_pipeline(conn: psycopg.Connection, pipeline_ref: str) -> None:
    pipeline = get_pipeline(conn, pipeline_ref)
    conn.execute("DELETE FROM ledger_pipelines.pipelines WHERE id = %s", (pipeline.id,))


def move_cursor(conn: psycopg.Connection, pipeline_id: str, expected: int, new: int) -> None:
    """Move the cursor from `expected` to `new`, only if nobody moved it meanwhile (a reset, say)."""
    moved = conn.execute(
        "UPDATE ledger_pipelines.pipelines SET last_log_id = %s WHERE id = %s AND last_log_id = %s RETURNING id",
        (new, pipeline_id, expected),
    ).fetchone()
    if moved is None:
        raise CursorMoved(pipeline_id, expected)


@dataclass(frozen=True)
class SyncRun:
    """One sync attempt, as the history keeps it."""

    id: int
    pipeline_id: str
    trigger: str  # cli, follow, dagster, api
    started_at: datetime
    ended_at: datetime
    from_log_id: int | None
    to_log_id: int
    logs: int
    rows: dict[str, int]
    outcome: str  # succeeded or failed
    error_code: str | None
    error: str | None
    attempts: int
    note: str | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "pipelineID": self.pipeline_id, "trigger": self.trigger,
                "startedAt": format_timestamp(self.started_at), "endedAt": format_timestamp(self.ended_at),
                "seconds": round((self.ended_at - self.started_at).total_seconds(), 3),
                "fromLogID": self.from_log_id, "toLogID": self.to_log_id, "logs": self.logs, "rows": self.rows,
                "outcome": self.outcome, "errorCode": self.error_code, "error": self.error,
                "attempts": self.attempts, "note": self.note}


_RUN_COLUMNS = """id, pipeline_id, trigger, started_at, ended_at, from_log_id, to_log_id, logs, rows, outcome,
                  error_code, error, attempts, note"""


def record_sync(conn: psycopg.Connection, pipeline_id: str, *, trigger: str, started_at: datetime,
                from_log_id: int | None, to_log_id: int, logs: int, rows: dict[str, int], attempts: int,
                note: str | None, error_code: str | None = None, error: str | None = None) -> SyncRun:
    """Append one attempt to the history and set the pipeline's health: success clears its error."""
    with conn.transaction():
        if error_code is None:
            conn.execute("""UPDATE ledger_pipelines.pipelines SET last_sync_at = clock_timestamp(), last_error = NULL,
                                   last_error_code = NULL, last_error_at = NULL WHERE id = %s""", (pipeline_id,))
        else:
            conn.execute("""UPDATE ledger_pipelines.pipelines SET last_error = %s, last_error_code = %s,
                                   last_error_at = clock_timestamp() WHERE id = %s""",
                         ((error or "")[:2000], error_code, pipeline_id))
        row = conn.execute(
            f"""INSERT INTO ledger_pipelines.sync_runs (pipeline_id, trigger, started_at, ended_at, from_log_id,
                    to_log_id, logs, rows, outcome, error_code, error, attempts, note)
                SELECT %s, %s, %s, clock_timestamp(), %s, %s, %s, %s, %s, %s, %s, %s, %s
                WHERE EXISTS (SELECT 1 FROM ledger_pipelines.pipelines WHERE id = %s)
                RETURNING {_RUN_COLUMNS}""",
            (pipeline_id, trigger, started_at, from_log_id, to_log_id, logs, Jsonb(rows),
             "failed" if error_code else "succeeded", error_code, (error or None) and error[:2000], attempts, note,
             pipeline_id),
        ).fetchone()
    if row is None:
        raise PipelineNotFound(pipeline_id)
    return SyncRun(*row)


def sync_history(conn: psycopg.Connection, pipeline_ref: str, *, limit: int = 20,
                 after_id: int = 0) -> list[SyncRun]:
    """The pipeline's sync attempts, newest first (`after_id`: only those recorded after that one)."""
    pipeline_id = get_pipeline(conn, pipeline_ref).id
    if not 1 <= limit <= 10_000:
        raise ValidationError("must be between 1 and 10000", field="limit")
    rows = conn.execute(
        f"""SELECT {_RUN_COLUMNS} FROM ledger_pipelines.sync_runs WHERE pipeline_id = %s AND id > %s
            ORDER BY id DESC LIMIT %s""", (pipeline_id, after_id, limit)).fetchall()
    return [SyncRun(*r) for r in rows]


def sync_runs_after(conn: psycopg.Connection, after_id: int, *, limit: int = 200) -> list[SyncRun]:
    """Every pipeline's sync attempts recorded after `after_id`, oldest first: what a scheduler reports on."""
    rows = conn.execute(f"SELECT {_RUN_COLUMNS} FROM ledger_pipelines.sync_runs WHERE id > %s ORDER BY id LIMIT %s",
                        (after_id, limit)).fetchall()
    return [SyncRun(*r) for r in rows]


def last_sync_run_id(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT coalesce(max(id), 0) FROM ledger_pipelines.sync_runs").fetchone()
    return int(row[0]) if row else 0
