"""Several writer processes at once, on accounts that do not exist yet and on ones that do.

New accounts used to deadlock: inserting a `volumes` row takes a KEY SHARE lock on the ledger's row (its
foreign key), which a FOR UPDATE on that row conflicts with. The writer now takes FOR NO KEY UPDATE, which
serialises writers just the same but not against key-share locks. Retries stay a backstop: this test
counts the server's own deadlock counter, which a retried deadlock still raises.
"""

from __future__ import annotations

import multiprocessing
import time

import pytest

from ledger_core import reads
from ledger_core.audit import verify_deep
from ledger_core.db import connect
from ledger_core.ledgers import create_ledger
from ledger_core.writer import write
from tests.helpers import asset_sums, new_tx, posting

WRITERS = 8
WRITES_EACH = 25


def _writer(url: str, ledger: str, writer: int, new_accounts: bool) -> None:
    with connect(url) as conn:
        for i in range(WRITES_EACH):
            account = f"new:{writer}:{i}" if new_accounts and i % 2 == 0 else f"old:{(writer + i) % 4}"
            write(conn, ledger, [new_tx(posting("world", account, 100), posting(account, "hot", 1),
                                        posting("world", f"fresh:{writer}:{i}", 1, "EUR/2"))])


def _deadlocks(conn) -> int:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return int(conn.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
               .fetchone()[0])


@pytest.mark.parametrize("new_accounts", [True, False], ids=["new-accounts", "existing-accounts"])
def test_writer_processes_never_deadlock(fresh_db_url, new_accounts):
    with connect(fresh_db_url) as conn:
        ledger = "concurrent"
        create_ledger(conn, ledger)
        # Existing accounts exist before the writers start; new ones are created by the writers themselves.
        write(conn, ledger, [new_tx(posting("world", f"old:{n}", 1)) for n in range(4)])
        before = _deadlocks(conn)
        context = multiprocessing.get_context("spawn")
        writers = [context.Process(target=_writer, args=(fresh_db_url, ledger, n, new_accounts))
                   for n in range(WRITERS)]
        for w in writers:
            w.start()
        for w in writers:
            w.join(timeout=240)
        assert [w.exitcode for w in writers] == [0] * WRITERS
        time.sleep(1.1)  # backends publish their statistics at most once a second
        assert _deadlocks(conn) - before == 0
        expected = 4 + WRITERS * WRITES_EACH
        ids = [r[0] for r in conn.execute("SELECT id FROM ledger_core.logs WHERE ledger = %s ORDER BY id", (ledger,))]
        assert ids == list(range(1, expected + 1))
        assert reads.verify_chain(conn, ledger).logs == expected
        assert set(asset_sums(conn, ledger).values()) == {0}
        verify_deep(conn, ledger)
