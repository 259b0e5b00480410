"""Deep verification: replay the log and prove the ledger's own tables equal the replay.

The hash chain proves the log is what was written; this proves the tables every read (and `balances`)
answers from are what the log says: `transactions`, `moves` (insertion-order volumes), `daily_volumes`
(effective-order history), `volumes`, `accounts` and the ledger's head. Each table is rebuilt from the logs
with set-based SQL over the log's JSON (one pass, no row-by-row Python), compared row by row as JSON
objects, and the first difference is named: the table, the row's key, the columns that differ, and both
values.

Rules the replay encodes (the writer's, in `writer.py`):
- a transaction row is created by its NEW_TRANSACTION or REVERTED_TRANSACTION log; its metadata folds the
  later SET_METADATA / DELETE_METADATA logs in id order; a revert sets `reverted_at`; `log_id` is the last
  log that changed it;
- every posting gives two moves (source first); their volumes are running sums by (transaction, posting,
  source first); each (account, asset, UTC day of the effective date) sums what its moves brought in and out;
- an account is touched by its moves, by `accountMetadata`, and by metadata logs that target it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from ledger_core.errors import LedgerInconsistent
from ledger_core.reads import ChainReport, require_ledger, verify_chain_in_snapshot

_TX_LOGS = """
    tx_logs AS (
        SELECT id AS log_id, date, data->'transaction' AS t FROM ledger_core.logs
        WHERE ledger = %(l)s AND type IN ('NEW_TRANSACTION', 'REVERTED_TRANSACTION')),
    log_moves AS (
        SELECT (t->>'id')::bigint AS transaction_id, (e.ord - 1)::integer AS posting_index, s.is_source,
               e.p->>(CASE WHEN s.is_source THEN 'source' ELSE 'destination' END) AS account,
               e.p->>'asset' AS asset, (e.p->>'amount')::numeric AS amount,
               (t->>'timestamp')::timestamptz AS effective_date, (t->>'insertedAt')::timestamptz AS insertion_date,
               log_id, date
        FROM tx_logs CROSS JOIN LATERAL jsonb_array_elements(t->'postings') WITH ORDINALITY AS e(p, ord)
        CROSS JOIN (VALUES (true), (false)) AS s(is_source))"""

# Per table: the replay and the table, each with the key columns and then the same typed value columns, so
# rows compare column by column (`ROW(r.*) IS DISTINCT FROM ROW(s.*)`) and only a differing row is made JSON.
CHECKS: dict[str, tuple[tuple[str, ...], str]] = {
    "transactions": (("id",), _TX_LOGS + """,
    reverts AS (
        SELECT (data->'revertedTransaction'->>'id')::bigint AS id, max(id) AS log_id,
               min((data->'revertedTransaction'->>'revertedAt')::timestamptz) AS reverted_at
        FROM ledger_core.logs WHERE ledger = %(l)s AND type = 'REVERTED_TRANSACTION' GROUP BY 1),
    metadata_ops AS (
        SELECT (t->>'id')::bigint AS id, log_id, jsonb_build_object('set', t->'metadata') AS op FROM tx_logs
        UNION ALL
        SELECT (data->>'targetId')::bigint, id, CASE WHEN type = 'SET_METADATA'
               THEN jsonb_build_object('set', data->'metadata') ELSE jsonb_build_object('delete', data->'key') END
        FROM ledger_core.logs WHERE ledger = %(l)s AND type IN ('SET_METADATA', 'DELETE_METADATA')
          AND data->>'targetType' = 'TRANSACTION'),
    metadata AS (
        SELECT id, ledger_core.fold_metadata(op ORDER BY log_id) AS metadata, max(log_id) AS log_id
        FROM metadata_ops GROUP BY id),
    replay AS (
        SELECT (t->>'id')::bigint AS id, (t->>'timestamp')::timestamptz AS timestamp,
               (t->>'insertedAt')::timestamptz AS inserted_at, t->>'reference' AS reference, t->'postings' AS postings,
               t->'preCommitVolumes' AS pre_commit_volumes, t->'postCommitVolumes' AS post_commit_volumes,
               m.metadata, r.reverted_at, greatest(m.log_id, r.log_id) AS log_id
        FROM tx_logs LEFT JOIN metadata m ON m.id = (t->>'id')::bigint
        LEFT JOIN reverts r ON r.id = (t->>'id')::bigint),
    stored AS (
        SELECT id, timestamp, inserted_at, reference, postings, pre_commit_volumes, post_commit_volumes, metadata,
               reverted_at, log_id
        FROM ledger_core.transactions WHERE ledger = %(l)s)"""),
    "moves": (("transaction_id", "posting_index", "is_source"), _TX_LOGS + """,
    replay AS (
        SELECT transaction_id, posting_index, is_source, account, asset, amount, effective_date, insertion_date,
               sum(CASE WHEN is_source THEN 0 ELSE amount END) OVER by_insertion AS post_commit_input,
               sum(CASE WHEN is_source THEN amount ELSE 0 END) OVER by_insertion AS post_commit_output
        FROM log_moves
        WINDOW by_insertion AS (PARTITION BY account, asset ORDER BY transaction_id, posting_index, is_source DESC
                                ROWS UNBOUNDED PRECEDING)),
    stored AS (
        SELECT transaction_id, posting_index, is_source, account, asset, amount, effective_date, insertion_date,
               post_commit_input, post_commit_output
        FROM ledger_core.moves WHERE ledger = %(l)s)"""),
    "daily_volumes": (("account", "asset", "day"), _TX_LOGS + """,
    replay AS (
        SELECT account, asset, (effective_date AT TIME ZONE 'UTC')::date AS day,
               sum(CASE WHEN is_source THEN 0 ELSE amount END) AS input,
               sum(CASE WHEN is_source THEN amount ELSE 0 END) AS output
        FROM log_moves GROUP BY 1, 2, 3),
    stored AS (
        SELECT account, asset, day, input, output FROM ledger_core.daily_volumes WHERE ledger = %(l)s)"""),
    "volumes": (("account", "asset"), _TX_LOGS + """,
    replay AS (
        SELECT account, asset, sum(CASE WHEN is_source THEN 0 ELSE amount END) AS input,
               sum(CASE WHEN is_source THEN amount ELSE 0 END) AS output
        FROM log_moves GROUP BY account, asset),
    stored AS (
        SELECT account, asset, input, output FROM ledger_core.volumes WHERE ledger = %(l)s)"""),
    "accounts": (("address",), _TX_LOGS + """,
    touches AS (
        SELECT account AS address, log_id, date, NULL::jsonb AS op, effective_date FROM log_moves
        UNION ALL
        SELECT a.key, l.id, l.date, jsonb_build_object('set', a.value), NULL
        FROM ledger_core.logs l CROSS JOIN LATERAL jsonb_each(l.data->'accountMetadata') AS a
        WHERE l.ledger = %(l)s AND l.type = 'NEW_TRANSACTION'
        UNION ALL
        SELECT data->>'targetId', id, date, CASE WHEN type = 'SET_METADATA'
               THEN jsonb_build_object('set', data->'metadata') ELSE jsonb_build_object('delete', data->'key') END, NULL
        FROM ledger_core.logs WHERE ledger = %(l)s AND type IN ('SET_METADATA', 'DELETE_METADATA')
          AND data->>'targetType' = 'ACCOUNT'),
    replay AS (
        SELECT address, ledger_core.fold_metadata(op ORDER BY log_id) FILTER (WHERE op IS NOT NULL) AS metadata,
               min(effective_date) AS first_usage, min(date) AS insertion_date, max(date) AS updated_at
        FROM touches GROUP BY address),
    stored AS (
        SELECT address, metadata, first_usage, insertion_date, updated_at
        FROM ledger_core.accounts WHERE ledger = %(l)s)"""),
    "ledgers": (("name",), """
    replay AS (
        SELECT %(l)s::text AS name, coalesce(max(id), 0) AS last_log_id,
               coalesce(max((data->'transaction'->>'id')::bigint) FILTER (
                   WHERE type IN ('NEW_TRANSACTION', 'REVERTED_TRANSACTION')), 0) AS last_transaction_id,
               encode((array_agg(hash ORDER BY id DESC))[1], 'hex') AS last_log_hash
        FROM ledger_core.logs WHERE ledger = %(l)s),
    stored AS (
        SELECT name, last_log_id, last_transaction_id, encode(last_log_hash, 'hex') AS last_log_hash
        FROM ledger_core.ledgers WHERE name = %(l)s)"""),
}


def _first_difference_sql(key: tuple[str, ...], ctes: str) -> str:
    columns = ", ".join(key)
    order = ", ".join(f"{k} DESC" if k == "is_source" else k for k in key)
    return f"""WITH {ctes.strip()}
        SELECT {columns}, CASE WHEN r IS NULL THEN NULL ELSE to_jsonb(r) END,
               CASE WHEN s IS NULL THEN NULL ELSE to_jsonb(s) END
        FROM replay r FULL JOIN stored s USING ({columns})
        WHERE ROW(r.*) IS DISTINCT FROM ROW(s.*) ORDER BY {order} LIMIT 1"""


def _count_sql(ctes: str) -> str:
    return f"WITH {ctes.strip()} SELECT count(*) FROM stored"


@dataclass(frozen=True)
class DeepReport:
    chain: ChainReport
    rows: dict[str, int]  # rows of each table proven equal to the replay
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {**self.chain.to_json(), "deep": {"tablesEqualReplay": self.rows, "seconds": round(self.seconds, 3)}}


def verify_deep(conn: psycopg.Connection, ledger: str) -> DeepReport:
    """Verify the chain, then every table against the log's replay; raise at the first difference.

    One REPEATABLE READ snapshot for all of it, so concurrent writers cannot make the tables and the
    log disagree mid-check.
    """
    started = time.perf_counter()
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        require_ledger(conn, ledger)
        chain = verify_chain_in_snapshot(conn, ledger)
        rows: dict[str, int] = {}
        for table, (key, ctes) in CHECKS.items():
            found = conn.execute(_first_difference_sql(key, ctes), {"l": ledger}).fetchone()
            if found is not None:
                values = dict(zip(key, found[: len(key)], strict=True))
                replayed, stored = (None if row is None else {k: v for k, v in row.items() if k not in key}
                                    for row in found[len(key):])
                raise LedgerInconsistent(ledger, table, values, *_differing(replayed, stored))
            rows[table] = int(conn.execute(_count_sql(ctes), {"l": ledger}).fetchone()[0])  # type: ignore[index]
    return DeepReport(chain, rows, time.perf_counter() - started)


def _differing(replayed: dict[str, Any] | None, stored: dict[str, Any] | None) -> tuple[list[str], str, str]:
    """The columns that differ, and what the log says and the table holds for them."""
    if replayed is None or stored is None:
        return [], "a row" if replayed is not None else "no row", "a row" if stored is not None else "no row"
    columns = sorted(c for c in replayed.keys() | stored.keys() if replayed.get(c) != stored.get(c))

    def shown(row: dict[str, Any]) -> str:
        text = json.dumps({c: row.get(c) for c in columns}, ensure_ascii=False, sort_keys=True)
        return text if len(text) <= 300 else text[:300] + "…"

    return columns, shown(replayed), shown(stored)
