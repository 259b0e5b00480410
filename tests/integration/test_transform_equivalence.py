"""The set-based transforms give the same rows as the per-log Python fold they replaced, on generated ledgers.

Each seed writes a random ledger through the real write path (many postings per transaction, several
assets, an account on both sides of a transaction, money up to 70 digits, backdated timestamps, account
and transaction metadata set and deleted, `accountMetadata`, reverts, hostile idempotency keys), reads its
logs back through the real reader, cuts them into random batches, and runs both transforms batch by batch
over a simulated warehouse that merges what they produce (highest `log_id` wins), with replays of earlier
ranges mixed in, as after a reset or a crash. Every table of every batch must be equal, row for row; JSON
columns are compared as JSON (the text forms differ: sorted keys before, the log's order now).

The reference transform (`tests/reference_transform.py`) is kept only for this comparison, and was not taught
what came after it (signed amounts and asset scales, reversal links, daily volumes): those are compared, after
every batch and replay has been merged, with the ledger's own tables and logs.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.ipc
import pytest

from ledger_core.requests import DeleteMetadata, NewTransaction, RevertTransaction, SetMetadata
from ledger_core.writer import write
from ledger_pipelines.errors import LogIncomplete, MissingBaseRow, ValueOutOfRange
from ledger_pipelines.reader import LogReader
from ledger_pipelines.tables import BY_NAME, DATA_TABLES, TRANSACTIONS, Batch, Kind, Money, Table
from ledger_pipelines.transforms import Transformer
from tests import reference_transform
from tests.contract.helpers import assert_move_amounts, assert_reversal_links, display

ASSETS = ["USD/2", "EUR/2", "JPY", "ETH/18", "BTC/8"]
KEYS = ["tier", "region", "note", "κλειδί"]
HOSTILE_KEYS = ["plain", "quote\"and\\back", "tab\tline\nbreak", "emoji 🎉", "\u2028 separator"]


def _amount(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.05:
        return rng.randrange(10**60, 10**70)
    if roll < 0.15:
        return rng.randrange(2**63, 2**70)
    return rng.randrange(1, 100_000)


def write_random_ledger(conn: psycopg.Connection, ledger: str, rng: random.Random, writes: int) -> None:
    accounts = ["world", "fees", *(f"users:{i}" for i in range(12)), *(f"shops:{i}" for i in range(4))]
    transactions: list[int] = []
    reverted: set[int] = set()
    for n in range(writes):
        roll = rng.random()
        key = f"{rng.choice(HOSTILE_KEYS)}-{n}" if rng.random() < 0.2 else None
        if roll < 0.6 or not transactions:
            postings = []
            for _ in range(rng.randint(1, 5)):
                source, destination = rng.choice(accounts), rng.choice(accounts)
                postings.append({"source": source, "destination": destination, "amount": _amount(rng),
                                 "asset": rng.choice(ASSETS)})
            body: dict[str, Any] = {"postings": postings, "force": True}
            if rng.random() < 0.5:
                body["metadata"] = {rng.choice(KEYS): f"v{n}" for _ in range(rng.randint(1, 3))}
            if rng.random() < 0.3:
                body["timestamp"] = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T10:00:00.{n:06d}Z"
            if rng.random() < 0.2:
                body["accountMetadata"] = {rng.choice(accounts[1:]): {rng.choice(KEYS): f"a{n}"}}
            if rng.random() < 0.3:
                body["reference"] = f"ref-{n}"
            [result] = write(conn, ledger, [NewTransaction.from_json(body, idempotency_key=key)])
            assert result.transaction is not None
            transactions.append(result.transaction.id)
        elif roll < 0.72:
            target = rng.choice([t for t in transactions if t not in reverted] or transactions)
            if target in reverted:
                continue
            write(conn, ledger, [RevertTransaction(target, force=True, at_effective_date=rng.random() < 0.5)])
            reverted.add(target)
        elif roll < 0.86:
            target_type = rng.choice(["ACCOUNT", "TRANSACTION"])
            target: Any = rng.choice(accounts[1:]) if target_type == "ACCOUNT" else rng.choice(transactions)
            write(conn, ledger, [SetMetadata.build(target_type, target, {rng.choice(KEYS): f"s{n}"},
                                                   idempotency_key=key)])
        else:
            target_type = rng.choice(["ACCOUNT", "TRANSACTION"])
            target = rng.choice(accounts[1:]) if target_type == "ACCOUNT" else rng.choice(transactions)
            write(conn, ledger, [DeleteMetadata.build(target_type, target, rng.choice(KEYS), idempotency_key=key)])


class SimulatedWarehouse:
    """What a warehouse holds after merges: per table and key, the row with the highest log_id (ties: incoming)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {t.name: {} for t in DATA_TABLES}

    def merge(self, tables: dict[str, pa.Table]) -> None:
        for table in DATA_TABLES:
            held = self.rows[table.name]
            for row in tables[table.name].to_pylist():
                key = tuple(row[k] for k in table.key)
                if key not in held or held[key]["log_id"] <= row["log_id"]:
                    held[key] = row

    def current_dicts(self, table: Table, ledger: str, keys: Any, within: Any = None) -> list[dict[str, Any]]:
        column = next(k for k in table.key if k != "ledger")
        wanted = {k[0] for k in keys}
        return [dict(r) for r in self.rows[table.name].values() if r[column] in wanted
                and (within is None or within[1] <= r[within[0]] <= within[2])]

    def current_arrow(self, table: Table, ledger: str, keys: Any, within: Any = None) -> pa.Table:
        return pa.Table.from_pylist(self.current_dicts(table, ledger, [(k,) for k in keys], within),
                                    schema=table.arrow_schema)


def normalised(table: Table, data: pa.Table) -> list[dict[str, Any]]:
    rows = data.sort_by([(k, "ascending") for k in table.key]).to_pylist()
    for row in rows:
        for column in table.columns:
            if column.kind is Kind.JSON and row[column.name] is not None:
                row[column.name] = json.loads(row[column.name])
    return rows


def compare_batch(transformer: Transformer, ledger: str, logs: pa.Table, warehouse: SimulatedWarehouse) -> None:
    try:
        expected = reference_transform.transform(ledger, logs.to_pylist(), warehouse.current_dicts)
    except MissingBaseRow as reference_error:
        with pytest.raises(MissingBaseRow) as error:
            transformer.transform(ledger, logs, warehouse.current_arrow)
        assert str(error.value) == str(reference_error)
        return
    got = transformer.transform(ledger, logs, warehouse.current_arrow)
    assert (got.first_log_id, got.last_log_id, got.last_log_hash) == (
        expected.first_log_id, expected.last_log_id, expected.last_log_hash)
    for table in DATA_TABLES:
        assert got.tables[table.name].schema == table.arrow_schema
        if table.name not in expected.tables:
            continue  # newer than the reference: see assert_new_columns_equal_the_ledger
        mine, theirs = normalised(table, got.tables[table.name]), normalised(table, expected.tables[table.name])
        assert len(mine) == len(theirs), f"{table.name}: {len(mine)} rows, reference {len(theirs)}"
        for a, b in zip(mine, theirs, strict=True):
            a = {k: v for k, v in a.items() if k in b}
            assert a == b, f"{table.name} differs from the reference:\n  new {a}\n  ref {b}"
    assert_new_rows_are_the_unheld_keys(got, warehouse)
    warehouse.merge(got.tables)


def assert_new_rows_are_the_unheld_keys(batch: Batch, warehouse: SimulatedWarehouse) -> None:
    """What a load may append rather than merge (`Batch.new_rows`, new rows first) is exactly what the warehouse
    lacks, when it holds none of the batch's logs; in a replay, an account's or a day's new rows still are."""
    beyond = all(row["log_id"] < batch.first_log_id for row in warehouse.rows["logs"].values())
    assert set(batch.new_rows) == {"transactions", "accounts", "daily_volumes"}  # the folds (balances: no fetch)
    for name, new in batch.new_rows.items():
        table = BY_NAME[name]
        if not beyond and table is TRANSACTIONS:
            continue  # a transaction the replayed batch creates is in the warehouse already
        keys = [tuple(row[k] for k in table.key) for row in batch.tables[name].to_pylist()]
        assert [key not in warehouse.rows[name] for key in keys] == [True] * new + [False] * (len(keys) - new), name


def assert_new_columns_equal_the_ledger(conn: psycopg.Connection, ledger: str, warehouse: SimulatedWarehouse) -> None:
    """What the reference does not compute, after every batch and replay was merged: from the ledger."""
    days = {(a, s, d): (int(i), int(o)) for a, s, d, i, o in conn.execute(
        """SELECT account, asset, day, input::text, output::text FROM ledger_core.daily_volumes
           WHERE ledger = %s""", (ledger,))}
    held = {k[1:]: (int(r["input"]), int(r["output"])) for k, r in warehouse.rows["daily_volumes"].items()}
    assert held == days
    assert_reversal_links(conn, ledger, warehouse.rows["transactions"].values())
    assert_move_amounts(warehouse.rows["moves"].values())
    for row in warehouse.rows["balances"].values():
        assert row["display_balance"] == display(int(row["balance"]), row["asset_scale"])


@pytest.mark.parametrize("seed", range(6))
def test_set_based_transforms_equal_the_reference_fold(conn: psycopg.Connection, database_url: str, ledger: str,
                                                        seed: int) -> None:
    rng = random.Random(seed)
    write_random_ledger(conn, ledger, rng, writes=160)
    with LogReader(database_url) as reader:
        logs = reader.read(ledger, after=0, up_to=10**9, limit=10**9)
    assert {"NEW_TRANSACTION", "REVERTED_TRANSACTION", "SET_METADATA", "DELETE_METADATA"} <= set(
        logs.column("type").to_pylist())
    warehouse = SimulatedWarehouse()
    with Transformer() as transformer:
        start = 0
        while start < logs.num_rows:
            size = rng.choice([1, 2, 7, 25, 80])
            compare_batch(transformer, ledger, logs.slice(start, size), warehouse)
            if start and rng.random() < 0.3:  # a replay of an earlier range over what the warehouse holds
                back = rng.randrange(0, start)
                compare_batch(transformer, ledger, logs.slice(back, rng.randint(1, start - back)), warehouse)
            start += size
    assert_new_columns_equal_the_ledger(conn, ledger, warehouse)
    # And the whole ledger in one batch over an empty warehouse.
    whole = SimulatedWarehouse()
    with Transformer() as transformer:
        compare_batch(transformer, ledger, logs, whole)
    assert_new_columns_equal_the_ledger(conn, ledger, whole)


@pytest.mark.parametrize("arrow_type", [pa.decimal128(38, 0), pa.string()], ids=["decimal128", "text"])
def test_a_batch_made_for_a_warehouses_money_holds_the_same_values_in_its_type(
        conn: psycopg.Connection, database_url: str, ledger: str, arrow_type: pa.DataType,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # What the sync does: the next batch prepared ahead for the warehouse's money, then transformed for it.
    monkeypatch.setattr(f"{__name__}._amount", lambda rng: rng.randrange(1, 10**30))  # balances within 38 digits
    write_random_ledger(conn, ledger, random.Random(21), writes=80)
    with LogReader(database_url) as reader:
        logs = reader.read(ledger, after=0, up_to=10**9, limit=10**9)
    money = Money(38, arrow_type)
    with Transformer() as transformer:
        widest = transformer.transform(ledger, logs, SimulatedWarehouse().current_arrow)
        made = transformer.transform(ledger, transformer.prepare(logs, ledger, money),
                                     SimulatedWarehouse().current_arrow, money)
    for table in DATA_TABLES:
        schema, order = table.arrow_schema_with(arrow_type), [(k, "ascending") for k in table.key]
        assert made.tables[table.name].schema == schema
        assert made.tables[table.name].sort_by(order).equals(
            widest.tables[table.name].cast(schema).sort_by(order)), table.name  # rows come in no set order


def test_a_value_too_wide_for_the_warehouse_is_named_at_its_earliest_log_across_tables(
        conn: psycopg.Connection, database_url: str, ledger: str) -> None:
    # Prepared ahead, the batch-only tables find a value too wide and leave the verdict to the transform,
    # which weighs them with the folded tables: the earliest log carrying one, whichever table holds it.
    write_random_ledger(conn, ledger, random.Random(8), writes=60)
    with LogReader(database_url) as reader:
        logs = reader.read(ledger, after=0, up_to=10**9, limit=10**9)
    digits = 38  # some amounts have 60 to 70 digits
    with Transformer() as transformer:
        widest = transformer.transform(ledger, logs, SimulatedWarehouse().current_arrow)
        earliest = min(row["log_id"] for table in DATA_TABLES for row in widest.tables[table.name].to_pylist()
                       if any(abs(int(row[c])) >= 10**digits for c in table.money_columns))
        assert earliest > logs.column("id")[0].as_py()  # not the batch's first log: the choice of the earliest matters
        money = Money(digits, pa.decimal128(38, 0))
        with pytest.raises(ValueOutOfRange) as refused:
            transformer.transform(ledger, transformer.prepare(logs, ledger, money), SimulatedWarehouse().current_arrow,
                                  money)
    assert refused.value.log_id == earliest


def test_a_change_to_a_transaction_the_warehouse_lacks_is_refused_naming_the_log(
        conn: psycopg.Connection, database_url: str, ledger: str) -> None:
    write_random_ledger(conn, ledger, random.Random(99), writes=40)
    write(conn, ledger, [SetMetadata.build("TRANSACTION", 1, {"late": "yes"})])
    with LogReader(database_url) as reader:
        logs = reader.read(ledger, after=0, up_to=10**9, limit=10**9)
    last = logs.slice(logs.num_rows - 1)
    with Transformer() as transformer, \
            pytest.raises(MissingBaseRow, match=rf"log {logs.num_rows} changes transaction 1,"):
        transformer.transform(ledger, last, SimulatedWarehouse().current_arrow)


def test_a_log_without_its_post_commit_volumes_is_refused_naming_it(
        conn: psycopg.Connection, database_url: str, ledger: str) -> None:
    write_random_ledger(conn, ledger, random.Random(5), writes=30)
    with LogReader(database_url) as reader:
        logs = reader.read(ledger, after=0, up_to=10**9, limit=10**9)
    rows = logs.to_pylist()
    target = next(r for r in rows[3:] if r["type"] == "NEW_TRANSACTION")
    data = json.loads(target["data"])
    del data["transaction"]["postCommitVolumes"]
    target["data"] = json.dumps(data)
    with Transformer() as transformer, pytest.raises(LogIncomplete, match=rf"^log {target['id']} gives no moves\."):
        transformer.transform(ledger, pa.Table.from_pylist(rows, schema=logs.schema),
                              SimulatedWarehouse().current_arrow)


def test_the_set_based_link_check_accepts_the_writers_hashes_and_nothing_else(
        conn: psycopg.Connection, database_url: str, ledger: str) -> None:
    # The fast path of the sync's chain check: it must agree with the writer on real logs (hostile idempotency
    # keys, backdated and fractional timestamps), or every batch would fall back to the Python check.
    write_random_ledger(conn, ledger, random.Random(11), writes=120)
    with LogReader(database_url) as reader:
        logs = reader.read(ledger, after=0, up_to=10**9, limit=10**9)
    with Transformer() as transformer:
        assert transformer.links_hold(ledger, logs, None)
        middle = logs.slice(40)
        assert transformer.links_hold(ledger, middle, bytes.fromhex(logs.column("hash")[39].as_py()))
        assert not transformer.links_hold(ledger, middle, None)  # the wrong anchor
        data = logs.column("data").to_pylist()
        data[70] = data[70].replace('"', "'", 0) + " "  # one byte more in one log
        assert not transformer.links_hold(ledger, logs.set_column(logs.schema.get_field_index("data"), "data",
                                                                  pa.array(data)), None)
        assert not transformer.links_hold("another", logs, None)


def test_the_link_check_holds_on_a_machine_outside_utc(
        conn: psycopg.Connection, database_url: str, ledger: str, tmp_path: Path) -> None:
    # DuckDB prints a timestamp in its session's time zone, and a cursor does not inherit its connection's: on
    # a machine set to New York, every batch had failed the fast path and been checked log by log in Python.
    write_random_ledger(conn, ledger, random.Random(12), writes=40)
    with LogReader(database_url) as reader:
        logs = reader.read(ledger, after=0, up_to=10**9, limit=10**9)
    with pa.OSFile(str(tmp_path / "logs.arrow"), "wb") as sink, pa.ipc.new_file(sink, logs.schema) as writer:
        writer.write_table(logs)
    check = ("import sys, pyarrow as pa; from ledger_pipelines.transforms import Transformer; "
             "logs = pa.ipc.open_file(pa.memory_map(sys.argv[2])).read_all(); "
             "print(Transformer().links_hold(sys.argv[1], logs, None))")
    said = subprocess.run([sys.executable, "-c", check, ledger, str(tmp_path / "logs.arrow")], capture_output=True,
                          text=True, env={**os.environ, "TZ": "America/New_York"}, check=True)
    assert said.stdout.strip() == "True", said.stderr
