"""Small builders shared by the tests."""

from __future__ import annotations

from typing import Any

import psycopg

from ledger_core.requests import NewTransaction
from ledger_core.writer import WriteResult, write


def posting(source: str, destination: str, amount: int | str, asset: str = "USD/2", **extra: Any) -> dict:
    return {"source": source, "destination": destination, "amount": amount, "asset": asset, **extra}


def new_tx(*postings: dict, **fields: Any) -> NewTransaction:
    key = fields.pop("idempotency_key", None)
    return NewTransaction.from_json({"postings": list(postings), **fields}, idempotency_key=key)


def send(conn: psycopg.Connection, ledger: str, *postings: dict, **fields: Any) -> WriteResult:
    [result] = write(conn, ledger, [new_tx(*postings, **fields)])
    return result


def counts(conn: psycopg.Connection, ledger: str) -> dict[str, int]:
    """Row counts of every ledger table for one ledger: what 'nothing was written' compares."""
    out = {}
    for table in ("logs", "transactions", "moves", "accounts", "volumes"):
        column = "ledger"
        row = conn.execute(f"SELECT count(*) FROM ledger_core.{table} WHERE {column} = %s", (ledger,)).fetchone()
        out[table] = row[0] if row else 0
    row = conn.execute("SELECT last_log_id FROM ledger_core.ledgers WHERE name = %s", (ledger,)).fetchone()
    out["last_log_id"] = row[0] if row else 0
    return out


def asset_sums(conn: psycopg.Connection, ledger: str) -> dict[str, int]:
    rows = conn.execute(
        "SELECT asset, sum(input - output)::text FROM ledger_core.volumes WHERE ledger = %s GROUP BY asset",
        (ledger,),
    ).fetchall()
    return {asset: int(total) for asset, total in rows}
