"""Property: whatever hostile string or structure a user gives any command, `ledgerctl` answers with one line
`error: CODE: message` on stderr, a non-zero exit, no traceback, and the database exactly as it was.

Every generated invocation carries at least one bad value (the rest is valid), so none may succeed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger_core.cli import cli
from ledger_core.db import connect
from ledger_core.ledgers import create_ledger
from ledger_pipelines import registry
from tests.helpers import send

NUL_OR_SURROGATE = st.sampled_from(["\x00", "a\x00b", "\ud800", "ok\udfff", "\udcff"])
BAD_NAMES = NUL_OR_SURROGATE | st.sampled_from(["shop\n", "shop\r\n", "", "a" * 64, "bad name", "sh\u00f6p", " "])
BAD_ADDRESSES = NUL_OR_SURROGATE | st.sampled_from(["world\n", "users:", ":x", "a::b", "", "x" * 1100, "a b"])
BAD_ASSETS = NUL_OR_SURROGATE | st.sampled_from(["USD\n", "usd", "USD/", "", "USD/2/2", "\uff35SD"])
HUGE = "__HUGE__"  # replaced by 5,000 digits after json.dumps, which cannot print such an int itself
BAD_AMOUNTS = st.sampled_from([-1, 1.5, "1.5", "1e3", True, None, "", " 1", 10**76, "9" * 77, HUGE, [], {}])
BAD_STAMPS = NUL_OR_SURROGATE | st.sampled_from([
    "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "2024-01-01T00:00:00Z\n", "2024-01-01",
    "2024-01-01T00:00:00.1234567Z", "2024-13-01T00:00:00Z", 5])
NON_OBJECTS = st.sampled_from([[], "text", 3, None, True, [{"source": "world"}]])
DEEP = "[" * 1000 + "]" * 1000
POSTING = {"source": "world", "destination": "users:1", "amount": 5, "asset": "USD/2"}


def _with(base: dict, key: str, values: st.SearchStrategy) -> st.SearchStrategy:
    return values.map(lambda v: {**base, key: v})


def _text(value: object, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only).replace(json.dumps(HUGE), "9" * 5000)


bad_postings = st.one_of(_with(POSTING, "source", BAD_ADDRESSES), _with(POSTING, "destination", BAD_ADDRESSES),
                         _with(POSTING, "asset", BAD_ASSETS), _with(POSTING, "amount", BAD_AMOUNTS), NON_OBJECTS,
                         _with(POSTING, "allowOverdraft", st.sampled_from(["yes", 1, None])))
metadata_bad = st.one_of(st.dictionaries(NUL_OR_SURROGATE, st.just("v"), min_size=1),
                         st.dictionaries(st.just("k"), NUL_OR_SURROGATE | st.sampled_from([1, None, [], {}]),
                                         min_size=1), NON_OBJECTS.filter(lambda v: v is not None))
tx_bodies = st.one_of(
    bad_postings.map(lambda p: {"postings": [POSTING, p]}),
    metadata_bad.map(lambda m: {"postings": [POSTING], "metadata": m}),
    (NUL_OR_SURROGATE | st.sampled_from(["", "r" * 1025, 5])).map(lambda r: {"postings": [POSTING], "reference": r}),
    BAD_STAMPS.map(lambda t: {"postings": [POSTING], "timestamp": t}),
    st.one_of(BAD_ADDRESSES.map(lambda a: {a: {"k": "v"}}), metadata_bad.map(lambda m: {"users:1": m}))
    .map(lambda am: {"postings": [POSTING], "accountMetadata": am}),
    st.sampled_from([{"postings": []}, {"postings": "x"}, {"unknown": 1, "postings": [POSTING]}]),
    NON_OBJECTS,
)
json_text = st.one_of(
    st.tuples(tx_bodies, st.booleans()).map(lambda pair: _text(*pair)),
    st.sampled_from([DEEP, "9" * 5000, '{"postings": [' + DEEP + "]}", "{", "", "nul\x00", "\ud800", "1.5"]),
)


@st.composite
def invocations(draw: st.DrawFn) -> tuple[list[str], bytes | None, bytes | None]:
    """(arguments, bytes of the --file/@file if any, stdin) for one command with one bad value at least."""
    ledger, pipeline, exporter = "{ledger}", "{pipeline}", "{exporter}"
    file_bytes = draw(st.sampled_from([b"\xff\xfe not utf-8", b'{"postings": []}\n\x80', DEEP.encode(),
                                       json.dumps({"action": "ADD_METADATA", "data": [1]}).encode(),
                                       json.dumps({"action": "REVERT_TRANSACTION", "data": {"id": "x\u0000"}}).encode(),
                                       json.dumps({"action": "NOPE", "data": {}}).encode(),
                                       (json.dumps({"postings": [POSTING]}) + "\n" + '{"postings": [{}]}').encode()]))
    body = draw(json_text)
    choice = draw(st.sampled_from([
        "ledgers create", "ledgers create meta", "tx create", "tx create key", "tx create file", "tx bulk",
        "tx bulk missing", "tx bulk folder", "tx bulk stdin", "tx revert", "accounts set-metadata",
        "accounts set-metadata address", "tx set-metadata", "accounts delete-metadata", "exporters create",
        "exporters create driver", "pipelines create", "pipelines reset", "pipelines get", "balances", "tx list",
        "accounts get", "logs verify"]))
    bad_name, bad_text = draw(BAD_NAMES), draw(NUL_OR_SURROGATE)
    args: list[str]
    stdin = None
    match choice:
        case "ledgers create":
            args = ["ledgers", "create", bad_name]
        case "ledgers create meta":
            args = ["ledgers", "create", "fine-name", "--metadata", draw(st.sampled_from(
                [json.dumps({"k": bad_text}), json.dumps({bad_text: "v"}), DEEP, "[1]", '{"k": 1}']))]
        case "tx create":
            args = ["tx", "create", draw(st.sampled_from([ledger, bad_name])), "--json", body]
        case "tx create key":
            args = ["tx", "create", ledger, "--json", json.dumps({"postings": [POSTING]}), "--idempotency-key",
                    draw(NUL_OR_SURROGATE | st.just("k" * 257))]
        case "tx create file":
            args = ["tx", "create", ledger, "--json", "@{file}"]
        case "tx bulk":
            args = ["tx", "bulk", ledger, "--file", "{file}"]
        case "tx bulk missing":
            args = ["tx", "bulk", ledger, "--file", "/no/such/file.ndjson"]
        case "tx bulk folder":
            args = ["tx", "bulk", ledger, "--file", "/tmp"]
        case "tx bulk stdin":
            args, stdin = ["tx", "bulk", ledger, "--file", "-"], file_bytes
        case "tx revert":
            args = ["tx", "revert", draw(st.sampled_from([ledger, bad_name])),
                    draw(st.sampled_from(["abc", "-1", "9" * 30, "1.5", "999"]))]
        case "accounts set-metadata":
            args = ["accounts", "set-metadata", ledger, "users:1", "--json", draw(st.one_of(
                metadata_bad.map(json.dumps), st.sampled_from([DEEP, "{}", "[]"])))]
        case "accounts set-metadata address":
            args = ["accounts", "set-metadata", ledger, draw(BAD_ADDRESSES), "--json", '{"k": "v"}']
        case "tx set-metadata":
            args = ["tx", "set-metadata", ledger, draw(st.sampled_from(["1", "0", "77"])), "--json",
                    json.dumps({"k": bad_text})]
        case "accounts delete-metadata":
            args = ["accounts", "delete-metadata", ledger, draw(BAD_ADDRESSES | st.just("users:1")), bad_text]
        case "exporters create":
            args = ["exporters", "create", "--driver", draw(st.sampled_from(["duckdb", "postgres", "clickhouse"])),
                    "--config", draw(st.sampled_from([
                        json.dumps({"path": "/etc/passwd/w.duckdb"}), json.dumps({"path": "/proc/w.duckdb"}),
                        json.dumps({"path": bad_text}), json.dumps({"dsn": "postgresql://u:secret@h/db"}),
                        json.dumps({"dsn": "host=h password=x dbname=d"}),
                        json.dumps({"dsn": "postgresql://h/db?sslpassword=x"}),
                        json.dumps({"host": "u:pw@h", "password": {"env": "X"}}),
                        json.dumps({"host": "h", "password": "inline"}),
                        json.dumps({"host": "h", "password": {"env": "BAD NAME"}}),
                        json.dumps({"chdb_path": "/proc/ch"}), json.dumps({"path": "w.duckdb", "schema": "s\n"}),
                        json.dumps({"path": "w.duckdb", "schema": bad_text}), DEEP, "[]",
                        json.dumps({"dsn": "garbage ===", "schema": "x"})]))]
        case "exporters create driver":
            args = ["exporters", "create", "--driver", draw(BAD_NAMES), "--config", "{}"]
        case "pipelines create":
            args = ["pipelines", "create", draw(st.sampled_from([ledger, bad_name])), "--exporter",
                    draw(st.sampled_from([exporter, bad_text, "000000000000"]))]
        case "pipelines reset":
            args = ["pipelines", "reset", draw(st.sampled_from([pipeline, bad_text, "x\n"])), "--to-log-id",
                    draw(st.sampled_from(["2", "-1", "9" * 30, "x"]))]
        case "pipelines get":
            args = ["pipelines", "get", draw(NUL_OR_SURROGATE | st.sampled_from(["", "x" * 500]))]
        case "balances":
            args = ["balances", ledger, draw(st.sampled_from(["--effective-at", "--address", "--asset"])), bad_text]
        case "tx list":
            args = ["tx", "list", ledger, draw(st.sampled_from(["--reference", "--cursor", "--start"])), bad_text]
        case "accounts get":
            args = ["accounts", "get", draw(st.sampled_from([ledger, bad_name])), draw(BAD_ADDRESSES)]
        case _:
            args = ["logs", "verify", bad_name]
    uses_file = any("{file}" in a for a in args)
    return args, (file_bytes if uses_file else None), stdin


def _snapshot(conn) -> tuple:
    return conn.execute(
        """SELECT (SELECT count(*) FROM ledger_core.ledgers), (SELECT count(*) FROM ledger_core.logs),
                  (SELECT count(*) FROM ledger_core.transactions), (SELECT count(*) FROM ledger_core.accounts),
                  (SELECT md5(coalesce(string_agg(a::text, ',' ORDER BY address), '')) FROM ledger_core.accounts a),
                  (SELECT count(*) FROM ledger_core.volumes), (SELECT count(*) FROM ledger_pipelines.exporters),
                  (SELECT md5(coalesce(string_agg(p::text, ',' ORDER BY id), '')) FROM ledger_pipelines.pipelines p)"""
    ).fetchone()


@pytest.fixture
def world(fresh_db_url, tmp_path):
    with connect(fresh_db_url) as conn:
        create_ledger(conn, "shop")
        send(conn, "shop", {"source": "world", "destination": "users:1", "amount": 5, "asset": "USD/2"})
        exporter = registry.create_exporter(conn, "duckdb", {"path": str(tmp_path / "w.duckdb")})
        pipeline = registry.create_pipeline(conn, "shop", exporter.id)
    return {"ledger": "shop", "exporter": exporter.id, "pipeline": pipeline.id}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(invocation=invocations())
def test_hostile_input_is_one_error_line_and_changes_nothing(fresh_db_url, world, tmp_path, invocation):
    args, file_bytes, stdin = invocation
    path = tmp_path / "input.json"
    if file_bytes is not None:
        path.write_bytes(file_bytes)
    for name, value in {**world, "file": str(path)}.items():
        args = [a.replace("{" + name + "}", value) for a in args]
    with connect(fresh_db_url) as conn:
        before = _snapshot(conn)
        result = CliRunner().invoke(cli, args, input=stdin, env={"LEDGER_DATABASE_URL": fresh_db_url})
        after = _snapshot(conn)
    lines = result.stderr.splitlines()
    assert result.exit_code in (1, 2), (args, result.exit_code, result.stdout, result.stderr, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.stderr)
    assert not lines[0].startswith("error: INTERNAL"), (args, result.stderr)
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert after == before, args


@pytest.mark.parametrize(("args", "content", "code"), [
    (["tx", "bulk", "{ledger}", "--file", "{file}"], b"\xff\xfe", "VALIDATION"),
    (["tx", "bulk", "{ledger}", "--file", "/nonexistent"], None, "VALIDATION"),
    (["tx", "create", "{ledger}", "--json", "@/tmp"], None, "VALIDATION"),
    (["tx", "create", "{ledger}", "--json", "[" * 1000], None, "VALIDATION"),
    (["tx", "create", "{ledger}", "--nope"], None, "USAGE"),
    (["tx", "revert", "{ledger}", "abc"], None, "USAGE"),
    (["ledgers"], None, "USAGE"),
])
def test_real_processes_print_one_line(database_url, ledger, tmp_path, args, content, code):
    path = tmp_path / "input"
    if content is not None:
        path.write_bytes(content)
    argv = [a.format(ledger=ledger, file=path) for a in args]
    result = subprocess.run([sys.executable, "-m", "ledger_core.cli", *argv], capture_output=True,
                            env={**os.environ, "LEDGER_DATABASE_URL": database_url}, stdin=subprocess.DEVNULL,
                            timeout=120)
    stderr = result.stderr.decode()
    assert result.returncode == (2 if code == "USAGE" else 1)
    assert stderr.count("\n") == 1 and stderr.startswith(f"error: {code}: "), stderr
