"""The local stand-ins for the cloud warehouses (REFERENCE §4), started by the tests themselves.

- BigQuery: local-bigquery in its own Python 3.13 venv (`make standins`, part of `make test`), one server per
  test session on a free loopback port, stopped by PID.
- Snowflake: fakesnow in patch mode, in-process (a pytest dependency of this venv).
- Redshift: the suite's own PostgreSQL, in a database that defines what Redshift has and PostgreSQL lacks
  (`super`, `json_parse`, `json_serialize`).

A stand-in that cannot start raises `StandInMissing`; the contract kit skips that warehouse with the reason,
unless LEDGER_REQUIRE_ALL_WAREHOUSES is set (`make test`, CI), where it fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from ledger_core.db import ensure_database

ROOT = Path(__file__).resolve().parents[2]
BIGQUERY_VENV = ROOT / "build" / "bigquery"

# What a Redshift cluster has and PostgreSQL does not, so Redshift's DDL and SQL run unchanged on PostgreSQL
# (JSON_EXTRACT_PATH_TEXT on text answers '' for a missing key, and TRUNC(timestamp) is its date, as on Redshift).
REDSHIFT_SHIMS = """
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'super') THEN
    CREATE DOMAIN super AS jsonb;
  END IF;
END $$;
CREATE OR REPLACE FUNCTION json_parse(text) RETURNS super LANGUAGE sql IMMUTABLE AS 'SELECT $1::jsonb::super';
CREATE OR REPLACE FUNCTION json_serialize(super) RETURNS text LANGUAGE sql IMMUTABLE AS 'SELECT $1::jsonb::text';
CREATE OR REPLACE FUNCTION json_extract_path_text(text, VARIADIC text[]) RETURNS text LANGUAGE sql IMMUTABLE
  AS $f$ SELECT coalesce(json_extract_path_text($1::json, VARIADIC $2), '') $f$;
CREATE OR REPLACE FUNCTION trunc(timestamptz) RETURNS date LANGUAGE sql IMMUTABLE AS 'SELECT $1::date';
"""


class StandInMissing(Exception):
    """A stand-in is not installed or could not start; the message says how to get it."""


def stop_group(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM to the process's session (it was started with start_new_session), SIGKILL if it lingers."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def bigquery_server() -> Iterator[str]:
    """A local-bigquery server for the session: its API endpoint URL."""
    command = BIGQUERY_VENV / "venv" / "bin" / "local-bigquery"
    if not command.exists():
        raise StandInMissing("the BigQuery stand-in is not installed: run `make standins`")
    data = Path(tempfile.mkdtemp(prefix="ledger-bigquery-"))
    port = free_port()
    log = (data / "server.log").open("w")
    process = subprocess.Popen(
        [str(command), "--host", "127.0.0.1", "--port", str(port), "--grpc-port", str(free_port()),
         "--data-dir", str(data / "data")],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "HOME": str(BIGQUERY_VENV / "home")},  # where `make standins` put DuckDB's extensions
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/bigquery/v2/projects/local/datasets", timeout=2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    said = (data / "server.log").read_text()[-500:]
                    raise StandInMissing(f"local-bigquery did not start: {said}") from None
                time.sleep(0.2)
        yield url
    finally:
        if process.poll() is None:
            stop_group(process, timeout=10)
        log.close()
        shutil.rmtree(data, ignore_errors=True)


def redshift_database(pg_admin_url: str) -> str:
    """A database on the suite's PostgreSQL that speaks enough Redshift: its URL."""
    ensure_database(pg_admin_url, "redshift_test")
    url = pg_admin_url.rsplit("/", 1)[0] + "/redshift_test"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(4242)")  # parallel sessions: one creates the shims
        conn.execute(REDSHIFT_SHIMS)
        conn.execute("SELECT pg_advisory_unlock(4242)")
    return url
