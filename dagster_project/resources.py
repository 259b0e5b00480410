"""Dagster resources: the edge where settings come from the environment (through EnvVar)."""


import os
from pathlib import Path

import dagster as dg
import psycopg

from ledger_core.db import connect, local_database_url


class LedgerDatabase(dg.ConfigurableResource):
    """The ledger's PostgreSQL: `url` (set from EnvVar LEDGER_DATABASE_URL), else the project's local server."""

    url: str | None = None
    home: str = "."  # where the local server keeps `.ledger/` when no URL is set

    def database_url(self) -> str:
        # Inside a run Dagster has resolved `url`; used directly (the demo, a script) it is still the EnvVar.
        url = self.url.get_value() if isinstance(self.url, dg.EnvVar) else self.url
        return url or local_database_url(Path(self.home))

    def connect(self, *, check_schema: bool = True) -> psycopg.Connection:
        return connect(self.database_url(), check_schema=check_schema)


class ExporterSecrets(dg.ConfigurableResource):
    """Resolves the environment variables an exporter's config names ({"env": NAME}) through Dagster's EnvVar.

    Nothing is listed ahead of time: each run asks the exporter which names it needs, and only those are read,
    in the run's own process, so secrets never land in run config, the UI or the event log.
    """

    def environ(self, names: list[str]) -> dict[str, str]:
        resolved = {name: dg.EnvVar(name).get_value() for name in names}
        return {name: value for name, value in resolved.items() if value is not None}


def ledger_database_from_environment() -> LedgerDatabase:
    # An EnvVar (not its value) keeps the URL out of the UI; without it, the local server under LEDGER_HOME.
    if os.environ.get("LEDGER_DATABASE_URL"):
        return LedgerDatabase(url=dg.EnvVar("LEDGER_DATABASE_URL"))
    return LedgerDatabase(home=os.environ.get("LEDGER_HOME", "."))
