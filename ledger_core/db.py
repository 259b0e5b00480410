"""Connections to the ledger's PostgreSQL database, and the local server used when none is configured."""

from __future__ import annotations

from pathlib import Path

import psycopg

from ledger_core.localpg import ensure_server
from ledger_core.migrations import migrate_core

LOCAL_DATABASE = "ledger"


def local_database_url(workdir: Path, *, pg_bin: str | None = None) -> str:
    """Start (or reuse) the project's own server under `workdir/.ledger/pg` and return its URL."""
    server = ensure_server(workdir / ".ledger" / "pg", bin_dir=pg_bin)
    ensure_database(server.url(), LOCAL_DATABASE)
    return server.url(LOCAL_DATABASE)


def ensure_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        found = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if found is None:
            admin.execute(f'CREATE DATABASE "{name}"')


def connect(url: str, *, migrate: bool = True) -> psycopg.Connection:
    """An autocommit connection (the write path opens its own transactions), with the schema up to date."""
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SET TIME ZONE 'UTC'")
    if migrate:
        migrate_core(conn)
    return conn
