"""The project's own PostgreSQL starts from any working folder, even one the server user cannot enter."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from ledger_core import localpg
from ledger_core.localpg import ensure_server, stop_server


@pytest.mark.skipif(os.geteuid() != 0, reason="the server-user indirection exists only when running as root")
def test_server_starts_and_is_reused_from_a_folder_closed_to_the_server_user():
    closed = Path(tempfile.mkdtemp())  # mode 700, like `git clone . "$(mktemp -d)/p"`
    assert os.stat(closed).st_mode & 0o077 == 0
    data_dir = closed / "project" / ".ledger" / "pg"
    try:
        server = ensure_server(data_dir, durable=False)
        location = Path((data_dir.parent / "pg.location").read_text().strip())
        assert location == server.data_dir and (location / "PG_VERSION").exists()
        with psycopg.connect(server.url()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert ensure_server(data_dir, durable=False) == server  # found and reused, not initialised again
        assert os.stat(closed).st_mode & 0o077 == 0  # the user's folder was left as it was
    finally:
        location_file = data_dir.parent / "pg.location"
        stop_server(data_dir)
        if location_file.exists():
            shutil.rmtree(Path(location_file.read_text().strip()).parent, ignore_errors=True)
        shutil.rmtree(closed, ignore_errors=True)


def _ledgerctl(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LEDGER_DATABASE_URL"}
    return subprocess.run([sys.executable, "-m", "ledger_core.cli", *args], capture_output=True, text=True,
                          env={**env, "LEDGER_HOME": str(home)}, stdin=subprocess.DEVNULL, timeout=180)


def test_the_local_server_lifecycle_as_a_user_sees_it(tmp_path):
    home = Path(tempfile.mkdtemp())  # another folder, as a user running ledgerctl elsewhere
    try:
        status = json.loads(_ledgerctl(home, "db", "status").stdout)
        assert status["using"] == "local server" and not status["local"]["exists"]
        first = _ledgerctl(home, "ledgers", "list")
        assert first.returncode == 0 and json.loads(first.stdout) == []
        # Never silent: which server, and where its data lives.
        assert first.stderr.startswith(f"ledgerctl: created a new, empty local PostgreSQL server for {home}: data in ")
        assert _ledgerctl(home, "ledgers", "create", "kept").returncode == 0
        second = _ledgerctl(home, "ledgers", "list")
        assert second.stderr == "" and [x["name"] for x in json.loads(second.stdout)] == ["kept"]
        running = json.loads(_ledgerctl(home, "db", "status").stdout)["local"]
        assert running["running"] and running["exists"]

        # An unclean stop: the server comes back on the same port, so a pinned URL keeps working.
        pid = int((Path(running["dataDir"]) / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGKILL)
        time.sleep(1)
        after = _ledgerctl(home, "ledgers", "list")
        assert after.returncode == 0, after.stderr
        assert after.stderr.startswith("ledgerctl: started the local PostgreSQL server") and \
            f"port {running['port']} " in after.stderr
        assert json.loads(_ledgerctl(home, "db", "status").stdout)["local"]["port"] == running["port"]

        stopped = json.loads(_ledgerctl(home, "db", "stop").stdout)
        assert stopped["stopped"] and not json.loads(_ledgerctl(home, "db", "status").stdout)["local"]["running"]
        dry = json.loads(_ledgerctl(home, "db", "remove").stdout)
        assert dry["wouldRemove"] == [running["dataDir"]] and Path(running["dataDir"]).exists()
        removed = _ledgerctl(home, "db", "remove", "--yes")
        assert removed.returncode == 0 and json.loads(removed.stdout)["removed"] == [running["dataDir"]]
        assert "stopping and removing the local PostgreSQL server at" in removed.stderr
        assert not Path(running["dataDir"]).exists()
        if running["dataDir"].startswith(str(localpg.FALLBACK_ROOT)):
            assert not Path(running["dataDir"]).parent.exists()  # nothing left behind, wherever it lived
        assert not json.loads(_ledgerctl(home, "db", "status").stdout)["local"]["exists"]
    finally:
        for cluster in localpg.local_clusters(home):
            localpg.remove_server(cluster)
        shutil.rmtree(home, ignore_errors=True)
