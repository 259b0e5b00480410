"""The chain and the replay catch every edit made outside the write path; the database and Python agree."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger_core import hashing, reads
from ledger_core.audit import verify_deep
from ledger_core.errors import ChainBroken, LedgerInconsistent
from ledger_core.requests import RevertTransaction, SetMetadata
from ledger_core.validation import format_timestamp, timestamp
from ledger_core.writer import write
from tests.helpers import new_tx, posting, send


def _activity(conn, ledger) -> None:
    send(conn, ledger, posting("world", "users:1", 500), posting("users:1", "fees", 5),
         metadata={"order": "o-1"}, accountMetadata={"users:1": {"tier": "gold"}})
    send(conn, ledger, posting("world", "users:2", 300, "EUR/2"), timestamp="2023-06-01T00:00:00Z")  # backdated
    send(conn, ledger, posting("users:1", "users:2", 40), reference="r-3")
    write(conn, ledger, [RevertTransaction(3), SetMetadata.build("TRANSACTION", 1, {"status": "paid"}),
                         SetMetadata.build("ACCOUNT", "merchants:9", {"kyc": "ok"})])


def _both_verifications_name(conn, ledger) -> int | None:
    """The first broken log by the set-based check and by the Python one (the sync's); they must agree."""
    found = []
    for in_database in (True, False):
        try:
            reads.verify_chain(conn, ledger, in_database=in_database)
            found.append(None)
        except ChainBroken as exc:
            found.append(exc.log_id)
    assert found[0] == found[1], f"database says {found[0]}, Python says {found[1]}"
    return found[0]


def test_an_untouched_ledger_verifies_deeply(conn, ledger):
    _activity(conn, ledger)
    report = verify_deep(conn, ledger)
    assert report.chain.logs == 6 and _both_verifications_name(conn, ledger) is None
    assert report.rows == {"transactions": 4, "moves": 10, "daily_volumes": 6, "volumes": 6, "accounts": 5,
                           "ledgers": 1}


def test_edited_post_commit_volumes_break_the_chain(conn, ledger):
    _activity(conn, ledger)
    conn.execute("""UPDATE ledger_core.logs SET data = jsonb_set(data,
                        '{transaction,postCommitVolumes,users:1,USD/2,input}', '777777')
                    WHERE ledger = %s AND id = 1""", (ledger,))
    assert _both_verifications_name(conn, ledger) == 1


@pytest.mark.parametrize(("sql", "table", "column"), [
    ("UPDATE ledger_core.transactions SET postings = jsonb_set(postings, '{0,amount}', '501') "
     "WHERE ledger = %s AND id = 1", "transactions", "postings"),
    ("UPDATE ledger_core.transactions SET metadata = '{}' WHERE ledger = %s AND id = 1", "transactions", "metadata"),
    ("UPDATE ledger_core.volumes SET input = input + 1 WHERE ledger = %s AND account = 'users:2' AND asset = 'EUR/2'",
     "volumes", "input"),
    ("UPDATE ledger_core.moves SET post_commit_output = 1 WHERE ledger = %s AND transaction_id = 2 "
     "AND NOT is_source", "moves", "post_commit_output"),
    ("UPDATE ledger_core.daily_volumes SET output = output + 1 WHERE ledger = %s AND account = 'users:1'",
     "daily_volumes", "output"),
    ("UPDATE ledger_core.accounts SET metadata = '{\"tier\": \"platinum\"}' WHERE ledger = %s AND address = 'users:1'",
     "accounts", "metadata"),
    ("DELETE FROM ledger_core.moves WHERE ledger = %s AND transaction_id = 4 AND is_source", "moves", None),
    ("UPDATE ledger_core.ledgers SET last_transaction_id = 9 WHERE name = %s", "ledgers", "last_transaction_id"),
])
def test_edited_tables_pass_the_chain_but_not_the_replay(conn, ledger, sql, table, column):
    _activity(conn, ledger)
    conn.execute(sql, (ledger,))
    assert _both_verifications_name(conn, ledger) is None  # the log itself is intact
    with pytest.raises(LedgerInconsistent) as info:
        verify_deep(conn, ledger)
    assert info.value.table == table
    assert info.value.columns == ([column] if column else [])
    assert str(info.value).startswith(f"ledger '{ledger}': {table} (")


def test_the_deep_check_names_the_first_difference_in_key_order(conn, ledger):
    _activity(conn, ledger)
    conn.execute("UPDATE ledger_core.transactions SET reference = 'x' || id WHERE ledger = %s AND id IN (2, 4)",
                 (ledger,))
    with pytest.raises(LedgerInconsistent) as info:
        verify_deep(conn, ledger)
    assert info.value.key == {"id": 2} and info.value.columns == ["reference"]
    assert 'the log says {"reference": null}, the table holds {"reference": "x2"}' in str(info.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-10**80, max_value=10**80)
    | st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6),
                      children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values)
def test_jsonb_text_is_what_postgres_prints(conn, value):
    printed = conn.execute("SELECT %s::jsonb::text", (json.dumps(value),)).fetchone()[0]
    assert hashing.jsonb_text(value) == printed


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "2024-02-29T12:00:00.5Z",
                                   "2024-01-15T10:30:00.000001Z", "1969-12-31T23:59:59.1Z"])
def test_rfc3339_in_sql_is_format_timestamp(conn, stamp):
    value = timestamp(stamp)
    assert conn.execute("SELECT ledger_core.rfc3339(%s)", (value,)).fetchone()[0] == format_timestamp(value) == stamp


free_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=8)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(metadata=st.dictionaries(free_text, free_text, max_size=3), amount=st.integers(1, 10**40),
       key=st.none() | free_text, reference=st.none() | free_text, tamper=st.booleans())
def test_database_and_python_hash_the_same_logs(conn, ledger, metadata, amount, key, reference, tamper):
    try:
        write(conn, ledger, [new_tx(posting("world", "users:h", amount, "ETH/18"), metadata=metadata,
                                    reference=reference, idempotency_key=key,
                                    accountMetadata={"users:h": metadata})])
    except Exception as exc:  # a reference or key drawn twice: a refused write, which is fine here
        assert type(exc).__name__ in ("ReferenceConflict", "IdempotencyConflict"), exc
    rows = conn.execute("""SELECT id, ledger_core.log_canonical(ledger, id, type, date, idempotency_key, data),
                                  type, date, idempotency_key, data::text FROM ledger_core.logs WHERE ledger = %s""",
                        (ledger,)).fetchall()
    for log_id, in_sql, log_type, date, ikey, data_text in rows:
        assert bytes(in_sql) == hashing.canonical(ledger=ledger, log_id=log_id, log_type=log_type,
                                                  date=format_timestamp(date), idempotency_key=ikey,
                                                  data_text=data_text)
    if tamper and rows:
        conn.execute("UPDATE ledger_core.logs SET data = jsonb_set(data, '{transaction,metadata,x}', '\"y\"') "
                     "WHERE ledger = %s AND id = %s", (ledger, rows[0][0]))
        assert _both_verifications_name(conn, ledger) == rows[0][0]
        conn.execute("UPDATE ledger_core.logs SET data = data #- '{transaction,metadata,x}' "
                     "WHERE ledger = %s AND id = %s", (ledger, rows[0][0]))
    assert _both_verifications_name(conn, ledger) is None
