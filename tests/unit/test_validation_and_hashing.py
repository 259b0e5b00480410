"""Rules that need no database: validation, exact JSON, hashing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ledger_core import hashing, validation
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
    assert validation.amount(10**80) == 10**80
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


def test_hash_ignores_derived_volumes_but_not_data():
    date = datetime(2024, 1, 1, tzinfo=UTC)
    base = {"transaction": {"id": 1, "postings": [], "postCommitVolumes": {"a": 1}}}
    same = {"transaction": {"id": 1, "postings": [], "postCommitVolumes": {"a": 2}}}
    other = {"transaction": {"id": 2, "postings": []}}

    def h(data, previous=None):
        return hashing.chain_hash(previous, hashing.canonical_bytes(
            ledger="l", log_id=1, log_type="NEW_TRANSACTION", date=date, data=data, idempotency_key=None))

    assert h(base) == h(same)
    assert h(base) != h(other)
    assert h(base, b"x") != h(base, b"y")


def test_hash_covers_metadata_of_accounts_named_like_derived_fields():
    date = datetime(2024, 1, 1, tzinfo=UTC)

    def h(data):
        return hashing.canonical_bytes(ledger="l", log_id=1, log_type="NEW_TRANSACTION", date=date, data=data,
                                       idempotency_key=None)

    tx = {"id": 1, "postings": []}
    honest = {"transaction": tx, "accountMetadata": {"postCommitVolumes": {"tier": "gold"}}}
    forged = {"transaction": tx, "accountMetadata": {"postCommitVolumes": {"tier": "platinum"}}}
    assert h(honest) != h(forged)
