"""Ledger write throughput: the core's bulk path against raw binary COPY of the same rows.

2-posting transactions (funded source -> account -> fees), hashing and overdraft checks on, on a durable
server (synchronous_commit=on), in bulks of 1, 100 and 1,000; accounts drawn uniformly, or with a hot
spot (90% of transactions touch one account). The baseline copies the very rows the ledger wrote
(transactions, moves, logs) into identical tables with `COPY … FROM STDIN (FORMAT binary)`, one commit
per bulk: the physical floor of writing that data, with none of the ledger's reads, checks or hashing.

Backdating: 200,000 two-posting transactions (world -> user -> fees, so `world` and `fees` are in every one)
in bulks of 5,000, their effective times either rising (in order) or drawn at random over a year; the rate
per bulk shows whether a backdated write gets slower as the ledger grows. After each run, balances as of
ten random times are compared with sums over every move (`balances --effective-at` must stay exact).
(`BENCH_BACKDATING_TX` changes the count.)
"""

from __future__ import annotations

import os
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_database_url, print_table, save, server_settings
from ledger_core import reads
from ledger_core.db import connect
from ledger_core.ledgers import create_ledger
from ledger_core.requests import NewTransaction
from ledger_core.writer import write

TABLES = {
    "transactions": "id",
    "moves": "transaction_id",
    "logs": "id",
}
ACCOUNTS = 10_000
CASES = [(1, 300), (100, 3_000), (1_000, 10_000)]  # (bulk size, transactions)
BACKDATING_TX = int(os.environ.get("BENCH_BACKDATING_TX", "200000"))
BACKDATING_BULK = 5_000
YEAR_START = datetime(2025, 1, 1, tzinfo=UTC)


def transactions(count: int, hot: bool, rng: random.Random) -> list[NewTransaction]:
    out = []
    for _ in range(count):
        account = "hot:account" if hot and rng.random() < 0.9 else f"users:{rng.randrange(ACCOUNTS)}"
        out.append(NewTransaction.from_json({"postings": [
            {"source": "treasury", "destination": account, "amount": rng.randint(100, 10_000), "asset": "USD/2"},
            {"source": account, "destination": "fees", "amount": 1, "asset": "USD/2"},
        ]}))
    return out


def run_ledger(conn, ledger: str, bulk: int, txs: list[NewTransaction]) -> float:
    started = time.perf_counter()
    for i in range(0, len(txs), bulk):
        write(conn, ledger, txs[i:i + bulk])
    return time.perf_counter() - started


def run_copy(conn, ledger: str, bulk: int, count: int, first_tx: int) -> tuple[float, int]:
    """COPY the ledger's own rows, bulk by bulk, into copies of its tables; only the COPY-in is timed."""
    rows = 0
    elapsed = 0.0
    for start in range(first_tx, first_tx + count, bulk):
        end = min(start + bulk, first_tx + count)
        payloads = {}
        for table, key in TABLES.items():
            query = (f"COPY (SELECT * FROM ledger_core.{table} WHERE ledger = '{ledger}' AND {key} >= {start} "
                     f"AND {key} < {end}) TO STDOUT (FORMAT binary)")
            with conn.cursor().copy(query) as copy:
                payloads[table] = b"".join(bytes(chunk) for chunk in copy)
        began = time.perf_counter()
        with conn.transaction():
            for table, payload in payloads.items():
                with conn.cursor() as cursor:
                    with cursor.copy(f"COPY bench_copy.{table} FROM STDIN (FORMAT binary)") as copy:
                        copy.write(payload)
                    rows += cursor.rowcount
        elapsed += time.perf_counter() - began
    return elapsed, rows


def dated_transactions(count: int, in_order: bool, rng: random.Random) -> list[NewTransaction]:
    """world -> user -> fees, effective over a year: rising, or at random (most of them backdated)."""
    year = 365 * 86_400 * 1_000_000
    offsets = [i * year // count for i in range(count)] if in_order else [rng.randrange(year) for _ in range(count)]
    # Users may overdraw by the fee (`force`): the user drawn for the fee may not have been paid yet.
    return [NewTransaction.from_json({
        "timestamp": (YEAR_START + timedelta(microseconds=offset)).isoformat().replace("+00:00", "Z"),
        "postings": [
            {"source": "world", "destination": f"users:{rng.randrange(ACCOUNTS)}", "amount": rng.randint(100, 10_000),
             "asset": "USD/2"},
            {"source": f"users:{rng.randrange(ACCOUNTS)}", "destination": "fees", "amount": 1, "asset": "USD/2"},
        ]}, force=True) for offset in offsets]


def exact_at(conn, ledger: str, at: datetime) -> dict[tuple[str, str], int]:
    """Balances as of `at`, summed over every move: what `balances --effective-at` must say."""
    rows = conn.execute("""SELECT account, asset, sum(CASE WHEN is_source THEN -amount ELSE amount END)::text
                           FROM ledger_core.moves WHERE ledger = %s AND effective_date <= %s GROUP BY 1, 2""",
                        (ledger, at)).fetchall()
    return {(a, s): int(b) for a, s, b in rows}


def run_backdating(conn, rng: random.Random) -> list[dict]:
    runs = []
    for in_order in (True, False):
        ledger = f"bench-dated-{'in-order' if in_order else 'random'}-{uuid.uuid4().hex[:6]}"
        create_ledger(conn, ledger)
        txs = dated_transactions(BACKDATING_TX, in_order, rng)
        rates = []
        for i in range(0, len(txs), BACKDATING_BULK):
            began = time.perf_counter()
            write(conn, ledger, txs[i:i + BACKDATING_BULK])
            rates.append(len(txs[i:i + BACKDATING_BULK]) / (time.perf_counter() - began))
            print(f"  {'in order' if in_order else 'random':>8}: {i + BACKDATING_BULK:>7,} tx, "
                  f"{rates[-1]:,.0f} tx/s", flush=True)
        checked = 0
        for _ in range(10):
            at = YEAR_START + timedelta(microseconds=rng.randrange(365 * 86_400 * 1_000_000))
            got = {(b.address, b.asset): b.volumes.balance
                   for b in reads.balances(conn, ledger, effective_at=at) if b.volumes.input or b.volumes.output}
            expected = exact_at(conn, ledger, at)
            assert got == expected, f"balances as of {at} differ"
            checked += len(expected)
        quarter = rates[-max(1, len(rates) // 4):]  # one bulk's rate is noisy: the last quarter's, in all
        runs.append({"effective_times": "in order" if in_order else "random over a year",
                     "transactions": BACKDATING_TX, "bulk": BACKDATING_BULK, "tx_per_s_by_bulk": rates,
                     "first_quarter_tx_per_s": _overall(rates[:len(quarter)]),
                     "last_quarter_tx_per_s": _overall(quarter), "mean_tx_per_s": _overall(rates),
                     "balances_checked": checked})
    in_order, random_ = runs
    random_["last_quarter_vs_in_order"] = random_["last_quarter_tx_per_s"] / in_order["last_quarter_tx_per_s"]
    random_["mean_vs_in_order"] = random_["mean_tx_per_s"] / in_order["mean_tx_per_s"]
    return runs


def _overall(rates: list[float]) -> float:
    """The rate of several equal bulks together: their count over their summed times."""
    return len(rates) / sum(1 / r for r in rates)


def main() -> None:
    url = bench_database_url()
    rng = random.Random(42)
    results = []
    with connect(url) as conn:
        conn.execute("DROP SCHEMA IF EXISTS bench_copy CASCADE")
        conn.execute("CREATE SCHEMA bench_copy")
        for table in TABLES:
            # Same columns, types, keys and indexes: the ledger's tables without their data.
            conn.execute(f"CREATE TABLE bench_copy.{table} (LIKE ledger_core.{table} INCLUDING ALL)")
        conn.execute("ALTER TABLE bench_copy.moves ALTER COLUMN seq DROP IDENTITY IF EXISTS")
        for hot in (False, True):
            for bulk, count in CASES:
                ledger = f"bench-{'hot' if hot else 'uniform'}-{bulk}-{uuid.uuid4().hex[:6]}"
                create_ledger(conn, ledger)
                funded = 10**15
                write(conn, ledger, [NewTransaction.from_json({"postings": [
                    {"source": "world", "destination": "treasury", "amount": funded, "asset": "USD/2"}]})])
                txs = transactions(count, hot, rng)
                ledger_seconds = run_ledger(conn, ledger, bulk, txs)
                copy_seconds, rows = run_copy(conn, ledger, bulk, count, first_tx=2)
                results.append({
                    "distribution": "hot spot 90%" if hot else "uniform", "bulk": bulk, "transactions": count,
                    "rows": rows, "ledger_seconds": ledger_seconds, "copy_seconds": copy_seconds,
                    "ledger_tx_per_s": count / ledger_seconds, "ledger_rows_per_s": rows / ledger_seconds,
                    "copy_tx_per_s": count / copy_seconds, "copy_rows_per_s": rows / copy_seconds,
                    "ratio_ledger_over_copy": copy_seconds / ledger_seconds,
                })
                print(f"  {results[-1]['distribution']:>12} bulk {bulk:>5}: ledger {count / ledger_seconds:,.0f} tx/s,"
                      f" copy {count / copy_seconds:,.0f} tx/s", flush=True)
        print("  backdating:", flush=True)
        backdating = run_backdating(conn, rng)
        settings = server_settings(url)
    print_table(
        "Ledger writes vs raw binary COPY of the same rows (transactions + moves + logs)",
        ["distribution", "bulk", "tx", "ledger tx/s", "ledger rows/s", "COPY tx/s", "COPY rows/s", "ledger/COPY"],
        [[r["distribution"], r["bulk"], r["transactions"], r["ledger_tx_per_s"], r["ledger_rows_per_s"],
          r["copy_tx_per_s"], r["copy_rows_per_s"], f"{r['ratio_ledger_over_copy']:.2f}x"] for r in results],
    )
    print_table(
        f"Backdating: {BACKDATING_TX:,} two-posting transactions in bulks of {BACKDATING_BULK:,}",
        ["effective times", "first quarter tx/s", "last quarter tx/s", "all tx/s", "balances checked exact"],
        [[r["effective_times"], r["first_quarter_tx_per_s"], r["last_quarter_tx_per_s"], r["mean_tx_per_s"],
          r["balances_checked"]] for r in backdating],
    )
    random_ = backdating[1]
    print(f"random / in order: last quarter {random_['last_quarter_vs_in_order']:.2f}x, "
          f"mean {random_['mean_vs_in_order']:.2f}x (goal: at least 0.8x at {BACKDATING_TX:,})")
    print(f"server: {settings}")
    save("ledger_write", {"server": settings, "results": results, "backdating": backdating})


if __name__ == "__main__":
    main()
