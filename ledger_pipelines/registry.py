"""Exporters and pipelines, stored beside the ledger in PostgreSQL (schema `ledger_pipelines`).

Formance semantics: an exporter is a driver plus its config; a pipeline connects one ledger to one
exporter and remembers `lastLogID`, the last log loaded. Stop and start keep the position; reset moves it
back (to 0 or a chosen log id); an exporter with pipelines cannot be deleted. Secrets are never stored:
a config value `{"env": "NAME"}` is read from the environment when the exporter runs.
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

from ledger_core.errors import LedgerNotFound, ValidationError
from ledger_core.migrations import migrate
from ledger_core.validation import format_timestamp, ledger_name
from ledger_pipelines.errors import (
    CursorMoved,
    ExporterInUse,
    ExporterNotFound,
    InvalidReset,
    PipelineAlreadyExists,
    PipelineNotFound,
)
from ledger_pipelines.loaders import prepare_config

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
)


def migrate_pipelines(conn: psycopg.Connection) -> int:
    return migrate(conn, "pipelines", PIPELINE_MIGRATIONS, "ledger_pipelines")


class Cadence(StrEnum):
    HOURLY = "hourly"
    DAILY = "daily"
    REALTIME = "realtime"


@dataclass(frozen=True)
class Exporter:
    id: str
    driver: str
    config: dict[str, Any]
    created_at: datetime

    def secret_names(self) -> list[str]:
        """The environment variables this exporter's config reads ({"env": NAME})."""
        return sorted(v["env"] for v in self.config.values() if isinstance(v, dict) and "env" in v)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "driver": self.driver, "config": self.config,
                "createdAt": format_timestamp(self.created_at)}


@dataclass(frozen=True)
class Pipeline:
    id: str
    ledger: str
    exporter_id: str
    last_log_id: int
    enabled: bool
    cadence: Cadence
    created_at: datetime
    last_sync_at: datetime | None
    last_error: str | None
    ledger_last_log_id: int

    @property
    def lag(self) -> int:
        """Logs committed in the ledger and not yet exported."""
        return max(self.ledger_last_log_id - self.last_log_id, 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "ledger": self.ledger, "exporterID": self.exporter_id, "lastLogID": self.last_log_id,
            "enabled": self.enabled, "createdAt": format_timestamp(self.created_at), "cadence": str(self.cadence),
            "lag": self.lag, "lastSyncAt": format_timestamp(self.last_sync_at) if self.last_sync_at else None,
            "lastError": self.last_error,
        }


ID = re.compile(r"[0-9a-f]{12}")


def _new_id() -> str:
    return uuid.uuid4().hex[:12]


def _well_formed(value: Any) -> bool:
    """Ids are 12 hex digits: anything else cannot exist, and is answered without a query."""
    return isinstance(value, str) and ID.fullmatch(value) is not None


def create_exporter(conn: psycopg.Connection, driver: str, config: Any, *, base_dir: Path | None = None) -> Exporter:
    """Validate and store an exporter; relative paths in its config are resolved against `base_dir` (the
    folder the user typed them in, default the working folder) and stored absolute."""
    checked = prepare_config(driver, config, base_dir or Path.cwd())
    row = conn.execute(
        """INSERT INTO ledger_pipelines.exporters (id, driver, config) VALUES (%s, %s, %s)
           RETURNING id, driver, config, created_at""",
        (_new_id(), driver, Jsonb(checked)),
    ).fetchone()
    assert row is not None
    return Exporter(*row)


def get_exporter(conn: psycopg.Connection, exporter_id: str) -> Exporter:
    if not _well_formed(exporter_id):
        raise ExporterNotFound(exporter_id)
    row = conn.execute(
        "SELECT id, driver, config, created_at FROM ledger_pipelines.exporters WHERE id = %s", (exporter_id,)
    ).fetchone()
    if row is None:
        raise ExporterNotFound(exporter_id)
    return Exporter(*row)


def list_exporters(conn: psycopg.Connection) -> list[Exporter]:
    rows = conn.execute(
        "SELECT id, driver, config, created_at FROM ledger_pipelines.exporters ORDER BY created_at, id"
    ).fetchall()
    return [Exporter(*r) for r in rows]


def delete_exporter(conn: psycopg.Connection, exporter_id: str) -> None:
    with conn.transaction():
        get_exporter(conn, exporter_id)
        attached = [r[0] for r in conn.execute(
            "SELECT id FROM ledger_pipelines.pipelines WHERE exporter_id = %s ORDER BY id FOR UPDATE",
            (exporter_id,))]
        if attached:
            raise ExporterInUse(exporter_id, attached)
        conn.execute("DELETE FROM ledger_pipelines.exporters WHERE id = %s", (exporter_id,))


_PIPELINE_SELECT = """
    SELECT p.id, p.ledger, p.exporter_id, p.last_log_id, p.enabled, p.cadence, p.created_at, p.last_sync_at,
           p.last_error, l.last_log_id
    FROM ledger_pipelines.pipelines p JOIN ledger_core.ledgers l ON l.name = p.ledger"""


def _pipeline(row: Any) -> Pipeline:
    values = list(row)
    values[5] = Cadence(values[5])
    return Pipeline(*values)


def create_pipeline(conn: psycopg.Connection, ledger: str, exporter_id: str,
                    cadence: str = Cadence.HOURLY) -> Pipeline:
    ledger_name(ledger)
    checked_cadence = _cadence(cadence)
    with conn.transaction():
        if conn.execute("SELECT 1 FROM ledger_core.ledgers WHERE name = %s", (ledger,)).fetchone() is None:
            raise LedgerNotFound(ledger)
        get_exporter(conn, exporter_id)
        existing = conn.execute(
            "SELECT id FROM ledger_pipelines.pipelines WHERE ledger = %s AND exporter_id = %s", (ledger, exporter_id)
        ).fetchone()
        if existing:
            raise PipelineAlreadyExists(ledger, exporter_id, existing[0])
        pipeline_id = _new_id()
        conn.execute(
            "INSERT INTO ledger_pipelines.pipelines (id, ledger, exporter_id, cadence) VALUES (%s, %s, %s, %s)",
            (pipeline_id, ledger, exporter_id, str(checked_cadence)),
        )
    return get_pipeline(conn, pipeline_id)


def _cadence(value: str) -> Cadence:
    try:
        return Cadence(value)
    except ValueError:
        raise ValidationError(f"must be one of {', '.join(c.value for c in Cadence)}", field="cadence") from None


def get_pipeline(conn: psycopg.Connection, pipeline_id: str) -> Pipeline:
    if not _well_formed(pipeline_id):
        raise PipelineNotFound(pipeline_id)
    row = conn.execute(_PIPELINE_SELECT + " WHERE p.id = %s", (pipeline_id,)).fetchone()
    if row is None:
        raise PipelineNotFound(pipeline_id)
    return _pipeline(row)


def list_pipelines(conn: psycopg.Connection, *, ledger: str | None = None) -> list[Pipeline]:
    if ledger:
        rows = conn.execute(_PIPELINE_SELECT + " WHERE p.ledger = %s ORDER BY p.created_at, p.id", (ledger,))
    else:
        rows = conn.execute(_PIPELINE_SELECT + " ORDER BY p.created_at, p.id")
    return [_pipeline(r) for r in rows.fetchall()]


def set_enabled(conn: psycopg.Connection, pipeline_id: str, enabled: bool) -> Pipeline:
    get_pipeline(conn, pipeline_id)
    updated = conn.execute(
        "UPDATE ledger_pipelines.pipelines SET enabled = %s WHERE id = %s RETURNING id", (enabled, pipeline_id)
    ).fetchone()
    if updated is None:
        raise PipelineNotFound(pipeline_id)
    return get_pipeline(conn, pipeline_id)


def set_cadence(conn: psycopg.Connection, pipeline_id: str, cadence: str) -> Pipeline:
    get_pipeline(conn, pipeline_id)
    updated = conn.execute(
        "UPDATE ledger_pipelines.pipelines SET cadence = %s WHERE id = %s RETURNING id",
        (str(_cadence(cadence)), pipeline_id),
    ).fetchone()
    if updated is None:
        raise PipelineNotFound(pipeline_id)
    return get_pipeline(conn, pipeline_id)


def reset_pipeline(conn: psycopg.Connection, pipeline_id: str, to_log_id: int = 0) -> Pipeline:
    """Move the cursor back so the next sync replays from `to_log_id + 1`; loads absorb the duplicates."""
    pipeline = get_pipeline(conn, pipeline_id)
    if to_log_id < 0 or to_log_id > pipeline.ledger_last_log_id:
        raise InvalidReset(
            f"cannot reset pipeline '{pipeline_id}' to log {to_log_id}: ledger '{pipeline.ledger}' has logs "
            f"1 to {pipeline.ledger_last_log_id}"
        )
    conn.execute(
        "UPDATE ledger_pipelines.pipelines SET last_log_id = %s, last_error = NULL WHERE id = %s",
        (to_log_id, pipeline_id),
    )
    return get_pipeline(conn, pipeline_id)


def delete_pipeline(conn: psycopg.Connection, pipeline_id: str) -> None:
    get_pipeline(conn, pipeline_id)
    deleted = conn.execute(
        "DELETE FROM ledger_pipelines.pipelines WHERE id = %s RETURNING id", (pipeline_id,)
    ).fetchone()
    if deleted is None:
        raise PipelineNotFound(pipeline_id)


def advance_cursor(conn: psycopg.Connection, pipeline_id: str, expected: int, new: int) -> None:
    """Move the cursor from `expected` to `new`, only if nobody moved it meanwhile (a reset, say)."""
    moved = conn.execute(
        """UPDATE ledger_pipelines.pipelines SET last_log_id = %s, last_sync_at = now(), last_error = NULL
           WHERE id = %s AND last_log_id = %s RETURNING id""",
        (new, pipeline_id, expected),
    ).fetchone()
    if moved is None:
        raise CursorMoved(pipeline_id, expected)


def record_error(conn: psycopg.Connection, pipeline_id: str, message: str) -> None:
    conn.execute("UPDATE ledger_pipelines.pipelines SET last_error = %s WHERE id = %s", (message[:2000], pipeline_id))
