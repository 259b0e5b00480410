"""Dagster tests get a database of their own: the sensor lists every pipeline in the database it reads."""

from __future__ import annotations

import dagster as dg
import pytest

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


@pytest.fixture
def make_pipeline(dconn, tmp_path):
    def make(ledger: str, cadence: str = "hourly") -> registry.Pipeline:
        create_ledger(dconn, ledger)
        exporter = registry.create_exporter(dconn, "duckdb", {"path": str(tmp_path / f"{ledger}.duckdb")})
        return registry.create_pipeline(dconn, ledger, exporter.id, cadence)

    return make
