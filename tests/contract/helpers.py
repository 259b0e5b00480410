"""Full equality of a warehouse with the ledger, beyond the library's own checks."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from decimal import Decimal, localcontext
from typing import Any

import psycopg

from ledger_pipelines.loaders.base import Loader, from_warehouse
from ledger_pipelines.registry import get_pipeline
from ledger_pipelines.tables import ACCOUNTS, DAILY_VOLUMES, MOVES, TRANSACTIONS, Kind
from ledger_pipelines.verify import verify

REVERTS = "com.formance.spec/state/reverts"


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
    wh_rows = loader.read_table(TRANSACTIONS, ledger).to_pylist()
    wh_tx = {r["id"]: (r["timestamp"], r["inserted_at"], r["reference"], json.loads(r["metadata"]), r["reverted_at"])
             for r in wh_rows}
    assert wh_tx == core_tx
    assert_reversal_links(conn, ledger, wh_rows)
    assert_effective_history(conn, loader, ledger)
    core_accounts = {r[0]: (r[1], r[2]) for r in conn.execute(
        "SELECT address, metadata, first_usage FROM ledger_core.accounts WHERE ledger = %s", (ledger,))}
    wh_accounts = {r["address"]: (json.loads(r["metadata"]), r["first_usage"])
                   for r in loader.read_table(ACCOUNTS, ledger).to_pylist()}
    assert wh_accounts == core_accounts


def display(signed: int, scale: int) -> str:
    """The amount at its asset's scale, as exact text (what `display_amount` must say)."""
    if scale > 76:
        return f"{signed}E-{scale}"
    with localcontext(prec=200):  # the default 28 digits would round a 30-digit amount
        return f"{Decimal(signed).scaleb(-scale):f}"


def revert_pairs(conn: psycopg.Connection, ledger: str) -> dict[int, int]:
    """Reversal transaction id -> the id of the transaction it reverts, from the ledger's revert logs."""
    return dict(conn.execute(
        """SELECT (data->'transaction'->>'id')::bigint, (data->'revertedTransaction'->>'id')::bigint
           FROM ledger_core.logs WHERE ledger = %s AND type = 'REVERTED_TRANSACTION'""", (ledger,)).fetchall())


def assert_reversal_links(conn: psycopg.Connection, ledger: str, transactions: Iterable[dict[str, Any]]) -> None:
    """Warehouse transaction rows link reversals and reverted transactions both ways, as the revert logs say."""
    reverts, rows = revert_pairs(conn, ledger), list(transactions)
    assert {r["id"]: r["reverts_transaction_id"] for r in rows if r["reverts_transaction_id"]} == reverts
    assert {r["id"]: r["reverted_by_transaction_id"] for r in rows if r["reverted_by_transaction_id"]} == {
        original: reversal for reversal, original in reverts.items()}


def assert_move_amounts(moves: Iterable[dict[str, Any]]) -> None:
    """Each warehouse move's asset scale, signed amount and display amount follow from its asset and amount."""
    for move in moves:
        scale = int(move["asset"].partition("/")[2] or 0)
        signed = -int(move["amount"]) if move["is_source"] else int(move["amount"])
        assert (move["asset_scale"], int(move["signed_amount"]), move["display_amount"]) == (
            scale, signed, display(signed, scale)), move


def assert_effective_history(conn: psycopg.Connection, loader: Loader, ledger: str) -> None:
    """Signed amounts, daily volumes and the two views, against the ledger's moves and daily volumes."""
    ledger_moves = conn.execute(
        """SELECT transaction_id, posting_index, is_source, account, asset, amount::text FROM ledger_core.moves
           WHERE ledger = %s ORDER BY account, asset, effective_date, transaction_id, posting_index,
                                      is_source DESC""", (ledger,)).fetchall()
    effective: dict[tuple[int, int, bool], int] = {}
    running: dict[tuple[str, str], int] = defaultdict(int)
    for tx, index, is_source, account, asset, amount in ledger_moves:
        running[(account, asset)] += -int(amount) if is_source else int(amount)
        effective[(tx, index, is_source)] = running[(account, asset)]
    assert_move_amounts(loader.read_table(MOVES, ledger).to_pylist())
    i = loader.ident
    of_ledger = f"WHERE {i('ledger')} = {loader.dialect.param('ledger', Kind.STRING)}"

    def money(column: str) -> str:
        return loader.dialect.selected(Kind.MONEY, i(column))

    rows = loader.query(f"SELECT {i('transaction_id')}, {i('posting_index')}, {i('is_source')}, "
                        f"{money('post_commit_effective_balance')} FROM {loader.qualified('moves_effective')} "
                        f"{of_ledger}", {"ledger": ledger})
    assert {(int(t), int(p), bool(s)): int(from_warehouse(Kind.MONEY, b)) for t, p, s, b in rows} == effective

    days = conn.execute("""SELECT account, asset, day, input::text, output::text FROM ledger_core.daily_volumes
                           WHERE ledger = %s ORDER BY account, asset, day""", (ledger,)).fetchall()
    assert {(r["account"], r["asset"], r["day"]): (int(r["input"]), int(r["output"]))
            for r in loader.read_table(DAILY_VOLUMES, ledger).to_pylist()} == {
        (a, s, d): (int(inp), int(out)) for a, s, d, inp, out in days}
    closing: dict[tuple[str, str, object], int] = {}
    balance: dict[tuple[str, str], int] = defaultdict(int)
    for account, asset, day, inflow, outflow in days:
        balance[(account, asset)] += int(inflow) - int(outflow)
        closing[(account, asset, day)] = balance[(account, asset)]
    rows = loader.query(f"SELECT {i('account')}, {i('asset')}, {i('day')}, {money('closing_balance')} "
                        f"FROM {loader.qualified('daily_balances')} {of_ledger}", {"ledger": ledger})
    assert {(a, s, from_warehouse(Kind.DATE, d)): int(from_warehouse(Kind.MONEY, b)) for a, s, d, b in rows} == closing
