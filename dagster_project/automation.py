"""When pipelines sync: hourly and daily schedules by each pipeline's cadence, and a sensor for near real time.

The sensor also keeps the partitions in step with the registry: pipelines created since its last tick
are added, deleted ones removed. Its cursor remembers, per realtime pipeline, the ledger's last log id it
requested a run for, when, and how many times, so one burst of commits asks for one run, and a run that
failed is asked for again (the pipeline's `lastErrorAt` is newer than the request) without a new write.
"""


import json
import time

import dagster as dg

from dagster_project.assets import (
    LEDGER_LOG,
    PIPELINES,
    check_pipeline,
    materialization_metadata,
    sync_job,
    table_key,
)
from dagster_project.resources import LedgerDatabase
from ledger_pipelines import registry
from ledger_pipelines.tables import DATA_TABLES


def _pipelines(ledger_db: LedgerDatabase) -> list[registry.Pipeline]:
    with ledger_db.connect() as conn:
        registry.require_schema(conn)
        return registry.list_pipelines(conn, warehouses_only=True)


IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED]


def retry_backoff(attempt: int) -> float:
    """Seconds to wait after the failure of request `attempt` before asking again for the same logs:
    at once the first time (most failures are a moment's lock or restart), then 30 s doubling to 15 min."""
    return 0.0 if attempt <= 1 else min(30.0 * 2 ** (attempt - 2), 900.0)


def _in_flight(instance: dg.DagsterInstance, pipeline_id: str) -> bool:
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": pipeline_id}, statuses=IN_FLIGHT),
                             limit=1)
    return bool(runs)


def _scheduled_runs(context: dg.ScheduleEvaluationContext, ledger_db: LedgerDatabase,
                    cadence: registry.Cadence) -> list[dg.RunRequest] | dg.SkipReason:
    """One run per due pipeline of this cadence: new logs, or a failed last sync (retried every tick)."""
    known = set(context.instance.get_dynamic_partitions(PIPELINES.name))
    due = [p for p in _pipelines(ledger_db) if p.cadence == cadence and p.enabled and (p.lag > 0 or p.failing)
           and p.name in known and not _in_flight(context.instance, p.name)]
    if not due:
        return dg.SkipReason(f"no enabled {cadence} pipeline has new logs or a failed sync")
    tick = context.scheduled_execution_time.isoformat()  # a new key each tick: a failed sync is asked for again
    return [dg.RunRequest(partition_key=p.name, run_key=f"{p.name}:{tick}") for p in due]


@dg.schedule(name="hourly_sync", cron_schedule="0 * * * *", job=sync_job,
             default_status=dg.DefaultScheduleStatus.RUNNING)
def hourly_sync(context: dg.ScheduleEvaluationContext, ledger_db: LedgerDatabase):
    """Every hour: sync the pipelines whose cadence is hourly and that have new logs."""
    return _scheduled_runs(context, ledger_db, registry.Cadence.HOURLY)


@dg.schedule(name="daily_sync", cron_schedule="0 2 * * *", job=sync_job,
             default_status=dg.DefaultScheduleStatus.RUNNING)
def daily_sync(context: dg.ScheduleEvaluationContext, ledger_db: LedgerDatabase):
    """Every day at 02:00 UTC: sync the daily pipelines that have new logs."""
    return _scheduled_runs(context, ledger_db, registry.Cadence.DAILY)


def _reported_events(pipelines: list[registry.Pipeline], exporters: list[registry.Exporter],
                     runs: list[registry.SyncRun], state: dict,
                     first_sight: set[str]) -> list[dg.AssetMaterialization | dg.AssetObservation]:
    """What the UI must learn on this tick, whoever synced:

    - the ledger's head (`ledger/log`, one observation when a ledger's last log id moved);
    - each pipeline's health (an observation of its `warehouse/logs` partition when its lag, freshness or
      failure changed);
    - every sync run outside Dagster (CLI, `sync --follow`): a runless materialization of the six tables, or, for
      a failure, an observation carrying the error, so the partition tells the truth whoever ran the sync.
    """
    events: list[dg.AssetMaterialization | dg.AssetObservation] = []
    heads = {p.ledger: p.ledger_last_log_id for p in pipelines}
    if heads != state.get("heads"):
        events.append(dg.AssetObservation(asset_key=LEDGER_LOG.key, metadata={
            **{f"last_log_id/{ledger}": head for ledger, head in sorted(heads.items())},
            "ledgers": len(heads), "logs": sum(heads.values())}))
        state["heads"] = heads
    health = state.setdefault("health", {})
    for p in pipelines:
        now = [p.last_log_id, p.lag, p.last_error_code, p.fresh]
        if health.get(p.name) != now:
            events.append(dg.AssetObservation(asset_key=table_key("logs"), partition=p.name, metadata={
                "pipeline": p.name, "ledger": p.ledger, "cursor": p.last_log_id, "ledger_head": p.ledger_last_log_id,
                "lag": p.lag, "staleness_seconds": round(p.staleness, 1), "fresh": p.fresh, "failing": p.failing,
                "last_error": p.last_error or "",
                "seconds_since_last_sync": p.seconds_since_sync if p.seconds_since_sync is not None else -1.0}))
            health[p.name] = now
    by_id = {p.id: p for p in pipelines}
    exporter_by_id = {e.id: e for e in exporters}
    for run in runs:
        pipeline = by_id.get(run.pipeline_id)
        if pipeline is None or run.trigger == "dagster":
            continue  # Dagster's own runs materialize as they go
        if run.outcome == "failed":
            events.append(dg.AssetObservation(asset_key=table_key("logs"), partition=pipeline.name, metadata={
                "pipeline": pipeline.name, "sync_failed": True, "trigger": run.trigger, "sync_run": run.id,
                "error_code": run.error_code or "", "error": run.error or ""}))
        elif run.logs or run.pipeline_id in first_sight:
            sync = {**run.to_json(), "lag": pipeline.lag}
            events += [dg.AssetMaterialization(asset_key=table_key(t.name), partition=pipeline.name,
                                               metadata={**materialization_metadata(
                                                   pipeline, exporter_by_id.get(pipeline.exporter_id), sync, t.name,
                                                   run.trigger),
                                                         "sync_run": run.id})
                       for t in DATA_TABLES]
    return events


def _freshness_runs(pipelines: list[registry.Pipeline], state: dict) -> list[dg.RunRequest]:
    """A `check_pipeline` run for each pipeline whose freshness flipped (or that is stale when first seen).

    Dagster keeps one runless check result per check and partition, so freshness is evaluated in a real run
    (which re-checks the warehouse too) rather than reported by the sensor; flips are rare, so runs are too.
    """
    known = state.setdefault("fresh", {})
    runs = []
    for p in pipelines:
        if known.get(p.name, True) != p.fresh:
            flips = state.setdefault("flips", {}).get(p.name, 0) + 1
            state["flips"][p.name] = flips
            runs.append(dg.RunRequest(job_name=check_pipeline.name, partition_key=p.name,
                                      run_key=f"{p.name}:freshness:{flips}", tags={"ledger/reason": "freshness"}))
        known[p.name] = p.fresh
    return runs


@dg.sensor(name="new_logs_sensor", jobs=[sync_job, check_pipeline], minimum_interval_seconds=10,
           default_status=dg.DefaultSensorStatus.RUNNING)
def new_logs_sensor(context: dg.SensorEvaluationContext, ledger_db: LedgerDatabase) -> dg.SensorResult:
    """Keep the partitions in step with the pipelines, report what happened outside Dagster, and start syncs for
    realtime pipelines with new logs, and again for one whose sync failed, with backoff after the first retry."""
    state = json.loads(context.cursor) if context.cursor else {}
    if "requested" not in state:  # a cursor from before this format: start afresh
        state = {}
    requested: dict[str, dict] = state.setdefault("requested", {})
    first_tick, last_run, seen = "last_run" not in state, state.get("last_run", 0), set(state.get("seen", []))
    with ledger_db.connect() as conn:
        registry.require_schema(conn)
        pipelines = registry.list_pipelines(conn, warehouses_only=True)
        exporters = registry.list_exporters(conn)
        newest = registry.last_sync_run_id(conn)
        # Runs since the last tick (none on the first: history is not replayed into the UI)...
        runs = [] if first_tick else registry.sync_runs_after(conn, last_run)
        # ...and, for a pipeline seen for the first time, its latest run, so one synced from the CLI is not "Missing".
        runs += [r for p in pipelines if p.name not in seen for r in registry.sync_history(conn, p.id, limit=1)
                 if first_tick or r.id <= last_run]
    state["last_run"] = newest if first_tick else max([last_run, *(r.id for r in runs)])
    runs.sort(key=lambda r: r.id)
    known = set(context.instance.get_dynamic_partitions(PIPELINES.name))
    current = {p.name for p in pipelines}
    partition_requests = []
    if current - known:
        partition_requests.append(PIPELINES.build_add_request(sorted(current - known)))
    if known - current:
        partition_requests.append(PIPELINES.build_delete_request(sorted(known - current)))
    now = time.time()
    run_requests = []
    for p in pipelines:
        if p.cadence != registry.Cadence.REALTIME or not p.enabled or not (p.lag > 0 or p.failing):
            continue
        last = requested.get(p.name, {"log": 0, "attempt": 0, "at": 0.0})
        if p.ledger_last_log_id > last["log"]:
            attempt = 1  # new logs: ask at once
        elif p.failing and p.last_error_at and p.last_error_at.timestamp() > last["at"] \
                and now - p.last_error_at.timestamp() >= retry_backoff(last["attempt"]):
            attempt = last["attempt"] + 1  # the run we asked for failed: ask again, same logs
        else:
            continue
        if _in_flight(context.instance, p.name):
            continue
        run_requests.append(dg.RunRequest(job_name=sync_job.name, partition_key=p.name,
                                          run_key=f"{p.name}:{p.ledger_last_log_id}:{attempt}",
                                          tags={"ledger/attempt": str(attempt)}))
        requested[p.name] = {"log": p.ledger_last_log_id, "attempt": attempt, "at": now}
    for key in ("requested", "health", "fresh", "flips"):  # what the cursor keeps per pipeline: live ones only
        state[key] = {name: value for name, value in state.get(key, {}).items() if name in current}
    events = _reported_events(pipelines, exporters, runs, state,
                              first_sight={p.id for p in pipelines if p.name not in seen})
    run_requests += _freshness_runs([p for p in pipelines if p.name in known], state)
    state["seen"] = sorted(current)
    return dg.SensorResult(run_requests=run_requests, dynamic_partitions_requests=partition_requests,
                           asset_events=events, cursor=json.dumps(state, sort_keys=True))
