"""Prove a warehouse equals the ledger up to a pipeline's cursor.

The warehouse is asked for aggregates (counts, id spans, one hash, the balances of the accounts a sync
touched, per-asset sums), never for whole tables. Every expected figure is computed from the ledger's own
tables in PostgreSQL (never from the pipeline's transforms), through the core's export interface
(`ledger_core.export.State`), as of the cursor: log ids and hashes up to it, transactions up to the last
transaction a log up to it created, balances from the moves of those transactions. So the checks hold even
while writers keep committing after the sync.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ledger_core.export import State
from ledger_pipelines.loaders.base import Loader
from ledger_pipelines.registry import Pipeline
from ledger_pipelines.tables import (
    ACCOUNTS,
    BALANCES,
    DAILY_VOLUMES,
    DATA_TABLES,
    LOGS,
    MOVES,
    POSTINGS,
    TRANSACTIONS,
)

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
            MOVES.name: state.moves, ACCOUNTS.name: state.accounts, BALANCES.name: state.balances,
            DAILY_VOLUMES.name: state.days}


def verify(conn: psycopg.Connection, loader: Loader, ledger: str, cursor: int, *, since: int = 0,
           accounts: Sequence[str] | None = None) -> list[CheckResult]:
    """Run every check of the warehouse against the ledger as of `cursor`; never raises on a mismatch.

    The warehouse is asked for aggregates, not tables. After a sync, `since` (the cursor before it) and
    `accounts` (the accounts its batches touched) keep the cost in proportion to what it loaded: log ids are
    checked over `since+1..cursor` (those before were checked when they were loaded, and the total count
    still covers them), balances for those accounts only. Without them, everything is checked.
    """
    state = State.as_of(conn, ledger, cursor)
    ledger_hash = state.last_hash
    results: list[CheckResult] = []

    # Row counts per table: one COUNT(*) each, in one query.
    expected = expected_counts(state)
    actual = loader.row_counts(ledger, DATA_TABLES)
    diffs = [{"table": n, "expected": expected[n], "warehouse": actual.get(n, 0)}
             for n in expected if expected[n] != actual.get(n, 0)]
    results.append(CheckResult("row_counts", not diffs, "rows per table equal the ledger's as of the cursor",
                               {"expected": expected, "warehouse": actual}, diffs[:MAX_DIFFS]))

    # Log ids contiguous up to the cursor: over the range, as many rows as distinct ids as the range is long,
    # from its first id to its last; in all, as many logs as the cursor says.
    first = min(since, cursor) + 1
    count, distinct, lowest, highest = loader.log_span(ledger, first, cursor)
    span = cursor - first + 1
    contiguous = (count == distinct == span and (span == 0 or (lowest, highest) == (first, cursor))
                  and actual.get(LOGS.name, 0) == cursor)
    results.append(CheckResult(
        "log_ids_contiguous", contiguous, "warehouse log ids run 1..cursor with no gap or duplicate",
        {"cursor": cursor, "warehouse_logs": actual.get(LOGS.name, 0), "checked_from": first},
        [] if contiguous else [{"range": [first, cursor], "rows": count, "distinct_ids": distinct,
                                "lowest": lowest, "highest": highest}]))
    warehouse_hash = loader.log_hash(ledger, cursor) if cursor else None
    results.append(CheckResult(
        "last_log_hash", cursor == 0 or (warehouse_hash is not None and warehouse_hash == ledger_hash),
        "the last synced log's hash equals the ledger's", {"ledger": ledger_hash, "warehouse": warehouse_hash},
        [] if warehouse_hash == ledger_hash else [{"log_id": cursor, "ledger": ledger_hash,
                                                    "warehouse": warehouse_hash}]))

    # Balances per account and asset: of the accounts the sync touched, or all.
    touched = None if accounts is None else sorted(set(accounts))
    want = state.balances_of(conn, ledger, touched)
    have = {(r["account"], r["asset"]): (int(r["input"]), int(r["output"]), int(r["balance"]))
            for r in loader.balances(ledger, touched)}
    diffs = []
    for key in sorted(set(want) | set(have)):
        w, h = want.get(key), have.get(key)
        if w is None or h is None or (w[0], w[1], w[0] - w[1]) != h:
            diffs.append({"account": key[0], "asset": key[1],
                          "ledger": None if w is None else {"input": str(w[0]), "output": str(w[1])},
                          "warehouse": None if h is None else {"input": str(h[0]), "output": str(h[1]),
                                                               "balance": str(h[2])}})
    results.append(CheckResult("balances_match", not diffs, "every account and asset balance equals the ledger's",
                               {"pairs": len(want), "mismatches": len(diffs),
                                "scope": "all accounts" if touched is None else "accounts the sync touched"},
                               diffs[:MAX_DIFFS]))

    # Double entry: per asset, balances sum to zero (summed in the warehouse).
    sums = loader.asset_sums(ledger)
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
