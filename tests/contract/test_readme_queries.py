"""The README's analyst queries for BigQuery, Snowflake and Redshift, exactly as written, on each warehouse's
stand-in after a sync of a small `shop` ledger, and their answers against the ledger's own."""

from __future__ import annotations

from collections import defaultdict

import pytest

from ledger_core.db import connect
from ledger_core.ledgers import create_ledger
from ledger_core.requests import SetMetadata
from ledger_core.writer import write
from ledger_pipelines import registry
from ledger_pipelines.sync import sync_pipeline
from tests.helpers import new_tx, posting
from tests.integration.test_readme import _statements, readme_blocks

TIERS = {"users:1": "gold", "users:2": "silver", "users:3": "gold"}


def readme_queries(engine: str) -> list[str]:
    blocks = [body for kind, body in readme_blocks()
              if kind == "sql" and body.strip().lower().startswith(f"-- {engine}")]
    return [statement for body in blocks for statement in _statements(body)]


@pytest.mark.parametrize("warehouse", ["bigquery", "snowflake", "redshift"], indirect=True)
def test_the_readme_queries_answer_as_the_ledger_does(fresh_db_url, warehouse):
    queries = readme_queries(warehouse.driver)
    assert len(queries) == 3, f"the README has three {warehouse.driver} queries"
    schema_key = "dataset" if warehouse.driver == "bigquery" else "schema"
    config = {**warehouse.config, schema_key: "ledger"}  # the README's queries name `ledger.…`
    with connect(fresh_db_url) as conn:
        create_ledger(conn, "shop")
        write(conn, "shop", [
            new_tx(posting("world", f"users:{i % 4}", 100 + i, "USD/2"), posting("world", f"users:{i % 3}", 7, "EUR/2"),
                   timestamp=f"2025-03-{1 + i % 5:02d}T10:00:00Z") for i in range(12)
        ] + [SetMetadata.build("ACCOUNT", account, {"tier": tier}) for account, tier in TIERS.items()])
        exporter = registry.create_exporter(conn, warehouse.driver, config)
        pipeline = registry.create_pipeline(conn, "shop", exporter.id)
        ledger_balances = {(asset, account): int(balance) for account, asset, balance in conn.execute(
            "SELECT account, asset, (input - output)::text FROM ledger_core.volumes WHERE ledger = 'shop'")}
        moved = {asset: int(total) for asset, total in conn.execute(
            "SELECT asset, sum(amount)::text FROM ledger_core.moves WHERE ledger = 'shop' AND is_source "
            "GROUP BY asset")}
    sync_pipeline(fresh_db_url, pipeline.id, environ=warehouse.environ)

    from ledger_pipelines.loaders import open_loader

    with open_loader(warehouse.driver, config, warehouse.environ) as loader, loader.errors():
        try:
            by_asset, per_day, tiers = (loader.query(q) for q in queries)
        finally:
            if warehouse.driver != "snowflake":  # its stand-in lives in the test's own folder
                loader.execute(f"DROP SCHEMA IF EXISTS {loader.ident('ledger')} CASCADE")
    assert {(asset, account): int(balance) for asset, account, balance in by_asset} == ledger_balances
    assert [row[0] for row in by_asset] == sorted(row[0] for row in by_asset)  # per asset, largest first
    daily: dict[str, int] = defaultdict(int)
    for asset, _, total in per_day:
        daily[asset] += int(total)
    assert dict(daily) == moved and len(per_day) == 10  # two assets, five days
    expected: dict[tuple[str, str], int] = defaultdict(int)
    for (asset, account), balance in ledger_balances.items():
        if account in TIERS:
            expected[(TIERS[account], asset)] += balance
    assert {(tier, asset): int(total) for tier, asset, total in tiers} == dict(expected)
