"""The log reader splits a large read over its connections; what it returns is what one query returns."""

from __future__ import annotations

import psycopg
import pytest

from ledger_core.writer import write
from ledger_pipelines import reader as reader_module
from ledger_pipelines.errors import LogGap
from ledger_pipelines.reader import LogReader
from tests.helpers import new_tx, posting

LOGS = 41


@pytest.fixture
def logs(conn: psycopg.Connection, ledger: str, monkeypatch: pytest.MonkeyPatch) -> str:
    write(conn, ledger, [new_tx(posting("world", f"users:{i}", i + 1)) for i in range(LOGS)])
    monkeypatch.setattr(reader_module, "MIN_PART", 4)  # parts of a few logs: every read below is split
    return ledger


@pytest.mark.parametrize(("after", "up_to", "limit"), [
    (0, LOGS, LOGS),  # the whole ledger: 3 parts, of 13, 14 and 14 logs
    (0, LOGS, 10),  # the limit is under the range: the parts cover the first 10 only
    (5, 30, 1000),  # a range inside the ledger
    (20, 10**9, 10**9),  # a bound past the last log: the last part reads nothing
    (39, LOGS, 100),  # too few logs to split: one query
    (LOGS, 10**9, 100),  # nothing after the cursor
])
def test_a_read_split_over_connections_returns_what_one_query_returns(database_url: str, logs: str, after: int,
                                                                     up_to: int, limit: int) -> None:
    with LogReader(database_url, connections=3) as split, LogReader(database_url, connections=1) as whole:
        read = split.read(logs, after=after, up_to=up_to, limit=limit)
        assert read.equals(whole.read(logs, after=after, up_to=up_to, limit=limit).combine_chunks())
    assert read.column("id").to_pylist() == list(range(after + 1, min(after + limit, up_to, LOGS) + 1))


@pytest.mark.parametrize("missing", [1, 13, 14, 27, 28, 40], ids=lambda i: f"log {i}")
def test_a_hole_anywhere_in_a_split_read_stops_it(conn: psycopg.Connection, database_url: str, logs: str,
                                                   missing: int) -> None:
    # Parts of 3 over 41 logs: 1-13, 14-27, 28-41. (A missing last log is no hole: the sync's own count of
    # what it asked for catches it.)
    conn.execute("DELETE FROM ledger_core.logs WHERE ledger = %s AND id = %s", (logs, missing))
    with LogReader(database_url, connections=3) as split, pytest.raises(LogGap):
        split.read(logs, after=0, up_to=LOGS, limit=LOGS)


def test_a_reader_that_cannot_connect_says_so_when_it_reads(logs: str) -> None:
    # Connections open in the background: the error comes with the first read, and closing does not raise it.
    with LogReader("postgresql://nobody@127.0.0.1:1/none") as unreachable, \
            pytest.raises(Exception, match=r"(?i)connect"):
        unreachable.read(logs, after=0, up_to=LOGS, limit=LOGS)
