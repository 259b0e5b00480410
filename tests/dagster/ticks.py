"""Sensor and schedule ticks as the daemon runs them: inside the evaluation context.

A schedule context opens an instance of its own from the instance's reference, and that instance makes its
state storage Dagster's current one until the context is closed. A context that is never closed is closed by
the garbage collector whenever it runs, which puts back the storage current before it: the test's instance,
by then disposed. The next test to load definitions then fails with "Attempted to resolve undefined
DagsterInstance weakref" (seen in CI). Closing the context at the end of the tick, as the daemon does, keeps
the order right; the ``instance`` fixture fails a test that leaves one open.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import dagster as dg

from dagster_project import automation


def sensor_tick(instance: dg.DagsterInstance, resources: dict[str, Any], cursor: str | None = None) -> Any:
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        return automation.new_logs_sensor(context)


def schedule_tick(schedule: Callable[..., Any], instance: dg.DagsterInstance, resources: dict[str, Any],
                  at: datetime) -> Any:
    with dg.build_schedule_context(instance=instance, resources=resources, scheduled_execution_time=at) as context:
        return schedule(context)
