"""A pipeline left alone: a warehouse restored from an older copy, a sync killed mid-run, an analyst holding the
DuckDB file."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

from ledger_pipelines import registry
from ledger_pipelines.errors import TransientLoadError
from ledger_pipelines.sync import RetryPolicy, sync_pipeline
from ledger_pipelines.tables import LOGS
from tests.contract.helpers import assert_warehouse_equals_ledger
from tests.helpers import new_tx, posting, send


@pytest.fixture
def duckdb_pipeline(conn, ledger, tmp_path):
    registry.migrate_pipelines(conn)
    exporter = registry.create_exporter(conn, "duckdb", {"path": str(tmp_path / "w.duckdb")})
    return registry.create_pipeline(conn, ledger, exporter.id), tmp_path / "w.duckdb"


def _writes(conn, ledger, count: int) -> None:
    from ledger_core.writer import write

    write(conn, ledger, [new_tx(posting("world", f"users:{i % 3}", 10 + i)) for i in range(count)])


def _loader(conn, pipeline):
    from ledger_pipelines.loaders import open_loader

    exporter = registry.get_exporter(conn, pipeline.exporter_id)
    return open_loader(exporter.driver, exporter.config, {})


def test_a_warehouse_restored_from_an_older_copy_catches_up(conn, ledger, duckdb_pipeline):
    pipeline, path = duckdb_pipeline
    _writes(conn, ledger, 10)
    sync_pipeline(conn.info.dsn, pipeline.id, environ={})
    shutil.copy(path, path.with_suffix(".backup"))
    _writes(conn, ledger, 5)
    sync_pipeline(conn.info.dsn, pipeline.id, environ={})
    shutil.copy(path.with_suffix(".backup"), path)  # the operator restores last night's copy
    _writes(conn, ledger, 2)
    _replays_to_the_head(conn, ledger, pipeline, held=10, cursor=15, head=17)


def _replays_to_the_head(conn, ledger, pipeline, *, held: int, cursor: int, head: int) -> None:
    """The next sync notices the warehouse holds logs up to `held` only, the cursor at `cursor`, and replays to
    `head`: the warehouse then equals the ledger, every log once."""
    report = sync_pipeline(conn.info.dsn, pipeline.id, environ={})
    assert (report.from_log_id, report.to_log_id) == (held + 1, head)
    assert f"held logs up to {held} only" in report.note and f"cursor stood at {cursor}" in report.note
    with _loader(conn, pipeline) as loader:
        assert_warehouse_equals_ledger(conn, loader, ledger, pipeline.id)
        assert loader.read_table(LOGS, ledger).column("id").to_pylist() == list(range(1, head + 1))


def test_a_sync_killed_mid_run_replays_what_the_warehouse_had_not_checkpointed(conn, ledger, duckdb_pipeline):
    # DuckDB is attached without a write-ahead log: what a sync commits reaches the file at the next checkpoint
    # (at 256 MB, or when the sync ends). A process killed before then leaves the file as it last was, the cursor
    # ahead of it; the next sync finds the warehouse behind and replays, with nothing lost or loaded twice.
    pipeline, _ = duckdb_pipeline
    _writes(conn, ledger, 10)
    sync_pipeline(conn.info.dsn, pipeline.id, environ={})
    _writes(conn, ledger, 20)
    killed_at_third_load = (
        "import os, signal, sys\n"
        "from ledger_pipelines.sync import sync_pipeline\n"
        "loads = []\n"
        "def fault(point):\n"
        "    if point == 'after_load':\n"
        "        loads.append(point)\n"
        "        if len(loads) == 3:\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        "sync_pipeline(sys.argv[1], sys.argv[2], environ={}, batch_size=5, fault=fault)\n")
    run = subprocess.run([sys.executable, "-c", killed_at_third_load, conn.info.dsn, pipeline.id], timeout=120)
    assert run.returncode == -9
    assert registry.get_pipeline(conn, pipeline.id).last_log_id == 20  # two batches acknowledged, then killed
    with _loader(conn, pipeline) as loader:
        assert loader.last_log_id(ledger) == 10  # the file as the first sync left it
    _replays_to_the_head(conn, ledger, pipeline, held=10, cursor=20, head=30)


def test_a_write_ahead_log_left_by_an_older_version_is_replayed(tmp_path):
    # Files written before the loader dropped its WAL may hold one, if that sync was killed: it must still count.
    path = tmp_path / "w.duckdb"
    killed_after_a_commit = (
        "import duckdb, os, signal, sys\n"
        "con = duckdb.connect(sys.argv[1])\n"
        "con.execute('CREATE TABLE t (i INTEGER)')\n"
        "con.execute('CHECKPOINT')\n"
        "con.execute('INSERT INTO t SELECT * FROM range(1000)')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", killed_after_a_commit, str(path)], timeout=60)
    assert path.with_suffix(".duckdb.wal").exists()
    from ledger_pipelines.loaders.duckdb import DuckDBLoader

    with DuckDBLoader({"path": str(path)}, {}) as loader:
        assert loader.query("SELECT count(*) FROM t") == [(1000,)]
    assert not path.with_suffix(".duckdb.wal").exists()


def _hold(path, seconds: float) -> subprocess.Popen:
    """An analyst's session on the warehouse file (read-only, as the README advises: it still takes a lock)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); "
                               "print('open', flush=True); time.sleep(float(sys.argv[2]))", str(path), str(seconds)],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    assert holder.stdout.readline().strip() == "open"
    return holder


def _one_exported_one_waiting(conn, ledger, pipeline) -> None:
    """Log 1 in the warehouse (so its file exists), log 2 waiting to be synced."""
    send(conn, ledger, posting("world", "a", 1))
    sync_pipeline(conn.info.dsn, pipeline.id, environ={})
    send(conn, ledger, posting("world", "a", 2))


def test_a_locked_warehouse_is_retried_until_the_lock_goes(conn, ledger, duckdb_pipeline):
    pipeline, path = duckdb_pipeline
    _one_exported_one_waiting(conn, ledger, pipeline)
    holder = _hold(path, 2.0)
    try:
        report = sync_pipeline(conn.info.dsn, pipeline.id, environ={},
                               retry=RetryPolicy(attempts=8, first_delay=0.25, max_delay=1.0))
    finally:
        holder.wait(timeout=30)
    assert report.to_log_id == 2 and report.attempts >= 2
    run = registry.sync_history(conn, pipeline.id, limit=1)[0]
    assert run.outcome == "succeeded" and run.attempts == report.attempts


def test_a_lock_that_outlasts_the_retries_heals_at_the_next_sync(conn, ledger, duckdb_pipeline):
    pipeline, path = duckdb_pipeline
    _one_exported_one_waiting(conn, ledger, pipeline)
    holder = _hold(path, 60)
    try:
        with pytest.raises(TransientLoadError):
            sync_pipeline(conn.info.dsn, pipeline.id, environ={}, retry=RetryPolicy(attempts=2, first_delay=0.1))
        stuck = registry.get_pipeline(conn, pipeline.id)
        assert stuck.failing and stuck.last_error_code == "LOAD_TRANSIENT" and stuck.lag == 1
    finally:
        holder.kill()
        holder.wait(timeout=30)
    time.sleep(0.2)
    report = sync_pipeline(conn.info.dsn, pipeline.id, environ={})  # no new write needed
    assert report.to_log_id == 2
    healed = registry.get_pipeline(conn, pipeline.id)
    assert not healed.failing and healed.lag == 0
    assert [r.outcome for r in registry.sync_history(conn, pipeline.id)] == ["succeeded", "failed", "succeeded"]


def test_names_identify_exporters_and_pipelines(conn, ledger, tmp_path):
    from ledger_core.errors import ValidationError
    from ledger_pipelines.errors import NameTaken, PipelineAlreadyExists

    registry.migrate_pipelines(conn)
    first = registry.create_exporter(conn, "duckdb", {"path": str(tmp_path / "a.duckdb")}, name=f"wh-{ledger}")
    second = registry.create_exporter(conn, "duckdb", {"path": str(tmp_path / "b.duckdb")})
    assert second.name.startswith("duckdb")  # named after its driver, suffixed when taken
    with pytest.raises(NameTaken):
        registry.create_exporter(conn, "duckdb", {"path": str(tmp_path / "c.duckdb")}, name=f"wh-{ledger}")
    for bad in ("0123456789ab", "has space", "-dash", "x" * 128, "new\n"):
        with pytest.raises(ValidationError):
            registry.create_exporter(conn, "duckdb", {"path": str(tmp_path / "d.duckdb")}, name=bad)
    pipeline = registry.create_pipeline(conn, ledger, first.name)  # an exporter by name
    assert pipeline.name == f"{ledger}-wh-{ledger}" and pipeline.exporter_id == first.id
    assert registry.get_pipeline(conn, pipeline.name) == registry.get_pipeline(conn, pipeline.id)
    with pytest.raises(PipelineAlreadyExists, match=pipeline.name):
        registry.create_pipeline(conn, ledger, first.id)
    send(conn, ledger, posting("world", "a", 1))
    assert sync_pipeline(conn.info.dsn, pipeline.name, environ={}).to_log_id == 1  # a pipeline by name
    assert registry.sync_history(conn, pipeline.name)[0].pipeline_id == pipeline.id
    registry.delete_pipeline(conn, pipeline.name)
    registry.delete_exporter(conn, first.name)


def test_follow_backs_off_a_failing_pipeline_and_heals_without_a_new_write(conn, ledger, duckdb_pipeline):
    import threading

    from ledger_pipelines.sync import follow, follow_backoff

    assert [follow_backoff(n, 30) for n in (1, 2, 3, 10)] == [30, 60, 120, 900]
    pipeline, path = duckdb_pipeline
    send(conn, ledger, posting("world", "a", 1))
    path.mkdir()  # a folder where the warehouse file should be: fails until someone removes it
    failures, reports = [], []
    stop = threading.Event()
    follower = threading.Thread(target=follow, args=(conn.info.dsn, [pipeline.id]), kwargs={
        "environ": {}, "on_report": reports.append, "on_failure": failures.append, "should_stop": stop.is_set,
        "idle_timeout": 0.25, "retry": RetryPolicy(attempts=1)})
    follower.start()
    try:
        time.sleep(2.2)  # backoff 0.25, 0.5, 1 s: about 4 attempts, not 9
        assert 3 <= len(failures) <= 5 and all(f.error_code == "LOAD_FAILED" for f in failures)
        path.rmdir()  # fixed; no new write follows
        deadline = time.monotonic() + 15
        while not reports and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        follower.join(timeout=30)
    assert reports and reports[0].to_log_id == 1
    assert registry.get_pipeline(conn, pipeline.id).failing is False


def _until(condition, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


def test_follow_rides_out_the_ledger_database_going_away(fresh_db_url, pg_admin_url, tmp_path):
    # What a restart or a failover does to a follower: every connection cut, none taken for a while. It must
    # say so, and carry on by itself once the database is back (no new process, no human).
    import threading

    from ledger_core.db import connect
    from ledger_core.ledgers import create_ledger
    from ledger_pipelines.sync import follow

    database = fresh_db_url.rsplit("/", 1)[1]
    with connect(fresh_db_url) as conn:
        create_ledger(conn, "books")
        exporter = registry.create_exporter(conn, "duckdb", {"path": str(tmp_path / "w.duckdb")})
        pipeline = registry.create_pipeline(conn, "books", exporter.id)
        send(conn, "books", posting("world", "a", 1))
    failures, reports = [], []
    stop = threading.Event()
    follower = threading.Thread(target=follow, args=(fresh_db_url, [pipeline.id]), kwargs={
        "environ": {}, "on_report": reports.append, "on_failure": failures.append, "should_stop": stop.is_set,
        "idle_timeout": 0.5, "retry": RetryPolicy(attempts=2, first_delay=0.1)})
    follower.start()
    try:
        _until(lambda: any(r.to_log_id == 1 for r in reports))
        with connect(pg_admin_url, check_schema=False) as admin:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            try:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))
                _until(lambda: len(failures) >= 3)  # reported at each attempt to connect again
            finally:
                admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        with connect(fresh_db_url) as conn:
            send(conn, "books", posting("world", "b", 2))
        _until(lambda: any(r.to_log_id == 2 for r in reports))
        assert follower.is_alive()
    finally:
        stop.set()
        follower.join(timeout=30)
    assert not follower.is_alive()
    assert {(f.pipeline_id, f.error_code) for f in failures} == {(None, "LEDGER_UNREACHABLE")}
    with connect(fresh_db_url) as conn:
        assert registry.get_pipeline(conn, pipeline.id).last_log_id == 2


def test_a_log_reader_reconnects_after_its_connections_are_cut(fresh_db_url):
    from ledger_core.db import connect
    from ledger_core.ledgers import create_ledger
    from ledger_pipelines.errors import LedgerUnreachable
    from ledger_pipelines.reader import LogReader

    with connect(fresh_db_url) as conn, LogReader(fresh_db_url) as reader:
        create_ledger(conn, "books")
        send(conn, "books", posting("world", "a", 1))
        assert reader.read("books", after=0, up_to=1, limit=1).num_rows == 1
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        with pytest.raises(LedgerUnreachable, match="terminating connection"):
            reader.read("books", after=0, up_to=1, limit=1)
        assert reader.read("books", after=0, up_to=1, limit=1).num_rows == 1  # on a new connection, by itself


def test_money_as_text_after_logs_were_loaded_converts_the_columns_at_the_next_sync(conn, ledger, duckdb_pipeline):
    """The schema version says nothing of a setting: DuckDB converts its money columns when `money` changes, even
    for a warehouse that has loaded logs already (so setup would not run again)."""
    pipeline, _ = duckdb_pipeline
    from ledger_pipelines.errors import ValueOutOfRange

    send(conn, ledger, posting("world", "a", 5))
    sync_pipeline(conn.info.dsn, pipeline.id, environ={})
    send(conn, ledger, posting("world", "a", 10**40))
    with pytest.raises(ValueOutOfRange):
        sync_pipeline(conn.info.dsn, pipeline.id, environ={})
    registry.update_exporter(conn, pipeline.exporter_id, {"money": "text"})
    report = sync_pipeline(conn.info.dsn, pipeline.id, environ={}, verify_after=True)
    assert report.to_log_id == 2 and all(c.passed for c in report.checks), report.checks
    with _loader(conn, pipeline) as loader:
        assert loader.query("SELECT balance FROM ledger.balances WHERE account = 'a'") == [(str(10**40 + 5),)]
        assert_warehouse_equals_ledger(conn, loader, ledger, pipeline.id)


@pytest.mark.parametrize(("driver", "config"), [
    ("bigquery", {"project": "local", "api_endpoint": "http://127.0.0.1:9"}),
    ("redshift", {"host": "127.0.0.1", "port": 9, "database": "dev", "staging": "copy", "sslmode": "disable"}),
])
def test_an_unreachable_cloud_warehouse_is_a_transient_failure_within_seconds(driver, config):
    """Their clients would otherwise retry or wait for many minutes: the sync's own retry and the next tick
    are what heal a warehouse that went away."""
    from ledger_pipelines.loaders import open_loader

    began = time.monotonic()
    with pytest.raises(TransientLoadError, match=f"^{driver}: "), open_loader(driver, config, {}) as loader:
        loader.ensure_schema("p")
    assert time.monotonic() - began < 40
