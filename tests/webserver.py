"""The Dagster web server on a free loopback port, for the tests that talk to it (GraphQL) or look at it (UI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.standins import free_port, stop_group

ROOT = Path(__file__).resolve().parents[1]


def graphql(base: str, query: str) -> dict[str, Any]:
    request = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@contextmanager
def webserver(database_url: str, dagster_home: Path) -> Iterator[str]:
    """Serve the project's code location over the instance at `dagster_home`; yield the base URL once it answers."""
    port = free_port()
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text((ROOT / "dagster_project" / "dagster.yaml").read_text())
    env = {**os.environ, "LEDGER_DATABASE_URL": database_url, "DAGSTER_HOME": str(dagster_home)}
    server = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1",
         "-p", str(port)],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            try:
                if "data" in graphql(base, "{ assetNodes { id } }"):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the web server never answered"
            time.sleep(1)
        yield base
    finally:
        stop_group(server, timeout=20)
