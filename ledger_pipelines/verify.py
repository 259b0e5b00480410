"""Prove a warehouse equals the ledger up to a pipeline's cursor.

Every expected figure is computed from the ledger's own tables in PostgreSQL (never from the pipeline's
transforms), through the core's export interface (`ledger_core.export.State`), as of the cursor: log ids and
hashes up to it, transactions up to the last transaction a log up to it created, balances from the moves of
those transactions. So the checks hold even while writers keep committing after the sync.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from ledger_core.export import State
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


def expected_counts(state: State) -> dict[str, int]:
    return {LOGS.name: state.cursor, TRANSACTIONS.name: state.transactions, POSTINGS.name: state.moves // 2,
            MOVES.name: state.moves, ACCOUNTS.name: state.accounts, BALANCES.name: state.balances}


def verify(conn: psycopg.Connection, loader: Loader, ledger: str, cursor: int) -> list[CheckResult]:
    """Run every check of the warehouse against the ledger as of `cursor`; never raises on a mismatch."""
    state = State.as_of(conn, ledger, cursor)
    ledger_hash = state.last_hash
    tables = {t.name: loader.read_table(t, ledger) for t in (LOGS, TRANSACTIONS, POSTINGS, MOVES, ACCOUNTS,
                                                              BALANCES)}
    results: list[CheckResult] = []

    # Row counts per table.
    expected = expected_counts(state)
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
    want = state.balances_of(conn, ledger)
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
