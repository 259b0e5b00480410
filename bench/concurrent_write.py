"""Concurrent single-transaction writers: 1, 8 and 32 processes on one ledger.

Each writer is its own process (as separate application instances would be) committing one transaction per
write: half of the writes credit an account that does not exist yet, the other half one of 200 existing
accounts, and every fourth write also pays one hot account. Reported: tx/s over the whole run and the p50 /
p99 latency of one write, with two references measured in the same run on the same server: one writer
committing bulks of 100 (what batching buys), and the 1-writer case itself.

Durable server (fsync and synchronous_commit on): a commit costs a WAL flush, so many writers mostly share
flushes; the ledger's per-ledger lock serialises the log tail, so the figures show how far group flushing
carries single-transaction writers before that lock is the limit.
"""

from __future__ import annotations

import multiprocessing
import statistics
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

EXISTING_ACCOUNTS = 200
WRITES = 1_200  # per case, shared among the writers
CASES = (1, 8, 32)


def _transaction(writer: int, i: int) -> NewTransaction:
    account = f"new:{writer}:{i}" if i % 2 == 0 else f"users:{(writer * 7919 + i) % EXISTING_ACCOUNTS}"
    postings = [{"source": "world", "destination": account, "amount": 100, "asset": "USD/2"}]
    if i % 4 == 1:
        postings.append({"source": account, "destination": "hot", "amount": 1, "asset": "USD/2"})
    return NewTransaction.from_json({"postings": postings})


def _writer(url: str, ledger: str, writer: int, count: int, bulk: int, start: object, out: object) -> None:
    commands = [_transaction(writer, i) for i in range(count)]
    latencies = []
    with connect(url) as conn:
        start.wait()  # type: ignore[attr-defined]
        for i in range(0, count, bulk):
            began = time.perf_counter()
            write(conn, ledger, commands[i:i + bulk])
            latencies.append(time.perf_counter() - began)
    out.put(latencies)  # type: ignore[attr-defined]


def run_case(url: str, writers: int, bulk: int = 1) -> dict:
    ledger = f"bench-concurrent-{writers}-{bulk}-{uuid.uuid4().hex[:6]}"
    with connect(url) as conn:
        create_ledger(conn, ledger)
        write(conn, ledger, [NewTransaction.from_json({"postings": [
            {"source": "world", "destination": f"users:{n}", "amount": 1, "asset": "USD/2"}]})
            for n in range(EXISTING_ACCOUNTS)])
        deadlocks_before = _deadlocks(conn)
    context = multiprocessing.get_context("spawn")
    start, out = context.Event(), context.Queue()
    each = WRITES // writers
    processes = [context.Process(target=_writer, args=(url, ledger, n, each, bulk, start, out))
                 for n in range(writers)]
    for p in processes:
        p.start()
    time.sleep(2)  # every writer connected and waiting
    began = time.perf_counter()
    start.set()
    latencies = [lat for _ in processes for lat in out.get(timeout=600)]
    elapsed = time.perf_counter() - began
    for p in processes:
        p.join()
    time.sleep(1.1)
    with connect(url) as conn:
        deadlocks = _deadlocks(conn) - deadlocks_before
    latencies.sort()
    return {"writers": writers, "bulk": bulk, "transactions": each * writers, "seconds": elapsed,
            "tx_per_s": each * writers / elapsed, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "deadlocks": deadlocks}


def _deadlocks(conn) -> int:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return int(conn.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
               .fetchone()[0])


def main() -> None:
    url = bench_database_url()
    results = []
    for writers in CASES:
        results.append(run_case(url, writers))
        r = results[-1]
        print(f"  {writers:>2} writers: {r['tx_per_s']:,.0f} tx/s, p50 {r['p50_ms']:.1f} ms, "
              f"p99 {r['p99_ms']:.1f} ms, deadlocks {r['deadlocks']}", flush=True)
    results.append(run_case(url, 1, bulk=100))
    single = results[0]["tx_per_s"]
    print_table(
        "Concurrent single-transaction writers (half on new accounts, every fourth on one hot account)",
        ["writers", "tx per commit", "tx", "tx/s", "vs 1 writer", "p50 ms", "p99 ms", "deadlocks"],
        [[r["writers"], r["bulk"], r["transactions"], r["tx_per_s"], f"{r['tx_per_s'] / single:.2f}x",
          r["p50_ms"], r["p99_ms"], r["deadlocks"]] for r in results],
    )
    settings = server_settings(url)
    print(f"server: {settings}")
    save("concurrent_write", {"server": settings, "results": results})


if __name__ == "__main__":
    main()
