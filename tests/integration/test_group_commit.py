"""Group commit: concurrent requests to a ledger share database transactions, and each keeps its own outcome."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from ledger_core import reads
from ledger_core.audit import verify_deep
from ledger_core.errors import (
    IdempotencyConflict,
    InsufficientFunds,
    LedgerNotFound,
    ReferenceConflict,
    TransactionNotFound,
)
from ledger_core.group_commit import GroupCommitter, write_each, write_until_refused
from ledger_core.requests import RevertTransaction
from tests.helpers import counts, new_tx, posting, send


def _commits(conn, ledger) -> int:
    """Database transactions that wrote the ledger's logs: every log of one write shares its date."""
    return conn.execute("SELECT count(DISTINCT date) FROM ledger_core.logs WHERE ledger = %s", (ledger,)).fetchone()[0]


def test_concurrent_requests_share_commits_and_each_gets_its_own_transaction(conn, database_url, ledger):
    send(conn, ledger, posting("world", "hot", 10_000))
    barrier = threading.Barrier(64)

    def client(n: int) -> int:
        barrier.wait()
        # Half credit an account that does not exist yet; every fourth also pays the one hot account.
        account = f"new:{n}" if n % 2 else f"users:{n % 5}"
        postings = [posting("world", account, 100)]
        if n % 4 == 1:
            postings.append(posting("hot", account, 1))
        result = committer.write(ledger, new_tx(*postings, reference=f"order-{n}"))
        assert result.transaction is not None and result.transaction.reference == f"order-{n}"
        return result.transaction.id

    with GroupCommitter(database_url) as committer, ThreadPoolExecutor(64) as clients:
        ids = list(clients.map(client, range(64)))
    assert sorted(ids) == list(range(2, 66))  # each request its own transaction, none lost or doubled
    assert _commits(conn, ledger) < 1 + 64  # gathered: fewer commits than requests (2 when this was written)
    balances = {(b.address, b.asset): b.volumes.balance for b in reads.balances(conn, ledger)}
    assert balances[("hot", "USD/2")] == 10_000 - 16 and balances[("new:1", "USD/2")] == 101
    verify_deep(conn, ledger)


def test_a_refused_request_fails_alone(conn, database_url, ledger):
    send(conn, ledger, posting("world", "alice", 50), reference="taken")
    send(conn, ledger, posting("world", "bob", 5), idempotency_key="k1")
    requests = [
        new_tx(posting("world", "carol", 1)),
        new_tx(posting("alice", "dave", 80)),                          # more than alice holds
        new_tx(posting("world", "erin", 2)),
        new_tx(posting("world", "frank", 3), reference="taken"),       # a reference already used
        new_tx(posting("world", "bob", 6), idempotency_key="k1"),      # the key, another body
        RevertTransaction(99),                                         # no such transaction
        new_tx(posting("alice", "grace", 50)),                         # fine: alice's 50, the 80 never happened
        new_tx(posting("world", "bob", 5), idempotency_key="k1"),      # the same request again: its first result
    ]
    before = _commits(conn, ledger)
    outcomes = write_each(conn, ledger, requests)
    kinds = [type(o).__name__ for o in outcomes]
    assert kinds == ["WriteResult", "InsufficientFunds", "WriteResult", "ReferenceConflict", "IdempotencyConflict",
                     "TransactionNotFound", "WriteResult", "WriteResult"]
    assert isinstance(outcomes[1], InsufficientFunds) and outcomes[1].account == "alice"
    assert isinstance(outcomes[3], ReferenceConflict) and isinstance(outcomes[4], IdempotencyConflict)
    assert isinstance(outcomes[5], TransactionNotFound)
    assert outcomes[7].replayed and outcomes[7].transaction.id == 2  # type: ignore[union-attr]
    assert [o.transaction.id for o in (outcomes[0], outcomes[2], outcomes[6])] == [3, 4, 5]  # type: ignore[union-attr]
    assert _commits(conn, ledger) == before + 1  # the three written ones, together
    verify_deep(conn, ledger)


def test_requests_depending_on_a_refused_one_are_refused_as_if_it_never_came(conn, database_url, ledger):
    send(conn, ledger, posting("world", "alice", 10))
    with GroupCommitter(database_url) as committer:
        futures = [committer.submit(ledger, new_tx(posting("alice", "bob", 20))),   # refused
                   committer.submit(ledger, new_tx(posting("bob", "carol", 15))),   # needed bob's 20
                   committer.submit(ledger, new_tx(posting("alice", "carol", 10)))]
        with pytest.raises(InsufficientFunds, match="alice"):
            futures[0].result(30)
        with pytest.raises(InsufficientFunds, match="bob"):
            futures[1].result(30)
        assert futures[2].result(30).transaction.id == 2  # type: ignore[union-attr]


def test_an_unknown_ledger_or_an_unreachable_database_fails_each_request_and_blocks_nothing(
        conn, database_url, ledger):
    with GroupCommitter(database_url) as committer:
        missing = [committer.submit("no-such-ledger", new_tx(posting("world", "a", 1))) for _ in range(3)]
        for future in missing:
            with pytest.raises(LedgerNotFound):
                future.result(30)
        assert committer.write(ledger, new_tx(posting("world", "a", 1)), timeout=30).transaction is not None
    before = counts(conn, ledger)
    unreachable = database_url.replace(database_url.rsplit("@", 1)[1].split("/")[0], "127.0.0.1:1")
    with GroupCommitter(unreachable) as committer:
        futures = [committer.submit(ledger, new_tx(posting("world", "a", 1))) for _ in range(5)]
        for future in futures:
            with pytest.raises(Exception, match="connect"):
                future.result(30)
    assert counts(conn, ledger) == before
    with pytest.raises(RuntimeError, match="closed"):
        committer.submit(ledger, new_tx(posting("world", "a", 1)))


def test_write_until_refused_writes_what_comes_before_the_refusal_and_nothing_after(conn, ledger):
    commands = [new_tx(posting("world", "a", 10)), new_tx(posting("b", "c", 1)), new_tx(posting("world", "d", 5))]
    outcomes = write_until_refused(conn, ledger, commands)
    assert outcomes[0].transaction.id == 1 and isinstance(outcomes[1], InsufficientFunds) and outcomes[2] is None
    assert counts(conn, ledger)["transactions"] == 1
    assert [o.transaction.id for o in write_until_refused(conn, ledger, [commands[0], commands[2]])] == [2, 3]
    # A refusal naming no command (an unknown ledger) is found one command at a time.
    unknown = write_until_refused(conn, ledger + "x", commands)
    assert isinstance(unknown[0], LedgerNotFound) and unknown[1:] == [None, None]
