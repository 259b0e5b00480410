"""Property: whatever a caller sends, a refused write leaves the ledger exactly as it was."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger_core import reads
from ledger_core.cli import bulk_command
from ledger_core.errors import LedgerError
from ledger_core.writer import write
from tests.helpers import asset_sums, counts

accounts = st.sampled_from(["world", "a", "b", "users:001", "bad address", "", "x:", "WORLD"])
assets = st.sampled_from(["USD/2", "EUR", "usd", "ETH/18", "", "USD/2/3"])
amounts = st.one_of(
    st.integers(min_value=-5, max_value=10**45),
    st.sampled_from([1.5, "12", "-3", "1e3", True, None, "", 0.0]),
)
postings = st.fixed_dictionaries(
    {"source": accounts, "destination": accounts, "amount": amounts, "asset": assets},
    optional={"allowOverdraft": st.sampled_from([True, False, "yes"])},
)
bodies = st.fixed_dictionaries(
    {"postings": st.lists(postings, min_size=0, max_size=3)},
    optional={
        "metadata": st.one_of(st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
                              st.just({"n": 1})),
        "reference": st.sampled_from(["r1", "r2", "", None]),
        "timestamp": st.sampled_from(["2024-01-01T00:00:00Z", "2024-01-01", "not a date",
                                      "2024-01-01T00:00:00.123456789Z"]),
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(bodies, min_size=1, max_size=4))
def test_refused_writes_change_nothing(conn, ledger, batch):
    before_counts, before_sums = counts(conn, ledger), asset_sums(conn, ledger)
    # Round-trip through JSON text as a user would send it; amounts stay exact (no float parsing).
    try:
        commands = [bulk_command(json.loads(json.dumps(body)), i + 1) for i, body in enumerate(batch)]
        write(conn, ledger, commands)
    except LedgerError:
        assert counts(conn, ledger) == before_counts
        assert asset_sums(conn, ledger) == before_sums
    else:
        assert counts(conn, ledger)["logs"] == before_counts["logs"] + len(batch)
    assert all(total == 0 for total in asset_sums(conn, ledger).values())
    reads.verify_chain(conn, ledger)
