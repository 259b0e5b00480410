"""A real API server (`ledgerctl serve` in its own process) on a loopback port, and keys to reach it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger_api import auth
from ledger_core.db import connect
from ledger_core.ledgers import create_ledger


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ApiServer:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(database_url: str, tmp: Path, *extra: str) -> ApiServer:
    port = free_port()
    log_path = tmp / f"serve-{port}.log"
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "ledger_core.cli", "serve", "--port", str(port), *extra],
            env={**os.environ, "LEDGER_DATABASE_URL": database_url}, stdout=out, stderr=subprocess.STDOUT,
        )
    server = ApiServer(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ledgerctl serve exited: {server.log()}")
        try:
            if httpx.get(f"{server.url}/_healthcheck", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"ledgerctl serve did not answer in 30 s: {server.log()}")


def stop(server: ApiServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(10)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="session")
def api(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    server = start_server(database_url, tmp_path_factory.mktemp("api"))
    try:
        yield server
    finally:
        stop(server)


@dataclass
class Key:
    client_id: str
    secret: str


def make_key(database_url: str, **limits: Any) -> Key:
    with connect(database_url) as conn:
        key, secret = auth.create_key(conn, f"test {uuid.uuid4().hex[:6]}", **limits)
    return Key(key.client_id, secret)


@pytest.fixture(scope="session")
def admin_key(database_url: str) -> Key:
    return make_key(database_url)


def token(api: ApiServer, key: Key, scope: str | None = None) -> str:
    form = {"grant_type": "client_credentials", "client_id": key.client_id, "client_secret": key.secret}
    if scope:
        form["scope"] = scope
    answer = httpx.post(f"{api.url}/oauth/token", data=form)
    assert answer.status_code == 200, answer.text
    return answer.json()["access_token"]


@pytest.fixture
def client(api: ApiServer, admin_key: Key) -> Iterator[httpx.Client]:
    """An HTTP client holding an admin token, for what the SDK does not cover."""
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {token(api, admin_key)}"}) as c:
        yield c


@pytest.fixture
def api_ledger(conn) -> str:
    name = "api" + uuid.uuid4().hex[:10]
    create_ledger(conn, name)
    return name


def body(response: httpx.Response) -> Any:
    return json.loads(response.content) if response.content else None
