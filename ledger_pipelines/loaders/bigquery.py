"""Google BigQuery, through google-cloud-bigquery.

- Bulk path: each Arrow table is written as Parquet and sent with a load job (`load_table_from_file`) into
  a staging table of the dataset (`_staged_<table>_<id>`), deleted after the merge. Money is staged as its
  exact decimal digits (STRING) and cast in SQL: a Parquet decimal wider than NUMERIC would otherwise pass
  through a double in some readers, and a ledger value must never be rounded.
- Merge: the shared insert-absent, and a delete-superseded written with `EXISTS` (BigQuery's DELETE has no
  USING), all in one multi-statement transaction (`BEGIN TRANSACTION; …; COMMIT TRANSACTION;`), which rolls
  back as a whole on failure.
- Money: BIGNUMERIC(38, 0): BigQuery requires precision - scale <= 38 for BIGNUMERIC, so 38 integer digits,
  not 76; wider values stop the pipeline (VALUE_OUT_OF_RANGE). JSON: JSON, from staged text with
  PARSE_JSON. Timestamps: TIMESTAMP (UTC).
- Tables are clustered by their natural key (ledger first), so the checks' `WHERE ledger = …` and key
  lookups read the blocks of one ledger, not the table.
- Credentials: a service-account key file (`credentials_path`), or its JSON from an environment variable
  (`credentials_json: {"env": …}`), or the environment's default credentials when neither is given.
  `api_endpoint` points the client at an emulator (the test suite's local-bigquery), with anonymous
  credentials.
- The local stand-in (local-bigquery 0.3.2, DuckDB underneath) holds BIGNUMERIC as DECIMAL(38,18), so values
  of 10^20 and more cannot round-trip there, and ignores CLUSTER BY; the contract suite skips the wide-value
  cases on it and `make check-cloud` runs them against a real project (`LEDGER_CHECK_BIGQUERY`).
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import requests
from google.api_core import exceptions as gexc
from google.cloud import bigquery

from ledger_pipelines.errors import InvalidExporterConfig, LoadError, TransientLoadError
from ledger_pipelines.loaders.base import Dialect, Loader
from ledger_pipelines.loaders.config import ConfigField, local_file
from ledger_pipelines.tables import Kind, Table

DIALECT = Dialect(
    name="bigquery",
    types={Kind.STRING: "STRING", Kind.INT32: "INT64", Kind.INT64: "INT64", Kind.BOOL: "BOOL",
           Kind.TIMESTAMP: "TIMESTAMP", Kind.DATE: "DATE", Kind.JSON: "JSON", Kind.MONEY: "BIGNUMERIC(38, 0)"},
    money_digits=38,
    arrow_money=pa.string(),  # staged as its exact digits, cast to BIGNUMERIC in SQL (JSON, too, stays text)
    max_identifier_length=300,
    quote="`",
    placeholder="@{name}",
    staging_types={Kind.JSON: "STRING", Kind.MONEY: "STRING"},
    insert_casts={Kind.JSON: "PARSE_JSON({})", Kind.MONEY: "CAST({} AS BIGNUMERIC)"},
    select_casts={Kind.JSON: "TO_JSON_STRING({})", Kind.MONEY: "CAST({} AS STRING)"},
    declare_primary_keys=False,
)
TRANSIENT = (gexc.ServiceUnavailable, gexc.InternalServerError, gexc.TooManyRequests, gexc.GatewayTimeout,
             gexc.DeadlineExceeded, gexc.RetryError, requests.ConnectionError, requests.Timeout)
PARAMETER_TYPES = {bool: "BOOL", int: "INT64", str: "STRING", date: "DATE"}
# The client retries an unreachable API for 10 minutes by default, and re-runs failed jobs for 40. The sync's
# own retry, then the next tick, handle transient failures: each call gives up after 20 s (RetryError, transient)
# and a failed job is reported, not re-run.
API_RETRY = bigquery.DEFAULT_RETRY.with_timeout(20.0)
UPLOAD_TIMEOUT = 120.0


@contextmanager
def translate_errors() -> Iterator[None]:
    """The one place the client's exceptions become pipeline errors."""
    try:
        yield
    except TRANSIENT as exc:
        raise TransientLoadError(f"bigquery: {exc}") from exc
    except gexc.Forbidden as exc:
        if "rateLimitExceeded" in str(exc) or "quotaExceeded" in str(exc):
            raise TransientLoadError(f"bigquery: {exc}") from exc
        raise LoadError(f"bigquery: {exc}; check the credentials' roles on the dataset") from exc
    except gexc.GoogleAPIError as exc:  # BadRequest, NotFound, Conflict: a retry would fail the same way
        raise LoadError(f"bigquery: {exc}") from exc


def script(statements: list[str]) -> str:
    """Statements as one multi-statement transaction: all or nothing."""
    return "BEGIN TRANSACTION;\n" + "".join(f"{s};\n" for s in statements) + "COMMIT TRANSACTION;"


class BigQueryLoader(Loader):
    driver = "bigquery"
    dialect = DIALECT
    config_fields = (
        ConfigField("project", str, required=True),
        ConfigField("dataset", str, default="ledger"),
        ConfigField("location", str),
        ConfigField("credentials_path", str),
        ConfigField("credentials_json", str, secret=True),
        ConfigField("api_endpoint", str),
    )

    @classmethod
    def validate(cls, config: Any) -> dict[str, Any]:
        checked = super().validate(config)
        if "credentials_path" in checked and "credentials_json" in checked:
            raise InvalidExporterConfig(cls.driver, "give 'credentials_path' or 'credentials_json', not both")
        if not checked["project"].strip() or any(c in checked["project"] for c in "`. "):
            raise InvalidExporterConfig(cls.driver, f"'project' is a project id, got {checked['project']!r}")
        if not checked["dataset"].replace("_", "a").isalnum():
            raise InvalidExporterConfig(cls.driver, f"'dataset' is letters, digits and '_', got {checked['dataset']!r}")
        endpoint = checked.get("api_endpoint")
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            raise InvalidExporterConfig(cls.driver, f"'api_endpoint' is an http(s) URL, got {endpoint!r}")
        return checked

    @classmethod
    def prepare(cls, config: dict[str, Any], base_dir: Path) -> dict[str, Any]:
        return local_file(cls.driver, "credentials_path", config, base_dir)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.schema = self.config["dataset"]
        self.pending: list[str] | None = None  # statements of the open transaction
        with translate_errors():
            self.client = self._client()

    def _client(self) -> bigquery.Client:
        from google.oauth2 import service_account

        project, options = self.config["project"], {}
        credentials: Any = None
        if "credentials_path" in self.config:
            credentials = service_account.Credentials.from_service_account_file(self.config["credentials_path"])
        elif "credentials_json" in self.config:
            try:
                info = json.loads(self.secret("credentials_json"))
            except ValueError:
                raise LoadError("bigquery: 'credentials_json' does not hold a service-account key (JSON)") from None
            credentials = service_account.Credentials.from_service_account_info(info)
        if "api_endpoint" in self.config:
            from google.auth.credentials import AnonymousCredentials

            options = {"api_endpoint": self.config["api_endpoint"]}
            credentials = credentials or AnonymousCredentials()
        return bigquery.Client(project=project, credentials=credentials, location=self.config.get("location"),
                               client_options=options or None)

    def close(self) -> None:
        self.client.close()

    def errors(self) -> Any:
        return translate_errors()

    def qualified(self, table: Table | str) -> str:
        name = table if isinstance(table, str) else table.name
        return f"{self.ident(self.config['project'])}.{self.ident(self.schema)}.{self.ident(name)}"

    def _job_config(self, params: Mapping[str, Any] | None) -> bigquery.QueryJobConfig:
        return bigquery.QueryJobConfig(query_parameters=[
            bigquery.ScalarQueryParameter(name, PARAMETER_TYPES[type(value)], value)
            for name, value in (params or {}).items()])

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> None:
        if self.pending is not None and not params:
            self.pending.append(sql)
            return
        self._run(sql, params)

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return [tuple(row.values()) for row in self._run(sql, params)]

    def _run(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        job = self.client.query(sql, job_config=self._job_config(params), retry=API_RETRY, job_retry=None)
        return job.result(retry=API_RETRY, job_retry=None)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Collect the merges, then run them as one script: a multi-statement transaction is one job."""
        self.pending = []
        try:
            yield
            statements, self.pending = self.pending, None
            if statements:
                self._run(script(statements))
        finally:
            self.pending = None

    def create_schema_sql(self) -> str:
        location = self.config.get("location")
        options = f" OPTIONS (location = '{location}')" if location else ""
        return f"CREATE SCHEMA IF NOT EXISTS {self.ident(self.config['project'])}.{self.ident(self.schema)}{options}"

    def create_table_sql(self, table: Table) -> str:
        return f"{super().create_table_sql(table)} CLUSTER BY {', '.join(self.ident(k) for k in table.key[:4])}"

    def columns_catalog(self) -> tuple[str, dict[str, Any]]:
        return (f"SELECT table_name, column_name FROM {self.ident(self.config['project'])}."
                f"{self.ident(self.schema)}.INFORMATION_SCHEMA.COLUMNS", {})

    def delete_superseded_sql(self, table: Table, staged: str) -> str:
        same_key = " AND ".join(f"t.{self.ident(k)} = s.{self.ident(k)}" for k in table.key)
        log_id = self.ident("log_id")
        return (f"DELETE FROM {self.qualified(table)} AS t WHERE EXISTS (SELECT 1 FROM {staged} s "
                f"WHERE {same_key} AND t.{log_id} <= s.{log_id})")

    def load_job_config(self, table: Table) -> bigquery.LoadJobConfig:
        """The staging table is made by the load job itself, typed as staged (money and JSON as STRING)."""
        return bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.PARQUET,
            write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
            schema=[bigquery.SchemaField(c.name, self.staging_type(c.kind).split("(")[0]) for c in table.columns])

    def stage(self, table: Table, data: pa.Table) -> str:
        name = f"_staged_{table.name}_{uuid.uuid4().hex[:12]}"
        buffer = io.BytesIO()
        pq.write_table(data, buffer)
        buffer.seek(0)
        self.client.load_table_from_file(buffer, f"{self.config['project']}.{self.schema}.{name}",
                                         job_config=self.load_job_config(table), num_retries=2,
                                         timeout=UPLOAD_TIMEOUT).result(retry=API_RETRY, timeout=UPLOAD_TIMEOUT)
        return self.qualified(name)

    def unstage(self, staged: str) -> None:
        self.client.delete_table(staged.replace("`", ""), not_found_ok=True, retry=API_RETRY)
