"""Wiring only: the assets, job, schedules, sensor and resources of the ledger's Dagster code location."""

from __future__ import annotations

import warnings

import dagster as dg

from dagster_project.assets import LEDGER_LOG, check_pipeline, resync_job, sync_job, warehouse_sync
from dagster_project.automation import daily_sync, hourly_sync, new_logs_sensor
from dagster_project.resources import ExporterSecrets, ledger_database_from_environment

# Dagster itself passes the beta `owners` parameter when it binds resources to the op job the sensor targets
# (check_pipeline); nothing here uses it, so that one message is not shown at every load.
warnings.filterwarnings("ignore", message="Parameter `owners` of initializer `SensorDefinition.__init__`",
                        category=dg.BetaWarning)

defs = dg.Definitions(
    assets=[LEDGER_LOG, warehouse_sync],
    jobs=[sync_job, resync_job, check_pipeline],
    schedules=[hourly_sync, daily_sync],
    sensors=[new_logs_sensor],
    resources={"ledger_db": ledger_database_from_environment(), "exporter_secrets": ExporterSecrets()},
)
