"""The `http` exporter against a real HTTP receiver on a loopback port: payloads, signatures, retries, a receiver
that fails then recovers, one that refuses, a kill -9 in the middle of a delivery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ledger_core import reads
from ledger_core.requests import DeleteMetadata, RevertTransaction, SetMetadata
from ledger_core.writer import write
from ledger_pipelines import registry
from ledger_pipelines.delivery import signature
from ledger_pipelines.errors import (
    DeliveryRefused,
    InvalidExporterConfig,
    LogChainBroken,
    MissingSecret,
    TransientLoadError,
)
from ledger_pipelines.sync import NO_RETRY, RetryPolicy, sync_pipeline
from tests.helpers import new_tx, posting, send

SECRET = "a-receiver-secret"


def readme_receiver() -> dict:
    """The receiver's checks as the README shows them (`verified`, `unseen`), run here on real deliveries."""
    from tests.integration.test_readme import readme_blocks

    [code] = [body for kind, body in readme_blocks() if kind == "python" and "def verified(" in body]
    namespace: dict = {}
    exec(code, namespace)
    return namespace

ENV = {"RECEIVER_SECRET": SECRET}
FAST = RetryPolicy(attempts=4, first_delay=0.05, max_delay=0.2)


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes

    @property
    def items(self) -> list[dict]:
        return json.loads(self.body)

    @property
    def range(self) -> tuple[int, int]:
        first, last = self.headers["Ledger-Log-Range"].split("-")
        return int(first), int(last)


@dataclass
class Receiver:
    """Answers each POST with the next planned status (200 once the plan is used up), recording what came."""

    url: str = ""
    plan: list[int | Callable[[], int]] = field(default_factory=list)
    received: list[Delivery] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)

    def delivered_ids(self) -> list[int]:
        """Log ids of acknowledged deliveries, in arrival order (duplicates kept)."""
        return [i for d, status in zip(self.received, self.answered, strict=True) if status < 300
                for i in range(d.range[0], d.range[1] + 1)]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.received.append(Delivery(dict(self.headers), body))
            step = state.plan.pop(0) if state.plan else 200
            status = step() if callable(step) else step
            state.answered.append(status)
            answer = b'{"ok": true}' if status < 300 else b'{"error": "receiver says no: bad ledger"}'
            self.send_response(status)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/ledger?team=ops"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def http_pipeline(conn, ledger: str, receiver: Receiver, **config) -> registry.Pipeline:
    registry.migrate_pipelines(conn)
    exporter = registry.create_exporter(conn, "http", {"url": receiver.url, "secret": {"env": "RECEIVER_SECRET"},
                                                       **config})
    return registry.create_pipeline(conn, ledger, exporter.id)


def activity(conn, ledger: str) -> None:
    """One log of each type: two transactions, metadata set and deleted, a revert."""
    send(conn, ledger, posting("world", "users:1", 10**30), posting("world", "users:2", 5), metadata={"k": "v"})
    write(conn, ledger, [
        new_tx(posting("users:1", "shop", 7), accountMetadata={"shop": {"kind": "merchant"}}),
        SetMetadata.build("ACCOUNT", "users:1", {"tier": "gold"}),
        DeleteMetadata.build("TRANSACTION", 1, "k"),
        RevertTransaction(2),
    ])


def test_logs_are_delivered_in_order_signed_and_exactly_as_the_ledger_holds_them(conn, ledger, receiver):
    activity(conn, ledger)
    pipeline = http_pipeline(conn, ledger, receiver, maxLogsPerRequest=2)
    report = sync_pipeline(conn.info.dsn, pipeline.id, environ=ENV)
    assert (report.from_log_id, report.to_log_id, report.logs) == (1, 5, 5)
    assert report.rows == {"logs": 5, "requests": 3}
    assert [d.range for d in receiver.received] == [(1, 2), (3, 4), (5, 5)]
    expected = [log.to_json() for log in reads.list_logs(conn, ledger)]
    got = [item for d in receiver.received for item in d.items]
    assert got == [{k: v for k, v in e.items() if k != "idempotencyKey"} for e in expected]
    assert got[0]["data"]["transaction"]["postings"][0]["amount"] == 10**30  # exact, a JSON integer
    verified = readme_receiver()["verified"]
    for delivery in receiver.received:
        assert delivery.headers["Ledger-Signature"] == signature(SECRET, delivery.body)
        assert verified(delivery.body, delivery.headers["Ledger-Signature"], SECRET)
        assert not verified(delivery.body + b" ", delivery.headers["Ledger-Signature"], SECRET)
        assert not verified(delivery.body, delivery.headers["Ledger-Signature"], SECRET + "x")
        assert delivery.headers["Ledger-Delivery-Id"] == f"{pipeline.id}-{delivery.range[0]}-{delivery.range[1]}"
        assert delivery.headers["Ledger-Name"] == ledger and delivery.headers["Content-Type"] == "application/json"
    assert registry.get_pipeline(conn, pipeline.id).last_log_id == 5
    assert sync_pipeline(conn.info.dsn, pipeline.id, environ=ENV).logs == 0 and len(receiver.received) == 3


def test_events_have_formance_shapes(conn, ledger, receiver):
    activity(conn, ledger)
    pipeline = http_pipeline(conn, ledger, receiver, format="events")
    sync_pipeline(conn.info.dsn, pipeline.id, environ=ENV)
    [delivery] = receiver.received
    events = delivery.items
    logs = reads.list_logs(conn, ledger)
    assert [e["type"] for e in events] == ["COMMITTED_TRANSACTIONS", "COMMITTED_TRANSACTIONS", "SAVED_METADATA",
                                           "DELETED_METADATA", "REVERTED_TRANSACTION"]
    for e, log in zip(events, logs, strict=True):
        assert set(e) == {"date", "app", "version", "type", "payload"}
        assert (e["app"], e["version"], e["date"]) == ("ledger", "v2", log.to_json()["date"])
        assert e["payload"]["ledger"] == ledger
    first = reads.get_transaction(conn, ledger, 1).to_json()
    committed = events[0]["payload"]["transactions"][0]
    assert committed["postCommitVolumes"]["users:1"]["USD/2"] == {"input": 10**30, "output": 0, "balance": 10**30}
    assert committed["preCommitVolumes"]["users:1"]["USD/2"] == {"input": 0, "output": 0, "balance": 0}
    assert {k: committed[k] for k in ("id", "postings", "timestamp", "insertedAt")} == {
        k: first[k] for k in ("id", "postings", "timestamp", "insertedAt")}
    assert events[0]["payload"]["accountMetadata"] == {}
    assert events[1]["payload"]["accountMetadata"] == {"shop": {"kind": "merchant"}}
    assert events[2]["payload"] == {"ledger": ledger, "targetType": "ACCOUNT", "targetId": "users:1",
                                    "metadata": {"tier": "gold"}}
    assert events[3]["payload"] == {"ledger": ledger, "targetType": "TRANSACTION", "targetId": 1, "key": "k"}
    reverted = events[4]["payload"]
    assert reverted["revertedTransaction"]["id"] == 2 and reverted["revertedTransaction"]["reverted"] is True
    assert reverted["revertTransaction"]["id"] == 3
    assert reverted["revertTransaction"]["postings"][0] == {"source": "shop", "destination": "users:1",
                                                            "amount": 7, "asset": "USD/2"}


def test_a_receiver_that_fails_then_recovers_gets_the_same_delivery_again(conn, ledger, receiver):
    send(conn, ledger, posting("world", "a", 1))
    pipeline = http_pipeline(conn, ledger, receiver)
    receiver.plan = [503, 500, 429]
    report = sync_pipeline(conn.info.dsn, pipeline.id, environ=ENV, retry=FAST)
    assert report.attempts == 4 and receiver.answered == [503, 500, 429, 200]
    assert len({(d.headers["Ledger-Delivery-Id"], d.body) for d in receiver.received}) == 1  # same id, same bytes

    send(conn, ledger, posting("world", "a", 2))
    receiver.plan = [502] * 10
    with pytest.raises(TransientLoadError, match="502"):
        sync_pipeline(conn.info.dsn, pipeline.id, environ=ENV, retry=FAST)
    failing = registry.get_pipeline(conn, pipeline.id)
    assert failing.enabled and failing.last_error_code == "LOAD_TRANSIENT" and failing.last_log_id == 1
    receiver.plan = []  # the receiver is back: the next sync delivers, with no new write needed
    assert sync_pipeline(conn.info.dsn, pipeline.id, environ=ENV).to_log_id == 2
    assert registry.get_pipeline(conn, pipeline.id).last_error is None


def test_a_refusal_stops_the_pipeline_with_the_answer_in_last_error(conn, ledger, receiver):
    send(conn, ledger, posting("world", "a", 1))
    pipeline = http_pipeline(conn, ledger, receiver)
    receiver.plan = [400]
    with pytest.raises(DeliveryRefused):
        sync_pipeline(conn.info.dsn, pipeline.id, environ=ENV, retry=FAST)
    assert len(receiver.received) == 1  # a 4xx is not retried
    stopped = registry.get_pipeline(conn, pipeline.id)
    assert not stopped.enabled and stopped.last_log_id == 0 and stopped.last_error_code == "DELIVERY_REFUSED"
    assert "answered 400" in stopped.last_error and "receiver says no: bad ledger" in stopped.last_error
    assert "pipelines start" in stopped.last_error
    registry.set_enabled(conn, pipeline.id, True)
    assert sync_pipeline(conn.info.dsn, pipeline.id, environ=ENV).to_log_id == 1
    assert receiver.received[0].body == receiver.received[1].body


def test_a_receiver_too_slow_or_gone_is_a_transient_failure(conn, ledger, receiver):
    send(conn, ledger, posting("world", "a", 1))
    pipeline = http_pipeline(conn, ledger, receiver, timeoutSeconds=1)
    receiver.plan = [lambda: time.sleep(2) or 200]
    with pytest.raises(TransientLoadError, match="did not answer within 1 s"):
        sync_pipeline(conn.info.dsn, pipeline.id, environ=ENV, retry=NO_RETRY)
    exporter = registry.create_exporter(conn, "http", {"url": "http://127.0.0.1:9/nobody",
                                                       "secret": {"env": "RECEIVER_SECRET"}})
    registry.delete_pipeline(conn, pipeline.id)
    nobody = registry.create_pipeline(conn, ledger, exporter.id)
    with pytest.raises(TransientLoadError, match="cannot reach"):
        sync_pipeline(conn.info.dsn, nobody.id, environ=ENV, retry=NO_RETRY)
    assert registry.get_pipeline(conn, nobody.id).enabled


def test_reset_and_a_crash_after_delivery_deliver_the_same_logs_again(conn, ledger, receiver):
    for i in range(3):
        send(conn, ledger, posting("world", "a", i + 1))
    pipeline = http_pipeline(conn, ledger, receiver, maxLogsPerRequest=1)

    def crash(point: str) -> None:
        if point == "after_load" and len(receiver.received) == 2:
            raise KeyboardInterrupt  # the process dies after the receiver acknowledged, before the cursor moved

    with pytest.raises(KeyboardInterrupt):
        sync_pipeline(conn.info.dsn, pipeline.id, environ=ENV, fault=crash)
    assert registry.get_pipeline(conn, pipeline.id).last_log_id == 1
    sync_pipeline(conn.info.dsn, pipeline.id, environ=ENV)
    assert receiver.delivered_ids() == [1, 2, 2, 3]  # at least once: log 2 twice, with the same delivery id
    assert receiver.received[1].headers["Ledger-Delivery-Id"] == receiver.received[2].headers["Ledger-Delivery-Id"]
    registry.reset_pipeline(conn, pipeline.id, 1)
    sync_pipeline(conn.info.dsn, pipeline.id, environ=ENV)
    assert receiver.delivered_ids()[4:] == [2, 3]


def test_a_kill_9_during_a_delivery_loses_nothing(conn, ledger, receiver, database_url):
    for i in range(4):
        send(conn, ledger, posting("world", "a", i + 1))
    pipeline = http_pipeline(conn, ledger, receiver, maxLogsPerRequest=2)
    in_flight, release = threading.Event(), threading.Event()

    def hold() -> int:
        in_flight.set()
        release.wait(30)
        return 200

    receiver.plan = [200, hold]
    sync = subprocess.Popen([sys.executable, "-m", "ledger_core.cli", "sync", pipeline.id],
                            env={**os.environ, "LEDGER_DATABASE_URL": database_url, **ENV},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert in_flight.wait(60), "the second delivery never arrived"
        os.kill(sync.pid, signal.SIGKILL)
        sync.wait(10)
    finally:
        release.set()
    assert registry.get_pipeline(conn, pipeline.id).last_log_id == 2
    sync_pipeline(conn.info.dsn, pipeline.id, environ=ENV)
    assert receiver.delivered_ids() == [1, 2, 3, 4, 3, 4]  # the killed delivery is sent again
    assert registry.get_pipeline(conn, pipeline.id).last_log_id == 4
    # The README's receiver applies every log exactly once, in order, whatever was delivered twice.
    unseen, applied, stored = readme_receiver()["unseen"], 0, []
    for delivery in receiver.received:
        for log_id, item in unseen(delivery.body, delivery.headers["Ledger-Log-Range"], applied):
            stored.append(item)
            applied = log_id
    assert [item["id"] for item in stored] == [1, 2, 3, 4]
    assert stored == [log.to_json() for log in reads.list_logs(conn, ledger)]


def test_a_tampered_log_is_never_delivered(conn, ledger, receiver):
    send(conn, ledger, posting("world", "a", 1))
    send(conn, ledger, posting("world", "a", 2))
    pipeline = http_pipeline(conn, ledger, receiver)
    conn.execute("""UPDATE ledger_core.logs SET data = jsonb_set(data, '{transaction,metadata}', '{"x": "y"}')
                    WHERE ledger = %s AND id = 2""", (ledger,))
    with pytest.raises(LogChainBroken):
        sync_pipeline(conn.info.dsn, pipeline.id, environ=ENV, retry=NO_RETRY)
    assert receiver.received == []


@pytest.mark.parametrize(("config", "named"), [
    ({"url": "ftp://x/y", "secret": {"env": "S"}}, "http:// or https://"),
    ({"url": "http://user:pw@x/y", "secret": {"env": "S"}}, "credentials"),
    ({"url": "http:///nohost", "secret": {"env": "S"}}, "with a host"),
    ({"url": "http://x/y\n", "secret": {"env": "S"}}, "http:// or https://"),
    ({"url": "http://x/y", "secret": "plain"}, "is a secret"),
    ({"url": "http://x/y"}, "'secret' is required"),
    ({"url": "http://x/y", "secret": {"env": "S"}, "format": "xml"}, "'format'"),
    ({"url": "http://x/y", "secret": {"env": "S"}, "timeoutSeconds": 0}, "between 1 and 300"),
])
def test_bad_configs_are_refused_with_one_line(conn, config, named):
    registry.migrate_pipelines(conn)
    with pytest.raises(InvalidExporterConfig, match=named) as refused:
        registry.create_exporter(conn, "http", config)
    assert "\n" not in str(refused.value)


def test_a_missing_secret_is_named(conn, ledger, receiver):
    send(conn, ledger, posting("world", "a", 1))
    pipeline = http_pipeline(conn, ledger, receiver)
    with pytest.raises(MissingSecret, match="RECEIVER_SECRET"):
        sync_pipeline(conn.info.dsn, pipeline.id, environ={})
    assert receiver.received == []
