"""The server's two speed devices, as a client sees them: the hot path for `POST /v2/{ledger}/transactions`
answers exactly as the routed handler does, and the writer process that gathers every HTTP process's writes
survives being killed, never loses an answered write, and dies with its server."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ledger_core import reads
from ledger_core.audit import verify_deep
from tests.api.conftest import make_key, start_server, stop, token
from tests.api.test_http_api import tx
from tests.helpers import counts


def send_both_ways(client: httpx.Client, path: str, **request) -> tuple[httpx.Response, httpx.Response]:
    """The same request through the hot path (no query string) and through FastAPI's route (`?force=false`,
    which changes nothing but the way in)."""
    return client.post(path, **request), client.post(path, params={"force": "false"}, **request)


def comparable(answer: httpx.Response) -> tuple[int, object]:
    body = answer.json()
    if answer.status_code == 200:  # two transactions: alike but for what makes each one
        data = {k: v for k, v in body["data"].items() if k not in ("id", "timestamp", "insertedAt")}
        return 200, {k: v for k, v in data.items() if "Volumes" not in k}
    return answer.status_code, body


def test_the_hot_path_answers_exactly_as_the_routed_handler(api, client, database_url, conn, api_ledger):
    base = f"/v2/{api_ledger}/transactions"
    assert client.post(base, json=tx(("world", "a", 100), reference="taken"),
                       headers={"Idempotency-Key": "used"}).status_code == 200
    reader = make_key(database_url, read_only=True)
    elsewhere = make_key(database_url, ledgers=["another"])
    cases: list[tuple[str, dict]] = [
        ("written", {"json": tx(("world", "b", 7), metadata={"k": "v"})}),
        ("no token", {"headers": {"Authorization": ""}, "json": tx(("world", "b", 1))}),
        ("forged token", {"headers": {"Authorization": "Bearer lt1.e30.AAAA"}, "json": tx(("world", "b", 1))}),
        ("read-only key", {"headers": {"Authorization": f"Bearer {token(api, reader)}"},
                           "json": tx(("world", "b", 1))}),
        ("another ledger's key", {"headers": {"Authorization": f"Bearer {token(api, elsewhere)}"},
                                  "json": tx(("world", "b", 1))}),
        ("empty body", {"content": b""}),
        ("not UTF-8", {"content": b"\xff\xfe"}),
        ("a fraction", {"content": b'{"postings": [{"source": "world", "destination": "b", "amount": 1.5, '
                                   b'"asset": "USD/2"}]}'}),
        ("no funds", {"json": tx(("a", "b", 101))}),
        ("taken reference", {"json": tx(("world", "b", 1), reference="taken")}),
        ("conflicting key", {"json": tx(("world", "b", 2)), "headers": {"Idempotency-Key": "used"}}),
        ("too large", {"content": b'{"metadata": {"k": "' + b"x" * (5 * 1024 * 1024) + b'"}}'}),
    ]
    for name, request in cases:
        hot, routed = send_both_ways(client, base, **request)
        assert comparable(hot) == comparable(routed), name
        assert (hot.status_code == 200) == (name == "written"), (name, hot.text)
    for path in ("/v2/nope/transactions", "/v2/bad%0Aname/transactions", f"/api/ledger/v2/{api_ledger}/transactions"):
        hot, routed = send_both_ways(client, path, json=tx(("world", "c", 1)))
        assert comparable(hot) == comparable(routed), path
    replayed = client.post(base, json=tx(("world", "a", 100), reference="taken"), headers={"Idempotency-Key": "used"})
    assert replayed.status_code == 200 and replayed.json()["data"]["id"] == 1
    assert counts(conn, api_ledger)["transactions"] == 1 + 2 + 2  # the first, two written, the stack path's two


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def writer_pid(server) -> int:
    for child in _children(server.process.pid):
        if b"ledger_api.writer_process" in Path(f"/proc/{child}/cmdline").read_bytes():
            return child
    raise AssertionError("no writer process under the server")


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def own_server(database_url, tmp_path, request):
    server = start_server(database_url, tmp_path, *getattr(request, "param", ()))
    yield server
    stop(server)


def test_a_killed_writer_process_is_replaced_and_no_answered_write_is_lost(own_server, admin_key, conn,
                                                                          api_ledger):
    headers = {"Authorization": f"Bearer {token(own_server, admin_key)}"}
    url = f"{own_server.url}/v2/{api_ledger}/transactions"
    first_writer = writer_pid(own_server)

    def one(n: int) -> tuple[int, int, dict]:
        answer = httpx.post(url, json=tx(("world", f"users:{n}", n + 1)), timeout=60,
                            headers={**headers, "Idempotency-Key": f"k{n}"})
        return n, answer.status_code, answer.json()

    with ThreadPoolExecutor(16) as pool:
        running = [pool.submit(one, n) for n in range(400)]
        while sum(f.done() for f in running) < 50:
            time.sleep(0.01)
        os.kill(first_writer, signal.SIGKILL)
        outcomes = [f.result() for f in running]
    answered = {n: body["data"]["id"] for n, status, body in outcomes if status == 200}
    unavailable = [n for n, status, body in outcomes if status == 503]
    assert len(answered) + len(unavailable) == 400, {s for _, s, _ in outcomes}
    assert all(body["errorCode"] == "DATABASE_UNAVAILABLE" for _, s, body in outcomes if s == 503)
    for n, tx_id in answered.items():  # what was answered is written, as answered
        assert reads.get_transaction(conn, api_ledger, tx_id).postings[0].destination == f"users:{n}"

    deadline = time.monotonic() + 30  # a new writer process, with nothing but time
    while True:
        retried = [one(n) for n in unavailable]
        if all(status == 200 for _, status, _ in retried) or time.monotonic() > deadline:
            break
        unavailable = [n for n, status, _ in retried if status != 200]
        time.sleep(0.2)
    assert all(status == 200 for _, status, _ in retried), retried[:3]
    assert writer_pid(own_server) != first_writer and not alive(first_writer)
    # Retried with their keys: each write exactly once, whether or not the dead writer had committed it.
    assert counts(conn, api_ledger)["transactions"] == 400
    verify_deep(conn, api_ledger)
    assert "starting a new one" in own_server.log()


def test_a_killed_server_leaves_no_writer_process_behind(own_server):
    writer = writer_pid(own_server)
    own_server.process.send_signal(signal.SIGKILL)
    own_server.process.wait(10)
    deadline = time.monotonic() + 10
    while alive(writer) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(writer)


@pytest.mark.parametrize("own_server", [("--workers", "2")], indirect=True)
def test_several_http_processes_write_through_one_writer_process(own_server, admin_key, conn, api_ledger):
    headers = {"Authorization": f"Bearer {token(own_server, admin_key)}"}
    spawned = [Path(f"/proc/{p}/cmdline").read_bytes() for p in _children(own_server.process.pid) if alive(p)]
    assert sum(b"spawn_main" in c for c in spawned) == 2 and writer_pid(own_server)  # 2 HTTP processes, 1 writer

    def one(n: int) -> int:
        with httpx.Client(headers=headers, timeout=60) as c:  # a connection each: both processes take some
            return c.post(f"{own_server.url}/v2/{api_ledger}/transactions",
                          json=tx(("world", f"n:{n % 5}", 1))).status_code

    with ThreadPoolExecutor(32) as pool:
        assert set(pool.map(one, range(128))) == {200}
    commits = conn.execute("SELECT count(DISTINCT date) FROM ledger_core.logs WHERE ledger = %s",
                           (api_ledger,)).fetchone()[0]
    assert commits < 128  # gathered across processes: one writer, fewer commits than requests
    verify_deep(conn, api_ledger)


def test_the_app_takes_the_hot_path_before_fastapi_routes():
    from ledger_api.app import HotPath, create_app
    from ledger_api.server import Settings

    app = create_app(Settings("postgresql://unused"))
    assert HotPath in [m.cls for m in app.user_middleware]  # so the comparison above compares two ways in
    assert HotPath.PATH.fullmatch("/v2/shop/transactions") and not HotPath.PATH.fullmatch("/v2/shop/transactions\n")
