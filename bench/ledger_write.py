"""Ledger write throughput: the core's bulk path against raw binary COPY of the same rows.

2-posting transactions (funded source -> account -> fees), hashing and overdraft checks on, on a durable
server (synchronous_commit=on), in bulks of 1, 100 and 1,000; accounts drawn uniformly, or with a hot
spot (90% of transactions touch one account). The baseline copies the very rows the ledger wrote
(transactions, moves, logs) into identical tables with `COPY … FROM STDIN (FORMAT binary)`, one commit
per bulk: the physical floor of writing that data, with none of the ledger's reads, checks or hashing.
"""

from __future__ import annotations

import random
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_database_url, print_table, save, server_settings
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
        settings = server_settings(url)
    print_table(
        "Ledger writes vs raw binary COPY of the same rows (transactions + moves + logs)",
        ["distribution", "bulk", "tx", "ledger tx/s", "ledger rows/s", "COPY tx/s", "COPY rows/s", "ledger/COPY"],
        [[r["distribution"], r["bulk"], r["transactions"], r["ledger_tx_per_s"], r["ledger_rows_per_s"],
          r["copy_tx_per_s"], r["copy_rows_per_s"], f"{r['ratio_ledger_over_copy']:.2f}x"] for r in results],
    )
    print(f"server: {settings}")
    save("ledger_write", {"server": settings, "results": results})


if __name__ == "__main__":
    main()
