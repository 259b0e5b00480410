"""Connections to the ledger's PostgreSQL database, and the local server used when none is configured."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg

from ledger_core.localpg import LocalServer, ensure_server
from ledger_core.migrations import migrate_all, require

LOCAL_DATABASE = "ledger"


def local_data_dir(workdir: Path) -> Path:
    """Where the project's own server keeps its files for a working folder (LEDGER_HOME)."""
    return (workdir / ".ledger" / "pg").resolve()


def local_database_url(workdir: Path, *, pg_bin: str | None = None,
                       on_start: Callable[[LocalServer], None] | None = None) -> str:
    """Start (or reuse) the project's own server under `workdir/.ledger/pg` and return its URL.

    `on_start` hears about a server this call started (or created), so an edge can say which one is used.
    """
    server = ensure_server(local_data_dir(workdir), bin_dir=pg_bin)
    if server.started and on_start:
        on_start(server)
    ensure_database(server.url(), LOCAL_DATABASE)
    url = server.url(LOCAL_DATABASE)
    with connect(url, check_schema=False) as conn:  # the project's own server keeps itself up to date
        migrate_all(conn)
    return url


def ensure_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        found = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if found is None:
            admin.execute(f'CREATE DATABASE "{name}"')


def connect(url: str, *, check_schema: bool = True) -> psycopg.Connection:
    """An autocommit connection (the write path opens its own transactions), whose core schema is checked to be
    the one this code expects (SchemaOutOfDate says what to run otherwise); migrating is `migrate_all`'s job."""
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SET TIME ZONE 'UTC'")
    if check_schema:
        try:
            require(conn, "core")
        except BaseException:
            conn.close()
            raise
    return conn
