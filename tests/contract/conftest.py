"""The loader contract suite runs every test once per destination, each on a real engine."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ledger_core.db import ensure_database
from ledger_pipelines import registry
from ledger_pipelines.loaders import open_loader
from ledger_pipelines.loaders.base import Loader


@dataclass
class Destination:
    driver: str
    config: dict[str, Any]
    environ: dict[str, str]
    wipe_sql: str | None = None  # what empties the warehouse, through the loader's own connection

    def loader(self) -> Loader:
        return open_loader(self.driver, self.config, self.environ)

    def wipe(self) -> None:
        """Empty the warehouse as an operator might (a deleted file, a dropped schema or database)."""
        if self.driver == "duckdb":
            for suffix in ("", ".wal"):
                Path(self.config["path"] + suffix).unlink(missing_ok=True)
            return
        with self.loader() as loader:
            getattr(loader, "conn", None) and loader.conn.execute(self.wipe_sql)  # type: ignore[attr-defined]
            getattr(loader, "client", None) and loader.client.command(self.wipe_sql)  # type: ignore[attr-defined]


def _duckdb(tmp_path: Path, pg_admin_url: str) -> Destination:
    return Destination("duckdb", {"path": str(tmp_path / "warehouse.duckdb")}, {})


def _postgres(tmp_path: Path, pg_admin_url: str) -> Destination:
    ensure_database(pg_admin_url, "warehouse_test")
    # The URL has no password (trust auth on the test server); the env-var path is exercised all the same.
    dsn = pg_admin_url.rsplit("/", 1)[0] + "/warehouse_test"
    schema = "w_" + uuid.uuid4().hex[:10]
    return Destination("postgres", {"dsn": dsn, "password": {"env": "WAREHOUSE_PG_PASSWORD"}, "schema": schema},
                       {"WAREHOUSE_PG_PASSWORD": "unused-with-trust-auth"}, f"DROP SCHEMA {schema} CASCADE")


def _clickhouse(tmp_path: Path, pg_admin_url: str) -> Destination:
    # The real ClickHouse engine in-process (chdb) through clickhouse-connect, the production client.
    return Destination("clickhouse", {"chdb_path": str(tmp_path / "clickhouse"), "database": "ledger"}, {},
                       "DROP DATABASE ledger")


DESTINATIONS: dict[str, Callable[[Path, str], Destination]] = {
    "duckdb": _duckdb, "postgres": _postgres, "clickhouse": _clickhouse,
}


@pytest.fixture(params=sorted(DESTINATIONS))
def destination(request, tmp_path, pg_admin_url) -> Destination:
    return DESTINATIONS[request.param](tmp_path, pg_admin_url)


@pytest.fixture
def pipeline(conn, ledger, destination) -> Iterator[registry.Pipeline]:
    registry.migrate_pipelines(conn)
    exporter = registry.create_exporter(conn, destination.driver, destination.config)
    yield registry.create_pipeline(conn, ledger, exporter.id)
