"""The commit-safe log reader: logs after a cursor, in id order, as Arrow tables.

Reads go through ADBC's PostgreSQL driver (libpq COPY in binary, straight into Arrow columns), not
row-at-a-time Python. Safety rests on the ledger core's guarantee that per ledger, log ids are
contiguous and become visible in id order; the reader still checks contiguity and refuses to hand over
a batch with a hole, so a bug elsewhere can never make a pipeline skip a log silently.
"""

from __future__ import annotations

import adbc_driver_postgresql.dbapi as adbc
import pyarrow as pa
import pyarrow.compute as pc

from ledger_core.export import LOG_BATCH_QUERY
from ledger_pipelines.errors import LogGap


class LogReader:
    def __init__(self, database_url: str):
        self._conn = adbc.connect(database_url)

    def read(self, ledger: str, *, after: int, up_to: int, limit: int) -> pa.Table:
        """At most `limit` logs with `after < id <= up_to`, checked to be contiguous from `after + 1`."""
        with self._conn.cursor() as cursor:
            cursor.execute(LOG_BATCH_QUERY, (ledger, after, up_to, limit))
            table = cursor.fetch_arrow_table()
        self._conn.commit()  # end the read transaction ADBC opened; nothing is held between batches
        if table.num_rows:
            ids = table.column("id")
            first, last = ids[0].as_py(), ids[-1].as_py()
            if first != after + 1:
                raise LogGap(ledger, after + 1, first)
            if last - first + 1 != table.num_rows or pc.any(pc.not_equal(
                    pc.subtract(ids.slice(1), ids.slice(0, table.num_rows - 1)), 1)).as_py():
                raise LogGap(ledger, first, last)
        return table

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
