"""The Dagster layer against real PostgreSQL and DuckDB: assets, checks, sensor, schedules."""

from __future__ import annotations

import importlib
import json
from datetime import UTC, datetime

import dagster as dg
import duckdb
import pytest

from dagster_project import assets, automation
from dagster_project.assets import PIPELINES, warehouse_sync
from ledger_pipelines import registry
from tests.dagster.ticks import schedule_tick, sensor_tick
from tests.helpers import posting, send


def materialize(instance, resources, pipeline_id):
    if not instance.has_dynamic_partition(PIPELINES.name, pipeline_id):
        instance.add_dynamic_partitions(PIPELINES.name, [pipeline_id])
    return dg.materialize([warehouse_sync], partition_key=pipeline_id, instance=instance, resources=resources,
                          raise_on_error=False)


def metadata(result, table):
    event = next(e for e in result.get_asset_materialization_events()
                 if e.asset_key == dg.AssetKey(["warehouse", table]))
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_definitions_load_with_and_without_a_database_url(monkeypatch, dagster_db_url):
    from dagster_project import definitions

    monkeypatch.setenv("LEDGER_DATABASE_URL", dagster_db_url)
    defs = importlib.reload(definitions).defs
    dg.Definitions.validate_loadable(defs)
    keys = defs.resolve_asset_graph().get_all_asset_keys()
    assert {dg.AssetKey(["warehouse", t]) for t in ("logs", "transactions", "postings", "moves", "accounts",
                                                    "balances", "daily_volumes")} <= keys
    assert defs.resolve_job_def("sync_pipeline").partitions_def == PIPELINES
    assert {s.name for s in defs.schedules} == {"hourly_sync", "daily_sync"}
    monkeypatch.delenv("LEDGER_DATABASE_URL")
    dg.Definitions.validate_loadable(importlib.reload(definitions).defs)


def test_materialize_loads_rows_and_passes_checks_then_only_new_logs(instance, resources, dconn, make_pipeline):
    pipeline = make_pipeline("shop")
    for i in range(5):
        send(dconn, "shop", posting("world", f"users:{i}", 100 + i), posting(f"users:{i}", "fees", 1))
    result = materialize(instance, resources, pipeline.name)
    assert result.success
    assert result.dagster_run.tags["dagster/partition"] == pipeline.name == "shop-duckdb"  # readable
    logs = metadata(result, "logs")
    assert (logs["logs_loaded"], logs["from_log_id"], logs["to_log_id"], logs["lag_after_run"]) == (5, 1, 5, 0)
    assert metadata(result, "postings")["rows_loaded"] == 10
    assert metadata(result, "moves")["rows_loaded"] == 20
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"row_counts": True, "log_ids_contiguous": True, "last_log_hash": True,
                      "balances_match": True, "asset_sums_zero": True, "freshness": True}
    assert {c.partition for c in result.get_asset_check_evaluations()} == {pipeline.name}  # per pipeline
    send(dconn, "shop", posting("world", "users:9", 7))
    second = materialize(instance, resources, pipeline.name)
    logs = metadata(second, "logs")
    assert (logs["logs_loaded"], logs["from_log_id"], logs["to_log_id"]) == (1, 6, 6)
    assert metadata(second, "postings")["rows_loaded"] == 1
    assert all(c.passed for c in second.get_asset_check_evaluations())


def test_checks_fail_with_first_differences_when_the_warehouse_is_tampered(instance, resources, dconn,
                                                                          make_pipeline, tmp_path):
    pipeline = make_pipeline("tampered")
    send(dconn, "tampered", posting("world", "alice", 50))
    assert materialize(instance, resources, pipeline.name).success
    with duckdb.connect(str(tmp_path / "tampered.duckdb")) as wh:
        wh.execute("UPDATE ledger.balances SET balance = balance + 1, input = input + 1 WHERE account = 'alice'")
    # A sync with nothing new checks what it loaded (nothing) plus the warehouse-wide sums: the sums catch it.
    result = materialize(instance, resources, pipeline.name)
    failed = {c.check_name: c for c in result.get_asset_check_evaluations() if not c.passed}
    assert set(failed) == {"asset_sums_zero"}
    assert failed["asset_sums_zero"].metadata["first_differences"].value == [{"asset": "USD/2", "sum": "1"}]
    # The full check (every balance) names the account.
    from dagster_project.definitions import defs

    result = defs.resolve_job_def("check_pipeline").execute_in_process(
        partition_key=pipeline.name, instance=instance, resources=resources)
    failed = {c.check_name: c for c in result.get_asset_check_evaluations() if not c.passed}
    assert set(failed) == {"balances_match", "asset_sums_zero"}
    assert failed["balances_match"].severity == dg.AssetCheckSeverity.ERROR
    differences = failed["balances_match"].metadata["first_differences"].value
    assert differences == [{"account": "alice", "asset": "USD/2", "ledger": {"input": "50", "output": "0"},
                            "warehouse": {"input": "51", "output": "0", "balance": "51"}}]


def test_sensor_requests_runs_only_for_new_logs_and_registers_new_pipelines(instance, resources, dconn,
                                                                           make_pipeline):
    realtime = make_pipeline("rt", "realtime")
    hourly = make_pipeline("hr", "hourly")
    send(dconn, "rt", posting("world", "a", 1))
    send(dconn, "hr", posting("world", "a", 1))
    # A pipeline to an `http` receiver has no warehouse tables: not a partition, never a run (`ledgerctl sync`).
    webhook = registry.create_exporter(dconn, "http", {"url": "http://127.0.0.1:9/hook", "secret": {"env": "S"}})
    registry.create_pipeline(dconn, "rt", webhook.id, cadence="realtime")

    def tick(cursor):
        return sensor_tick(instance, resources, cursor)

    first = tick(None)
    assert [r.partition_key for r in first.run_requests] == [realtime.name]  # hourly waits for its schedule
    [add] = first.dynamic_partitions_requests
    assert sorted(add.partition_keys) == sorted([realtime.name, hourly.name])
    instance.add_dynamic_partitions(PIPELINES.name, list(add.partition_keys))
    # Nothing new: no run, same cursor.
    second = tick(first.cursor)
    assert second.run_requests == [] and second.dynamic_partitions_requests == []
    # New logs on the realtime pipeline, and a pipeline created since the last tick.
    send(dconn, "rt", posting("world", "b", 2))
    late = make_pipeline("late", "realtime")
    send(dconn, "late", posting("world", "c", 3))
    third = tick(second.cursor)
    assert sorted(r.partition_key for r in third.run_requests) == sorted([realtime.name, late.name])
    assert [list(r.partition_keys) for r in third.dynamic_partitions_requests] == [[late.name]]
    assert json.loads(third.cursor)["requested"][realtime.name]["log"] == 2


def test_sensor_asks_again_for_a_failed_sync_without_a_new_write(instance, resources, dconn, make_pipeline):
    from ledger_pipelines.sync import sync_pipeline

    realtime = make_pipeline("rt2", "realtime")
    instance.add_dynamic_partitions(PIPELINES.name, [realtime.name])
    send(dconn, "rt2", posting("world", "a", 1))

    def tick(cursor):
        return sensor_tick(instance, resources, cursor)

    def failed_run():
        def boom(point: str) -> None:
            if point == "before_load":
                raise RuntimeError("the warehouse restarted")
        with pytest.raises(RuntimeError):
            sync_pipeline(dconn.info.dsn, realtime.name, environ={}, fault=boom)

    first = tick(None)
    assert [r.run_key for r in first.run_requests] == [f"{realtime.name}:1:1"]
    assert tick(first.cursor).run_requests == []  # the run has not failed (yet): nothing to ask
    failed_run()
    second = tick(first.cursor)
    assert [r.run_key for r in second.run_requests] == [f"{realtime.name}:1:2"]  # at once, same logs
    failed_run()
    assert tick(second.cursor).run_requests == []  # the second retry waits (backoff)
    assert automation.retry_backoff(2) == 30
    sync_pipeline(dconn.info.dsn, realtime.name, environ={})
    assert tick(second.cursor).run_requests == []  # healed: nothing due


def test_schedules_retry_a_failed_sync_at_the_nextsensor_tick(instance, resources, dconn, make_pipeline):
    from ledger_pipelines.sync import sync_pipeline

    hourly = make_pipeline("h3", "hourly")
    instance.add_dynamic_partitions(PIPELINES.name, [hourly.name])
    send(dconn, "h3", posting("world", "a", 1))
    def down(point: str) -> None:
        if point == "before_load":
            raise RuntimeError("down")

    with pytest.raises(RuntimeError):
        sync_pipeline(dconn.info.dsn, hourly.name, environ={}, fault=down)
    keys = []
    for hour in (10, 11):
        at = datetime(2026, 1, 1, hour, tzinfo=UTC)
        keys += [r.run_key for r in schedule_tick(automation.hourly_sync, instance, resources, at)]
    assert len(keys) == 2 and len(set(keys)) == 2  # a new run key per tick: the retry is not swallowed


def test_hourly_schedule_requests_hourly_pipelines_with_new_logs(instance, resources, dconn, make_pipeline):
    hourly = make_pipeline("h1", "hourly")
    make_pipeline("d1", "daily")
    idle = make_pipeline("h2", "hourly")
    send(dconn, "h1", posting("world", "a", 1))
    send(dconn, "d1", posting("world", "a", 1))
    instance.add_dynamic_partitions(PIPELINES.name, [hourly.name, idle.name])
    at = datetime(2026, 1, 1, 10, tzinfo=UTC)
    requests = schedule_tick(automation.hourly_sync, instance, resources, at)
    assert [r.partition_key for r in requests] == [hourly.name]
    daily = schedule_tick(automation.daily_sync, instance, resources, at)
    assert isinstance(daily, dg.SkipReason)  # the daily pipeline is not a partition yet: the sensor adds it


def test_asset_lineage_runs_from_the_ledger_log():
    spec_deps = {spec.key: {d.asset_key for d in spec.deps} for spec in assets.WAREHOUSE_SPECS}
    assert all(deps == {assets.LEDGER_LOG.key} for deps in spec_deps.values())
    assert {spec.group_name for spec in assets.WAREHOUSE_SPECS} == {"warehouse"}


def test_asset_checks_pass_against_clickhouse(instance, resources, dconn, tmp_path):
    from ledger_core.ledgers import create_ledger
    from ledger_pipelines import registry

    create_ledger(dconn, "chshop")
    exporter = registry.create_exporter(dconn, "clickhouse", {"chdb_path": str(tmp_path / "ch")})
    pipeline = registry.create_pipeline(dconn, "chshop", exporter.id)
    send(dconn, "chshop", posting("world", "a", 10**50), posting("a", "b", 1))
    from ledger_core.requests import RevertTransaction, SetMetadata
    from ledger_core.writer import write

    write(dconn, "chshop", [SetMetadata.build("ACCOUNT", "a", {"k": "v"}), RevertTransaction(1, force=True)])
    result = materialize(instance, resources, pipeline.name)
    assert result.success
    assert {c.check_name: c.passed for c in result.get_asset_check_evaluations()} == {
        "row_counts": True, "log_ids_contiguous": True, "last_log_hash": True, "balances_match": True,
        "asset_sums_zero": True, "freshness": True}


def test_instance_config_admits_one_run_per_pipeline(tmp_path, monkeypatch):
    from pathlib import Path

    source = Path(__file__).resolve().parents[2] / "dagster_project" / "dagster.yaml"
    (tmp_path / "dagster.yaml").write_text(source.read_text())
    with dg.DagsterInstance.from_config(str(tmp_path)) as configured:
        assert type(configured.run_coordinator).__name__ == "QueuedRunCoordinator"
        limits = configured.get_concurrency_config().run_queue_config.tag_concurrency_limits
    assert limits == [{"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}]


def test_syncs_run_outside_dagster_show_in_dagster(instance, resources, dconn, make_pipeline, tmp_path):
    """CLI and follow syncs are reported as runless events: the partition tells the truth whoever synced."""
    from ledger_pipelines.sync import NO_RETRY, sync_pipeline

    pipeline = make_pipeline("cli", "hourly")
    send(dconn, "cli", posting("world", "a", 1))
    sync_pipeline(dconn.info.dsn, pipeline.id, environ={}, trigger="cli")  # before Dagster ever saw it
    first = sensor_tick(instance, resources)
    instance.add_dynamic_partitions(PIPELINES.name, list(first.dynamic_partitions_requests[0].partition_keys))
    for event in first.asset_events:  # what the sensor daemon does with them
        instance.report_runless_asset_event(event)
    logs_key = dg.AssetKey(["warehouse", "logs"])
    assert instance.get_materialized_partitions(logs_key) == {pipeline.name}  # not "Missing"
    head = next(e for e in first.asset_events if e.asset_key == assets.LEDGER_LOG.key)
    assert head.metadata["last_log_id/cli"].value == 1
    health = next(e for e in first.asset_events if isinstance(e, dg.AssetObservation) and e.partition == pipeline.name)
    assert (health.metadata["lag"].value, health.metadata["failing"].value) == (0, False)

    send(dconn, "cli", posting("world", "a", 2))
    sync_pipeline(dconn.info.dsn, pipeline.id, environ={}, trigger="follow")
    (tmp_path / "cli.duckdb").unlink()
    (tmp_path / "cli.duckdb").mkdir()  # the warehouse path is now a folder: the next sync fails for good
    send(dconn, "cli", posting("world", "a", 3))
    with pytest.raises(Exception):  # noqa: B017 - whatever DuckDB raises; recorded as a failed run
        sync_pipeline(dconn.info.dsn, pipeline.id, environ={}, trigger="cli", retry=NO_RETRY)
    second = sensor_tick(instance, resources, first.cursor)
    materialized = [e for e in second.asset_events if isinstance(e, dg.AssetMaterialization)]
    assert {e.asset_key.path[-1] for e in materialized} == {"logs", "transactions", "postings", "moves", "accounts",
                                                            "balances", "daily_volumes"}
    assert {(e.partition, e.metadata["trigger"].value, e.metadata["to_log_id"].value) for e in materialized} == \
        {(pipeline.name, "follow", 2)}
    failure = next(e for e in second.asset_events if isinstance(e, dg.AssetObservation)
                   and "sync_failed" in e.metadata)
    assert failure.partition == pipeline.name and failure.metadata["trigger"].value == "cli"
    assert failure.metadata["error_code"].value
    health = [e for e in second.asset_events if isinstance(e, dg.AssetObservation) and "failing" in e.metadata]
    assert [(e.metadata["lag"].value, e.metadata["failing"].value) for e in health] == [(1, True)]
    assert sensor_tick(instance, resources, second.cursor).asset_events == []  # nothing new: nothing reported


def test_a_transient_failure_is_retried_by_dagster_and_a_terminal_one_is_not(instance, resources, dconn,
                                                                             make_pipeline, tmp_path):
    import subprocess
    import sys

    pipeline = make_pipeline("retry")
    send(dconn, "retry", posting("world", "a", 1))
    assert materialize(instance, resources, pipeline.name).success
    send(dconn, "retry", posting("world", "a", 2))
    holder = subprocess.Popen(  # an analyst holds the file for 4 s; the step's first attempt cannot open it
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); "
                               "print('open', flush=True); time.sleep(4)", str(tmp_path / "retry.duckdb")],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    assert holder.stdout.readline().strip() == "open"
    try:
        result = dg.materialize([warehouse_sync], partition_key=pipeline.name, instance=instance, resources=resources,
                                run_config={"ops": {"warehouse_sync": {"config": {"retry_attempts": 1}}}},
                                raise_on_error=False)
    finally:
        holder.wait(timeout=30)
    assert result.success
    retried = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retried) >= 1 and metadata(result, "logs")["to_log_id"] == 2

    (tmp_path / "retry.duckdb").unlink()
    (tmp_path / "retry.duckdb").mkdir()  # terminal: a folder where the file should be
    send(dconn, "retry", posting("world", "a", 3))
    failed = dg.materialize([warehouse_sync], partition_key=pipeline.name, instance=instance, resources=resources,
                            raise_on_error=False)
    assert not failed.success
    assert [e for e in failed.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"] == []
    failure = next(e for e in failed.all_events if e.event_type_value == "STEP_FAILURE")
    assert "LOAD_FAILED" in failure.event_specific_data.error.message or \
        "LOAD_FAILED" in str(failure.event_specific_data.user_failure_data.description)


def test_the_full_resync_job_replays_every_log(instance, resources, dconn, make_pipeline):
    from dagster_project.definitions import defs

    pipeline = make_pipeline("again")
    for i in range(3):
        send(dconn, "again", posting("world", "a", i + 1))
    assert materialize(instance, resources, pipeline.name).success
    result = defs.resolve_job_def("resync_pipeline").execute_in_process(
        partition_key=pipeline.name, instance=instance, resources=resources)
    assert result.success
    logs = metadata(result, "logs")
    assert (logs["from_log_id"], logs["to_log_id"], logs["logs_loaded"]) == (1, 3, 3)
    assert all(c.passed for c in result.get_asset_check_evaluations())


def test_any_selection_of_warehouse_tables_materializes(instance, resources, dconn, make_pipeline):
    pipeline = make_pipeline("subset")
    send(dconn, "subset", posting("world", "a", 4))
    instance.add_dynamic_partitions(PIPELINES.name, [pipeline.name])
    result = dg.materialize([warehouse_sync], selection=[dg.AssetKey(["warehouse", "balances"])],
                            partition_key=pipeline.name, instance=instance, resources=resources)
    assert result.success
    materialized = {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
    assert materialized == {"logs", "transactions", "postings", "moves", "accounts", "balances",
                            "daily_volumes"}  # all were synced
    assert instance.get_materialized_partitions(dg.AssetKey(["warehouse", "moves"])) == {pipeline.name}


def test_checks_rerun_on_their_own_per_pipeline(instance, resources, dconn, make_pipeline, tmp_path):
    from dagster_project.definitions import defs
    from ledger_pipelines import registry

    pipeline = make_pipeline("recheck")
    send(dconn, "recheck", posting("world", "bob", 10))
    assert materialize(instance, resources, pipeline.name).success
    runs_before = len(registry.sync_history(dconn, pipeline.id))
    with duckdb.connect(str(tmp_path / "recheck.duckdb")) as wh:
        wh.execute("UPDATE ledger.balances SET balance = 11, input = 11 WHERE account = 'bob'")
    result = defs.resolve_job_def("check_pipeline").execute_in_process(
        partition_key=pipeline.name, instance=instance, resources=resources)
    assert result.success
    evaluations = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not evaluations["balances_match"].passed and evaluations["row_counts"].passed
    assert evaluations["freshness"].passed and {c.partition for c in evaluations.values()} == {pipeline.name}
    assert len(registry.sync_history(dconn, pipeline.id)) == runs_before  # no sync ran
    key = dg.AssetCheckKey(dg.AssetKey(["warehouse", "balances"]), "balances_match")
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
    assert latest.run_id == result.run_id  # the UI shows this run's result as the check's latest


def test_a_pipeline_behind_its_cadence_fails_freshness(instance, resources, dconn, make_pipeline):
    from dagster_project.definitions import defs

    pipeline = make_pipeline("late", "realtime")
    send(dconn, "late", posting("world", "a", 1))
    first = sensor_tick(instance, resources)
    instance.add_dynamic_partitions(PIPELINES.name, [pipeline.name])
    assert [r.job_name for r in first.run_requests] == ["sync_pipeline"]  # new logs; fresh so far: no check run
    # The log has waited 10 minutes: more than a realtime pipeline allows (5).
    dconn.execute("UPDATE ledger_core.logs SET date = date - interval '10 minutes' WHERE ledger = 'late'")
    second = sensor_tick(instance, resources, first.cursor)
    [check_run] = [r for r in second.run_requests if r.job_name == "check_pipeline"]
    assert check_run.partition_key == pipeline.name
    health = next(e for e in second.asset_events if isinstance(e, dg.AssetObservation) and "fresh" in e.metadata)
    assert health.metadata["fresh"].value is False and health.metadata["staleness_seconds"].value >= 600
    result = defs.resolve_job_def("check_pipeline").execute_in_process(
        partition_key=pipeline.name, instance=instance, resources=resources)
    late = next(c for c in result.get_asset_check_evaluations() if c.check_name == "freshness")
    assert (late.passed, late.partition, late.severity) == (False, pipeline.name, dg.AssetCheckSeverity.WARN)
    assert late.metadata["details"].value["staleness_seconds"] >= 600
    third = sensor_tick(instance, resources, second.cursor)
    assert [r for r in third.run_requests if r.job_name == "check_pipeline"] == []


@pytest.mark.parametrize("driver", ["redshift", "snowflake"])
def test_cloud_drivers_work_in_the_same_assets_and_checks(instance, resources, dconn, pg_admin_url, tmp_path,
                                                          driver, monkeypatch):
    """Nothing in Dagster knows the driver: a Redshift or Snowflake pipeline (on its stand-in) materializes and
    passes the same checks."""
    import uuid

    from ledger_core.ledgers import create_ledger
    from ledger_pipelines import registry
    from tests.standins import redshift_database

    ledger = f"cloud{driver}"
    create_ledger(dconn, ledger)
    if driver == "redshift":
        config = {"dsn": redshift_database(pg_admin_url), "schema": "d_" + uuid.uuid4().hex[:8], "staging": "copy",
                  "sslmode": "disable"}
    else:
        import fakesnow

        (tmp_path / "sf").mkdir()
        patch = fakesnow.patch(db_path=str(tmp_path / "sf"))
        patch.__enter__()
        monkeypatch.setenv("SF_PASSWORD", "unused-by-the-stand-in")
        config = {"account": "local", "user": "u", "password": {"env": "SF_PASSWORD"}, "database": "w"}
    try:
        exporter = registry.create_exporter(dconn, driver, config)
        pipeline = registry.create_pipeline(dconn, ledger, exporter.id)
        send(dconn, ledger, posting("world", "a", 5), posting("a", "b", 2))
        result = materialize(instance, resources, pipeline.name)
        assert result.success and metadata(result, "logs")["to_log_id"] == 1
        checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
        assert len(checks) == 6 and all(checks.values()), checks
    finally:
        if driver == "snowflake":
            patch.__exit__(None, None, None)
