"""When pipelines sync: hourly and daily schedules by each pipeline's cadence, and a sensor for near real time.

The sensor also keeps the partitions in step with the registry: pipelines created since its last tick
are added, deleted ones removed. Its cursor remembers, per realtime pipeline, the ledger's last log id
it already requested a run for, so one burst of commits asks for one run.
"""


import json

import dagster as dg

from dagster_project.assets import PIPELINES, sync_job
from dagster_project.resources import LedgerDatabase
from ledger_pipelines import registry


def _pipelines(ledger_db: LedgerDatabase) -> list[registry.Pipeline]:
    with ledger_db.connect() as conn:
        registry.migrate_pipelines(conn)
        return registry.list_pipelines(conn)


def _scheduled_runs(context: dg.ScheduleEvaluationContext, ledger_db: LedgerDatabase,
                    cadence: registry.Cadence) -> list[dg.RunRequest] | dg.SkipReason:
    known = set(context.instance.get_dynamic_partitions(PIPELINES.name))
    due = [p for p in _pipelines(ledger_db) if p.cadence == cadence and p.enabled and p.lag > 0 and p.id in known]
    if not due:
        return dg.SkipReason(f"no enabled {cadence} pipeline has new logs")
    return [dg.RunRequest(partition_key=p.id, run_key=f"{p.id}:{p.ledger_last_log_id}") for p in due]


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
    """Register new pipelines as partitions; start a sync for realtime pipelines with new logs."""
    requested: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
    pipelines = _pipelines(ledger_db)
    known = set(context.instance.get_dynamic_partitions(PIPELINES.name))
    current = {p.id for p in pipelines}
    runs = []
    for p in pipelines:
        if (p.cadence == registry.Cadence.REALTIME and p.enabled and p.lag > 0
                and p.ledger_last_log_id > requested.get(p.id, 0)):
            runs.append(dg.RunRequest(partition_key=p.id, run_key=f"{p.id}:{p.ledger_last_log_id}"))
            requested[p.id] = p.ledger_last_log_id
    partition_requests = []
    if current - known:
        partition_requests.append(PIPELINES.build_add_request(sorted(current - known)))
    if known - current:
        partition_requests.append(PIPELINES.build_delete_request(sorted(known - current)))
    cursor = {pid: last for pid, last in requested.items() if pid in current}
    return dg.SensorResult(run_requests=runs, dynamic_partitions_requests=partition_requests,
                           cursor=json.dumps(cursor, sort_keys=True))
