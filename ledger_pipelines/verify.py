"""Prove a warehouse equals the ledger up to a pipeline's cursor.

Every expected figure is computed from the ledger's own tables in PostgreSQL (never from the pipeline's
transforms), as of the cursor: log ids and hashes up to it, transactions up to the last transaction a
log up to it created, balances from the moves of those transactions. So the checks hold even while
writers keep committing after the sync.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from ledger_pipelines.loaders.base import Loader
from ledger_pipelines.registry import Pipeline
from ledger_pipelines.tables import ACCOUNTS, BALANCES, LOGS, MOVES, POSTINGS, TRANSACTIONS

MAX_DIFFS = 10


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    description: str
    details: dict[str, Any] = field(default_factory=dict)
    first_differences: list[dict[str, Any]] = field(default_factory=list)


def _as_of(conn: psycopg.Connection, ledger: str, cursor: int) -> tuple[int, str | None]:
    """The last transaction id created by a log <= cursor, and the hash of log `cursor`."""
    row = conn.execute(
        """SELECT coalesce(max((data->'transaction'->>'id')::bigint) FILTER (
                      WHERE type IN ('NEW_TRANSACTION', 'REVERTED_TRANSACTION')), 0),
                  max(encode(hash, 'hex')) FILTER (WHERE id = %s)
           FROM ledger_core.logs WHERE ledger = %s AND id <= %s""",
        (cursor, ledger, cursor),
    ).fetchone()
    assert row is not None
    return int(row[0]), row[1]


def expected_counts(conn: psycopg.Connection, ledger: str, cursor: int, last_tx: int) -> dict[str, int]:
    row = conn.execute(
        """SELECT
             (SELECT count(*) FROM ledger_core.transactions WHERE ledger = %(l)s AND id <= %(t)s),
             (SELECT count(*) FROM ledger_core.moves WHERE ledger = %(l)s AND transaction_id <= %(t)s),
             (SELECT count(DISTINCT (account, asset)) FROM ledger_core.moves
               WHERE ledger = %(l)s AND transaction_id <= %(t)s),
             (SELECT count(*) FROM (
                SELECT account FROM ledger_core.moves WHERE ledger = %(l)s AND transaction_id <= %(t)s
                UNION SELECT data->>'targetId' FROM ledger_core.logs
                  WHERE ledger = %(l)s AND id <= %(c)s AND data->>'targetType' = 'ACCOUNT'
                UNION SELECT jsonb_object_keys(data->'accountMetadata') FROM ledger_core.logs
                  WHERE ledger = %(l)s AND id <= %(c)s AND type = 'NEW_TRANSACTION') a)""",
        {"l": ledger, "t": last_tx, "c": cursor},
    ).fetchone()
    assert row is not None
    transactions, moves, balances, accounts = (int(v) for v in row)
    return {LOGS.name: cursor, TRANSACTIONS.name: transactions, POSTINGS.name: moves // 2, MOVES.name: moves,
            ACCOUNTS.name: accounts, BALANCES.name: balances}


def expected_balances(conn: psycopg.Connection, ledger: str, last_tx: int) -> dict[tuple[str, str], tuple[int, int]]:
    rows = conn.execute(
        """SELECT DISTINCT ON (account, asset) account, asset, post_commit_input::text, post_commit_output::text
           FROM ledger_core.moves WHERE ledger = %s AND transaction_id <= %s
           ORDER BY account, asset, seq DESC""",
        (ledger, last_tx),
    ).fetchall()
    return {(a, s): (int(i), int(o)) for a, s, i, o in rows}


def verify(conn: psycopg.Connection, loader: Loader, ledger: str, cursor: int) -> list[CheckResult]:
    """Run every check of the warehouse against the ledger as of `cursor`; never raises on a mismatch."""
    last_tx, ledger_hash = _as_of(conn, ledger, cursor)
    tables = {t.name: loader.read_table(t, ledger) for t in (LOGS, TRANSACTIONS, POSTINGS, MOVES, ACCOUNTS,
                                                              BALANCES)}
    results: list[CheckResult] = []

    # Row counts per table.
    expected = expected_counts(conn, ledger, cursor, last_tx)
    actual = {name: table.num_rows for name, table in tables.items()}
    diffs = [{"table": n, "expected": expected[n], "warehouse": actual[n]}
             for n in expected if expected[n] != actual[n]]
    results.append(CheckResult("row_counts", not diffs, "rows per table equal the ledger's as of the cursor",
                               {"expected": expected, "warehouse": actual}, diffs[:MAX_DIFFS]))

    # Log ids contiguous from 1 to the cursor, and the last hash equal to the ledger's.
    ids = tables[LOGS.name].column("id").to_pylist()
    gaps = [{"position": i, "expected_id": i + 1, "warehouse_id": v} for i, v in enumerate(ids) if v != i + 1]
    results.append(CheckResult("log_ids_contiguous", not gaps and len(ids) == cursor,
                               "warehouse log ids run 1..cursor with no gap or duplicate",
                               {"cursor": cursor, "warehouse_logs": len(ids)}, gaps[:MAX_DIFFS]))
    hashes = dict(zip(ids, tables[LOGS.name].column("hash").to_pylist(), strict=True))
    warehouse_hash = hashes.get(cursor)
    results.append(CheckResult(
        "last_log_hash", cursor == 0 or (warehouse_hash is not None and warehouse_hash == ledger_hash),
        "the last synced log's hash equals the ledger's", {"ledger": ledger_hash, "warehouse": warehouse_hash},
        [] if warehouse_hash == ledger_hash else [{"log_id": cursor, "ledger": ledger_hash,
                                                    "warehouse": warehouse_hash}]))

    # Balances per account and asset.
    want = expected_balances(conn, ledger, last_tx)
    have = {(r["account"], r["asset"]): (int(r["input"]), int(r["output"]), int(r["balance"]))
            for r in tables[BALANCES.name].to_pylist()}
    diffs = []
    for key in sorted(set(want) | set(have)):
        w, h = want.get(key), have.get(key)
        if w is None or h is None or (w[0], w[1], w[0] - w[1]) != h:
            diffs.append({"account": key[0], "asset": key[1],
                          "ledger": None if w is None else {"input": str(w[0]), "output": str(w[1])},
                          "warehouse": None if h is None else {"input": str(h[0]), "output": str(h[1]),
                                                               "balance": str(h[2])}})
    results.append(CheckResult("balances_match", not diffs, "every account and asset balance equals the ledger's",
                               {"pairs": len(want), "mismatches": len(diffs)}, diffs[:MAX_DIFFS]))

    # Double entry: per asset, balances sum to zero.
    sums: dict[str, int] = {}
    for (_, asset), (_, _, balance) in have.items():
        sums[asset] = sums.get(asset, 0) + balance
    nonzero = [{"asset": a, "sum": str(s)} for a, s in sorted(sums.items()) if s != 0]
    results.append(CheckResult("asset_sums_zero", not nonzero, "per asset, warehouse balances sum to 0",
                               {"assets": len(sums)}, nonzero[:MAX_DIFFS]))
    return results


def freshness(pipeline: Pipeline) -> CheckResult:
    """The pipeline keeps up with its cadence: no committed log has waited longer than the cadence allows."""
    allowed = pipeline.cadence.allowed_staleness
    details = {"cadence": str(pipeline.cadence), "staleness_seconds": round(pipeline.staleness, 1),
               "allowed_seconds": allowed, "lag": pipeline.lag, "failing": pipeline.failing}
    late = [] if pipeline.fresh else [{"oldest_waiting_log_id": pipeline.last_log_id + 1,
                                      "waiting_seconds": round(pipeline.staleness, 1)}]
    return CheckResult("freshness", pipeline.fresh,
                       f"no committed log waits longer than a {pipeline.cadence} pipeline allows ({allowed:.0f} s)",
                       details, late)
