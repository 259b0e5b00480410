"""HTTP writes: 1, 16 and 64 concurrent clients posting single 2-posting transactions to `ledgerctl serve`.

The server runs as `ledgerctl serve` on the durable bench server: without group commit (`--no-group-commit`:
each request commits alone), with it (one HTTP process and the writer process), and with 2 HTTP processes
feeding the one writer process (`--workers 2`), in the same run, on fresh ledgers. The load comes from a
separate process (this file with `--load`): asyncio clients, each on its own keep-alive connection, sending one request
at a time and waiting for its answer. Half the transactions credit an account that does not exist yet, the
others one of 200 existing accounts, and every fourth also pays one hot account. Reported: tx/s over the case,
p50 / p99 latency of a request as the client sees it, and how many database commits the writes took.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import bench_database_url, save, server_settings
from bench.group_commit import EXISTING_ACCOUNTS, fresh_ledger, print_against_one_per_request

CLIENTS = (1, 16, 64)
SECONDS = 8.0  # per case: long enough for thousands of requests, short enough for the whole run
MODES = {"one commit per request": ["--no-group-commit"], "group commit": [],
         "group commit, 2 HTTP processes": ["--workers", "2"]}


def body(client: int, i: int) -> bytes:
    account = f"new:{client}:{i}" if i % 2 == 0 else f"users:{(client * 7919 + i) % EXISTING_ACCOUNTS}"
    postings = [{"source": "world", "destination": account, "amount": 100, "asset": "USD/2"},
                {"source": "world", "destination": "fees", "amount": 1, "asset": "USD/2"}]
    if i % 4 == 1:
        postings[1] = {"source": "hot", "destination": account, "amount": 1, "asset": "USD/2"}
    return json.dumps({"postings": postings}).encode()


# -- the load process -------------------------------------------------------------------------------------------

class Connection:
    """One keep-alive HTTP/1.1 connection, one request at a time: a client thin enough that the load process,
    not the server, is never the bottleneck (httpx's pool spent a core on 64 connections here)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, token: str):
        self.reader, self.writer = reader, writer
        self.head = (f"Host: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                     "Connection: keep-alive\r\n").encode()

    async def post(self, path: str, payload: bytes) -> tuple[int, bytes]:
        self.writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\n" + self.head
                          + b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length)


async def load(url: str, token: str, ledger: str, clients: int, seconds: float) -> dict:
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    failures: list[str] = []
    connections = [Connection(*await asyncio.open_connection(host, int(port)), f"{host}:{port}", token)
                   for _ in range(clients)]
    deadline = time.perf_counter() + seconds
    path = f"/v2/{ledger}/transactions"

    async def client(n: int) -> None:
        i = 0
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            status, answer = await connections[n].post(path, body(n, i))
            latencies.append(time.perf_counter() - began)
            if status != 200:
                failures.append(answer[:200].decode(errors="replace"))
            i += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    elapsed = time.perf_counter() - started
    for connection in connections:
        connection.writer.close()
    latencies.sort()
    return {"requests": len(latencies), "seconds": elapsed, "failures": len(failures),
            "first_failure": failures[0] if failures else None,
            "p50_ms": statistics.median(latencies) * 1000, "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000}


# -- the driver ---------------------------------------------------------------------------------------------------

def _prepare(url: str) -> tuple[str, str, str]:
    """A fresh ledger with the existing accounts, and a key for it (client id, secret)."""
    from ledger_api import auth
    from ledger_core.db import connect
    from ledger_core.migrations import migrate_all

    with connect(url, check_schema=False) as conn:
        migrate_all(conn)
    ledger = fresh_ledger(url, "bench-http")
    with connect(url) as conn:
        key, secret = auth.create_key(conn, "bench", ledgers=[ledger])
    return ledger, key.client_id, secret


def run_case(url: str, mode: str, clients: int) -> dict:
    from tests.api.conftest import Key, start_server, stop, token

    ledger, client_id, secret = _prepare(url)
    server = start_server(url, Path(tempfile.mkdtemp(prefix="bench-http-")), *MODES[mode])
    try:
        bearer = token(server, Key(client_id, secret))
        out = subprocess.run([sys.executable, __file__, "--load", server.url, bearer, ledger, str(clients),
                              str(SECONDS)], capture_output=True, text=True, check=True)
        result = json.loads(out.stdout)
    finally:
        stop(server)
    from ledger_core.db import connect

    with connect(url) as conn:
        commits = conn.execute("SELECT count(DISTINCT date) FROM ledger_core.logs WHERE ledger = %s AND id > 1",
                               (ledger,)).fetchone()[0]
    return {"mode": mode, "clients": clients, **result, "tx_per_s": result["requests"] / result["seconds"],
            "commits": commits}


def main() -> None:
    url = bench_database_url()
    results = []
    for clients in CLIENTS:
        for mode in MODES:
            results.append(run_case(url, mode, clients))
            r = results[-1]
            print(f"  {mode:>25}, {clients:>2} clients: {r['tx_per_s']:,.0f} tx/s in {r['commits']:,} commits, "
                  f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, {r['failures']} failed", flush=True)
            if r["failures"]:
                raise SystemExit(f"requests failed: {r['first_failure']}")
    print_against_one_per_request(
        "HTTP: single-transaction requests to ledgerctl serve, group commit against one commit per request", results)
    settings = server_settings(url)
    print(f"server: {settings}; load from a separate process (asyncio, keep-alive HTTP/1.1)")
    save("http_write", {"server": settings, "seconds_per_case": SECONDS, "results": results})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--load", nargs=5, metavar=("URL", "TOKEN", "LEDGER", "CLIENTS", "SECONDS"))
    args = parser.parse_args()
    if args.load:
        base_url, bearer, name, count, duration = args.load
        print(json.dumps(asyncio.run(load(base_url, bearer, name, int(count), float(duration)))))
    else:
        main()
