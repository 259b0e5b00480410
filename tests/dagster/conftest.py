"""Dagster tests get a database of their own: the sensor lists every pipeline in the database it reads."""

from __future__ import annotations

import gc

import dagster as dg
import pytest
from dagster._core.storage.defs_state.base import DefsStateStorage

from dagster_project.resources import ExporterSecrets, LedgerDatabase
from ledger_core.db import connect
from ledger_core.ledgers import create_ledger
from ledger_pipelines import registry


@pytest.fixture
def dagster_db_url(fresh_db_url):
    return fresh_db_url


@pytest.fixture
def dconn(dagster_db_url):
    with connect(dagster_db_url) as conn:
        yield conn


@pytest.fixture
def resources(dagster_db_url):
    return {"ledger_db": LedgerDatabase(url=dagster_db_url), "exporter_secrets": ExporterSecrets()}


@pytest.fixture
def instance():
    with dg.instance_for_test() as test_instance:
        yield test_instance
    # An evaluation context left open keeps a dead instance's state storage current for the next test, which
    # then fails at random when the collector runs (tests/dagster/ticks.py says how): fail here instead.
    gc.collect()
    assert DefsStateStorage.get() is None, "a sensor or schedule context was left open: use tests/dagster/ticks.py"


@pytest.fixture
def make_pipeline(dconn, tmp_path):
    def make(ledger: str, cadence: str = "hourly") -> registry.Pipeline:
        create_ledger(dconn, ledger)
        exporter = registry.create_exporter(dconn, "duckdb", {"path": str(tmp_path / f"{ledger}.duckdb")})
        return registry.create_pipeline(dconn, ledger, exporter.id, cadence)

    return make
