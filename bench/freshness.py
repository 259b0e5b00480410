"""Freshness: time from a commit in the ledger to its rows being loaded in the warehouse.

A writer commits transactions at a steady RATE for SECONDS while `ledgerctl sync PIPELINE --follow` runs
into DuckDB in its own process. The follower prints one JSON report per sync, right after the warehouse
commit and the cursor move; a log is visible from the first report whose `toLogID` reaches it. The
baseline, in the same run on the same workload, is polling: the same sync in a loop with a 1 second pause
(in one long-lived process, so no start-up cost is counted against it).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, bench_database_url, print_table, save
from ledger_core.db import connect
from ledger_core.ledgers import create_ledger
from ledger_core.requests import NewTransaction
from ledger_core.writer import write
from ledger_pipelines import registry

RATE = float(os.environ.get("BENCH_FRESHNESS_RATE", "20"))  # transactions per second
SECONDS = float(os.environ.get("BENCH_FRESHNESS_SECONDS", "20"))
FOLLOW = [sys.executable, "-m", "ledger_core.cli", "sync", "{pipeline}", "--follow"]
POLL = [sys.executable, "-c", (
    "import json, os, sys, time\n"
    "from ledger_pipelines.sync import sync_pipeline\n"
    "while True:\n"
    "    report = sync_pipeline(os.environ['LEDGER_DATABASE_URL'], sys.argv[1], environ={})\n"
    "    if report.logs:\n"
    "        print(json.dumps(report.to_json()), flush=True)\n"
    "    time.sleep(1)\n"), "{pipeline}"]


def measure(url: str, command: list[str], label: str, workdir: Path) -> list[float]:
    with connect(url) as conn:
        registry.migrate_pipelines(conn)
        ledger = f"fresh-{label}-{int(time.time())}"
        create_ledger(conn, ledger)
        exporter = registry.create_exporter(conn, "duckdb", {"path": str(workdir / f"{label}.duckdb")})
        pipeline = registry.create_pipeline(conn, ledger, exporter.id, "realtime")
    env = {**os.environ, "LEDGER_DATABASE_URL": url}
    process = subprocess.Popen([part.replace("{pipeline}", pipeline.id) for part in command], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    visible: list[tuple[float, int]] = []  # (when, toLogID) per report

    def read_reports() -> None:
        buffer = ""
        assert process.stdout is not None
        for line in process.stdout:
            buffer += line
            try:
                report = json.loads(buffer)
            except json.JSONDecodeError:
                continue  # a pretty-printed report spans lines
            buffer = ""
            visible.append((time.monotonic(), int(report["toLogID"])))

    reader = threading.Thread(target=read_reports, daemon=True)
    reader.start()
    time.sleep(2)  # let the syncer start and LISTEN
    committed: dict[int, float] = {}
    with connect(url) as conn:
        deadline = time.monotonic() + SECONDS
        next_at = time.monotonic()
        i = 0
        while time.monotonic() < deadline:
            [result] = write(conn, ledger, [NewTransaction.from_json({"postings": [
                {"source": "world", "destination": f"users:{i % 100}", "amount": 100 + i, "asset": "USD/2"}]})])
            committed[result.log.id] = time.monotonic()
            i += 1
            next_at += 1 / RATE
            time.sleep(max(next_at - time.monotonic(), 0))
    last = max(committed)
    wait_until = time.monotonic() + 15
    while time.monotonic() < wait_until and not any(to >= last for _, to in visible):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    latencies = []
    for log_id, at in committed.items():
        seen = next((when for when, to in visible if to >= log_id and when >= at), None)
        if seen is None:
            raise SystemExit(f"{label}: log {log_id} never became visible")
        latencies.append(seen - at)
    return latencies


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {"p50_ms": statistics.median(ordered) * 1000, "p95_ms": ordered[int(0.95 * (len(ordered) - 1))] * 1000,
            "max_ms": ordered[-1] * 1000, "commits": len(ordered)}


def main() -> None:
    url = bench_database_url()
    workdir = Path(tempfile.mkdtemp(prefix="bench-fresh-"))
    results = {}
    for label, command in (("follow", FOLLOW), ("poll-1s", POLL)):
        results[label] = summary(measure(url, command, label, workdir))
        print(f"  {label}: p50 {results[label]['p50_ms']:.0f} ms", flush=True)
    print_table(
        f"Commit -> visible in DuckDB, {RATE:g} tx/s for {SECONDS:g}s",
        ["syncer", "commits", "p50 ms", "p95 ms", "max ms", "p50 vs follow"],
        [[label, r["commits"], r["p50_ms"], r["p95_ms"], r["max_ms"],
          f"{r['p50_ms'] / results['follow']['p50_ms']:.1f}x"] for label, r in results.items()],
    )
    save("freshness", {"rate_tx_per_s": RATE, "seconds": SECONDS, "results": results})


if __name__ == "__main__":
    main()
