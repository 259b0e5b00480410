"""What proving the ledger costs: the hash chain (set-based in PostgreSQL, and link by link in Python as the
sync does it) and the deep replay of the log against the tables, on the sync benchmark's ledger
(200,000 2-posting transactions with metadata and reverts; BENCH_SYNC_TRANSACTIONS to change it).
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_database_url, migrated, print_table, save, server_settings
from bench.sync import LEDGER, SIMPLE, TRANSACTIONS, fill
from ledger_core import reads
from ledger_core.audit import verify_deep
from ledger_core.db import connect, ensure_database
from ledger_core.ledgers import create_ledger


def main() -> None:
    base = bench_database_url().rsplit("/", 1)[0]
    ensure_database(base + "/postgres", "ledger_bench_verify")
    url = migrated(base + "/ledger_bench_verify")
    with connect(url) as conn:
        count = conn.execute("SELECT count(*) FROM ledger_core.logs WHERE ledger = %s", (LEDGER,)).fetchone()[0]
        if count == 0:  # built once, reused by later runs
            create_ledger(conn, LEDGER)
            began = time.perf_counter()
            fill(conn, SIMPLE, 0, TRANSACTIONS, random.Random(7))
            print(f"  built a {TRANSACTIONS:,}-transaction ledger in {time.perf_counter() - began:.0f} s", flush=True)
        rows = {t: conn.execute(f"SELECT count(*) FROM ledger_core.{t} WHERE ledger = %s", (LEDGER,)).fetchone()[0]
                for t in ("logs", "transactions", "moves")}
        results = []
        for name, check in (("chain, set-based in PostgreSQL (logs verify)",
                             lambda: reads.verify_chain(conn, LEDGER)),
                            ("chain, link by link in Python (what the sync runs)",
                             lambda: reads.verify_chain(conn, LEDGER, in_database=False)),
                            ("deep: chain + replay of every table (logs verify --deep)",
                             lambda: verify_deep(conn, LEDGER))):
            began = time.perf_counter()
            check()
            seconds = time.perf_counter() - began
            results.append({"check": name, "seconds": seconds, "logs_per_s": rows["logs"] / seconds})
            print(f"  {name}: {seconds:.1f} s", flush=True)
    print_table(f"Verification of one ledger: {rows['logs']:,} logs, {rows['transactions']:,} transactions, "
                f"{rows['moves']:,} moves", ["check", "seconds", "logs/s"],
                [[r["check"], r["seconds"], r["logs_per_s"]] for r in results])
    settings = server_settings(url)
    print(f"server: {settings}")
    save("verify", {"server": settings, "rows": rows, "results": results,
                    "transactions": int(os.environ.get("BENCH_SYNC_TRANSACTIONS", TRANSACTIONS))})


if __name__ == "__main__":
    main()
