"""What every benchmark shares: the database it runs on, the machine it reports, how it prints and saves."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ledger_core.db import connect, ensure_database
from ledger_core.localpg import ensure_server
from ledger_core.migrations import migrate_all
from ledger_pipelines import registry  # noqa: F401 - registers the pipelines' migrations

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def migrated(url: str) -> str:
    """`url`, its schema brought up to date (benchmarks migrate explicitly, as `ledgerctl db migrate` does)."""
    with connect(url, check_schema=False) as conn:
        migrate_all(conn)
    return url


def bench_database_url() -> str:
    """A durable local server (fsync and synchronous_commit on), database `ledger_bench`, or LEDGER_BENCH_URL."""
    url = os.environ.get("LEDGER_BENCH_URL")
    if url:
        return url
    server = ensure_server(ROOT / ".ledger" / "bench-pg", durable=True)
    ensure_database(server.url(), "ledger_bench")
    return migrated(server.url("ledger_bench"))


def machine() -> dict[str, Any]:
    memory = 0
    try:
        with open("/proc/meminfo") as info:
            memory = int(info.readline().split()[1]) // 1024 // 1024
    except (OSError, ValueError, IndexError):
        pass
    return {"cores": os.cpu_count(), "memory_gib": memory, "python": platform.python_version(),
            "machine": platform.machine()}


def server_settings(url: str) -> dict[str, str]:
    with connect(url) as conn:
        return {name: conn.execute(f"SHOW {name}").fetchone()[0]
                for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers")}


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def save(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                "machine": machine(), **payload}, indent=2, default=str))
    print(f"\nresults: {path.relative_to(ROOT)}")
    return path
