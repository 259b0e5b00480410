"""Smoke test: the Dagster web server starts on a loopback port and lists the assets through GraphQL."""

from __future__ import annotations

from ledger_pipelines.tables import DATA_TABLES
from tests.webserver import graphql, webserver

QUERY = "{ assetNodes { assetKey { path } groupName } }"


def test_webserver_serves_the_assets(dagster_db_url, tmp_path):
    with webserver(dagster_db_url, tmp_path) as base:
        nodes = graphql(base, QUERY)["data"]["assetNodes"]
    paths = {tuple(n["assetKey"]["path"]): n["groupName"] for n in nodes}
    assert paths[("warehouse", "balances")] == "warehouse"
    assert paths[("ledger", "log")] == "ledger"
    assert {p[1] for p in paths if p[0] == "warehouse"} == {t.name for t in DATA_TABLES}
