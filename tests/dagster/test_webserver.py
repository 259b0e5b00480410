"""Smoke test: the Dagster web server starts on a loopback port and lists the assets through GraphQL."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

QUERY = "{ assetNodes { assetKey { path } groupName } }"
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_webserver_serves_the_assets(dagster_db_url, tmp_path):
    port = _free_port()
    env = {**os.environ, "LEDGER_DATABASE_URL": dagster_db_url, "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text((ROOT / "dagster_project" / "dagster.yaml").read_text())
    server = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1",
         "-p", str(port)],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        nodes = None
        while time.monotonic() < deadline and nodes is None:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": QUERY}).encode(),
                    headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    body = json.loads(response.read())
                nodes = body["data"]["assetNodes"]
            except (OSError, KeyError, TypeError):
                time.sleep(1)
        assert nodes is not None, "the web server never answered"
        paths = {tuple(n["assetKey"]["path"]): n["groupName"] for n in nodes}
        assert paths[("warehouse", "balances")] == "warehouse"
        assert paths[("ledger", "log")] == "ledger"
        assert len([p for p in paths if p[0] == "warehouse"]) == 6
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
