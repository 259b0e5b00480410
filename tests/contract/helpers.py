"""Full equality of a warehouse with the ledger, beyond the library's own checks."""

from __future__ import annotations

import json

import psycopg

from ledger_pipelines.loaders.base import Loader
from ledger_pipelines.registry import get_pipeline
from ledger_pipelines.tables import ACCOUNTS, TRANSACTIONS
from ledger_pipelines.verify import verify


def assert_warehouse_equals_ledger(conn: psycopg.Connection, loader: Loader, ledger: str, pipeline_id: str) -> None:
    cursor = get_pipeline(conn, pipeline_id).last_log_id
    head = conn.execute("SELECT last_log_id FROM ledger_core.ledgers WHERE name = %s", (ledger,)).fetchone()[0]
    assert cursor == head, "sync to the head before comparing everything"
    failed = [r for r in verify(conn, loader, ledger, cursor) if not r.passed]
    assert failed == [], failed
    # Current state, column by column: metadata, references, reverts, first use.
    core_tx = {
        r[0]: (r[1], r[2], r[3], r[4], r[5])
        for r in conn.execute(
            """SELECT id, timestamp, inserted_at, reference, metadata, reverted_at FROM ledger_core.transactions
               WHERE ledger = %s""", (ledger,))
    }
    wh_tx = {
        r["id"]: (r["timestamp"], r["inserted_at"], r["reference"], json.loads(r["metadata"]), r["reverted_at"])
        for r in loader.read_table(TRANSACTIONS, ledger).to_pylist()
    }
    assert wh_tx == core_tx
    core_accounts = {r[0]: (r[1], r[2]) for r in conn.execute(
        "SELECT address, metadata, first_usage FROM ledger_core.accounts WHERE ledger = %s", (ledger,))}
    wh_accounts = {r["address"]: (json.loads(r["metadata"]), r["first_usage"])
                   for r in loader.read_table(ACCOUNTS, ledger).to_pylist()}
    assert wh_accounts == core_accounts
