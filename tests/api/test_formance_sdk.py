"""Formance's official Python SDK (formance-sdk-python, not ours) against `ledgerctl serve`.

The SDK validates every answer against Formance's own models, so a call that returns here returned Formance's
shape. It gets its tokens itself, through the client-credentials grant at its default token URL.

What the SDK cannot do here, and why:
- Exporter and pipeline calls: the SDK sends them without a token (their operations declare no OAuth scope, so
  its client-credentials hook stays off) and every route here needs one. They are called through the SDK with
  the token passed as a header (`http_headers`), which is what a Formance stack user behind a gateway does.
- Numscript (`script`), schemas, queries, buckets and log import/export are not features of this ledger: the
  server answers them with a clear 400 or 404 (tested in test_http_api.py), and they are not called here.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from formance_sdk_python import SDK
from formance_sdk_python.models import shared
from formance_sdk_python.models.ledger import ErrorsV2ErrorResponse

from tests.api.conftest import token

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def sdk(api, admin_key):
    with SDK(server_url=api.url, security=shared.Security(client_id=admin_key.client_id,
                                                          client_secret=admin_key.secret)) as client:
        yield client


EVERY = {"request_body": {}}  # a listing's filter: the SDK requires one, and an empty one matches everything


def posting(source: str, destination: str, amount: int, asset: str = "USD/2") -> dict:
    return {"source": source, "destination": destination, "amount": amount, "asset": asset}


def test_ledgers_transactions_and_reverts_through_the_sdk(sdk, api_ledger):
    ledger = f"{api_ledger}-sdk"
    v2 = sdk.ledger.v2
    v2.create_ledger(request={"ledger": ledger, "v2_create_ledger_request": {"metadata": {"team": "payments"}}})
    got = v2.get_ledger(request={"ledger": ledger}).v2_get_ledger_response.data
    assert (got.name, got.metadata, got.bucket) == (ledger, {"team": "payments"}, "_default")
    v2.update_ledger_metadata(request={"ledger": ledger, "request_body": {"region": "eu"}})
    v2.delete_ledger_metadata(request={"ledger": ledger, "key": "team"})
    assert v2.get_ledger(request={"ledger": ledger}).v2_get_ledger_response.data.metadata == {"region": "eu"}
    listed = v2.list_ledgers(request={"page_size": 1000, **EVERY}).v2_ledger_list_response.cursor.data
    assert ledger in [x.name for x in listed]

    big = 10**40  # exact through the SDK's ints and our JSON, both ways
    created = v2.create_transaction(request={
        "ledger": ledger, "idempotency_key": "order-1",
        "v2_post_transaction": {"postings": [posting("world", "users:1", big), posting("world", "users:2", 500)],
                                "metadata": {"order": "1"}, "reference": "order-1"},
    }).v2_create_transaction_response.data
    assert created.id == 1 and created.postings[0].amount == big
    assert created.post_commit_volumes["users:1"]["USD/2"].balance == big
    again = v2.create_transaction(request={
        "ledger": ledger, "idempotency_key": "order-1",
        "v2_post_transaction": {"postings": [posting("world", "users:1", big), posting("world", "users:2", 500)],
                                "metadata": {"order": "1"}, "reference": "order-1"},
    }).v2_create_transaction_response.data
    assert again.id == created.id  # the key replays the first result

    with pytest.raises(ErrorsV2ErrorResponse) as refused:
        v2.create_transaction(request={"ledger": ledger, "v2_post_transaction": {
            "postings": [posting("users:2", "shop", 501)], "metadata": {}}})
    assert refused.value.data.error_code == "INSUFFICIENT_FUND"
    assert refused.value.raw_response.status_code == 400
    dry = v2.create_transaction(request={"ledger": ledger, "dry_run": True, "v2_post_transaction": {
        "postings": [posting("users:2", "shop", 200)], "metadata": {}}}).v2_create_transaction_response.data
    assert dry.post_commit_volumes["users:2"]["USD/2"].balance == 300

    march = datetime(2026, 3, 10, 12, tzinfo=UTC)
    sale = v2.create_transaction(request={"ledger": ledger, "v2_post_transaction": {
        "postings": [posting("users:2", "shop", 200)], "metadata": {}, "timestamp": march,
    }}).v2_create_transaction_response.data
    refund = v2.revert_transaction(request={"ledger": ledger, "id": sale.id, "at_effective_date": True}
                                   ).v2_create_transaction_response.data
    assert refund.timestamp == march and refund.postings[0].source == "shop"
    fetched = v2.get_transaction(request={"ledger": ledger, "id": sale.id}).v2_get_transaction_response.data
    assert fetched.reverted and fetched.reverted_at is not None

    v2.add_metadata_on_transaction(request={"ledger": ledger, "id": 1, "request_body": {"checked": "yes"}})
    v2.delete_transaction_metadata(request={"ledger": ledger, "id": 1, "key": "order"})
    assert v2.get_transaction(request={"ledger": ledger, "id": 1}).v2_get_transaction_response.data.metadata == {
        "checked": "yes"}

    listed = v2.list_transactions(request={"ledger": ledger, "page_size": 2, **EVERY}
                                  ).v2_transactions_cursor_response.cursor
    assert [t.id for t in listed.data] == [3, 2] and listed.has_more  # the dry run wrote nothing
    rest = v2.list_transactions(request={"ledger": ledger, "page_size": 2, "cursor": listed.next, **EVERY}
                                ).v2_transactions_cursor_response.cursor
    assert [t.id for t in rest.data] == [1] and not rest.has_more
    only = v2.list_transactions(request={"ledger": ledger, "request_body": {"$match": {"reference": "order-1"}}}
                                ).v2_transactions_cursor_response.cursor.data
    assert [t.id for t in only] == [1]
    assert v2.count_transactions(request={"ledger": ledger, **EVERY}).headers["count"] == ["3"]


def test_accounts_balances_volumes_logs_and_bulk_through_the_sdk(sdk, api_ledger):
    v2 = sdk.ledger.v2
    before = datetime.now(UTC) - timedelta(days=1)
    v2.create_transaction(request={"ledger": api_ledger, "v2_post_transaction": {
        "postings": [posting("world", "users:1", 1000), posting("world", "users:2", 20, "EUR/2")],
        "metadata": {}, "timestamp": before}})
    v2.add_metadata_to_account(request={"ledger": api_ledger, "address": "users:1",
                                        "request_body": {"tier": "gold"}})
    account = v2.get_account(request={"ledger": api_ledger, "address": "users:1"}).v2_account_response.data
    assert account.metadata == {"tier": "gold"} and account.volumes["USD/2"].balance == 1000
    v2.delete_account_metadata(request={"ledger": api_ledger, "address": "users:1", "key": "tier"})

    accounts = v2.list_accounts(request={"ledger": api_ledger, "page_size": 2, **EVERY}
                                ).v2_accounts_cursor_response.cursor
    assert [a.address for a in accounts.data] == ["users:1", "users:2"] and accounts.has_more
    rest = v2.list_accounts(request={"ledger": api_ledger, "page_size": 2, "cursor": accounts.next, **EVERY}
                            ).v2_accounts_cursor_response.cursor
    assert [a.address for a in rest.data] == ["world"]

    bulk = v2.create_bulk(request={"ledger": api_ledger, "continue_on_failure": True, "request_body": [
        {"action": "CREATE_TRANSACTION", "data": {"postings": [posting("users:1", "shop", 300)], "metadata": {}}},
        {"action": "CREATE_TRANSACTION", "data": {"postings": [posting("users:2", "shop", 21, "EUR/2")],
                                                  "metadata": {}}},
        {"action": "ADD_METADATA", "data": {"targetType": "ACCOUNT", "targetId": "shop", "metadata": {"k": "v"}}},
    ]})
    # One refused element: Formance answers 400 with every element's own result; the others are written.
    assert bulk.status_code == 400
    results = bulk.v2_bulk_response.data
    assert [r.response_type for r in results] == ["CREATE_TRANSACTION", "ERROR", "ADD_METADATA"]
    assert results[1].error_code == "INSUFFICIENT_FUND" and results[0].data.postings[0].amount == 300
    totals = v2.get_balances_aggregated(request={"ledger": api_ledger, "request_body": {
        "$match": {"address": "users:"}}}).v2_aggregate_balances_response.data
    assert totals == {"USD/2": 700, "EUR/2": 20}
    then = v2.get_balances_aggregated(request={"ledger": api_ledger, "pit": before + timedelta(seconds=1),
                                               "request_body": {"$match": {"address": "users:"}}}
                                      ).v2_aggregate_balances_response.data
    assert then == {"USD/2": 1000, "EUR/2": 20}  # before the bulk, after the backdated credit

    volumes = v2.get_volumes_with_balances(request={"ledger": api_ledger, "page_size": 100, **EVERY}
                                           ).v2_volumes_with_balance_cursor_response.cursor.data
    assert {(v.account, v.asset): v.balance for v in volumes}[("shop", "USD/2")] == 300
    logs = v2.list_logs(request={"ledger": api_ledger, "page_size": 100, **EVERY}
                        ).v2_logs_cursor_response.cursor.data
    assert [entry.id for entry in logs] == [5, 4, 3, 2, 1]
    stats = v2.read_stats(request={"ledger": api_ledger}).v2_stats_response.data
    assert (stats.accounts, stats.transactions) == (4, 2)


def test_exporters_and_pipelines_through_the_sdk(sdk, api, admin_key, api_ledger, tmp_path):
    v2 = sdk.ledger.v2
    bearer = {"Authorization": f"Bearer {token(api, admin_key)}"}  # see the module's docstring
    exporter = v2.create_exporter(request={"driver": "duckdb", "config": {"path": str(tmp_path / "w.duckdb")}},
                                  http_headers=bearer).v2_create_exporter_response.data
    assert exporter.driver == "duckdb"
    pipeline = v2.create_pipeline(request={"ledger": api_ledger, "v2_create_pipeline_request": {
        "exporter_id": exporter.id}}, http_headers=bearer).v2_create_pipeline_response.data
    assert (pipeline.ledger, pipeline.exporter_id, pipeline.last_log_id) == (api_ledger, exporter.id, 0)
    v2.stop_pipeline(request={"ledger": api_ledger, "pipeline_id": pipeline.id}, http_headers=bearer)
    state = v2.get_pipeline_state(request={"ledger": api_ledger, "pipeline_id": pipeline.id},
                                  http_headers=bearer).v2_get_pipeline_state_response.data
    assert state.enabled is False
    v2.start_pipeline(request={"ledger": api_ledger, "pipeline_id": pipeline.id}, http_headers=bearer)
    v2.reset_pipeline(request={"ledger": api_ledger, "pipeline_id": pipeline.id}, http_headers=bearer)
    listed = v2.list_pipelines(request={"ledger": api_ledger}, http_headers=bearer
                               ).v2_pipelines_cursor_response.cursor.data
    assert [p.id for p in listed] == [pipeline.id] and listed[0].enabled
    with pytest.raises(ErrorsV2ErrorResponse) as in_use:
        v2.delete_exporter(request={"exporter_id": exporter.id}, http_headers=bearer)
    assert in_use.value.raw_response.status_code == 409
    v2.delete_pipeline(request={"ledger": api_ledger, "pipeline_id": pipeline.id}, http_headers=bearer)
    v2.delete_exporter(request={"exporter_id": exporter.id}, http_headers=bearer)
    without = v2.list_exporters(http_headers=bearer).v2_exporters_cursor_response.cursor.data
    assert exporter.id not in [e.id for e in without]
