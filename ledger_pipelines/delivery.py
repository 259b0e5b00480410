"""The `http` exporter: a pipeline's logs POSTed to a URL, as the logs themselves or as Formance events.

Each request carries one contiguous run of logs, oldest first, as a JSON array:
- `"format": "logs"` (the default): the logs as the ledger's API shows them, `{"ledger", "id", "type", "date",
  "data", "hash"}` (Formance's export shape, plus the chain hash so a receiver can check the chain itself);
- `"format": "events"`: one Formance event per log, `{"date", "app": "ledger", "version": "v2", "type",
  "payload"}`: COMMITTED_TRANSACTIONS (the transaction with its pre/post-commit volumes, and accountMetadata),
  SAVED_METADATA, DELETED_METADATA, REVERTED_TRANSACTION (revertedTransaction and revertTransaction).
Amounts are JSON integers of any size, never strings or floats: parse them exactly (Python's json does).

Headers: `Ledger-Delivery-Id` (`<pipeline>-<first log>-<last log>`: the same on every retry of the same logs),
`Ledger-Log-Range` (`<first>-<last>`), `Ledger-Name`, and `Ledger-Signature: sha256=<hex>`, an HMAC-SHA256 of
the exact body bytes under the secret the config names by environment variable.

Any 2xx acknowledges. 408, 429, 5xx, a timeout or a refused connection are transient: retried with backoff by
the sync, then by the next sync, without waiting for a new write. Any other answer is terminal: the pipeline is
stopped, with the status and the start of the response in its lastError, until someone starts it again.
Delivery is at least once: logs whose delivery was acknowledged but whose cursor move was lost (a crash in
between) are delivered again, with the same ids. A receiver deduplicates by the last log id it has applied.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa

from ledger_core.export import rfc3339
from ledger_pipelines.errors import DeliveryRefused, InvalidExporterConfig, TransientLoadError
from ledger_pipelines.loaders.config import ConfigField, Configured, FaultHook

FORMATS = ("logs", "events")
TRANSIENT_STATUSES = {408, 425, 429}
EVENT_TYPES = {"NEW_TRANSACTION": "COMMITTED_TRANSACTIONS", "SET_METADATA": "SAVED_METADATA",
               "DELETE_METADATA": "DELETED_METADATA", "REVERTED_TRANSACTION": "REVERTED_TRANSACTION"}


class LogSink(Configured):
    """A destination that receives logs as they are (no warehouse tables): the sync delivers each batch, then
    moves the cursor. Subclasses set `driver`, `config_fields` and implement `deliver`."""

    max_logs_per_delivery: int = 100

    def deliver(self, pipeline_id: str, ledger: str, logs: pa.Table) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the sink holds."""

    def __enter__(self) -> LogSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def logs_body(ledger: str, logs: pa.Table) -> bytes:
    """The logs as a JSON array; each log's `data` is the stored JSON text, copied as is (exact)."""
    dates = rfc3339(logs.column("date")).to_pylist()
    name = json.dumps(ledger, ensure_ascii=False)
    items = [
        f'{{"ledger":{name},"id":{log_id},"type":"{kind}","date":"{date}","data":{data},"hash":"{hash_}"}}'
        for log_id, kind, date, data, hash_ in zip(
            logs.column("id").to_pylist(), logs.column("type").to_pylist(), dates,
            logs.column("data").to_pylist(), logs.column("hash").to_pylist(), strict=True)
    ]
    return ("[" + ",".join(items) + "]").encode()


def event(ledger: str, log_type: str, date: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """The Formance event of one log."""
    if log_type == "NEW_TRANSACTION":
        payload = {"ledger": ledger, "transactions": [data["transaction"]],
                   "accountMetadata": data.get("accountMetadata") or {}}
    elif log_type == "REVERTED_TRANSACTION":
        payload = {"ledger": ledger, "revertedTransaction": data["revertedTransaction"],
                   "revertTransaction": data["transaction"]}
    elif log_type == "SET_METADATA":
        payload = {"ledger": ledger, "targetType": data["targetType"], "targetId": data["targetId"],
                   "metadata": data["metadata"]}
    elif log_type == "DELETE_METADATA":
        payload = {"ledger": ledger, "targetType": data["targetType"], "targetId": data["targetId"],
                   "key": data["key"]}
    else:
        raise ValueError(f"no event for log type {log_type!r}")
    return {"date": date, "app": "ledger", "version": "v2", "type": EVENT_TYPES[log_type], "payload": payload}


def events_body(ledger: str, logs: pa.Table) -> bytes:
    dates = rfc3339(logs.column("date")).to_pylist()
    events = [event(ledger, kind, date, json.loads(data)) for kind, date, data in zip(
        logs.column("type").to_pylist(), dates, logs.column("data").to_pylist(), strict=True)]
    return json.dumps(events, ensure_ascii=False, separators=(",", ":")).encode()


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class HttpSink(LogSink):
    driver = "http"
    config_fields = (
        ConfigField("url", str, required=True),
        ConfigField("format", str, default="logs"),
        ConfigField("secret", str, required=True, secret=True),  # the HMAC key, by environment variable
        ConfigField("timeoutSeconds", int, default=10, bounds=(1, 300)),
        ConfigField("maxLogsPerRequest", int, default=100, bounds=(1, 10_000)),
    )

    @classmethod
    def validate(cls, config: Any) -> dict[str, Any]:
        checked = super().validate(config)
        parts = urlsplit(checked["url"])
        if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in checked["url"]):
            raise InvalidExporterConfig(cls.driver, f"'url' must be an http:// or https:// URL with a host, "
                                                    f"got {checked['url']!r}")
        if parts.username or parts.password:
            raise InvalidExporterConfig(cls.driver, "'url' must not carry credentials; the receiver checks the "
                                                    "Ledger-Signature header instead")
        if checked["format"] not in FORMATS:
            raise InvalidExporterConfig(cls.driver, f"'format' must be one of {', '.join(FORMATS)}, "
                                                    f"got {checked['format']!r}")
        return checked

    def __init__(self, config: Mapping[str, Any], environ: Mapping[str, str], fault: FaultHook | None = None):
        super().__init__(config, environ, fault)
        self.max_logs_per_delivery = self.config["maxLogsPerRequest"]
        self._key = str(self.secret("secret"))  # MissingSecret now, before anything is sent
        self._url = urlsplit(self.config["url"])

    def deliver(self, pipeline_id: str, ledger: str, logs: pa.Table) -> None:
        first, last = logs.column("id")[0].as_py(), logs.column("id")[-1].as_py()
        body = events_body(ledger, logs) if self.config["format"] == "events" else logs_body(ledger, logs)
        headers = {
            "Content-Type": "application/json", "User-Agent": "ledger-http-exporter",
            "Ledger-Delivery-Id": f"{pipeline_id}-{first}-{last}", "Ledger-Log-Range": f"{first}-{last}",
            "Ledger-Name": ledger.encode("utf-8").decode("latin-1"), "Ledger-Signature": signature(self._key, body),
        }
        status, answer = self._post(body, headers)
        if 200 <= status < 300:
            return
        said = " ".join(answer.decode("utf-8", "replace").split())[:300] or "(empty body)"
        where = f"{self.config['url']} answered {status} to logs {first}-{last}: {said}"
        if status >= 500 or status in TRANSIENT_STATUSES:
            raise TransientLoadError(f"http: {where}; retried with backoff")
        raise DeliveryRefused(self.driver, status, where)

    def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        url, timeout = self._url, self.config["timeoutSeconds"]
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        connection: http.client.HTTPConnection = (
            http.client.HTTPSConnection(url.hostname, url.port, timeout=timeout, context=ssl.create_default_context())
            if url.scheme == "https" else http.client.HTTPConnection(url.hostname, url.port, timeout=timeout))
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read(64 * 1024)
        except TimeoutError as exc:
            raise TransientLoadError(f"http: {self.config['url']} did not answer within {timeout} s ({exc}); "
                                     "retried with backoff") from None
        except ssl.SSLCertVerificationError as exc:  # an OSError too, but waiting will not fix a certificate
            raise DeliveryRefused(self.driver, 0, f"{self.config['url']}'s TLS certificate was refused: "
                                                  f"{exc.verify_message}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise TransientLoadError(f"http: cannot reach {self.config['url']}: {type(exc).__name__}: {exc}; "
                                     "retried with backoff") from None
        finally:
            connection.close()
