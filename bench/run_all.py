"""`make bench`: every benchmark in turn; each prints its table and writes bench/results/<name>.json."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    names = sys.argv[1:] or ["ledger_write", "concurrent_write", "group_commit", "http_write", "sync", "freshness",
                             "verify", "check_cost"]
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        sys.argv = [str(HERE / f"{name}.py")]  # each parses its own arguments: none of ours
        runpy.run_path(str(HERE / f"{name}.py"), run_name="__main__")
