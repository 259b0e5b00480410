"""`ledgerctl` as a user runs it: JSON on stdout, exit 0; one error line on stderr, exit non-zero."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from ledger_core.cli import cli


def run(database_url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "LEDGER_DATABASE_URL": database_url}
    stdin_args = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
    return subprocess.run([sys.executable, "-m", "ledger_core.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120, **stdin_args)


def _all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _all_commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


@pytest.mark.parametrize("path", _all_commands(cli), ids=lambda p: " ".join(p) or "ledgerctl")
def test_every_command_has_help(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_cli_round_trip(database_url, ledger):
    body = json.dumps({"postings": [{"source": "world", "destination": "users:001", "amount": "10" + "0" * 40,
                                     "asset": "USD/2"}], "reference": "cli-1"})
    created = run(database_url, "tx", "create", ledger, "--json", body, "--idempotency-key", "k")
    assert created.returncode == 0, created.stderr
    tx = json.loads(created.stdout)
    assert tx["postings"][0]["amount"] == 10**41
    assert json.loads(run(database_url, "tx", "get", ledger, "1").stdout)["reference"] == "cli-1"
    listed = json.loads(run(database_url, "tx", "list", ledger, "--account", "users:").stdout)
    assert [t["id"] for t in listed["cursor"]["data"]] == [1]
    balances = json.loads(run(database_url, "balances", ledger, "--address", "users:001").stdout)
    assert balances["data"][0]["balance"] == 10**41
    verify = run(database_url, "logs", "verify", ledger)
    assert verify.returncode == 0 and json.loads(verify.stdout)["valid"] is True


def test_a_revert_at_the_effective_date_takes_the_originals_time_and_its_key_says_so(database_url, ledger):
    body = json.dumps({"postings": [{"source": "world", "destination": "users:1", "amount": 70, "asset": "USD/2"}],
                       "timestamp": "2025-03-14T09:30:00Z"})
    assert run(database_url, "tx", "create", ledger, "--json", body).returncode == 0
    reverted = run(database_url, "tx", "revert", ledger, "1", "--at-effective-date", "--idempotency-key", "r1")
    assert reverted.returncode == 0, reverted.stderr
    reversal = json.loads(reverted.stdout)
    assert reversal["timestamp"] == "2025-03-14T09:30:00Z" and reversal["insertedAt"] != reversal["timestamp"]
    march = json.loads(run(database_url, "balances", ledger, "--address", "users:1",
                           "--effective-at", "2025-03-31T00:00:00Z").stdout)
    assert march["data"][0]["balance"] == 0  # refunded in March, not on the day the refund was made
    # The same key without the option is another request: refused, nothing written.
    again = run(database_url, "tx", "revert", ledger, "1", "--idempotency-key", "r1")
    assert again.returncode == 1 and again.stderr.startswith("error: CONFLICT")
    replayed = json.loads(run(database_url, "tx", "revert", ledger, "1", "--at-effective-date", "--idempotency-key",
                              "r1").stdout)
    assert (replayed["id"], replayed["timestamp"]) == (reversal["id"], reversal["timestamp"])
    bulk = json.dumps({"action": "REVERT_TRANSACTION", "data": {"id": 2, "atEffectiveDate": "yes"}})
    refused = run(database_url, "tx", "bulk", ledger, "--file", "-", stdin=bulk + "\n")
    assert refused.returncode == 1 and "atEffectiveDate" in refused.stderr and "true or false" in refused.stderr


def test_cli_bulk_from_ndjson(database_url, ledger, tmp_path):
    lines = [json.dumps({"postings": [{"source": "world", "destination": f"u:{i}", "amount": i + 1,
                                       "asset": "EUR/2"}]}) for i in range(50)]
    lines.append(json.dumps({"action": "ADD_METADATA", "ik": "m1",
                             "data": {"targetType": "ACCOUNT", "targetId": "u:1", "metadata": {"k": "v"}}}))
    path = tmp_path / "bulk.ndjson"
    path.write_text("\n".join(lines) + "\n")
    result = run(database_url, "tx", "bulk", ledger, "--file", str(path))
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == 51
    account = json.loads(run(database_url, "accounts", "get", ledger, "u:1").stdout)
    assert account["metadata"] == {"k": "v"} and account["volumes"]["EUR/2"]["balance"] == 2


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("tx", "create", "{ledger}", "--json", '{"postings": [{"source": "a", "destination": "b", '
          '"amount": 1, "asset": "USD"}]}'), "INSUFFICIENT_FUND"),
        (("tx", "create", "{ledger}", "--json", '{"postings": [{"source": "world", "destination": "b", '
          '"amount": 1.0, "asset": "USD"}]}'), "VALIDATION"),
        (("tx", "create", "{ledger}", "--json", "{not json"), "VALIDATION"),
        (("tx", "get", "{ledger}", "77"), "NOT_FOUND"),
        (("tx", "revert", "{ledger}", "77"), "NOT_FOUND"),
        (("ledgers", "create", "bad name!"), "VALIDATION"),
        (("balances", "missing-ledger"), "LEDGER_NOT_FOUND"),
    ],
)
def test_cli_errors_are_one_line_and_non_zero(database_url, ledger, args, code):
    result = run(database_url, *[a.replace("{ledger}", ledger) for a in args])
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {code}: "), result.stderr


def test_cli_unreachable_database_is_one_line():
    result = run("postgresql://nobody@127.0.0.1:1/none", "ledgers", "list")
    assert result.returncode == 1
    assert result.stderr.startswith("error: DATABASE: ") and len(result.stderr.strip().splitlines()) == 1
