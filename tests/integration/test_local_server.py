"""The project's own PostgreSQL starts from any working folder, even one the server user cannot enter."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest

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
