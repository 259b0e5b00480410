"""Bi-temporal balances, the hash chain, and correctness under concurrent writers."""

from __future__ import annotations

import random
import threading
import time

import pytest

from ledger_core import reads
from ledger_core.db import connect
from ledger_core.errors import ChainBroken
from ledger_core.validation import timestamp
from ledger_core.writer import write
from tests.helpers import asset_sums, new_tx, posting, send


def _balance(rows, address, asset="USD/2"):
    return next((b.volumes.balance for b in rows if b.address == address and b.asset == asset), 0)


def test_backdated_transaction_and_both_point_in_time_balances(conn, ledger):
    send(conn, ledger, posting("world", "a", 100), timestamp="2024-03-01T00:00:00Z")
    send(conn, ledger, posting("a", "b", 30), timestamp="2024-03-10T00:00:00Z")
    recorded_before_backdate = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    time.sleep(0.01)
    # Recorded now, effective in the past: a.k.a. a late-arriving fact.
    send(conn, ledger, posting("world", "a", 7), timestamp="2024-03-05T00:00:00Z")

    def at_effective(t):
        return reads.balances(conn, ledger, effective_at=timestamp(t))

    assert _balance(at_effective("2024-03-04T00:00:00Z"), "a") == 100
    assert _balance(at_effective("2024-03-05T00:00:00Z"), "a") == 107
    assert _balance(at_effective("2024-03-09T00:00:00Z"), "a") == 107
    assert _balance(at_effective("2024-03-11T00:00:00Z"), "a") == 77
    assert _balance(at_effective("2024-02-01T00:00:00Z"), "a") == 0
    # As the ledger had recorded it before the backdated write: the 7 is not there yet at any effective time.
    recorded = reads.balances(conn, ledger, inserted_at=recorded_before_backdate)
    assert _balance(recorded, "a") == 70 and _balance(recorded, "b") == 30
    assert _balance(reads.balances(conn, ledger), "a") == 77
    # The backdated write added to its own day's row and changed no other.
    days = conn.execute(
        """SELECT day::text, input::text, output::text FROM ledger_core.daily_volumes
           WHERE ledger = %s AND account = 'a' ORDER BY day""", (ledger,)).fetchall()
    assert days == [("2024-03-01", "100", "0"), ("2024-03-05", "7", "0"), ("2024-03-10", "0", "30")]
    # Volumes over a window by effective time include the backdated transaction, by insertion they do not.
    window = dict(start=timestamp("2024-03-01T00:00:00Z"), end=timestamp("2024-03-06T00:00:00Z"))
    by_effective = reads.volumes_between(conn, ledger, **window, address="a")
    assert [(b.volumes.input, b.volumes.output) for b in by_effective] == [(107, 0)]


def test_backdated_moves_in_one_bulk_keep_effective_order(conn, ledger):
    write(conn, ledger, [
        new_tx(posting("world", "a", 1), timestamp="2024-01-10T00:00:00Z"),
        new_tx(posting("world", "a", 2), timestamp="2024-01-05T00:00:00Z"),
        new_tx(posting("world", "a", 4), timestamp="2024-01-01T00:00:00Z"),
        new_tx(posting("world", "a", 8), timestamp="2024-01-07T00:00:00Z"),
    ])
    expected = {"2024-01-01": 4, "2024-01-05": 6, "2024-01-07": 14, "2024-01-10": 15}
    for day, balance in expected.items():
        assert _balance(reads.balances(conn, ledger, effective_at=timestamp(f"{day}T00:00:00Z")), "a") == balance


def test_balances_within_a_day_and_across_midnight_in_other_time_zones(conn, ledger):
    write(conn, ledger, [
        new_tx(posting("world", "a", 1), timestamp="2024-01-10T23:30:00Z"),
        new_tx(posting("world", "a", 2), timestamp="2024-01-10T08:00:00Z"),
        new_tx(posting("a", "b", 3), timestamp="2024-01-11T00:00:00.000001Z"),
        new_tx(posting("world", "a", 4), timestamp="2024-01-10T08:00:00Z"),  # same instant as the second
    ])
    expected = {"2024-01-10T07:59:59.999999Z": 0, "2024-01-10T08:00:00Z": 6, "2024-01-10T23:30:00Z": 7,
                "2024-01-11T00:00:00Z": 7, "2024-01-11T01:00:00+02:00": 6, "2024-01-11T00:00:00.000001Z": 4,
                "2024-01-10T18:00:00-08:00": 4}
    for at, balance in expected.items():
        assert _balance(reads.balances(conn, ledger, effective_at=timestamp(at)), "a") == balance, at


def test_hand_edited_log_is_detected(conn, ledger):
    for i in range(5):
        send(conn, ledger, posting("world", "a", i + 1))
    assert reads.verify_chain(conn, ledger).logs == 5
    conn.execute(
        """UPDATE ledger_core.logs SET data = jsonb_set(data, '{transaction,postings,0,amount}', '999')
           WHERE ledger = %s AND id = 3""", (ledger,))
    with pytest.raises(ChainBroken) as info:
        reads.verify_chain(conn, ledger)
    assert info.value.log_id == 3


def test_deleted_log_is_detected(conn, ledger):
    for i in range(3):
        send(conn, ledger, posting("world", "a", i + 1))
    conn.execute("DELETE FROM ledger_core.logs WHERE ledger = %s AND id = 2", (ledger,))
    with pytest.raises(ChainBroken) as info:
        reads.verify_chain(conn, ledger)
    assert info.value.log_id == 2


def test_concurrent_writers_and_a_reader_by_cursor(database_url, conn, ledger):
    """8 writers on overlapping accounts; a reader polling `id > cursor` must see every id, in order, no gap."""
    writers, per_writer = 8, 40
    accounts = [f"users:{i}" for i in range(6)]
    send(conn, ledger, *[posting("world", a, 1000, asset) for a in accounts for asset in ("USD/2", "EUR/2")])
    errors: list[BaseException] = []
    done = threading.Event()
    seen: list[int] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with connect(database_url) as own:
                for _ in range(per_writer):
                    src, dst = rng.sample(accounts, 2)
                    batch = [new_tx(posting(src, dst, rng.randint(1, 60), rng.choice(["USD/2", "EUR/2"])),
                                    posting(dst, src, rng.randint(1, 5), "EUR/2"), force=False)
                             for _ in range(rng.randint(1, 3))]
                    try:
                        write(own, ledger, batch)
                    except Exception as exc:  # InsufficientFunds is expected and fine; anything else is not
                        if type(exc).__name__ != "InsufficientFunds":
                            raise
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        cursor = 0
        try:
            with connect(database_url) as own:
                while True:
                    finished = done.is_set()
                    ids = [r[0] for r in own.execute(
                        "SELECT id FROM ledger_core.logs WHERE ledger = %s AND id > %s ORDER BY id",
                        (ledger, cursor))]
                    assert ids == list(range(cursor + 1, cursor + 1 + len(ids))), f"gap after {cursor}: {ids[:5]}"
                    seen.extend(ids)
                    cursor = ids[-1] if ids else cursor
                    if finished and not ids:
                        return
        except BaseException as exc:
            errors.append(exc)

    read_thread = threading.Thread(target=reader)
    read_thread.start()
    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    read_thread.join()
    assert errors == []
    total = reads.verify_chain(conn, ledger).logs
    assert seen == list(range(1, total + 1))
    assert total > writers * per_writer // 2
    assert asset_sums(conn, ledger) == {"USD/2": 0, "EUR/2": 0}
    negative = conn.execute(
        "SELECT count(*) FROM ledger_core.volumes WHERE ledger = %s AND account <> 'world' AND input < output",
        (ledger,)).fetchone()[0]
    assert negative == 0
    # The volumes table equals the sum of moves: no lost update.
    mismatches = conn.execute(
        """SELECT count(*) FROM ledger_core.volumes v JOIN (
               SELECT account, asset, sum(amount) FILTER (WHERE NOT is_source) AS i,
                      sum(amount) FILTER (WHERE is_source) AS o
               FROM ledger_core.moves WHERE ledger = %s GROUP BY account, asset) m
             ON m.account = v.account AND m.asset = v.asset
           WHERE v.ledger = %s AND (v.input <> coalesce(m.i, 0) OR v.output <> coalesce(m.o, 0))""",
        (ledger, ledger)).fetchone()[0]
    assert mismatches == 0
