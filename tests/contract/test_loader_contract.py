"""One contract, every warehouse: full and incremental syncs, reverts and metadata, resets, faults,
concurrent writers, exact money, and refused configs."""

from __future__ import annotations

import json
import multiprocessing
import time
from datetime import date

import pyarrow as pa
import pytest

from ledger_core import reads
from ledger_core.db import connect
from ledger_core.errors import VolumesOutOfRange
from ledger_core.requests import DeleteMetadata, RevertTransaction, SetMetadata
from ledger_core.validation import MAX_AMOUNT, MONEY_DIGITS
from ledger_core.writer import write
from ledger_pipelines import registry
from ledger_pipelines.errors import (
    ExporterInUse,
    InvalidExporterConfig,
    InvalidReset,
    LogChainBroken,
    PipelineStopped,
    ValueOutOfRange,
)
from ledger_pipelines.loaders.base import Loader
from ledger_pipelines.sync import sync_pipeline
from ledger_pipelines.tables import (
    ACCOUNTS,
    BALANCES,
    DAILY_VOLUMES,
    LOGS,
    MOVES,
    POSTINGS,
    SCHEMA_VERSION,
    SYNC_STATE,
    TRANSACTIONS,
)
from tests.contract.helpers import assert_warehouse_equals_ledger
from tests.helpers import new_tx, posting, send


def activity(conn, ledger, start: int, count: int) -> None:
    """A bulk of realistic writes: pay-ins, transfers, a revert, metadata set and deleted."""
    commands = []
    for i in range(start, start + count):
        commands.append(new_tx(posting("world", f"users:{i % 7}", 1000 + i, "USD/2"),
                               posting(f"users:{i % 7}", "fees", 10, "USD/2"),
                               posting("world", f"users:{i % 5}", i + 1, "EUR/2"),
                               metadata={"n": str(i)}, reference=f"ref-{i}",
                               timestamp=f"2024-0{1 + i % 9}-1{i % 10}T12:00:00Z",
                               accountMetadata={f"users:{i % 7}": {"seen": str(i)}}))
    write(conn, ledger, commands)


def sync(conn, pipeline, warehouse, **kwargs):
    return sync_pipeline(conn.info.dsn, pipeline.id, environ=warehouse.environ, **kwargs)


def test_first_full_sync_then_incremental(conn, ledger, pipeline, warehouse):
    activity(conn, ledger, 0, 60)
    report = sync(conn, pipeline, warehouse, batch_size=25)
    assert (report.from_log_id, report.to_log_id, report.logs, report.lag) == (1, 60, 60, 0)
    assert report.rows["postings"] == 180 and report.rows["moves"] == 360
    with warehouse.loader() as loader:
        assert_warehouse_equals_ledger(conn, loader, ledger, pipeline.id)
    activity(conn, ledger, 60, 15)
    report = sync(conn, pipeline, warehouse)
    assert (report.from_log_id, report.to_log_id, report.logs) == (61, 75, 15)
    assert report.rows["logs"] == 15
    assert sync(conn, pipeline, warehouse).logs == 0
    with warehouse.loader() as loader:
        assert_warehouse_equals_ledger(conn, loader, ledger, pipeline.id)
        state = loader.read_sync_state(pipeline.id)
        assert state["last_log_id"] == 75 and state["ledger"] == ledger
        assert state["last_log_hash"] == reads.list_logs(conn, ledger, after=74)[0].hash.hex()


def test_reverts_and_metadata_are_reflected(conn, ledger, pipeline, warehouse):
    activity(conn, ledger, 0, 10)
    sync(conn, pipeline, warehouse)
    write(conn, ledger, [RevertTransaction(3), RevertTransaction(4, at_effective_date=True),
                         SetMetadata.build("TRANSACTION", 2, {"status": "refunded"}),
                         DeleteMetadata.build("TRANSACTION", 2, "n"),
                         SetMetadata.build("ACCOUNT", "users:1", {"tier": "gold"}),
                         DeleteMetadata.build("ACCOUNT", "users:1", "seen"),
                         SetMetadata.build("ACCOUNT", "brand:new", {"created": "by-metadata"})])
    sync(conn, pipeline, warehouse)
    with warehouse.loader() as loader:
        assert_warehouse_equals_ledger(conn, loader, ledger, pipeline.id)
        tx = {r["id"]: r for r in loader.read_table(TRANSACTIONS, ledger).to_pylist()}
        # JSON as the warehouse writes it back (spacing differs between warehouses): compared as values.
        assert tx[3]["reverted_at"] is not None and json.loads(tx[2]["metadata"]) == {"status": "refunded"}
        assert json.loads(tx[11]["metadata"]) == {"com.formance.spec/state/reverts": "3"}
        assert (tx[11]["reverts_transaction_id"], tx[3]["reverted_by_transaction_id"]) == (3, 11)
        # Reverted at its effective date: the reversal lands on the original's day, not today's.
        assert tx[12]["reverts_transaction_id"] == 4 and tx[12]["timestamp"] == tx[4]["timestamp"]
        assert tx[11]["timestamp"] == tx[11]["inserted_at"]


@pytest.mark.parametrize("to_log_id", [0, 7])
def test_reset_replays_without_duplicates(conn, ledger, pipeline, warehouse, to_log_id):
    activity(conn, ledger, 0, 20)
    write(conn, ledger, [SetMetadata.build("ACCOUNT", "users:1", {"v": "1"})])
    write(conn, ledger, [SetMetadata.build("ACCOUNT", "users:1", {"v": "2"}), RevertTransaction(5)])
    sync(conn, pipeline, warehouse)
    registry.reset_pipeline(conn, pipeline.id, to_log_id)
    report = sync(conn, pipeline, warehouse, batch_size=warehouse.batch(4))
    assert report.from_log_id == to_log_id + 1 and report.to_log_id == 23
    with warehouse.loader() as loader:
        assert_warehouse_equals_ledger(conn, loader, ledger, pipeline.id)
    with pytest.raises(InvalidReset):
        registry.reset_pipeline(conn, pipeline.id, 24)


@pytest.mark.parametrize("point", ["before_load", "mid_load", "after_load"])
def test_failure_at_each_step_then_rerun(conn, ledger, pipeline, warehouse, point):
    batch = warehouse.batch(10)
    activity(conn, ledger, 0, 30)
    sync(conn, pipeline, warehouse, batch_size=batch)
    activity(conn, ledger, 30, 30)
    write(conn, ledger, [RevertTransaction(40), SetMetadata.build("TRANSACTION", 41, {"x": "y"})])

    class Killed(Exception):
        pass

    calls = {"n": 0}

    def fault(where: str) -> None:
        if where == point:
            calls["n"] += 1
            if calls["n"] == 2:  # the second batch of the run dies
                raise Killed(where)

    with pytest.raises(Killed):
        sync(conn, pipeline, warehouse, batch_size=batch, fault=fault)
    stuck = registry.get_pipeline(conn, pipeline.id)
    assert stuck.last_log_id == 30 + batch and stuck.last_error == f"Killed: {point}"
    report = sync(conn, pipeline, warehouse, batch_size=batch)
    assert report.to_log_id == 62
    with warehouse.loader() as loader:
        assert_warehouse_equals_ledger(conn, loader, ledger, pipeline.id)
        logs = loader.read_table(LOGS, ledger).column("id").to_pylist()
        assert logs == list(range(1, 63))


def test_amounts_of_ten_to_the_thirty_are_exact(conn, ledger, pipeline, warehouse):
    huge = 10**30 + 123
    if warehouse.money_digits is not None and warehouse.money_digits <= 31:
        pytest.skip(f"{warehouse.driver}'s local stand-in holds {warehouse.money_digits} digits where the "
                    "warehouse holds 38: `make check-cloud` runs this case against a real account")
    send(conn, ledger, posting("world", "whale", huge, "ETH/18"), posting("whale", "pool", huge - 1, "ETH/18"))
    sync(conn, pipeline, warehouse)
    with warehouse.loader() as loader:
        balances = {r["account"]: int(r["balance"]) for r in loader.read_table(BALANCES, ledger).to_pylist()}
        assert balances == {"world": -huge, "whale": 1, "pool": huge - 1}
        assert [int(a) for a in loader.read_table(POSTINGS, ledger).column("amount").to_pylist()] == [huge, huge - 1]
        moves = loader.read_table(MOVES, ledger).to_pylist()
        assert {(m["account"], int(m["post_commit_balance"])) for m in moves} >= {("whale", huge), ("whale", 1)}
        assert_warehouse_equals_ledger(conn, loader, ledger, pipeline.id)


def test_the_ledgers_largest_values_fit_every_76_digit_warehouse(conn, ledger, pipeline, warehouse):
    with warehouse.loader() as loader:
        if loader.dialect.money_digits < MONEY_DIGITS:
            pytest.skip(f"{warehouse.driver} holds {loader.dialect.money_digits} digits: see the next test")
    send(conn, ledger, posting("world", "a", MAX_AMOUNT))
    with pytest.raises(VolumesOutOfRange):  # world's output volume would pass 76 digits: refused at write time
        send(conn, ledger, posting("world", "b", 1))
    sync(conn, pipeline, warehouse)
    with warehouse.loader() as loader:
        balances = {r["account"]: int(r["balance"]) for r in loader.read_table(BALANCES, ledger).to_pylist()}
        assert balances == {"world": -MAX_AMOUNT, "a": MAX_AMOUNT}
        assert_warehouse_equals_ledger(conn, loader, ledger, pipeline.id)


def test_value_beyond_warehouse_limit_stops_right_before_its_log(conn, ledger, pipeline, warehouse):
    limit = warehouse.loader().dialect.money_digits
    if limit >= MONEY_DIGITS:
        pytest.skip(f"{warehouse.driver} holds every value the ledger accepts ({limit} digits)")
    send(conn, ledger, posting("world", "a", 5))
    send(conn, ledger, posting("world", "b", 7))
    send(conn, ledger, posting("world", "a", 10**limit))
    send(conn, ledger, posting("world", "c", 9))
    with pytest.raises(ValueOutOfRange, match=f"holds at most {limit} exactly") as info:
        sync(conn, pipeline, warehouse)
    assert info.value.log_id == 3
    assert "Every log up to 2 is loaded and the pipeline waits at log 3. To go on without losing anything" \
        in str(info.value)
    stuck = registry.get_pipeline(conn, pipeline.id)
    assert stuck.last_log_id == 2 and stuck.failing and stuck.last_error_code == "VALUE_OUT_OF_RANGE"
    with warehouse.loader() as loader:
        assert loader.read_table(LOGS, ledger).column("id").to_pylist() == [1, 2]
        assert loader.read_sync_state(pipeline.id)["last_log_id"] == 2


def _writer_process(database_url: str, ledger: str, first: int, stop, written) -> None:
    """A separate application committing small bulks a few milliseconds apart, until told to stop."""
    with connect(database_url) as own:
        i = first
        while i < first + 60 and (not stop.is_set() or i < first + 10):
            write(own, ledger, [new_tx(posting("world", f"w:{i % 3}", 1)) for _ in range(3)])
            with written.get_lock():
                written.value += 1
            i += 1
            time.sleep(0.005)


def test_writers_committing_during_syncs_never_lose_a_log(conn, database_url, ledger, pipeline, warehouse):
    # Writers are processes, as other applications would be (and chdb, the embedded ClickHouse, must not
    # share its process's GIL with busy Python threads: see loaders/clickhouse.py). They write until three
    # syncs have run under them, or 60 bulks each on a warehouse whose syncs are slow (a stand-in's jobs).
    activity(conn, ledger, 0, 5)
    context = multiprocessing.get_context("spawn")
    stop, written = context.Event(), context.Value("i", 0)
    writers = [context.Process(target=_writer_process, args=(database_url, ledger, 1000 * n, stop, written))
               for n in (1, 2)]
    for w in writers:
        w.start()
    try:
        for _ in range(3):
            # small batches: many cursor moves under fire
            sync(conn, pipeline, warehouse, batch_size=warehouse.small_batch)
    finally:
        stop.set()
        for w in writers:
            w.join(timeout=120)
    assert [w.exitcode for w in writers] == [0, 0]
    final = sync(conn, pipeline, warehouse)
    assert final.lag == 0 and final.to_log_id == 5 + written.value * 3  # three transactions a bulk
    with warehouse.loader() as loader:
        assert_warehouse_equals_ledger(conn, loader, ledger, pipeline.id)


def test_stopped_pipeline_keeps_its_position(conn, ledger, pipeline, warehouse):
    activity(conn, ledger, 0, 3)
    sync(conn, pipeline, warehouse)
    registry.set_enabled(conn, pipeline.id, False)
    activity(conn, ledger, 3, 3)
    with pytest.raises(PipelineStopped):
        sync(conn, pipeline, warehouse)
    started = registry.set_enabled(conn, pipeline.id, True)
    assert started.last_log_id == 3 and started.lag == 3
    assert sync(conn, pipeline, warehouse).from_log_id == 4
    with warehouse.loader() as loader:
        assert loader.read_table(SYNC_STATE).num_rows == 1


def test_bad_config_is_refused_and_exporters_in_use_are_kept(conn, ledger, pipeline, warehouse):
    with pytest.raises(InvalidExporterConfig, match="unknown setting"):
        registry.create_exporter(conn, warehouse.driver, {**warehouse.config, "colour": "blue"})
    with pytest.raises(InvalidExporterConfig):
        registry.create_exporter(conn, warehouse.driver, {})
    with pytest.raises(InvalidExporterConfig, match="unknown driver"):
        registry.create_exporter(conn, "nosuchwarehouse", {})
    with pytest.raises(ExporterInUse):
        registry.delete_exporter(conn, pipeline.exporter_id)
    registry.delete_pipeline(conn, pipeline.id)
    registry.delete_exporter(conn, pipeline.exporter_id)
    assert pipeline.exporter_id not in [e.id for e in registry.list_exporters(conn)]


def test_reset_during_a_sync_wins_and_the_next_sync_converges(conn, ledger, pipeline, warehouse):
    activity(conn, ledger, 0, 30)

    def reset_mid_sync(point: str) -> None:
        if point == "after_load":  # the batch is loaded; a user resets before the cursor moves
            registry.reset_pipeline(conn, pipeline.id, 0)

    from ledger_pipelines.errors import CursorMoved

    with pytest.raises(CursorMoved):
        sync(conn, pipeline, warehouse, batch_size=warehouse.batch(10), fault=reset_mid_sync)
    assert registry.get_pipeline(conn, pipeline.id).last_log_id == 0  # the reset is not overwritten
    assert sync(conn, pipeline, warehouse).to_log_id == 30
    with warehouse.loader() as loader:
        assert_warehouse_equals_ledger(conn, loader, ledger, pipeline.id)


def test_a_log_edited_before_export_stops_the_sync_and_loads_nothing(conn, ledger, pipeline, warehouse):
    activity(conn, ledger, 0, 5)
    sync(conn, pipeline, warehouse)
    activity(conn, ledger, 5, 5)
    conn.execute("""UPDATE ledger_core.logs SET data = jsonb_set(data, '{transaction,postings,0,amount}', '1')
                    WHERE ledger = %s AND id = 8""", (ledger,))
    with pytest.raises(LogChainBroken) as info:
        sync(conn, pipeline, warehouse, batch_size=100)
    assert info.value.log_id == 8 and info.value.error_code == "CHAIN_BROKEN"
    stuck = registry.get_pipeline(conn, pipeline.id)
    assert stuck.last_log_id == 5 and "log 8 does not verify" in stuck.last_error
    with warehouse.loader() as loader:
        assert loader.read_table(LOGS, ledger).column("id").to_pylist() == [1, 2, 3, 4, 5]  # 6 and 7 held back too


def test_edited_post_commit_volumes_never_reach_the_warehouse(conn, ledger, pipeline, warehouse):
    send(conn, ledger, posting("world", "a", 5))
    conn.execute("""UPDATE ledger_core.logs SET data = jsonb_set(data, '{transaction,postCommitVolumes,a,USD/2}',
                        '{"input": 777777, "output": 0, "balance": 777777}') WHERE ledger = %s AND id = 1""", (ledger,))
    with pytest.raises(LogChainBroken, match="log 1 does not verify"):
        sync(conn, pipeline, warehouse)
    with warehouse.loader() as loader:
        assert loader.read_table(BALANCES, ledger).num_rows == 0


def test_an_exported_log_rewritten_with_a_valid_hash_is_caught_by_the_warehouse_anchor(conn, ledger, pipeline,
                                                                                       warehouse):
    activity(conn, ledger, 0, 3)
    sync(conn, pipeline, warehouse)
    # Rewrite the last exported log *and* its hash and the ledger's head, so the chain alone still verifies.
    row = conn.execute("SELECT hash FROM ledger_core.logs WHERE ledger = %s AND id = 2", (ledger,)).fetchone()
    conn.execute("""UPDATE ledger_core.logs SET data = jsonb_set(data, '{transaction,metadata,n}', '"forged"')
                    WHERE ledger = %s AND id = 3""", (ledger,))
    forged = conn.execute("""SELECT sha256(%s || ledger_core.log_canonical(ledger, id, type, date, idempotency_key,
                                                                          data))
                             FROM ledger_core.logs WHERE ledger = %s AND id = 3""", (row[0], ledger)).fetchone()[0]
    conn.execute("UPDATE ledger_core.logs SET hash = %s WHERE ledger = %s AND id = 3", (forged, ledger))
    conn.execute("UPDATE ledger_core.ledgers SET last_log_hash = %s WHERE name = %s", (forged, ledger))
    reads.verify_chain(conn, ledger)  # the forgery is self-consistent
    activity(conn, ledger, 3, 2)
    with pytest.raises(LogChainBroken, match=r"log 3 does not verify \(the warehouse received hash"):
        sync(conn, pipeline, warehouse)


def _state_only(loader, pipeline, ledger, last_log_id: int, last_hash: str) -> None:
    """Make the warehouse claim it holds logs up to `last_log_id` with that hash (an empty batch and a state)."""
    from datetime import UTC, datetime

    from ledger_pipelines.tables import DATA_TABLES, Batch, SyncState

    empty = Batch(ledger, 0, 0, "", {t.name: t.arrow_schema.empty_table() for t in DATA_TABLES})
    loader.load(empty, SyncState(pipeline.id, ledger, last_log_id, last_hash, datetime.now(UTC)))


def test_a_wiped_warehouse_is_noticed_and_rebuilt(conn, ledger, pipeline, warehouse):
    activity(conn, ledger, 0, 10)
    sync(conn, pipeline, warehouse)
    warehouse.wipe()  # deleted, restored empty, or the exporter now points at a new database
    activity(conn, ledger, 10, 3)
    report = sync(conn, pipeline, warehouse)
    assert (report.from_log_id, report.to_log_id, report.logs) == (1, 13, 13)
    assert "held logs up to 0 only" in report.note
    with warehouse.loader() as loader:
        assert_warehouse_equals_ledger(conn, loader, ledger, pipeline.id)
    # Nothing new, warehouse wiped again: a sync with no new logs still notices and rebuilds it.
    warehouse.wipe()
    assert sync(conn, pipeline, warehouse).logs == 13
    assert registry.sync_history(conn, pipeline.id, limit=1)[0].note.startswith("the warehouse held logs up to 0")


def test_a_warehouse_ahead_of_the_ledger_or_on_another_chain_stops(conn, ledger, pipeline, warehouse):
    from ledger_pipelines.errors import WarehouseAhead

    activity(conn, ledger, 0, 5)
    sync(conn, pipeline, warehouse)
    activity(conn, ledger, 5, 1)
    # sync_state is the furthest log the warehouse has held (its merge keeps the highest), so claims only rise.
    with warehouse.loader() as loader:
        _state_only(loader, pipeline, ledger, 6, "cd" * 32)
    with pytest.raises(LogChainBroken, match=r"log 6 does not verify .*another copy of this ledger"):
        sync(conn, pipeline, warehouse)
    with warehouse.loader() as loader:
        _state_only(loader, pipeline, ledger, 9, "ab" * 32)
    with pytest.raises(WarehouseAhead, match=r"holds logs up to 9 .* which ends at log 6"):
        sync(conn, pipeline, warehouse)
    stuck = registry.get_pipeline(conn, pipeline.id)
    assert stuck.last_log_id == 5 and stuck.last_error_code == "WAREHOUSE_AHEAD"


def test_resets_only_move_the_cursor_back(conn, ledger, pipeline, warehouse):
    activity(conn, ledger, 0, 3)
    assert sync(conn, pipeline, warehouse, batch_size=warehouse.batch(1)).to_log_id == 3
    registry.reset_pipeline(conn, pipeline.id, 1)
    with pytest.raises(InvalidReset, match="only moves the cursor back"):
        registry.reset_pipeline(conn, pipeline.id, 2)  # from 1 to 2 would skip log 2 for good
    report = sync(conn, pipeline, warehouse)
    assert (report.from_log_id, report.to_log_id) == (2, 3)
    with warehouse.loader() as loader:
        assert loader.read_table(LOGS, ledger).column("id").to_pylist() == [1, 2, 3]


def test_setup_runs_only_for_a_new_or_older_schema_and_an_old_warehouse_is_replayed(conn, ledger, pipeline,
                                                                                   warehouse, monkeypatch):
    from ledger_pipelines.loaders import DRIVERS

    loader_class = DRIVERS.get(warehouse.driver)
    setups = []
    original = loader_class.setup
    monkeypatch.setattr(loader_class, "setup", lambda self: (setups.append(1), original(self))[1])
    activity(conn, ledger, 0, 4)
    sync(conn, pipeline, warehouse)
    assert len(setups) == 1  # the first sync builds the warehouse
    activity(conn, ledger, 4, 2)
    sync(conn, pipeline, warehouse)
    assert len(setups) == 1  # not again while its schema version is current
    # A warehouse built before version 3: no schema version recorded, moves without their display amounts.
    with warehouse.loader() as loader, loader.errors():
        loader.execute(f"ALTER TABLE {loader.qualified(SYNC_STATE)} DROP COLUMN {loader.ident('schema_version')}")
        loader.execute(f"DROP VIEW {loader.qualified('moves_effective')}")
        loader.execute(f"ALTER TABLE {loader.qualified(MOVES)} DROP COLUMN {loader.ident('display_amount')}")
    activity(conn, ledger, 6, 2)
    report = sync(conn, pipeline, warehouse)
    # Set up again (the column added in place), emptied, and every log replayed into the new shape.
    assert len(setups) == 2 and report.from_log_id == 1 and report.to_log_id == 8
    assert report.note == f"the warehouse's tables were built by schema version 0; emptied and replayed from log 1 " \
                          f"into version {SCHEMA_VERSION}"
    with warehouse.loader() as loader:
        assert loader.read_sync_state(pipeline.id)["schema_version"] == SCHEMA_VERSION
        assert_warehouse_equals_ledger(conn, loader, ledger, pipeline.id)
        assert loader.read_table(LOGS, ledger).column("id").to_pylist() == list(range(1, 9))


def test_a_pipeline_created_again_over_a_loaded_warehouse_duplicates_nothing(conn, ledger, pipeline, warehouse):
    # Rows of logs new to the warehouse are appended, not merged: "new" must come from what the warehouse holds,
    # not from a sync state, which a deleted pipeline's successor (a new id) does not have.
    # Batches of 8 make the second sync merge three batches the warehouse holds and append the fourth, new one,
    # where a loader appends at all.
    batch = 8 if warehouse.loader_class().appends else warehouse.batch(8)
    activity(conn, ledger, 0, 20)
    sync(conn, pipeline, warehouse, batch_size=batch)
    registry.delete_pipeline(conn, pipeline.id)
    again = registry.create_pipeline(conn, ledger, pipeline.exporter_id, name=f"{pipeline.name}-again")
    activity(conn, ledger, 20, 5)
    report = sync(conn, again, warehouse, batch_size=batch)
    assert (report.from_log_id, report.to_log_id) == (1, 25)
    with warehouse.loader() as loader:
        assert_warehouse_equals_ledger(conn, loader, ledger, again.id)
        assert loader.read_table(LOGS, ledger).column("id").to_pylist() == list(range(1, 26))
        assert loader.read_table(MOVES, ledger).num_rows == 25 * 3 * 2


def test_a_warehouses_own_read_of_current_rows_equals_the_row_by_row_reference(conn, ledger, pipeline, warehouse):
    """What a batch's fold starts from: a loader's own `fetch_current` (Arrow straight from the warehouse) must
    return exactly what the base class's row-by-row read returns, hostile text and nulls included."""
    if warehouse.loader_class().fetch_current is Loader.fetch_current:
        pytest.skip(f"{warehouse.driver} reads current rows through the row-by-row reference itself")
    hostile = {"quoted": 'a "quote", a comma,\nand a line', "empty": "", "null": "NULL", "slash": "\\N \\",
               "unicode": "é€😀", "json": '{"not": "parsed"}'}
    write(conn, ledger, [
        new_tx(posting("world", "users:a", 10**18, "ETH/18"), posting("users:a", "fees", 7, "ETH/18"),
               metadata=hostile, reference="r,1", timestamp="2024-03-01T23:59:59.999999Z",
               accountMetadata={"users:a": hostile, "users:b": {}}),
        new_tx(posting("world", "users:b", 5), timestamp="2024-03-02T00:00:00Z"),  # no reference, no metadata
        new_tx(posting("world", "users:c", 1), timestamp="2024-02-29T12:00:00+05:00"),
        RevertTransaction(2, at_effective_date=True)])
    sync(conn, pipeline, warehouse, batch_size=warehouse.batch(2))
    with warehouse.loader() as loader:
        for table, column, within in ((TRANSACTIONS, "id", None), (ACCOUNTS, "address", None),
                                      (BALANCES, "account", None), (DAILY_VOLUMES, "account", None),
                                      (DAILY_VOLUMES, "account", ("day", date(2024, 3, 1), date(2024, 3, 1)))):
            keys = sorted(set(loader.read_table(table, ledger).column(column).to_pylist()))
            assert keys, table.name
            # As the transforms take them: each column cast to the table's Arrow type.
            fast, reference = (pa.Table.from_arrays([rows.column(f.name).cast(f.type) for f in table.arrow_schema],
                                                    schema=table.arrow_schema).sort_by([(k, "ascending") for k in
                                                                                        table.key])
                               for rows in (loader.fetch_current(table, ledger, keys, within),
                                            Loader.fetch_current(loader, table, ledger, keys, within)))
            assert fast.num_rows > 0 and fast.to_pylist() == reference.to_pylist(), table.name
