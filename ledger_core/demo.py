"""`make demo` for the ledger alone: a demo ledger with marketplace activity, then its balances."""

from __future__ import annotations

import json
import time

from ledger_core import reads
from ledger_core.cli import database_url
from ledger_core.db import connect
from ledger_core.demo_activity import seed_marketplace

DEMO_LEDGER = "demo-marketplace"


def main() -> None:
    url = database_url()
    with connect(url) as conn:
        started = time.perf_counter()
        new = seed_marketplace(conn, DEMO_LEDGER)
        elapsed = time.perf_counter() - started
        report = reads.verify_chain(conn, DEMO_LEDGER)
        print(f"ledger '{DEMO_LEDGER}': {new} new writes in {elapsed:.1f}s, {report.logs} logs, chain valid")
        rows = reads.balances(conn, DEMO_LEDGER, address="platform:")
        print("platform balances:", json.dumps([r.to_json() for r in rows], indent=2))
        print("per-asset totals (always 0):", reads.aggregate(reads.balances(conn, DEMO_LEDGER)))


if __name__ == "__main__":
    main()
