"""Migrations are versioned, applied once, and upgrade an existing database in place."""

from __future__ import annotations

import json

import psycopg
import pytest

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


def test_migration_4_builds_daily_volumes_from_the_moves_written_before_it(pg_admin_url):
    """A database written by the per-move writer (effective volumes on each move): the upgrade sums its moves per
    (account, asset, UTC day), drops the per-move columns, and balances as of any time stay what they were."""
    from ledger_core import reads
    from ledger_core.validation import timestamp

    ensure_database(pg_admin_url, "ledger_migration_4")
    url = pg_admin_url.rsplit("/", 1)[0] + "/ledger_migration_4"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS ledger_core CASCADE")
        assert migrate(conn, "core", CORE_MIGRATIONS[:3], "ledger_core") == 3
        conn.execute("INSERT INTO ledger_core.ledgers (name) VALUES ('old')")
        # world -> a 100 on 1 March, a -> b 30 on 10 March, then world -> a 7 backdated to 5 March (23:30 UTC).
        moves = [(1, "world", True, 100, "2024-03-01T10:00:00Z"), (1, "a", False, 100, "2024-03-01T10:00:00Z"),
                 (2, "a", True, 30, "2024-03-10T00:00:00Z"), (2, "b", False, 30, "2024-03-10T00:00:00Z"),
                 (3, "world", True, 7, "2024-03-05T23:30:00Z"), (3, "a", False, 7, "2024-03-05T23:30:00Z")]
        for tx, account, is_source, amount, at in moves:
            conn.execute("""INSERT INTO ledger_core.moves (ledger, transaction_id, posting_index, account, asset,
                                amount, is_source, effective_date, insertion_date, post_commit_input,
                                post_commit_output) VALUES ('old', %s, 0, %s, 'USD/2', %s, %s, %s, now(), 0, 0)""",
                         (tx, account, amount, is_source, at))
        assert migrate_core(conn) == len(CORE_MIGRATIONS) - 3
        days = conn.execute("""SELECT account, day::text, input::text, output::text FROM ledger_core.daily_volumes
                               ORDER BY account, day""").fetchall()
        assert days == [("a", "2024-03-01", "100", "0"), ("a", "2024-03-05", "7", "0"), ("a", "2024-03-10", "0", "30"),
                        ("b", "2024-03-10", "30", "0"), ("world", "2024-03-01", "0", "100"),
                        ("world", "2024-03-05", "0", "7")]
        columns = {c for (c,) in conn.execute("""SELECT column_name FROM information_schema.columns
                                                  WHERE table_schema = 'ledger_core' AND table_name = 'moves'""")}
        assert "post_commit_effective_input" not in columns
        expected = {"2024-03-05T23:00:00Z": 100, "2024-03-05T23:30:00Z": 107, "2024-03-11T00:00:00Z": 77}
        for at, balance in expected.items():
            [a] = [b for b in reads.balances(conn, "old", effective_at=timestamp(at)) if b.address == "a"]
            assert a.volumes.balance == balance, at


def test_a_chain_of_version_1_logs_continues_in_version_2(conn, ledger, tmp_path):
    """A database from before migration 3: its logs keep their version-1 hashes, new logs are version 2, and
    both verifications, the deep check and a sync accept the mixed chain; a version-1 log cannot come back."""
    from ledger_core import hashing, reads
    from ledger_core.audit import verify_deep
    from ledger_core.errors import ChainBroken, LedgerInconsistent
    from ledger_pipelines import registry
    from ledger_pipelines.sync import sync_pipeline
    from tests.helpers import posting, send

    for i in range(3):
        send(conn, ledger, posting("world", f"users:{i}", 10 + i), metadata={"n": str(i)})
    previous = None
    for log in list(reads.iter_stored_logs(conn, ledger)):  # rewrite them as the old writer hashed them
        previous = hashing.chain_hash(previous, hashing.canonical_v1(
            ledger=ledger, log_id=log.id, log_type=log.type, date=log.date, idempotency_key=log.idempotency_key,
            data=json.loads(log.data_text)))
        conn.execute("UPDATE ledger_core.logs SET hash = %s, hash_version = 1 WHERE ledger = %s AND id = %s",
                     (previous, ledger, log.id))
    conn.execute("UPDATE ledger_core.ledgers SET last_log_hash = %s WHERE name = %s", (previous, ledger))
    send(conn, ledger, posting("users:1", "users:2", 5))
    versions = [v for (v,) in conn.execute("SELECT hash_version FROM ledger_core.logs WHERE ledger = %s ORDER BY id",
                                           (ledger,))]
    assert versions == [1, 1, 1, 2]
    assert reads.verify_chain(conn, ledger).logs == reads.verify_chain(conn, ledger, in_database=False).logs == 4
    verify_deep(conn, ledger)
    registry.migrate_pipelines(conn)
    exporter = registry.create_exporter(conn, "duckdb", {"path": str(tmp_path / "w.duckdb")})
    pipeline = registry.create_pipeline(conn, ledger, exporter.id)
    assert sync_pipeline(conn.info.dsn, pipeline.id, environ={}).to_log_id == 4
    # Version 1 does not cover volumes; the replay does.
    conn.execute("""UPDATE ledger_core.logs
                    SET data = jsonb_set(data, '{transaction,postCommitVolumes,users:0,USD/2,input}', '99')
                    WHERE ledger = %s AND id = 1""", (ledger,))
    reads.verify_chain(conn, ledger)
    with pytest.raises(LedgerInconsistent, match="transactions"):
        verify_deep(conn, ledger)
    conn.execute("UPDATE ledger_core.logs SET hash_version = 1 WHERE ledger = %s AND id = 4", (ledger,))
    for in_database in (True, False):
        with pytest.raises(ChainBroken, match="log 4"):
            reads.verify_chain(conn, ledger, in_database=in_database)


def _ledgerctl(url: str, *args: str):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "ledger_core.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "LEDGER_DATABASE_URL": url}, stdin=subprocess.DEVNULL, timeout=120)


def test_commands_never_migrate_and_say_what_to_run(pg_admin_url):
    import uuid

    name = "unmigrated_" + uuid.uuid4().hex[:8]
    ensure_database(pg_admin_url, name)
    url = pg_admin_url.rsplit("/", 1)[0] + "/" + name
    refused = _ledgerctl(url, "ledgers", "list")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: SCHEMA_OUT_OF_DATE: the ledger database's core schema is at version 0,")
    assert "run `ledgerctl db migrate`" in refused.stderr
    with psycopg.connect(url, autocommit=True) as conn:  # nothing was created by the refused command
        assert conn.execute("SELECT to_regnamespace('ledger_core')").fetchone() == (None,)
    migrated = _ledgerctl(url, "db", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert json.loads(migrated.stdout)["versions"] == {"core": len(CORE_MIGRATIONS), "pipelines": 3, "api": 1}
    assert json.loads(_ledgerctl(url, "db", "migrate").stdout)["applied"] == {"core": 0, "pipelines": 0, "api": 0}
    assert _ledgerctl(url, "ledgers", "list").stdout.strip() == "[]"
    with psycopg.connect(url, autocommit=True) as conn:  # a database migrated by a newer release
        conn.execute("INSERT INTO ledger_core.schema_migrations (component, version) VALUES ('core', 99)")
    newer = _ledgerctl(url, "ledgers", "list")
    assert newer.returncode == 1 and "this ledgerctl is older than the database: upgrade it" in newer.stderr


def test_a_read_only_role_reads_without_create_privilege(database_url, conn, ledger):
    import uuid

    from tests.helpers import posting, send

    send(conn, ledger, posting("world", "users:1", 7))
    role = "reader_" + uuid.uuid4().hex[:8]
    conn.execute(f"CREATE ROLE {role} LOGIN")
    conn.execute(f"GRANT USAGE ON SCHEMA ledger_core, ledger_pipelines TO {role}")
    conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA ledger_core, ledger_pipelines TO {role}")
    conn.execute(f"REVOKE CREATE ON SCHEMA public FROM {role}")
    url = database_url.replace("postgres@", f"{role}@")
    for args in (("ledgers", "list"), ("balances", ledger), ("logs", "verify", ledger), ("pipelines", "list")):
        result = _ledgerctl(url, *args)
        assert result.returncode == 0, (args, result.stderr)
    assert json.loads(_ledgerctl(url, "balances", ledger).stdout)["totals"] == {"USD/2": 0}
    refused = _ledgerctl(url, "tx", "create", ledger, "--json",
                         '{"postings": [{"source": "world", "destination": "a", "amount": 1, "asset": "USD"}]}')
    assert refused.returncode == 1  # it may read, not write: one clear line
    assert refused.stderr.startswith("error: PERMISSION_DENIED: the database role may not do this")
