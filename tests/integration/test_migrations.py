"""Migrations are versioned, applied once, and upgrade an existing database in place."""

from __future__ import annotations

import psycopg

from ledger_core.db import ensure_database
from ledger_core.migrations import CORE_MIGRATIONS, migrate, migrate_core


def test_migrations_apply_once_and_upgrade(pg_admin_url):
    ensure_database(pg_admin_url, "ledger_migrations")
    url = pg_admin_url.rsplit("/", 1)[0] + "/ledger_migrations"
    with psycopg.connect(url, autocommit=True) as conn:
        assert migrate_core(conn) == len(CORE_MIGRATIONS)
        assert migrate_core(conn) == 0
        conn.execute("INSERT INTO ledger_core.ledgers (name) VALUES ('kept')")
        # A later release adds a step: only that step runs, existing data stays.
        steps = [*CORE_MIGRATIONS, "ALTER TABLE ledger_core.ledgers ADD COLUMN note text"]
        assert migrate(conn, "core", steps, "ledger_core") == 1
        assert conn.execute("SELECT name, note FROM ledger_core.ledgers").fetchall() == [("kept", None)]
        versions = conn.execute(
            "SELECT version FROM ledger_core.schema_migrations WHERE component = 'core' ORDER BY version"
        ).fetchall()
        assert [v for (v,) in versions] == list(range(1, len(steps) + 1))
