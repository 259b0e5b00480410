"""UI tests use the Dagster tests' fixtures (a database of their own, pipelines)."""

from tests.dagster.conftest import dagster_db_url, dconn, make_pipeline  # noqa: F401
