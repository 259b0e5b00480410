"""The ledger core against a real PostgreSQL: shapes, idempotency, references, overdraft, reverts, metadata."""

from __future__ import annotations

import threading

import psycopg
import pytest

from ledger_core import reads
from ledger_core.errors import (
    AlreadyReverted,
    IdempotencyConflict,
    InsufficientFunds,
    LedgerNotFound,
    ReferenceConflict,
    TransactionNotFound,
    ValidationError,
)
from ledger_core.models import LogType
from ledger_core.requests import DeleteMetadata, RevertTransaction, SetMetadata
from ledger_core.writer import write
from tests.helpers import counts, new_tx, posting, send

REFERENCE_EXAMPLE = {
    "id": 1,
    "postings": [
        {"source": "world", "destination": "users:001", "amount": 100, "asset": "USD"},
        {"source": "users:001", "destination": "payments:001", "amount": 100, "asset": "USD"},
    ],
    "metadata": {"category": "payment", "reference": "tx_001"},
    "timestamp": "2024-01-15T10:30:00Z",
    "reference": "payment_001",
    "reverted": False,
    "preCommitVolumes": {
        "world": {"USD": {"input": 0, "output": 0, "balance": 0}},
        "users:001": {"USD": {"input": 0, "output": 0, "balance": 0}},
        "payments:001": {"USD": {"input": 0, "output": 0, "balance": 0}},
    },
    "postCommitVolumes": {
        "users:001": {"USD": {"input": 100, "output": 100, "balance": 0}},
        "payments:001": {"USD": {"input": 100, "output": 0, "balance": 100}},
        "world": {"USD": {"input": 0, "output": 100, "balance": -100}},
    },
}


def test_reference_example_is_reproduced_exactly(conn, ledger):
    result = send(
        conn, ledger,
        posting("world", "users:001", 100, "USD"), posting("users:001", "payments:001", 100, "USD"),
        metadata={"category": "payment", "reference": "tx_001"}, timestamp="2024-01-15T10:30:00Z",
        reference="payment_001",
    )
    body = result.to_json()
    inserted_at = body.pop("insertedAt")
    assert body == REFERENCE_EXAMPLE
    assert inserted_at.endswith("Z")
    assert list(body)[:4] == ["id", "postings", "metadata", "timestamp"]
    # Reading it back gives the same object, and the log holds it with the same volumes.
    assert reads.get_transaction(conn, ledger, 1).to_json() == {**REFERENCE_EXAMPLE, "insertedAt": inserted_at}
    [log] = reads.list_logs(conn, ledger)
    assert log.type is LogType.NEW_TRANSACTION and log.id == 1
    assert log.data["transaction"]["postCommitVolumes"] == REFERENCE_EXAMPLE["postCommitVolumes"]


def test_many_postings_many_assets_and_huge_amounts_are_exact(conn, ledger):
    huge = 10**40 + 7
    bigger = 3 * 10**75 + 1
    send(conn, ledger, posting("world", "a", huge, "ETH/18"), posting("world", "b", str(bigger), "MADEUPONE"),
         posting("a", "b", huge - 1, "ETH/18"))
    balances = {(b.address, b.asset): b.volumes.balance for b in reads.balances(conn, ledger)}
    assert balances == {("a", "ETH/18"): 1, ("b", "ETH/18"): huge - 1, ("b", "MADEUPONE"): bigger,
                        ("world", "ETH/18"): -huge, ("world", "MADEUPONE"): -bigger}
    account = reads.get_account(conn, ledger, "b")
    assert account.volumes["MADEUPONE"].input == bigger


def test_unknown_ledger_is_refused(conn):
    with pytest.raises(LedgerNotFound):
        send(conn, "no-such-ledger", posting("world", "a", 1))


def test_a_refusal_inside_the_pipelined_write_leaves_the_connection_usable(conn, ledger, caplog):
    # An unknown ledger surfaces in the pipelined locks as the volumes' foreign key (new accounts) or as no
    # ledger row (metadata only); the next write on the same connection must not see the aborted one, and
    # psycopg must have nothing to log (a CLI shows one clear line on stderr, nothing more).
    with pytest.raises(LedgerNotFound):
        send(conn, "no-such-ledger", posting("world", "new:account", 1))
    with pytest.raises(LedgerNotFound):
        write(conn, "no-such-ledger", [SetMetadata.build("ACCOUNT", "a", {"k": "v"})])
    with pytest.raises(InsufficientFunds):
        send(conn, ledger, posting("empty", "b", 1))
    result = send(conn, ledger, posting("world", "new:account", 1))
    assert result.log.id == 1 and counts(conn, ledger)["moves"] == 2
    assert not [r for r in caplog.records if r.name.startswith("psycopg")]


def test_a_serialization_failure_inside_the_pipeline_is_retried(conn, ledger, monkeypatch):
    # The database's own error (SQLSTATE 40001), raised among the batch's pipelined locks on the first attempt
    # only: the write retries in a new transaction and commits once.
    from ledger_core import writer

    attempts = []
    lock_ledger = writer._Batch._lock_ledger

    def failing_once(batch):  # type: ignore[no-untyped-def]
        attempts.append(1)
        if len(attempts) == 1:
            batch.conn.execute("DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '40001'; END $$")
        return lock_ledger(batch)

    monkeypatch.setattr(writer._Batch, "_lock_ledger", failing_once)
    result = send(conn, ledger, posting("world", "a", 5))
    assert len(attempts) == 2 and result.log.id == 1
    assert counts(conn, ledger) == {"logs": 1, "transactions": 1, "moves": 2, "accounts": 2, "volumes": 2,
                                    "last_log_id": 1}


def test_idempotency_replay_returns_original_and_writes_nothing(conn, ledger):
    first = send(conn, ledger, posting("world", "a", 5), idempotency_key="k1")
    before = counts(conn, ledger)
    again = send(conn, ledger, posting("world", "a", 5), idempotency_key="k1")
    assert again.replayed and again.to_json() == first.to_json()
    assert counts(conn, ledger) == before
    with pytest.raises(IdempotencyConflict) as info:
        send(conn, ledger, posting("world", "a", 6), idempotency_key="k1")
    assert info.value.key == "k1"
    assert counts(conn, ledger) == before


def test_concurrent_same_idempotency_key_writes_once(database_url, conn, ledger):
    from ledger_core.db import connect

    results, errors = [], []

    def worker():
        with connect(database_url) as own:
            try:
                results.append(send(own, ledger, posting("world", "a", 9), idempotency_key="same"))
            except Exception as exc:
                errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert {r.transaction.id for r in results} == {1}
    assert sum(not r.replayed for r in results) == 1
    assert counts(conn, ledger)["transactions"] == 1


def test_reference_is_unique_per_ledger(conn, ledger):
    send(conn, ledger, posting("world", "a", 1), reference="ref-1")
    before = counts(conn, ledger)
    with pytest.raises(ReferenceConflict) as info:
        send(conn, ledger, posting("world", "a", 1), reference="ref-1")
    assert info.value.existing_id == 1
    assert counts(conn, ledger) == before
    # Within one bulk too.
    with pytest.raises(ReferenceConflict):
        write(conn, ledger, [new_tx(posting("world", "a", 1), reference="r2"),
                             new_tx(posting("world", "a", 1), reference="r2")])
    assert counts(conn, ledger) == before


def test_overdraft_is_rejected_with_nothing_written(conn, ledger):
    send(conn, ledger, posting("world", "alice", 50))
    before = counts(conn, ledger)
    with pytest.raises(InsufficientFunds) as info:
        # The first posting alone would pass; the second empties alice below zero: all or nothing.
        send(conn, ledger, posting("alice", "bob", 30), posting("alice", "carol", 30))
    assert (info.value.account, info.value.asset, info.value.balance, info.value.needed) == ("alice", "USD/2", 20, 30)
    assert "alice" in str(info.value) and "USD/2" in str(info.value)
    assert counts(conn, ledger) == before
    assert reads.get_account(conn, ledger, "alice").volumes["USD/2"].balance == 50


def test_overdraft_rules_on_posting_and_account(conn, ledger):
    send(conn, ledger, posting("credit", "bob", 100, allowOverdraft=True))
    send(conn, ledger, posting("line", "bob", 40, overdraftLimit=50))
    with pytest.raises(InsufficientFunds):
        send(conn, ledger, posting("line", "bob", 11, overdraftLimit=50))
    write(conn, ledger, [SetMetadata.build("ACCOUNT", "merchant", {"ledger/overdraft/USD/2": "25"})])
    send(conn, ledger, posting("merchant", "bob", 25))
    with pytest.raises(InsufficientFunds):
        send(conn, ledger, posting("merchant", "bob", 1))
    send(conn, ledger, posting("merchant", "bob", 1, "EUR/2"), force=True)
    with pytest.raises(ValidationError):
        write(conn, ledger, [SetMetadata.build("ACCOUNT", "merchant", {"ledger/overdraft": "lots"})])
    balances = {(b.address, b.asset): b.volumes.balance for b in reads.balances(conn, ledger)}
    assert balances[("credit", "USD/2")] == -100
    assert balances[("line", "USD/2")] == -40
    assert balances[("merchant", "USD/2")] == -25


def test_revert_and_double_revert(conn, ledger):
    send(conn, ledger, posting("world", "a", 10), posting("a", "b", 4))
    [revert] = write(conn, ledger, [RevertTransaction(1)])
    tx = revert.transaction
    assert [p.to_json() for p in tx.postings] == [posting("b", "a", 4), posting("a", "world", 10)]
    assert tx.metadata == {"com.formance.spec/state/reverts": "1"}
    original = reads.get_transaction(conn, ledger, 1)
    assert original.reverted and original.reverted_at == revert.log.date
    assert revert.log.type is LogType.REVERTED_TRANSACTION
    assert revert.log.data["revertedTransaction"]["reverted"] is True
    assert all(b.volumes.balance == 0 for b in reads.balances(conn, ledger))
    before = counts(conn, ledger)
    with pytest.raises(AlreadyReverted):
        write(conn, ledger, [RevertTransaction(1)])
    with pytest.raises(TransactionNotFound):
        write(conn, ledger, [RevertTransaction(99)])
    assert counts(conn, ledger) == before


def test_revert_needs_force_when_funds_moved_on(conn, ledger):
    send(conn, ledger, posting("world", "a", 10))
    send(conn, ledger, posting("a", "b", 10))
    with pytest.raises(InsufficientFunds):
        write(conn, ledger, [RevertTransaction(1)])
    [result] = write(conn, ledger, [RevertTransaction(1, force=True)])
    assert reads.get_account(conn, ledger, "a").volumes["USD/2"].balance == -10
    assert result.transaction.id == 3


def test_metadata_set_and_delete_are_logged(conn, ledger):
    send(conn, ledger, posting("world", "a", 1), metadata={"k": "v"})
    write(conn, ledger, [SetMetadata.build("TRANSACTION", 1, {"status": "paid", "k": "v2"})])
    write(conn, ledger, [DeleteMetadata.build("TRANSACTION", 1, "k")])
    write(conn, ledger, [SetMetadata.build("ACCOUNT", "a", {"role": "customer"})])
    write(conn, ledger, [SetMetadata.build("ACCOUNT", "new:account", {"x": "1"})])
    write(conn, ledger, [DeleteMetadata.build("ACCOUNT", "a", "role")])
    logs = reads.list_logs(conn, ledger)
    assert [log.type.value for log in logs] == [
        "NEW_TRANSACTION", "SET_METADATA", "DELETE_METADATA", "SET_METADATA", "SET_METADATA", "DELETE_METADATA"]
    assert logs[1].data == {"targetType": "TRANSACTION", "targetId": 1, "metadata": {"status": "paid", "k": "v2"}}
    assert logs[2].data == {"targetType": "TRANSACTION", "targetId": 1, "key": "k"}
    assert reads.get_transaction(conn, ledger, 1).metadata == {"status": "paid"}
    assert reads.get_account(conn, ledger, "a").metadata == {}
    assert reads.get_account(conn, ledger, "new:account").metadata == {"x": "1"}
    with pytest.raises(TransactionNotFound):
        write(conn, ledger, [SetMetadata.build("TRANSACTION", 42, {"a": "b"})])
    assert reads.verify_chain(conn, ledger).logs == 6


def test_account_metadata_in_transaction_body(conn, ledger):
    send(conn, ledger, posting("world", "users:001", 1), accountMetadata={"users:001": {"tier": "gold"}})
    assert reads.get_account(conn, ledger, "users:001").metadata == {"tier": "gold"}
    [log] = reads.list_logs(conn, ledger)
    assert log.data["accountMetadata"] == {"users:001": {"tier": "gold"}}


def test_dry_run_computes_and_writes_nothing(conn, ledger):
    send(conn, ledger, posting("world", "a", 3))
    before = counts(conn, ledger)
    [result] = write(conn, ledger, [new_tx(posting("a", "b", 2))], dry_run=True)
    assert result.transaction.id == 2
    assert result.transaction.post_commit_volumes["a"]["USD/2"].balance == 1
    assert counts(conn, ledger) == before
    with pytest.raises(InsufficientFunds):
        write(conn, ledger, [new_tx(posting("a", "b", 5))], dry_run=True)


def test_bulk_is_all_or_nothing(conn, ledger):
    commands = [new_tx(posting("world", f"users:{i:04d}", i + 1)) for i in range(1000)]
    commands.insert(500, new_tx(posting("users:0001", "x", 10**6)))
    before = counts(conn, ledger)
    with pytest.raises(InsufficientFunds) as info:
        write(conn, ledger, commands)
    assert info.value.transaction_index == 501
    assert counts(conn, ledger) == before
    del commands[500]
    results = write(conn, ledger, commands)
    assert [r.transaction.id for r in results] == list(range(1, 1001))
    assert [r.log.id for r in results] == list(range(1, 1001))
    assert counts(conn, ledger)["logs"] == 1000
    assert reads.verify_chain(conn, ledger).logs == 1000


def test_bulk_mixes_writes_in_order(conn, ledger):
    results = write(conn, ledger, [
        new_tx(posting("world", "a", 10)),
        SetMetadata.build("TRANSACTION", 1, {"note": "x"}),
        RevertTransaction(1),
        DeleteMetadata.build("TRANSACTION", 1, "note"),
    ])
    assert [r.log.type.value for r in results] == [
        "NEW_TRANSACTION", "SET_METADATA", "REVERTED_TRANSACTION", "DELETE_METADATA"]
    tx = reads.get_transaction(conn, ledger, 1)
    assert tx.reverted and tx.metadata == {}
    assert reads.verify_chain(conn, ledger).logs == 4


def test_pagination_and_filters(conn, ledger):
    for i in range(7):
        send(conn, ledger, posting("world", f"users:{i % 2}", 1), reference=f"r{i}",
             timestamp=f"2024-01-0{i + 1}T00:00:00Z")
    page = reads.list_transactions(conn, ledger, page_size=3)
    assert [t.id for t in page.data] == [7, 6, 5] and page.has_more
    page2 = reads.list_transactions(conn, ledger, page_size=3, cursor=page.next)
    assert [t.id for t in page2.data] == [4, 3, 2]
    page3 = reads.list_transactions(conn, ledger, page_size=3, cursor=page2.next)
    assert [t.id for t in page3.data] == [1] and not page3.has_more and page3.next is None
    assert [t.id for t in reads.list_transactions(conn, ledger, account="users:1").data] == [6, 4, 2]
    assert [t.id for t in reads.list_transactions(conn, ledger, reference="r3").data] == [4]
    from ledger_core.validation import timestamp
    window = reads.list_transactions(conn, ledger, start=timestamp("2024-01-02T00:00:00Z"),
                                     end=timestamp("2024-01-04T00:00:00Z"))
    assert [t.id for t in window.data] == [3, 2]
    with pytest.raises(ValidationError):
        reads.list_transactions(conn, ledger, cursor="garbage!")


def test_address_patterns_in_balances(conn, ledger):
    send(conn, ledger, posting("world", "users:1:main", 1), posting("world", "users:2:main", 2),
         posting("world", "users:2:fees", 3), posting("world", "payments:1", 4))
    def addresses(pattern):
        return [b.address for b in reads.balances(conn, ledger, address=pattern)]
    assert addresses("users:") == ["users:1:main", "users:2:fees", "users:2:main"]
    assert addresses("users:*:main") == ["users:1:main", "users:2:main"]
    assert addresses("payments:1") == ["payments:1"]
    assert reads.aggregate(reads.balances(conn, ledger)) == {"USD/2": 0}


def test_unique_violation_never_reaches_caller_raw(conn, ledger):
    # A hand-made duplicate reference can only come from outside the write path; still translated.
    send(conn, ledger, posting("world", "a", 1), reference="dup")
    with pytest.raises(ReferenceConflict):
        send(conn, ledger, posting("world", "a", 1), reference="dup")
    assert not isinstance(ReferenceConflict("x"), psycopg.Error)
