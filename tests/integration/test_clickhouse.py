"""ClickHouse specifics on the real engine (chdb through clickhouse-connect)."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from ledger_pipelines import registry
from ledger_pipelines.errors import InvalidExporterConfig, TransientLoadError
from ledger_pipelines.loaders import clickhouse as clickhouse_loader
from ledger_pipelines.loaders import open_loader, validate_config
from ledger_pipelines.sync import sync_pipeline
from ledger_pipelines.tables import ACCOUNTS, BALANCES, DATA_TABLES, MOVES, POSTINGS, TRANSACTIONS
from tests.helpers import posting, send


@pytest.fixture
def clickhouse(conn, ledger, tmp_path):
    registry.migrate_pipelines(conn)
    config = {"chdb_path": str(tmp_path / "ch"), "database": "analytics"}
    exporter = registry.create_exporter(conn, "clickhouse", config)
    pipeline = registry.create_pipeline(conn, ledger, exporter.id)
    return config, pipeline


def test_amounts_of_ten_to_the_sixty_round_trip_exactly(conn, ledger, clickhouse):
    config, pipeline = clickhouse
    huge = 10**60 + 987654321
    send(conn, ledger, posting("world", "vault", huge, "MADEUPONE"), posting("vault", "ops", huge - 2, "MADEUPONE"))
    sync_pipeline(conn.info.dsn, pipeline.id, environ={})
    with open_loader("clickhouse", config, {}) as loader:
        balances = {r["account"]: int(r["balance"]) for r in loader.read_table(BALANCES, ledger).to_pylist()}
        assert balances == {"world": -huge, "vault": 2, "ops": huge - 2}
        assert [int(a) for a in loader.read_table(POSTINGS, ledger).column("amount").to_pylist()] == [huge, huge - 2]
        # Stored as Int256, compared in SQL without any float on the way.
        raw = loader.client.query(
            "SELECT toString(sum(balance)), toTypeName(balance) FROM analytics.balances FINAL "
            "WHERE ledger = {l:String} GROUP BY toTypeName(balance)", parameters={"l": ledger}).result_rows
        assert raw == [("0", "Int256")]
        moves = {(m["account"], m["is_source"]): int(m["post_commit_balance"])
                 for m in loader.read_table(MOVES, ledger).to_pylist()}
        assert moves[("vault", False)] == huge and moves[("vault", True)] == 2


def test_replayed_batches_leave_counts_unchanged_read_with_final_or_views(conn, ledger, clickhouse):
    config, pipeline = clickhouse
    for i in range(10):
        send(conn, ledger, posting("world", f"u:{i}", i + 1), metadata={"i": str(i)})
    sync_pipeline(conn.info.dsn, pipeline.id, environ={})

    def counts(loader, suffix=""):
        return {t.name: loader.client.query(
            f"SELECT count() FROM analytics.{t.name}{suffix} WHERE ledger = {{l:String}}",
            parameters={"l": ledger}).result_rows[0][0] for t in DATA_TABLES}

    with open_loader("clickhouse", config, {}) as loader:
        before = {t.name: loader.read_table(t, ledger).num_rows for t in DATA_TABLES}
        assert before["logs"] == 10 and before["postings"] == 10
    for _ in range(2):  # replay everything twice
        registry.reset_pipeline(conn, pipeline.id, 0)
        sync_pipeline(conn.info.dsn, pipeline.id, environ={}, batch_size=3)
    with open_loader("clickhouse", config, {}) as loader:
        assert {t.name: loader.read_table(t, ledger).num_rows for t in DATA_TABLES} == before  # FINAL
        assert counts(loader, "_final") == before  # the views analysts are told to use
        raw = counts(loader)  # a plain SELECT may still see unmerged replays: what the docs warn about
        assert all(raw[name] >= before[name] for name in before)
        loader.client.command("OPTIMIZE TABLE analytics.logs FINAL")
        assert counts(loader)["logs"] == before["logs"]  # merged: the duplicates are gone for good


@pytest.mark.parametrize("parameter_bytes", [clickhouse_loader.MAX_KEYS_PARAMETER_BYTES, 8])
def test_current_rows_are_found_by_keys_holding_any_text(tmp_path, monkeypatch, parameter_bytes):
    """A fold's read of the current rows sends its keys as TSV parameters: keys holding TSV's escapes and the
    parameter's own (tab, line breaks, backslashes, quotes, NUL, a placeholder's spelling) find their rows, and
    only theirs, in one parameter or split over many; so do numeric keys."""
    monkeypatch.setattr(clickhouse_loader, "MAX_KEYS_PARAMETER_BYTES", parameter_bytes)
    hostile = ["a\tb", "c\nd", "e\\f", "e\\\\f", "\\t", "g'h", 'i"j', "k\x00l", "m\\nn", "\r", "é☃😀",
               "{keys:String}", "$keys$", ""]
    with open_loader("clickhouse", {"chdb_path": str(tmp_path / "ch"), "database": "analytics"}, {}) as loader:
        loader.ensure_schema("p")
        at = datetime(2024, 3, 1, tzinfo=UTC)
        accounts = [{"ledger": "l", "address": address, "metadata": "{}", "first_usage": at, "last_update": at,
                     "log_id": i + 1} for i, address in enumerate([*hostile, "a", "b", "e\\\\\\f"])]
        loader.merge(ACCOUNTS, pa.Table.from_pylist(accounts, schema=ACCOUNTS.arrow_schema))
        found = loader.fetch_current(ACCOUNTS, "l", hostile)
        assert sorted(found.column("address").to_pylist()) == sorted(hostile)
        assert found.column("log_id").to_pylist() == [hostile.index(a) + 1 for a in found.column("address").to_pylist()]
        assert loader.fetch_current(ACCOUNTS, "other ledger", hostile).num_rows == 0
        assert loader.fetch_current(ACCOUNTS, "l", []).num_rows == 0
        transactions = [{"ledger": "l", "id": i, "timestamp": at, "inserted_at": at, "metadata": "{}", "log_id": i}
                        for i in (1, 2, 2**62)]
        loader.merge(TRANSACTIONS, pa.Table.from_pylist(transactions, schema=TRANSACTIONS.arrow_schema))
        assert sorted(loader.fetch_current(TRANSACTIONS, "l", [2**62, 1, 3]).column("id").to_pylist()) == [1, 2**62]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "give 'host'"),
        ({"host": "ch.internal", "chdb_path": "/tmp/x"}, "not both"),
        ({"host": "ch.internal", "port": 70000}, "between 1 and 65535"),
        ({"host": "ch.internal", "port": "8123"}, "must be an integer"),
        ({"host": "ch.internal", "colour": "blue"}, "unknown setting"),
        ({"host": "ch.internal", "password": "hunter2"}, "is a secret"),
        ({"host": "ch.internal", "secure": "yes"}, "true or false"),
        ({"chdb_path": "/tmp/x", "password": {"env": "P"}}, "for a server"),
    ],
)
def test_config_errors_are_specific(config, message):
    with pytest.raises(InvalidExporterConfig, match=message):
        validate_config("clickhouse", config)


def test_server_config_is_accepted_and_an_unreachable_server_is_transient():
    config = {"host": "127.0.0.1", "port": 1, "username": "loader", "password": {"env": "CH_PASSWORD"}}
    assert validate_config("clickhouse", config)["database"] == "ledger"
    with pytest.raises(TransientLoadError):
        open_loader("clickhouse", config, {"CH_PASSWORD": "x"})
