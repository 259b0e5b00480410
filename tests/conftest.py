"""Shared fixtures: one throwaway PostgreSQL server for the whole run, started by the suite itself."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from ledger_api import auth  # noqa: F401 - registers the API's migrations (its keys)
from ledger_core.db import connect, ensure_database
from ledger_core.ledgers import create_ledger
from ledger_core.localpg import ensure_server, stop_server
from ledger_core.migrations import migrate_all
from ledger_pipelines import registry  # noqa: F401 - registers the pipelines' migrations


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A server of our own (never one left running by hand): fsync off, removed at the end."""
    home = Path(tempfile.mkdtemp(prefix="ledger-test-pg-"))
    os.chmod(home, 0o755)
    data_dir = home / "pg"
    server = ensure_server(data_dir, durable=False)
    try:
        yield server.url()
    finally:
        stop_server(data_dir)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(pg_admin_url: str) -> str:
    ensure_database(pg_admin_url, "ledger_test")
    url = pg_admin_url.rsplit("/", 1)[0] + "/ledger_test"
    with connect(url, check_schema=False) as conn:
        migrate_all(conn)  # once, explicitly, as `ledgerctl db migrate` does
    return url


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    connection = connect(database_url)
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def ledger(conn: psycopg.Connection) -> str:
    """A fresh ledger per test: tests share the database but never a ledger."""
    name = "t" + uuid.uuid4().hex[:12]
    create_ledger(conn, name)
    return name


@pytest.fixture
def fresh_db_url(pg_admin_url: str) -> str:
    """A database of its own, migrated, for tests that act on every pipeline of a database."""
    name = "fresh_" + uuid.uuid4().hex[:8]
    ensure_database(pg_admin_url, name)
    url = pg_admin_url.rsplit("/", 1)[0] + "/" + name
    with connect(url, check_schema=False) as conn:
        migrate_all(conn)
    return url
