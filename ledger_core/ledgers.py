"""Creating and listing ledgers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from ledger_core.errors import LedgerAlreadyExists, LedgerNotFound
from ledger_core.validation import format_timestamp, ledger_name, metadata, text


@dataclass(frozen=True)
class LedgerInfo:
    name: str
    created_at: datetime
    metadata: dict[str, str]
    last_log_id: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "addedAt": format_timestamp(self.created_at), "metadata": self.metadata,
                "lastLogID": self.last_log_id}


def create_ledger(conn: psycopg.Connection, name: str, meta: Any = None) -> LedgerInfo:
    ledger_name(name)
    checked = metadata(meta)
    row = conn.execute(
        """INSERT INTO ledger_core.ledgers (name, metadata) VALUES (%s, %s::jsonb)
           ON CONFLICT (name) DO NOTHING RETURNING name, created_at, metadata, last_log_id""",
        (name, Jsonb(checked)),
    ).fetchone()
    if row is None:
        raise LedgerAlreadyExists(name)
    return LedgerInfo(*row)


_COLUMNS = "name, created_at, metadata, last_log_id"


def _one(conn: psycopg.Connection, name: str, sql: str, params: tuple[Any, ...]) -> LedgerInfo:
    """The ledger row `sql` returns (its `{columns}` filled in), or LedgerNotFound."""
    ledger_name(name)
    row = conn.execute(sql.format(columns=_COLUMNS), params).fetchone()
    if row is None:
        raise LedgerNotFound(name)
    return LedgerInfo(*row)


def get_ledger(conn: psycopg.Connection, name: str) -> LedgerInfo:
    return _one(conn, name, "SELECT {columns} FROM ledger_core.ledgers WHERE name = %s", (name,))


def update_ledger_metadata(conn: psycopg.Connection, name: str, meta: Any) -> LedgerInfo:
    """Merge `meta` into the ledger's own metadata (not logged: it describes the ledger, not its money)."""
    return _one(conn, name, "UPDATE ledger_core.ledgers SET metadata = metadata || %s::jsonb WHERE name = %s "
                            "RETURNING {columns}", (Jsonb(metadata(meta)), name))


def delete_ledger_metadata(conn: psycopg.Connection, name: str, key: str) -> LedgerInfo:
    return _one(conn, name, "UPDATE ledger_core.ledgers SET metadata = metadata - %s WHERE name = %s "
                            "RETURNING {columns}", (text(key, field="key"), name))


def list_ledgers(conn: psycopg.Connection) -> list[LedgerInfo]:
    rows = conn.execute(
        "SELECT name, created_at, metadata, last_log_id FROM ledger_core.ledgers ORDER BY name"
    ).fetchall()
    return [LedgerInfo(*r) for r in rows]
