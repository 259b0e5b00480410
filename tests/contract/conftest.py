"""The loader contract suite runs every test once per warehouse, each on a real engine."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ledger_core.db import ensure_database
from ledger_pipelines import registry
from ledger_pipelines.loaders import DRIVERS, open_loader
from ledger_pipelines.loaders.base import Loader
from tests.standins import StandInMissing, bigquery_server, redshift_database


@dataclass
class Warehouse:
    """One warehouse as the contract kit sees it: an exporter config, and how to empty it as an operator would."""

    driver: str
    config: dict[str, Any]
    environ: dict[str, str]
    wipe_sql: str | None = None  # what empties the warehouse, through the loader's own connection
    money_digits: int | None = None  # what the stand-in holds, where fewer than the production type
    small_batch: int = 7  # a batch size that moves the cursor often (larger where each batch is jobs)
    min_batch: int = 1  # the smallest batch worth its cost: where each batch is several load jobs, more than 1

    def batch(self, size: int) -> int:
        """`size`, or more where batches are load jobs: a test that needs several batches still gets them."""
        return max(size, self.min_batch)

    def loader(self) -> Loader:
        return open_loader(self.driver, self.config, self.environ)

    def loader_class(self) -> type[Loader]:
        return DRIVERS.get(self.driver)

    def wipe(self) -> None:
        """Empty the warehouse (a deleted file, a dropped schema or database)."""
        if self.wipe_sql is None:  # a file
            for suffix in ("", ".wal"):
                Path(self.config["path"] + suffix).unlink(missing_ok=True)
            return
        with self.loader() as loader, loader.errors():
            loader.execute(self.wipe_sql)


# Each warehouse registers a factory: (tmp_path, pg_admin_url, session stand-ins) -> Warehouse. A factory
# raises StandInMissing when its stand-in is not here; the kit then skips it, or fails under
# LEDGER_REQUIRE_ALL_WAREHOUSES (make test, CI), so no warehouse goes untested unnoticed.
Factory = Callable[[Path, str, "StandIns"], Warehouse]
WAREHOUSES: dict[str, Factory] = {}


def warehouse_factory(driver: str) -> Callable[[Factory], Factory]:
    def register(factory: Factory) -> Factory:
        WAREHOUSES[driver] = factory
        return factory
    return register


@warehouse_factory("duckdb")
def _duckdb(tmp_path: Path, pg_admin_url: str, standins: StandIns) -> Warehouse:
    return Warehouse("duckdb", {"path": str(tmp_path / "warehouse.duckdb")}, {})


@warehouse_factory("postgres")
def _postgres(tmp_path: Path, pg_admin_url: str, standins: StandIns) -> Warehouse:
    ensure_database(pg_admin_url, "warehouse_test")
    # The URL has no password (trust auth on the test server); the env-var path is exercised all the same.
    dsn = pg_admin_url.rsplit("/", 1)[0] + "/warehouse_test"
    schema = "w_" + uuid.uuid4().hex[:10]
    return Warehouse("postgres", {"dsn": dsn, "password": {"env": "WAREHOUSE_PG_PASSWORD"}, "schema": schema},
                       {"WAREHOUSE_PG_PASSWORD": "unused-with-trust-auth"}, f"DROP SCHEMA {schema} CASCADE")


@warehouse_factory("clickhouse")
def _clickhouse(tmp_path: Path, pg_admin_url: str, standins: StandIns) -> Warehouse:
    # The real ClickHouse engine in-process (chdb) through clickhouse-connect, the production client.
    return Warehouse("clickhouse", {"chdb_path": str(tmp_path / "clickhouse"), "database": "ledger"}, {},
                       "DROP DATABASE ledger")


def cloud(driver: str) -> Warehouse | None:
    """Under `make check-cloud` (LEDGER_CLOUD=1): the real warehouse named by LEDGER_CHECK_<DRIVER>, an exporter
    config as JSON whose secrets name environment variables, in a schema of the test's own."""
    if not os.environ.get("LEDGER_CLOUD"):
        return None
    given = os.environ.get(f"LEDGER_CHECK_{driver.upper()}")
    if not given:
        raise StandInMissing(f"LEDGER_CHECK_{driver.upper()} holds no exporter config for a real {driver}")
    schema = "check_" + uuid.uuid4().hex[:10]
    key = "dataset" if driver == "bigquery" else "schema"
    config = {**json.loads(given), key: schema}
    qualified = {"bigquery": f"`{config.get('project')}`.`{schema}`", "snowflake": f'"{schema.upper()}"'}
    return Warehouse(driver, config, dict(os.environ), f"DROP SCHEMA {qualified.get(driver, schema)} CASCADE")


@warehouse_factory("redshift")
def _redshift(tmp_path: Path, pg_admin_url: str, standins: StandIns) -> Warehouse:
    if real := cloud("redshift"):
        return real
    # Redshift's SQL on PostgreSQL (super, json_parse, json_serialize defined); COPY FROM STDIN staging.
    schema = "r_" + uuid.uuid4().hex[:10]
    return Warehouse("redshift", {"dsn": standins.redshift_url(), "schema": schema, "staging": "copy",
                                    "sslmode": "disable"}, {}, f"DROP SCHEMA {schema} CASCADE")


@warehouse_factory("snowflake")
def _snowflake(tmp_path: Path, pg_admin_url: str, standins: StandIns) -> Warehouse:
    if real := cloud("snowflake"):
        return real
    standins.snowflake(tmp_path)  # fakesnow patches the connector for the rest of the test
    return Warehouse("snowflake", {"account": "local", "user": "ledger", "password": {"env": "SF_PASSWORD"},
                                     "database": "warehouse", "schema": "ledger"},
                       {"SF_PASSWORD": "unused-by-the-stand-in"}, 'DROP SCHEMA "LEDGER" CASCADE', money_digits=18)


@warehouse_factory("bigquery")
def _bigquery(tmp_path: Path, pg_admin_url: str, standins: StandIns) -> Warehouse:
    if real := cloud("bigquery"):
        return real
    dataset = "d_" + uuid.uuid4().hex[:10]
    return Warehouse("bigquery", {"project": "local", "dataset": dataset, "api_endpoint": standins.bigquery_url()},
                       {}, f"DROP SCHEMA `local`.`{dataset}` CASCADE", money_digits=20,
                       small_batch=100, min_batch=12)  # each batch: a load job per table, then a merge script


class StandIns:
    """The session's stand-ins, started on first use; a failed start is remembered and reported per test."""

    def __init__(self, pg_admin_url: str, stack: ExitStack):
        self.pg_admin_url, self.stack = pg_admin_url, stack
        self._bigquery: str | StandInMissing | None = None
        self._redshift: str | None = None
        self.patches = ExitStack()

    def bigquery_url(self) -> str:
        if self._bigquery is None:
            try:
                self._bigquery = self.stack.enter_context(bigquery_server())
            except StandInMissing as exc:
                self._bigquery = exc
        if isinstance(self._bigquery, StandInMissing):
            raise self._bigquery
        return self._bigquery

    def redshift_url(self) -> str:
        if self._redshift is None:
            self._redshift = redshift_database(self.pg_admin_url)
        return self._redshift

    def snowflake(self, tmp_path: Path) -> None:
        try:
            import fakesnow
        except ImportError:
            raise StandInMissing("fakesnow is not installed: make install") from None
        (tmp_path / "snowflake").mkdir()  # one DuckDB file per database: every connection of the test sees it
        self.patches.enter_context(fakesnow.patch(db_path=str(tmp_path / "snowflake")))


@pytest.fixture(scope="session")
def standins(pg_admin_url) -> Iterator[StandIns]:
    with ExitStack() as stack:
        yield StandIns(pg_admin_url, stack)


@pytest.fixture(params=sorted(WAREHOUSES))
def warehouse(request, tmp_path, pg_admin_url, standins) -> Iterator[Warehouse]:
    try:
        made = WAREHOUSES[request.param](tmp_path, pg_admin_url, standins)
    except StandInMissing as exc:
        if os.environ.get("LEDGER_REQUIRE_ALL_WAREHOUSES"):
            pytest.fail(f"{request.param}: {exc} (every warehouse must run here)")
        pytest.skip(f"{request.param}: {exc}")
    try:
        yield made
    finally:
        standins.patches.close()


@pytest.fixture
def pipeline(conn, ledger, warehouse) -> Iterator[registry.Pipeline]:
    registry.migrate_pipelines(conn)
    exporter = registry.create_exporter(conn, warehouse.driver, warehouse.config)
    yield registry.create_pipeline(conn, ledger, exporter.id)
