"""Group commit against one commit per request: 1, 16 and 64 concurrent clients writing single transactions.

Each client sends 2-posting transactions one at a time and waits for each result: half credit an account that
does not exist yet, the others one of 200 existing accounts, and every fourth also pays one hot account.
"One commit per request": each client has its own connection and calls the write path itself. "Group
commit": the clients hand their requests to a `GroupCommitter`, which gathers them per ledger. Both on the
durable server, in the same run, on fresh ledgers; tx/s over the whole case and p50 / p99 of one request.
(This is the core's gathering; the HTTP API will put it behind its routes.)
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_database_url, print_table, save, server_settings
from ledger_core.db import connect
from ledger_core.group_commit import GroupCommitter
from ledger_core.ledgers import create_ledger
from ledger_core.requests import NewTransaction
from ledger_core.writer import write

EXISTING_ACCOUNTS = 200
CLIENTS = (1, 16, 64)
REQUESTS = {"one commit per request": 1_200, "group commit": 6_400}  # per case, shared among the clients


def _transaction(client: int, i: int) -> NewTransaction:
    account = f"new:{client}:{i}" if i % 2 == 0 else f"users:{(client * 7919 + i) % EXISTING_ACCOUNTS}"
    postings = [{"source": "world", "destination": account, "amount": 100, "asset": "USD/2"}]
    if i % 4 == 1:
        postings.append({"source": "hot", "destination": account, "amount": 1, "asset": "USD/2"})
    return NewTransaction.from_json({"postings": postings})


def fresh_ledger(url: str, prefix: str = "bench-group") -> str:
    """A new ledger with the hot account and the existing accounts funded."""
    ledger = f"{prefix}-{uuid.uuid4().hex[:8]}"
    with connect(url) as conn:
        create_ledger(conn, ledger)
        write(conn, ledger, [NewTransaction.from_json({"postings": [
            {"source": "world", "destination": "hot", "amount": 10**12, "asset": "USD/2"},
            *({"source": "world", "destination": f"users:{i}", "amount": 1, "asset": "USD/2"}
              for i in range(EXISTING_ACCOUNTS))]})])
    return ledger


def run_case(url: str, mode: str, clients: int) -> dict:
    ledger = fresh_ledger(url)
    per_client = REQUESTS[mode] // clients
    latencies: list[list[float]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)
    committer = GroupCommitter(url) if mode == "group commit" else None

    def client(n: int) -> None:
        conn = None if committer else connect(url)
        barrier.wait()
        for i in range(per_client):
            began = time.perf_counter()
            if committer:
                committer.write(ledger, _transaction(n, i))
            else:
                write(conn, ledger, [_transaction(n, i)])  # type: ignore[arg-type]
            latencies[n].append(time.perf_counter() - began)
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if committer:
        committer.close()
    every = sorted(x for per in latencies for x in per)
    with connect(url) as conn:
        commits = conn.execute("SELECT count(DISTINCT date) FROM ledger_core.logs WHERE ledger = %s AND id > 1",
                               (ledger,)).fetchone()[0]
    return {"mode": mode, "clients": clients, "requests": len(every), "seconds": elapsed,
            "tx_per_s": len(every) / elapsed, "commits": commits,
            "p50_ms": statistics.median(every) * 1000, "p99_ms": every[int(len(every) * 0.99) - 1] * 1000}


def print_against_one_per_request(title: str, results: list[dict]) -> None:
    """The results table, each case against one commit per request with as many clients (added to each result)."""
    by = {(r["mode"], r["clients"]): r for r in results}
    for r in results:
        r["vs_one_commit_per_request"] = r["tx_per_s"] / by[("one commit per request", r["clients"])]["tx_per_s"]
    print_table(
        title, ["mode", "clients", "requests", "tx/s", "commits", "vs one per request", "p50 ms", "p99 ms"],
        [[r["mode"], r["clients"], r["requests"], r["tx_per_s"], r["commits"],
          f"{r['vs_one_commit_per_request']:.1f}x", r["p50_ms"], r["p99_ms"]] for r in results],
    )


def main() -> None:
    url = bench_database_url()
    results = []
    for clients in CLIENTS:
        for mode in REQUESTS:
            results.append(run_case(url, mode, clients))
            r = results[-1]
            print(f"  {mode:>22}, {clients:>2} clients: {r['tx_per_s']:,.0f} tx/s in {r['commits']:,} commits, "
                  f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms", flush=True)
    print_against_one_per_request("Single-transaction requests: group commit against one commit per request",
                                  results)
    settings = server_settings(url)
    print(f"server: {settings}")
    save("group_commit", {"server": settings, "results": results})


if __name__ == "__main__":
    main()
