"""When pipelines sync: hourly and daily schedules by each pipeline's cadence, and a sensor for near real time.

The sensor also keeps the partitions in step with the registry: pipelines created since its last tick
are added, deleted ones removed. Its cursor remembers, per realtime pipeline, the ledger's last log id it
requested a run for, when, and how many times, so one burst of commits asks for one run, and a run that
failed is asked for again (the pipeline's `lastErrorAt` is newer than the request) without a new write.
"""


import json
import time

import dagster as dg

from dagster_project.assets import PIPELINES, sync_job
from dagster_project.resources import LedgerDatabase
from ledger_pipelines import registry


def _pipelines(ledger_db: LedgerDatabase) -> list[registry.Pipeline]:
    with ledger_db.connect() as conn:
        registry.migrate_pipelines(conn)
        return registry.list_pipelines(conn)


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
           and p.id in known and not _in_flight(context.instance, p.id)]
    if not due:
        return dg.SkipReason(f"no enabled {cadence} pipeline has new logs or a failed sync")
    tick = context.scheduled_execution_time.isoformat()  # a new key each tick: a failed sync is asked for again
    return [dg.RunRequest(partition_key=p.id, run_key=f"{p.id}:{tick}") for p in due]


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


@dg.sensor(name="new_logs_sensor", job=sync_job, minimum_interval_seconds=10,
           default_status=dg.DefaultSensorStatus.RUNNING)
def new_logs_sensor(context: dg.SensorEvaluationContext, ledger_db: LedgerDatabase) -> dg.SensorResult:
    """Register new pipelines as partitions; start a sync for realtime pipelines with new logs, and again for
    one whose sync failed (without waiting for a new write), with backoff after the first retry."""
    requested: dict[str, dict] = {pid: value if isinstance(value, dict) else {"log": value, "attempt": 1, "at": 0.0}
                                  for pid, value in (json.loads(context.cursor) if context.cursor else {}).items()}
    pipelines = _pipelines(ledger_db)
    known = set(context.instance.get_dynamic_partitions(PIPELINES.name))
    current = {p.id for p in pipelines}
    now = time.time()
    runs = []
    for p in pipelines:
        if p.cadence != registry.Cadence.REALTIME or not p.enabled or not (p.lag > 0 or p.failing):
            continue
        last = requested.get(p.id, {"log": 0, "attempt": 0, "at": 0.0})
        if p.ledger_last_log_id > last["log"]:
            attempt = 1  # new logs: ask at once
        elif p.failing and p.last_error_at and p.last_error_at.timestamp() > last["at"] \
                and now - p.last_error_at.timestamp() >= retry_backoff(last["attempt"]):
            attempt = last["attempt"] + 1  # the run we asked for failed: ask again, same logs
        else:
            continue
        if _in_flight(context.instance, p.id):
            continue
        runs.append(dg.RunRequest(partition_key=p.id, run_key=f"{p.id}:{p.ledger_last_log_id}:{attempt}",
                                  tags={"ledger/attempt": str(attempt)}))
        requested[p.id] = {"log": p.ledger_last_log_id, "attempt": attempt, "at": now}
    partition_requests = []
    if current - known:
        partition_requests.append(PIPELINES.build_add_request(sorted(current - known)))
    if known - current:
        partition_requests.append(PIPELINES.build_delete_request(sorted(known - current)))
    cursor = {pid: last for pid, last in requested.items() if pid in current}
    return dg.SensorResult(run_requests=runs, dynamic_partitions_requests=partition_requests,
                           cursor=json.dumps(cursor, sort_keys=True))
