"""`make dev` serves the UI (through `dg dev`) and stops cleanly, leaving no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.webserver import ROOT, free_port


def _session_processes(session: int) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if int(stat[3]) == session and stat[0] != "Z":
                found.append(cmdline)
    return found


@pytest.mark.parametrize("stop", ["SIGTERM to make", "Ctrl-C"])
def test_make_dev_serves_and_stops_cleanly(dagster_db_url, stop):
    port = free_port()
    env = {**os.environ, "LEDGER_DATABASE_URL": dagster_db_url, "DAGSTER_PORT": str(port)}
    dev = subprocess.Popen(["make", "--no-print-directory", "dev"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert dev.poll() is None, dev.stdout.read().decode()[-3000:]  # type: ignore[union-attr]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=3) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "make dev never served the UI"
            time.sleep(1)
        if stop == "Ctrl-C":
            os.killpg(dev.pid, signal.SIGINT)  # the terminal sends it to the whole foreground group
        else:
            os.kill(dev.pid, signal.SIGTERM)
        dev.wait(timeout=60)
        deadline = time.monotonic() + 30
        while _session_processes(dev.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _session_processes(dev.pid) == []
        output = dev.stdout.read().decode()  # type: ignore[union-attr]
        assert "SupersessionWarning" not in output and "does not match the virtual environment" not in output
    finally:
        if dev.poll() is None or _session_processes(dev.pid):
            os.killpg(dev.pid, signal.SIGKILL)
