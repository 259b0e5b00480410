"""Exporters, pipelines and sync through `ledgerctl`, and `sync --follow` woken by commits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import duckdb

from tests.helpers import posting, send
from tests.integration.test_cli import run


def test_exporter_pipeline_sync_round_trip(database_url, conn, ledger, tmp_path):
    send(conn, ledger, posting("world", "users:1", 42))
    warehouse = tmp_path / "wh.duckdb"
    refused = run(database_url, "exporters", "create", "--driver", "duckdb", "--config", '{"path": 3}')
    assert refused.returncode == 1 and refused.stderr.startswith("error: VALIDATION: ")
    secret = run(database_url, "exporters", "create", "--driver", "postgres",
                 "--config", '{"host": "h", "database": "d", "password": "hunter2"}')
    assert secret.returncode == 1 and "secret" in secret.stderr
    exporter = json.loads(run(database_url, "exporters", "create", "--driver", "duckdb",
                              "--config", json.dumps({"path": str(warehouse)})).stdout)
    created = run(database_url, "pipelines", "create", ledger, "--exporter", exporter["id"])
    pipeline = json.loads(created.stdout)
    assert pipeline["lastLogID"] == 0 and pipeline["lag"] == 1 and pipeline["enabled"] is True
    again = run(database_url, "pipelines", "create", ledger, "--exporter", exporter["id"])
    assert again.returncode == 1 and "CONFLICT" in again.stderr
    synced = run(database_url, "sync", pipeline["id"], "--no-progress")
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["toLogID"] == 1
    assert json.loads(run(database_url, "pipelines", "get", pipeline["id"]).stdout)["lag"] == 0
    verified = run(database_url, "pipelines", "verify", pipeline["id"])
    assert verified.returncode == 0 and all(c["passed"] for c in json.loads(verified.stdout))
    with duckdb.connect(str(warehouse)) as wh:  # an analyst "fixes" a balance by hand
        wh.execute("UPDATE ledger.balances SET balance = 41, input = 41 WHERE account = 'users:1'")
    tampered = run(database_url, "pipelines", "verify", pipeline["id"])
    assert tampered.returncode == 1 and "error: CHECK_FAILED: " in tampered.stderr
    assert "balances_match" in tampered.stderr
    [differs] = [c for c in json.loads(tampered.stdout) if c["name"] == "balances_match"]
    assert differs["first_differences"][0]["warehouse"]["balance"] == "41"
    in_use = run(database_url, "exporters", "delete", exporter["id"])
    assert in_use.returncode == 1 and "still has pipelines" in in_use.stderr
    reset = json.loads(run(database_url, "pipelines", "reset", pipeline["id"], "--to-log-id", "0").stdout)
    assert reset["lastLogID"] == 0
    assert json.loads(run(database_url, "sync", pipeline["id"], "--no-progress").stdout)["fromLogID"] == 1
    with duckdb.connect(str(warehouse), read_only=True) as wh:
        assert wh.execute("SELECT count(*), max(balance) FROM ledger.balances").fetchone() == (2, 42)
        assert wh.execute("SELECT count(*) FROM ledger.logs").fetchone() == (1,)


def test_sync_follow_loads_within_moments_of_a_commit(database_url, conn, ledger, tmp_path):
    warehouse = tmp_path / "follow.duckdb"
    exporter = json.loads(run(database_url, "exporters", "create", "--driver", "duckdb",
                              "--config", json.dumps({"path": str(warehouse)})).stdout)
    pipeline = json.loads(run(database_url, "pipelines", "create", ledger, "--exporter", exporter["id"]).stdout)
    env = {**os.environ, "LEDGER_DATABASE_URL": database_url}
    follower = subprocess.Popen([sys.executable, "-m", "ledger_core.cli", "sync", pipeline["id"], "--follow"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
    try:
        time.sleep(1.5)  # let it LISTEN
        committed = time.monotonic()
        send(conn, ledger, posting("world", "users:9", 5))
        line = follower.stdout.readline()  # one JSON report per sync
        latency = time.monotonic() - committed
        assert json.loads(line)["toLogID"] == 1
        assert latency < 5, latency  # woken by NOTIFY, not the 30 s safety poll
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(timeout=20)
    history = json.loads(run(database_url, "pipelines", "history", pipeline["name"]).stdout)
    assert [(h["trigger"], h["outcome"], h["toLogID"]) for h in history] == [("follow", "succeeded", 1)]


def test_sync_all_runs_every_pipeline_and_reports_failures(fresh_db_url, tmp_path):
    from ledger_core.db import connect

    with connect(fresh_db_url) as own:
        for name, amount in (("good", 5), ("bad", 10**40)):  # 10^40 does not fit DuckDB's DECIMAL(38,0)
            run(fresh_db_url, "ledgers", "create", name)
            send(own, name, posting("world", "a", amount))
            exporter = json.loads(run(fresh_db_url, "exporters", "create", "--driver", "duckdb", "--config",
                                      json.dumps({"path": str(tmp_path / f"{name}.duckdb")})).stdout)
            run(fresh_db_url, "pipelines", "create", name, "--exporter", exporter["id"])
    result = run(fresh_db_url, "sync", "--all", "--no-progress")
    assert result.returncode == 1
    body = json.loads(result.stdout)
    assert [r["ledger"] for r in body["synced"]] == ["good"]
    assert len(body["failed"]) == 1 and "VALUE" not in body["failed"][0]["pipelineID"]
    assert "ValueOutOfRange: log 1" in body["failed"][0]["error"]
    assert result.stderr.startswith("error: PIPELINE: 1 pipeline(s) failing")
    assert len(result.stderr.splitlines()) == 1
    bad = body["failed"][0]["pipelineID"]
    listed = {p["id"]: p for p in json.loads(run(fresh_db_url, "pipelines", "list").stdout)}
    assert listed[bad]["failing"] and listed[bad]["lastErrorCode"] == "VALUE_OUT_OF_RANGE"
    assert listed[bad]["lastSyncAt"] is None and listed[bad]["lag"] == 1
    good = next(p for p in listed.values() if p["id"] != bad)
    assert not good["failing"] and 0 <= good["secondsSinceLastSync"] < 60

    # The way forward the error names: money as exact text in this DuckDB warehouse. Nothing is skipped.
    exporter_id = listed[bad]["exporterID"]
    updated = run(fresh_db_url, "exporters", "update", exporter_id, "--config", '{"money": "text"}')
    assert updated.returncode == 0, updated.stderr
    assert json.loads(updated.stdout)["config"]["money"] == "text"
    again = run(fresh_db_url, "sync", "--all", "--no-progress")
    assert again.returncode == 0, again.stderr
    import duckdb

    with duckdb.connect(str(tmp_path / "bad.duckdb"), read_only=True) as wh:
        assert wh.sql("SELECT balance FROM ledger.balances WHERE account = 'a'").fetchall() == [(str(10**40),)]
        assert wh.sql("SELECT data_type FROM information_schema.columns WHERE table_name = 'moves' "
                      "AND column_name = 'amount'").fetchall() == [("VARCHAR",)]
    history = json.loads(run(fresh_db_url, "pipelines", "history", bad).stdout)
    assert [(h["outcome"], h["trigger"], h["errorCode"]) for h in history] == [
        ("succeeded", "cli", None), ("failed", "cli", "VALUE_OUT_OF_RANGE")]
    assert history[0]["fromLogID"] == 1 and history[0]["logs"] == 1
