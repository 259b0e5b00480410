"""`ledgerctl exporters …`, `ledgerctl pipelines …` and `ledgerctl sync`, added to the ledger's CLI as a plugin."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from typing import Any

import click
import psycopg

from ledger_core.requests import parse_json
from ledger_pipelines import registry
from ledger_pipelines.errors import ChecksFailed, PipelineError
from ledger_pipelines.sync import (
    DEFAULT_BATCH_SIZE,
    SyncFailure,
    SyncReport,
    follow,
    sync_all,
    sync_pipeline,
    verify_pipeline,
)


class ProgressBar:
    """One line on stderr: logs done of total, rate, time remaining. Silent when stderr is not a terminal."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.last = 0.0

    def __call__(self, pipeline_id: str, done: int, total: int, elapsed: float) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.2 and done < total):
            return
        self.last = now
        rate = done / elapsed if elapsed > 0 else 0.0
        remaining = (total - done) / rate if rate else 0.0
        width = 30
        filled = int(width * done / total) if total else width
        sys.stderr.write(f"\r{pipeline_id} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} logs "
                         f"{rate:,.0f} logs/s, {remaining:,.0f}s left ")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def register(context: Any) -> None:
    """Add the pipelines' commands to `ledgerctl` (its `ledgerctl.commands` entry point; `context` is the core
    CLI's CommandContext, so this package never imports the core's CLI)."""
    cli, open_db, emit = context.cli, context.open_db, context.emit
    handles_errors, database_url = context.handles_errors, context.database_url
    context.errors(PipelineError)

    def db() -> psycopg.Connection:
        conn = open_db()
        try:
            registry.require_schema(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    @cli.group()
    def exporters() -> None:
        """Exporters: a driver plus its config, naming one warehouse."""

    @exporters.command("create")
    @click.option("--driver", required=True, help="duckdb, postgres, clickhouse …")
    @click.option("--config", "config", required=True,
                  help='JSON config, secrets by env name: {"password": {"env": "PG_PASSWORD"}}.')
    @click.option("--name", default=None, help="A unique, readable name (default: the driver's).")
    @handles_errors
    def exporters_create(driver: str, config: str, name: str | None) -> None:
        """Create an exporter; the driver validates the config first. Relative paths are stored absolute."""
        with db() as conn:
            emit(registry.create_exporter(conn, driver, parse_json(config, what="config"), name=name).to_json())

    @exporters.command("update")
    @click.argument("exporter_id", metavar="EXPORTER")
    @click.option("--config", "config", required=True,
                  help='JSON object of the settings to change, e.g. {"money": "text"}; null removes a setting.')
    @handles_errors
    def exporters_update(exporter_id: str, config: str) -> None:
        """Change some settings of an exporter; its pipelines use them from their next sync."""
        with db() as conn:
            emit(registry.update_exporter(conn, exporter_id, parse_json(config, what="config")).to_json())

    @exporters.command("list")
    @handles_errors
    def exporters_list() -> None:
        """List exporters."""
        with db() as conn:
            emit([e.to_json() for e in registry.list_exporters(conn)])

    @exporters.command("get")
    @click.argument("exporter_id", metavar="EXPORTER")
    @handles_errors
    def exporters_get(exporter_id: str) -> None:
        """Show one exporter."""
        with db() as conn:
            emit(registry.get_exporter(conn, exporter_id).to_json())

    @exporters.command("delete")
    @click.argument("exporter_id", metavar="EXPORTER")
    @handles_errors
    def exporters_delete(exporter_id: str) -> None:
        """Delete an exporter that no pipeline uses."""
        with db() as conn:
            registry.delete_exporter(conn, exporter_id)
        emit({"deleted": exporter_id})

    @cli.group()
    def pipelines() -> None:
        """Pipelines: one ledger to one exporter, with a lastLogID cursor."""

    @pipelines.command("create")
    @click.argument("ledger")
    @click.option("--exporter", "exporter_id", required=True, help="The exporter's id or name.")
    @click.option("--cadence", type=click.Choice([c.value for c in registry.Cadence]), default="hourly",
                  show_default=True, help="How Dagster schedules it.")
    @click.option("--name", default=None, help="A unique, readable name (default: LEDGER-EXPORTER).")
    @handles_errors
    def pipelines_create(ledger: str, exporter_id: str, cadence: str, name: str | None) -> None:
        """Connect LEDGER to an exporter."""
        with db() as conn:
            emit(registry.create_pipeline(conn, ledger, exporter_id, cadence, name=name).to_json())

    @pipelines.command("list")
    @click.option("--ledger", default=None)
    @handles_errors
    def pipelines_list(ledger: str | None) -> None:
        """List pipelines: cursor, lag, time since the last successful sync, and whether they are failing."""
        with db() as conn:
            emit([p.to_json() for p in registry.list_pipelines(conn, ledger=ledger)])

    @pipelines.command("get")
    @click.argument("pipeline_id", metavar="PIPELINE")
    @handles_errors
    def pipelines_get(pipeline_id: str) -> None:
        """Show one pipeline."""
        with db() as conn:
            emit(registry.get_pipeline(conn, pipeline_id).to_json())

    @pipelines.command("history")
    @click.argument("pipeline_id", metavar="PIPELINE")
    @click.option("--limit", default=20, show_default=True, type=int)
    @handles_errors
    def pipelines_history(pipeline_id: str, limit: int) -> None:
        """Every sync attempt of a pipeline, newest first: who ran it, logs and rows, outcome and error."""
        with db() as conn:
            emit([run.to_json() for run in registry.sync_history(conn, pipeline_id, limit=limit)])

    @pipelines.command("verify")
    @click.argument("pipeline_id", metavar="PIPELINE")
    @handles_errors
    def pipelines_verify(pipeline_id: str) -> None:
        """Prove the warehouse equals the ledger at the pipeline's cursor: every balance, without syncing.
        Exits 1 when a check fails (freshness only warns)."""
        checks = verify_pipeline(database_url(), pipeline_id, environ=dict(os.environ))
        emit([asdict(c) for c in checks])
        failed = [c.name for c in checks if not c.passed and c.name != "freshness"]
        if failed:
            raise ChecksFailed(pipeline_id, failed)

    @pipelines.command("start")
    @click.argument("pipeline_id", metavar="PIPELINE")
    @handles_errors
    def pipelines_start(pipeline_id: str) -> None:
        """Enable a pipeline; it resumes from its cursor."""
        with db() as conn:
            emit(registry.set_enabled(conn, pipeline_id, True).to_json())

    @pipelines.command("stop")
    @click.argument("pipeline_id", metavar="PIPELINE")
    @handles_errors
    def pipelines_stop(pipeline_id: str) -> None:
        """Disable a pipeline; its cursor is kept."""
        with db() as conn:
            emit(registry.set_enabled(conn, pipeline_id, False).to_json())

    @pipelines.command("cadence")
    @click.argument("pipeline_id", metavar="PIPELINE")
    @click.argument("cadence", type=click.Choice([c.value for c in registry.Cadence]))
    @handles_errors
    def pipelines_cadence(pipeline_id: str, cadence: str) -> None:
        """Choose hourly, daily or realtime syncing."""
        with db() as conn:
            emit(registry.set_cadence(conn, pipeline_id, cadence).to_json())

    @pipelines.command("reset")
    @click.argument("pipeline_id", metavar="PIPELINE")
    @click.option("--to-log-id", default=0, show_default=True, type=int, help="Replay logs after this id.")
    @handles_errors
    def pipelines_reset(pipeline_id: str, to_log_id: int) -> None:
        """Move the cursor back; the next sync replays and the warehouse absorbs duplicates."""
        with db() as conn:
            emit(registry.reset_pipeline(conn, pipeline_id, to_log_id).to_json())

    @pipelines.command("delete")
    @click.argument("pipeline_id", metavar="PIPELINE")
    @handles_errors
    def pipelines_delete(pipeline_id: str) -> None:
        """Delete a pipeline (its warehouse tables stay)."""
        with db() as conn:
            registry.delete_pipeline(conn, pipeline_id)
        emit({"deleted": pipeline_id})

    @cli.command("sync")
    @click.argument("pipeline_id", metavar="[PIPELINE]", required=False)
    @click.option("--all", "all_", is_flag=True, help="Every enabled pipeline with new logs.")
    @click.option("--follow", "follow_mode", is_flag=True, help="Keep running; sync within moments of each commit.")
    @click.option("--batch-size", default=DEFAULT_BATCH_SIZE, show_default=True, type=int)
    @click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
    @handles_errors
    def sync_cmd(pipeline_id: str | None, all_: bool, follow_mode: bool, batch_size: int,
                 progress: bool | None) -> None:
        """Load a pipeline's new logs (by id or name) into its warehouse, then move its cursor."""
        if bool(pipeline_id) == all_:
            raise click.UsageError("give a PIPELINE_ID or --all")
        if batch_size < 1:
            raise click.UsageError("--batch-size must be at least 1")
        url = database_url()
        environ = dict(os.environ)
        bar = ProgressBar(sys.stderr.isatty() if progress is None else progress)
        if follow_mode:
            def report(r: SyncReport) -> None:
                click.echo(json.dumps(r.to_json()), nl=True)

            def failure(f: SyncFailure) -> None:  # reported, and tried again at the next wake-up
                click.echo(json.dumps(f.to_json()), nl=True)

            follow(url, None if all_ else [pipeline_id or ""], environ=environ, on_report=report,
                   on_failure=failure, batch_size=batch_size)
            return
        if all_:
            reports, failures = sync_all(url, environ=environ, batch_size=batch_size, progress=bar, trigger="cli")
            emit({"synced": [r.to_json() for r in reports], "failed": [f.to_json() for f in failures]})
            if failures:
                raise PipelineError(f"{len(failures)} pipeline(s) failing: "
                                    + "; ".join(f"{f.pipeline_id}: {f.error}" for f in failures))
        else:
            emit(sync_pipeline(url, pipeline_id or "", environ=environ, batch_size=batch_size,
                               progress=bar, trigger="cli").to_json())
