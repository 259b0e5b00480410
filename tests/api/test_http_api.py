"""The HTTP API as a client sees it: security, hostile input, Formance's error shapes, and the OpenAPI document."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import pytest

from ledger_core import reads
from ledger_core.audit import verify_deep
from tests.api.conftest import make_key, start_server, stop, token
from tests.helpers import counts


def tx(*postings: tuple[str, str, int], **fields) -> dict:
    return {"postings": [{"source": s, "destination": d, "amount": a, "asset": "USD/2"} for s, d, a in postings],
            **fields}


def error_of(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"errorCode", "errorMessage"} and "\n" not in body["errorMessage"], body
    return response.status_code, body["errorCode"]


# -- the OpenAPI document -------------------------------------------------------------------------------------

def spec_paths(api) -> dict:
    return httpx.get(f"{api.url}/openapi.json").json()


def concrete(template: str, ledger: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: {"ledger": ledger, "key": "k"}.get(m.group(1), "1"), template)


def test_every_route_but_health_and_token_needs_a_bearer_token(api, api_ledger):
    spec = spec_paths(api)
    assert spec["components"]["securitySchemes"]["OAuth2"]["flows"]["clientCredentials"]["tokenUrl"] == "/oauth/token"
    checked = 0
    for template, operations in spec["paths"].items():
        for method, operation in operations.items():
            if template in ("/_healthcheck", "/oauth/token"):
                assert "security" not in operation
                continue
            assert operation["security"][0]["OAuth2"] in (["ledger:read"], ["ledger:write"]), template
            for prefix in ("", "/api/ledger"):  # the stack path the SDKs use serves the same routes
                url = api.url + prefix + concrete(template, api_ledger)
                for headers in ({}, {"Authorization": "Bearer lt1.e30.AAAA"}, {"Authorization": "Basic eDp5"}):
                    answer = httpx.request(method.upper(), url, json={}, headers=headers)
                    assert answer.status_code == 401, (method, url, headers, answer.text)
                    if method != "head":
                        assert error_of(answer) == (401, "UNAUTHORIZED")
                checked += 1
    assert checked >= 60
    assert httpx.get(f"{api.url}/_healthcheck").json() == {"status": "ok"}


def _validator(spec: dict, schema_name: str) -> jsonschema.Draft202012Validator:
    document = {"$ref": f"#/components/schemas/{schema_name}", "components": spec["components"]}
    return jsonschema.Draft202012Validator(document)


def test_answers_match_the_served_openapi_document(api, client, api_ledger):
    spec = spec_paths(api)
    made = client.post(f"/v2/{api_ledger}/transactions", json=tx(("world", "users:1", 10**30), reference="r1"))
    calls = [
        ("post", "/v2/{ledger}/transactions", made),
        ("get", "/v2/{ledger}/transactions/{tx_id}", client.get(f"/v2/{api_ledger}/transactions/1")),
        ("get", "/v2/{ledger}/transactions", client.get(f"/v2/{api_ledger}/transactions")),
        ("post", "/v2/{ledger}/transactions/{tx_id}/revert",
         client.post(f"/v2/{api_ledger}/transactions/1/revert", params={"force": "true"})),
        ("get", "/v2/{ledger}/accounts", client.get(f"/v2/{api_ledger}/accounts")),
        ("get", "/v2/{ledger}/accounts/{account}", client.get(f"/v2/{api_ledger}/accounts/users:1")),
        ("get", "/v2/{ledger}/aggregate/balances", client.get(f"/v2/{api_ledger}/aggregate/balances")),
        ("get", "/v2/{ledger}/volumes", client.get(f"/v2/{api_ledger}/volumes")),
        ("get", "/v2/{ledger}/logs", client.get(f"/v2/{api_ledger}/logs")),
        ("get", "/v2/{ledger}", client.get(f"/v2/{api_ledger}")),
        ("get", "/v2", client.get("/v2")),
        ("get", "/v2/{ledger}/stats", client.get(f"/v2/{api_ledger}/stats")),
        ("post", "/v2/{ledger}/_bulk", client.post(f"/v2/{api_ledger}/_bulk", json=[
            {"action": "CREATE_TRANSACTION", "data": tx(("users:1", "x", 1))},
            {"action": "CREATE_TRANSACTION", "data": tx(("nobody", "x", 1))}])),
        ("get", "/v2/{ledger}/transactions/{tx_id}", client.get(f"/v2/{api_ledger}/transactions/999")),
        ("post", "/v2/{ledger}/transactions", client.post(f"/v2/{api_ledger}/transactions", json={"postings": 1})),
    ]
    for method, template, answer in calls:
        responses = spec["paths"][template][method]["responses"]
        documented = responses.get(str(answer.status_code)) or responses[f"{str(answer.status_code)[0]}XX"]
        schema = documented["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        errors = list(_validator(spec, schema).iter_errors(answer.json()))
        assert not errors, (method, template, answer.status_code, errors[0].message)
    # And the other way: a body the document refuses, the server refuses too.
    assert not _validator(spec, "V2PostTransaction").is_valid({"postings": [], "script": {}})


# -- tokens and keys --------------------------------------------------------------------------------------------

def test_the_token_endpoint_speaks_oauth2_client_credentials(api, database_url):
    key = make_key(database_url)
    form = {"grant_type": "client_credentials", "client_id": key.client_id, "client_secret": key.secret}
    for path in ("/oauth/token", "/api/auth/oauth/token"):
        answer = httpx.post(api.url + path, data=form)
        assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
        assert answer.json()["token_type"] == "Bearer" and answer.json()["scope"] == "ledger:read ledger:write"
    basic = base64.b64encode(f"{key.client_id}:{key.secret}".encode()).decode()
    assert httpx.post(f"{api.url}/oauth/token", data={"grant_type": "client_credentials"},
                      headers={"Authorization": f"Basic {basic}"}).status_code == 200

    def refused(data: dict) -> tuple[int, str]:
        answer = httpx.post(f"{api.url}/oauth/token", data=data)
        return answer.status_code, answer.json()["error"]

    assert refused({**form, "client_secret": key.secret + "x"}) == (401, "invalid_client")
    assert refused({**form, "client_id": "lk_" + "0" * 24}) == (401, "invalid_client")
    assert refused({**form, "client_id": "x'; DROP TABLE ledger_api.keys; --"}) == (401, "invalid_client")
    assert refused({**form, "grant_type": "password"}) == (400, "unsupported_grant_type")
    assert refused({"grant_type": "client_credentials"}) == (400, "invalid_request")
    assert refused({**form, "scope": "ledger:admin"}) == (400, "invalid_scope")
    read_only = make_key(database_url, read_only=True)
    assert refused({"grant_type": "client_credentials", "client_id": read_only.client_id,
                    "client_secret": read_only.secret, "scope": "ledger:write"}) == (400, "invalid_scope")


def test_a_token_is_refused_once_expired_forged_or_its_key_revoked(api, database_url, conn, api_ledger):
    key = make_key(database_url)
    good = token(api, key)
    url = f"{api.url}/v2/{api_ledger}/transactions"
    assert httpx.get(url, headers={"Authorization": f"Bearer {good}"}).status_code == 200

    _, claims, _ = good.split(".")
    secret = bytes(conn.execute("SELECT secret FROM ledger_api.signing_secret").fetchone()[0])

    def signed(payload: dict) -> str:
        body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
        signature = hmac.new(secret, body.encode(), hashlib.sha256).digest()
        return f"lt1.{body}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"

    expired = signed({"sub": key.client_id, "scp": ["ledger:read"], "exp": int(time.time()) - 1})
    forged = f"lt1.{claims}.{base64.urlsafe_b64encode(b'x' * 32).rstrip(b'=').decode()}"
    for bad, why in ((expired, "expired"), (forged, "not one this server issued"), ("lt1.%%%.!!!", "not one"),
                     (good + "x", "not one")):
        answer = httpx.get(url, headers={"Authorization": f"Bearer {bad}"})
        assert error_of(answer) == (401, "UNAUTHORIZED") and why in answer.json()["errorMessage"]

    from ledger_api.auth import revoke_key
    revoke_key(conn, key.client_id)
    deadline = time.monotonic() + 15
    while httpx.get(url, headers={"Authorization": f"Bearer {good}"}).status_code == 200:
        assert time.monotonic() < deadline, "a revoked key's token still works after 15 s"
        time.sleep(0.5)
    answer = httpx.post(f"{api.url}/oauth/token", data={
        "grant_type": "client_credentials", "client_id": key.client_id, "client_secret": key.secret})
    assert answer.status_code == 401


def test_a_key_is_held_to_its_ledgers_and_to_reading(api, client, database_url, api_ledger, conn):
    other = api_ledger + "-other"
    client.post(f"/v2/{other}")
    scoped = make_key(database_url, ledgers=[api_ledger])
    reader = make_key(database_url, read_only=True)
    as_scoped = {"Authorization": f"Bearer {token(api, scoped)}"}
    as_reader = {"Authorization": f"Bearer {token(api, reader)}"}
    body = tx(("world", "a", 5))

    assert httpx.post(f"{api.url}/v2/{api_ledger}/transactions", json=body, headers=as_scoped).status_code == 200
    assert error_of(httpx.post(f"{api.url}/v2/{other}/transactions", json=body, headers=as_scoped)) == (
        403, "FORBIDDEN")
    assert error_of(httpx.get(f"{api.url}/v2/{other}/accounts", headers=as_scoped)) == (403, "FORBIDDEN")
    listed = httpx.get(f"{api.url}/v2", params={"pageSize": 1000}, headers=as_scoped).json()["cursor"]["data"]
    assert [x["name"] for x in listed] == [api_ledger]  # the other ledgers are not even named
    assert error_of(httpx.post(f"{api.url}/v2/_/exporters", json={"driver": "duckdb", "config": {}},
                               headers=as_scoped)) == (403, "FORBIDDEN")

    assert httpx.get(f"{api.url}/v2/{other}/accounts", headers=as_reader).status_code == 200
    for method, path in (("post", f"/v2/{api_ledger}/transactions"), ("post", f"/v2/{api_ledger}/_bulk"),
                         ("post", f"/v2/{api_ledger}/transactions/1/revert"), ("put", f"/v2/{api_ledger}/metadata"),
                         ("post", f"/v2/{api_ledger}-new")):
        assert error_of(httpx.request(method, api.url + path, json=body, headers=as_reader)) == (403, "FORBIDDEN")
    assert counts(conn, api_ledger)["transactions"] == 1


def test_keys_from_the_command_line_show_the_secret_once(database_url):
    from tests.integration.test_cli import run

    created = run(database_url, "keys", "create", "--name", "billing", "--ledger", "shop", "--read-only")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert key["ledgers"] == ["shop"] and key["scopes"] == ["ledger:read"] and len(key["clientSecret"]) >= 40
    listed = run(database_url, "keys", "list")
    assert key["clientId"] in listed.stdout and key["clientSecret"] not in listed.stdout
    assert "clientSecret" not in listed.stdout
    revoked = json.loads(run(database_url, "keys", "revoke", key["clientId"]).stdout)
    assert revoked["revokedAt"] is not None
    missing = run(database_url, "keys", "revoke", "lk_nope")
    assert missing.returncode == 1 and missing.stderr.startswith("error: NOT_FOUND: ")
    bad = run(database_url, "keys", "create", "--name", "x", "--ledger", "bad name\n")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "VALIDATION" in bad.stderr


# -- hostile input --------------------------------------------------------------------------------------------

HOSTILE = [
    (b'{"postings": [{"source": "world", "destination": "a", "amount": 1.5, "asset": "USD/2"}]}', "amount"),
    (b'{"postings": [{"source": "world", "destination": "a", "amount": 1e3, "asset": "USD/2"}]}', "amount"),
    (b'{"postings": [{"source": "world", "destination": "a", "amount": -1, "asset": "USD/2"}]}', "amount"),
    (b'{"postings": [{"source": "world", "destination": "a", "amount": ' + b"9" * 5000 + b', "asset": "USD/2"}]}',
     "too large"),
    (b'{"postings": [{"source": "world", "destination": "a\\u0000", "amount": 1, "asset": "USD/2"}]}', "destination"),
    (b'{"postings": [{"source": "world", "destination": "a", "amount": 1, "asset": "USD/2"}], '
     b'"metadata": {"k": "\\ud800"}}', "surrogate"),
    (b'{"postings": [{"source": "world", "destination": "a", "amount": 1, "asset": "USD/2"}], '
     b'"metadata": {"k": "\\u0000"}}', "NUL"),
    (b'{"postings": [{"source": "world", "destination": "a", "amount": 1, "asset": "USD/2"}], '
     b'"timestamp": "10000-01-01T00:00:00Z"}', "timestamp"),
    (b'{"postings": [{"source": "world", "destination": "a", "amount": 1, "asset": "USD/2"}], '
     b'"script": {"plain": "send [USD/2 1] (source = @world destination = @a)"}}', "script"),
    (b"[" * 100_000 + b"]" * 100_000, "nested"),
    (b"\xff\xfe not utf-8", "UTF-8"),
    (b'{"postings": [', "invalid JSON"),
    (b"", "required"),
]


@pytest.mark.parametrize(("raw", "named"), HOSTILE, ids=[f"h{i}" for i in range(len(HOSTILE))])
def test_hostile_bodies_get_one_clear_error_and_change_nothing(client, conn, api_ledger, raw, named):
    before = counts(conn, api_ledger)
    answer = client.post(f"/v2/{api_ledger}/transactions", content=raw, headers={"Content-Type": "application/json"})
    assert error_of(answer) == (400, "VALIDATION") and named in answer.json()["errorMessage"], answer.text
    assert counts(conn, api_ledger) == before


def test_hostile_paths_and_parameters(client, api_ledger):
    for path, status in ((f"/v2/{api_ledger}%0A/transactions", 400), ("/v2/a%00b/transactions", 400),
                         (f"/v2/{api_ledger}/transactions/abc", 400), (f"/v2/{api_ledger}/transactions/-1", 400),
                         (f"/v2/{api_ledger}/transactions/{'9' * 40}", 400),
                         (f"/v2/{api_ledger}/accounts/users:%0A", 400), ("/v2/nope/transactions", 404)):
        assert error_of(client.get(path))[0] == status, path
    for params in ({"pageSize": "0"}, {"pageSize": "1001"}, {"cursor": "!!"}, {"pit": "2020-01-01T00:00:00Z"},
                   {"sort": "id:asc"}):
        answer = client.get(f"/v2/{api_ledger}/transactions", params=params)
        assert error_of(answer) == (400, "VALIDATION"), params
    assert "pit" in client.get(f"/v2/{api_ledger}/accounts", params={"pit": "x"}).json()["errorMessage"]
    answer = client.get(f"/v2/{api_ledger}/transactions", params={"expand": "volumes"})
    assert answer.status_code == 200  # accepted: volumes are always there
    unsupported = client.request("GET", f"/v2/{api_ledger}/transactions", content=b'{"$match": {"metadata[k]": "v"}}')
    assert error_of(unsupported) == (400, "VALIDATION") and "not supported" in unsupported.json()["errorMessage"]
    nested = "{" + '"$and": [{' * 50 + '"$match": {"account": "a"}' + "}]" * 50 + "}"
    assert error_of(client.request("GET", f"/v2/{api_ledger}/transactions", content=nested.encode()))[0] == 400


def test_bodies_over_the_limit_are_refused_before_they_are_read(client, conn, api_ledger):
    big = b'{"postings": [], "metadata": {"k": "' + b"x" * (5 * 1024 * 1024) + b'"}}'
    answer = client.post(f"/v2/{api_ledger}/transactions", content=big, headers={"Content-Type": "application/json"})
    assert error_of(answer) == (413, "BODY_TOO_LARGE")

    def chunks():  # no Content-Length: the limit is counted as the body arrives
        for _ in range(6):
            yield b"x" * (1024 * 1024)

    answer = client.post(f"/v2/{api_ledger}/_bulk", content=chunks(), headers={"Content-Type": "application/json"})
    assert error_of(answer) == (413, "BODY_TOO_LARGE")
    assert counts(conn, api_ledger)["logs"] == 0


# -- Formance's answers ---------------------------------------------------------------------------------------

def test_errors_have_formance_codes_and_statuses(client, api_ledger):
    base = f"/v2/{api_ledger}"
    assert client.post(f"{base}/transactions", json=tx(("world", "a", 100), reference="r"),
                       headers={"Idempotency-Key": "k"}).status_code == 200
    cases = [
        (client.get("/v2/nope"), (404, "LEDGER_NOT_FOUND")),
        (client.get(f"{base}/transactions/42"), (404, "NOT_FOUND")),
        (client.get(f"{base}/accounts/nobody"), (404, "NOT_FOUND")),
        (client.post(f"{base}/transactions", json=tx(("a", "b", 101))), (400, "INSUFFICIENT_FUND")),
        (client.post(f"{base}/transactions", json=tx(("world", "b", 1), reference="r")), (409, "CONFLICT")),
        (client.post(f"{base}/transactions", json=tx(("world", "b", 2)), headers={"Idempotency-Key": "k"}),
         (409, "CONFLICT")),
        (client.post(f"{base}/transactions/1/revert"), (201, None)),
        (client.post(f"{base}/transactions/1/revert"), (400, "ALREADY_REVERT")),
        (client.post(base), (400, "LEDGER_ALREADY_EXISTS")),
        (client.post(f"{base}-b", json={"bucket": "other"}), (400, "VALIDATION")),
        (client.post(f"{base}/_bulk", json={"not": "a list"}), (400, "VALIDATION")),
        (client.get(f"{base}/pipelines/nope"), (404, "NOT_FOUND")),
        (client.post(f"{base}/logs/import", content=b"{}"), (501, "NOT_SUPPORTED")),
        (client.get(f"{base}/schemas"), (501, "NOT_SUPPORTED")),
        (client.get(f"{base}/no/such/route"), (404, "NOT_FOUND")),
        (client.patch(f"{base}/transactions"), (405, "METHOD_NOT_ALLOWED")),
    ]
    for answer, expected in cases:
        if expected[1] is None:
            assert answer.status_code == expected[0], answer.text
        else:
            assert error_of(answer) == expected, answer.text


def test_bulk_atomic_and_stop_at_first_failure(client, conn, api_ledger):
    base = f"/v2/{api_ledger}/_bulk"
    elements = [{"action": "CREATE_TRANSACTION", "data": tx(("world", "a", 10))},
                {"action": "CREATE_TRANSACTION", "data": tx(("b", "c", 1))},  # b holds nothing
                {"action": "CREATE_TRANSACTION", "data": tx(("world", "d", 10))}]
    atomic = client.post(base, params={"atomic": "true"}, json=elements)
    assert atomic.status_code == 400 and [r["responseType"] for r in atomic.json()["data"]] == ["ERROR"] * 3
    assert counts(conn, api_ledger)["transactions"] == 0
    stopped = client.post(base, json=elements)  # Formance's default: stop at the first failure
    assert [r["responseType"] for r in stopped.json()["data"]] == ["CREATE_TRANSACTION", "ERROR", "ERROR"]
    assert "not executed" in stopped.json()["data"][2]["errorDescription"]
    assert counts(conn, api_ledger)["transactions"] == 1
    carried_on = client.post(base, params={"continueOnFailure": "true"}, json=elements)
    assert [r["responseType"] for r in carried_on.json()["data"]] == ["CREATE_TRANSACTION", "ERROR",
                                                                      "CREATE_TRANSACTION"]
    assert counts(conn, api_ledger)["transactions"] == 3
    bad = client.post(base, json=[elements[0], {"action": "SEND_MONEY", "data": {}}])
    assert error_of(bad) == (400, "VALIDATION") and "element 1" in bad.json()["errorMessage"]
    assert counts(conn, api_ledger)["transactions"] == 3


# -- group commit over HTTP -----------------------------------------------------------------------------------

def test_concurrent_requests_are_gathered_and_each_keeps_its_outcome(api, client, conn, api_ledger):
    client.post(f"/v2/{api_ledger}/transactions", json=tx(("world", "hot", 1000)))
    headers = dict(client.headers)

    def one(n: int) -> tuple[int, dict]:
        # Half on new accounts; every fourth drains the hot account, so some are refused for funds.
        postings = [("world", f"new:{n}", 5)] if n % 2 else [("hot", f"users:{n % 7}", 60)]
        answer = httpx.post(f"{api.url}/v2/{api_ledger}/transactions", json=tx(*postings, reference=f"o{n}"),
                            headers=headers, timeout=60)
        return answer.status_code, answer.json()

    with ThreadPoolExecutor(64) as pool:
        outcomes = list(pool.map(one, range(128)))
    ok = [body for status, body in outcomes if status == 200]
    refused = [body for status, body in outcomes if status != 200]
    assert len(ok) == 64 + 1000 // 60 and {b["errorCode"] for b in refused} == {"INSUFFICIENT_FUND"}
    assert len({b["data"]["id"] for b in ok}) == len(ok)
    assert reads.get_account(conn, api_ledger, "hot").volumes["USD/2"].balance == 1000 % 60
    commits = conn.execute("SELECT count(DISTINCT date) FROM ledger_core.logs WHERE ledger = %s",
                           (api_ledger,)).fetchone()[0]
    assert commits < len(ok)  # gathered: fewer database commits than written requests
    verify_deep(conn, api_ledger)  # raises at the first table that differs from the replayed log


def test_without_group_commit_each_request_commits_alone(database_url, admin_key, conn, api_ledger, tmp_path):
    server = start_server(database_url, tmp_path, "--no-group-commit")
    try:
        headers = {"Authorization": f"Bearer {token(server, admin_key)}"}

        def one(n: int) -> int:
            return httpx.post(f"{server.url}/v2/{api_ledger}/transactions", json=tx(("world", f"n:{n}", 1)),
                              headers=headers, timeout=60).status_code

        with ThreadPoolExecutor(16) as pool:
            assert set(pool.map(one, range(32))) == {200}
        commits = conn.execute("SELECT count(DISTINCT date) FROM ledger_core.logs WHERE ledger = %s",
                               (api_ledger,)).fetchone()[0]
        assert commits == 32
    finally:
        stop(server)
    assert admin_key.secret not in server.log()


def test_the_server_log_holds_no_secret(api, admin_key):
    log = api.log()
    assert admin_key.secret not in log and "lt1." not in log and "client_secret" not in log
