"""A ledger refusal crosses processes whole (the API's writer process sends them to its HTTP processes)."""

from __future__ import annotations

import pickle

import pytest

from ledger_core import errors

REFUSALS = [
    errors.ValidationError("must be positive", field="postings[0].amount"),
    errors.LedgerNotFound("shop"),
    errors.TransactionNotFound("shop", 42),
    errors.AccountNotFound("shop", "users:1"),
    errors.InsufficientFunds("users:1", "USD/2", 10**40, 10**40 + 1, transaction_index=3),
    errors.VolumesOutOfRange("users:1", "USD/2", "input", 77),
    errors.IdempotencyConflict("key\x00with nul"),
    errors.ReferenceConflict("order-1", existing_id=7),
    errors.AlreadyReverted(5),
    errors.ChainBroken("shop", 9, "hash differs"),
    errors.LedgerInconsistent("shop", "volumes", {"account": "a"}, ["input"], "1", "2"),
    errors.SchemaOutOfDate("core", 3, 4),
]


def every_subclass(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    return found.union(*(every_subclass(c) for c in found)) if found else found


@pytest.mark.parametrize("refusal", REFUSALS, ids=lambda e: type(e).__name__)
def test_a_refusal_survives_pickling_with_its_fields(refusal):
    refusal.command_index = 2
    copy = pickle.loads(pickle.dumps(refusal))
    assert type(copy) is type(refusal) and str(copy) == str(refusal) and copy.args == refusal.args
    assert copy.__dict__ == refusal.__dict__ and copy.command_index == 2
    assert copy.error_code == refusal.error_code


def test_no_error_class_replaces_the_roots_pickling():
    assert all("__reduce__" not in vars(cls) for cls in every_subclass(errors.LedgerError))


def test_a_drivers_message_is_reported_by_its_first_line() -> None:
    from ledger_pipelines.errors import first_line

    said = Exception("connection to server failed: Connection refused\n\tIs the server running?\nHINT: x")
    assert first_line(said) == "connection to server failed: Connection refused"
    assert first_line(Exception("  \n "), "connection lost") == "connection lost"
    assert first_line(Exception()) == ""
