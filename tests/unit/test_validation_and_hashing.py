"""Rules that need no database: validation, exact JSON, hashing."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger_core import export, hashing, validation
from ledger_core.errors import ValidationError
from ledger_core.requests import NewTransaction, parse_json


@pytest.mark.parametrize("name", ["main", "my-ledger_2", "a" * 63])
def test_good_ledger_names(name):
    assert validation.ledger_name(name) == name


@pytest.mark.parametrize("name", ["", "a" * 64, "with space", "é", None, 3])
def test_bad_ledger_names(name):
    with pytest.raises(ValidationError, match="ledger name"):
        validation.ledger_name(name)


@pytest.mark.parametrize("address", ["world", "users:001", "payments:001:fees", "a-b_c:D"])
def test_good_addresses(address):
    assert validation.address(address) == address


@pytest.mark.parametrize("address", ["", "users:", ":x", "a::b", "users 1", "a:b/c"])
def test_bad_addresses(address):
    with pytest.raises(ValidationError, match="account address"):
        validation.address(address)


@pytest.mark.parametrize("asset", ["USD", "USD/2", "ETH/18", "MADEUPONE", "USDT_POLYGON/6"])
def test_good_assets(asset):
    assert validation.asset(asset) == asset


@pytest.mark.parametrize("asset", ["usd", "USD/", "USD/1234567", "1USD", "", "USD/2/2"])
def test_bad_assets(asset):
    with pytest.raises(ValidationError, match="invalid asset"):
        validation.asset(asset)


def test_amounts_are_exact_integers():
    assert validation.amount(10**75) == 10**75
    assert validation.amount("1" + "0" * 60) == 10**60
    for bad in (-1, 1.0, "1.5", "1e3", True, None, " 1", "-1"):
        with pytest.raises(ValidationError):
            validation.amount(bad)


def test_json_numbers_are_never_floats():
    body = parse_json('{"postings": [{"source": "world", "destination": "a", "amount": '
                      '123456789012345678901234567890123456789, "asset": "USD"}]}')
    tx = NewTransaction.from_json(body)
    assert tx.postings[0].posting.amount == 123456789012345678901234567890123456789
    with pytest.raises(ValidationError, match=r"got 100\.0"):
        NewTransaction.from_json(parse_json('{"postings": [{"source": "world", "destination": "a", '
                                            '"amount": 100.0, "asset": "USD"}]}'))


def test_timestamps():
    assert validation.timestamp("2024-01-15T10:30:00Z") == datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
    assert validation.timestamp("2024-01-15T12:30:00.5+02:00") == datetime(2024, 1, 15, 10, 30, 0, 500000, tzinfo=UTC)
    assert validation.format_timestamp(datetime(2024, 1, 15, 10, 30, 0, 120000, tzinfo=UTC)) == \
        "2024-01-15T10:30:00.12Z"
    for bad in ("2024-01-15", "2024-01-15T10:30:00", "2024-01-15T10:30:00.1234567Z", "yesterday"):
        with pytest.raises(ValidationError):
            validation.timestamp(bad)


def test_address_patterns():
    assert validation.address_pattern("users:") == "^users:.+$"
    assert validation.address_pattern("users:*:main") == "^users:[^:]+:main$"
    with pytest.raises(ValidationError):
        validation.address_pattern("users:%")


def test_version_2_hash_covers_derived_volumes_and_data():
    def h(data, previous=None):
        return hashing.chain_hash(previous, hashing.canonical(
            ledger="l", log_id=1, log_type="NEW_TRANSACTION", date="2024-01-01T00:00:00Z", idempotency_key=None,
            data_text=hashing.jsonb_text(data)))

    base = {"transaction": {"id": 1, "postings": [], "postCommitVolumes": {"a": {"USD": {"input": 5}}}}}
    edited = {"transaction": {"id": 1, "postings": [], "postCommitVolumes": {"a": {"USD": {"input": 777777}}}}}
    assert h(base) != h(edited)
    assert h(base) != h({"transaction": {"id": 2, "postings": []}})
    assert h(base, b"x") != h(base, b"y")


def test_version_1_hash_ignores_derived_volumes_of_transactions_only():
    def h(data):
        return hashing.canonical_v1(ledger="l", log_id=1, log_type="NEW_TRANSACTION", date="2024-01-01T00:00:00Z",
                                    idempotency_key=None, data=data)

    assert h({"transaction": {"id": 1, "postCommitVolumes": {"a": 1}}}) == \
        h({"transaction": {"id": 1, "postCommitVolumes": {"a": 2}}})
    tx = {"id": 1, "postings": []}
    # accountMetadata is keyed by address, and `postCommitVolumes` is a valid address: its metadata is hashed.
    assert h({"transaction": tx, "accountMetadata": {"postCommitVolumes": {"tier": "gold"}}}) != \
        h({"transaction": tx, "accountMetadata": {"postCommitVolumes": {"tier": "platinum"}}})


def test_jsonb_text_orders_keys_as_postgres_does():
    # jsonb orders keys by byte length, then bytes; separators ", " and ": ".
    assert hashing.jsonb_text({"bb": 1, "a": [True, None, "é"], "ab": {"z": -5, "yy": "\n"}}) == \
        '{"a": [true, null, "é"], "ab": {"z": -5, "yy": "\\n"}, "bb": 1}'
    assert hashing.jsonb_text({"é": 1, "ab": 2, "b": 3}) == '{"b": 3, "ab": 2, "é": 1}'  # é is 2 bytes


def test_first_broken_link_names_the_altered_log():
    def chain(datas):
        logs, previous = [], None
        for i, data in enumerate(datas, start=1):
            text = hashing.jsonb_text(data)
            digest = hashing.chain_hash(previous, hashing.canonical(
                ledger="l", log_id=i, log_type="SET_METADATA", date="2024-01-01T00:00:00Z", idempotency_key=None,
                data_text=text))
            logs.append(hashing.StoredLog(i, "SET_METADATA", "2024-01-01T00:00:00Z", None, text, digest, 2))
            previous = digest
        return logs

    logs = chain([{"n": str(i)} for i in range(5)])
    assert hashing.first_broken_link("l", logs, previous=None, previous_id=0) is None
    assert hashing.first_broken_link("l", logs[2:], previous=logs[1].hash, previous_id=2) is None
    tampered = [*logs[:3], hashing.StoredLog(4, "SET_METADATA", logs[3].date, None, '{"n": "x"}', logs[3].hash, 2),
                logs[4]]
    assert hashing.first_broken_link("l", tampered, previous=None, previous_id=0).log_id == 4
    assert hashing.first_broken_link("l", logs[3:], previous=None, previous_id=3).log_id == 4  # wrong anchor
    gap = hashing.first_broken_link("l", [logs[0], logs[2]], previous=None, previous_id=0)
    assert (gap.log_id, gap.reason) == (2, "log ids jump from 1 to 3")


@pytest.mark.parametrize("suffix", ["\n", "\r\n", " ", "\x00"])
def test_names_with_a_trailing_newline_or_control_character_are_refused(suffix):
    for check, name in ((validation.ledger_name, "shop"), (validation.address, "world"), (validation.asset, "USD")):
        with pytest.raises(ValidationError):
            check(name + suffix)


@pytest.mark.parametrize("value", ["a\x00b", "\ud800", "ok\udfff"])
def test_nul_and_lone_surrogates_are_refused_in_every_free_text(value):
    for check in (lambda: validation.metadata({value: "v"}), lambda: validation.metadata({"k": value}),
                  lambda: validation.reference(value),
                  lambda: NewTransaction.from_json({"postings": [{"source": "world", "destination": "a",
                                                                  "amount": 1, "asset": "USD"}]},
                                                   idempotency_key=value)):
        with pytest.raises(ValidationError):
            check()


def test_amounts_are_bounded_to_76_digits():
    assert validation.amount(validation.MAX_AMOUNT) == 10**76 - 1
    assert validation.amount("0" * 10 + "9" * 76) == 10**76 - 1
    for bad in (10**76, "1" + "0" * 76, "9" * 5000):
        with pytest.raises(ValidationError, match="at most 76"):
            validation.amount(bad)


@pytest.mark.parametrize("text", ["[" * 1000 + "]" * 1000, '{"a": ' * 200 + "1" + "}" * 200,
                                  "1" * 5000, '{"amount": ' + "9" * 4301 + "}", '"\\ud800"', "-" + "1" * 200])
def test_hostile_json_is_one_validation_error(text):
    with pytest.raises(ValidationError):
        parsed = parse_json(text)
        NewTransaction.from_json(parsed)


@pytest.mark.parametrize("stamp", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "2024-01-01T00:00:00Z\n",
                                   "\uff12\uff10\uff12\uff14-01-01T00:00:00Z", "2024-13-01T00:00:00Z"])
def test_edge_timestamps_are_refused_cleanly(stamp):
    with pytest.raises(ValidationError, match="timestamp"):
        validation.timestamp(stamp)


def test_edge_timestamps_that_fit_round_trip():
    assert validation.format_timestamp(validation.timestamp("0001-01-01T00:00:00Z")) == "0001-01-01T00:00:00Z"
    assert validation.format_timestamp(validation.timestamp("9999-12-31T23:59:59.999999Z")) == \
        "9999-12-31T23:59:59.999999Z"


@given(st.lists(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999),
                             timezones=st.just(UTC)), min_size=1, max_size=50))
def test_the_column_wise_rfc3339_is_format_timestamp(stamps: list[datetime]) -> None:
    # The sync formats a batch's dates column-wise to recompute their hashes; the writer formats one at a time.
    column = pa.chunked_array([pa.array(stamps, pa.timestamp("us", tz="UTC"))])
    assert export.rfc3339(column).to_pylist() == [validation.format_timestamp(s) for s in stamps]


def test_the_batch_check_reads_arrow_as_the_writer_hashed() -> None:
    previous, rows = None, []
    for i, (stamp, key) in enumerate([(datetime(2024, 1, 1, tzinfo=UTC), None),
                                      (datetime(2024, 1, 1, 0, 0, 0, 120000, tzinfo=UTC), 'k"\n🎉'),
                                      (datetime(1, 1, 1, tzinfo=UTC), "plain")], start=1):
        text = hashing.jsonb_text({"n": str(i)})
        digest = hashing.chain_hash(previous, hashing.canonical(
            ledger="l", log_id=i, log_type="SET_METADATA", date=validation.format_timestamp(stamp),
            idempotency_key=key, data_text=text))
        rows.append({"id": i, "type": "SET_METADATA", "date": stamp, "idempotency_key": key, "hash": digest.hex(),
                     "data": text, "hash_version": 2})
        previous = digest
    batch = pa.Table.from_pylist(rows, schema=pa.schema([
        ("id", pa.int64()), ("type", pa.string()), ("date", pa.timestamp("us", tz="UTC")),
        ("idempotency_key", pa.string()), ("hash", pa.string()), ("data", pa.string()), ("hash_version", pa.int16())]))
    assert export.first_broken_link("l", batch, previous=None, previous_id=0, previous_version=2) is None
    altered = batch.set_column(5, "data", pa.array(['{"n": "1"}', '{"n": "x"}', '{"n": "3"}']))
    broken = export.first_broken_link("l", altered, previous=None, previous_id=0, previous_version=2)
    assert broken is not None and broken.log_id == 2
