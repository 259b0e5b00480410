"""The reference: the per-log Python fold the sync used before its set-based transforms.

Kept only for `tests/integration/test_transform_equivalence.py`, which proves the two give the same rows on
generated ledgers; remove it with that comparison. What it did:

A batch of logs becomes one Arrow table per warehouse table. Immutable facts (logs, postings, moves)
come straight from each log. Current-state tables (transactions, accounts, balances) are folded: the
rows the batch touches start from what the warehouse holds (fetched by key through the loader), the
batch's logs are applied in id order, and each resulting row carries the id of the last log that
changed it. Folding is idempotent (metadata keys are set or deleted, first use is a minimum, balances
come whole from post-commit volumes), so a batch replayed over a warehouse that already has it, after a
crash or a reset, produces the same rows.

Money stays a Python int from the JSON parser to Arrow's decimal256(76, 0): never a float.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa

from ledger_pipelines.errors import MissingBaseRow, ValueOutOfRange
from ledger_pipelines.tables import (
    ACCOUNTS,
    ARROW_TYPES,
    BALANCES,
    LOGS,
    MONEY_DIGITS,
    MOVES,
    POSTINGS,
    TRANSACTIONS,
    Batch,
    Kind,
    Table,
)

MONEY_TYPE = ARROW_TYPES[Kind.MONEY]

# fetch_current(table, ledger, keys) -> current warehouse rows (as dicts) for those keys
FetchCurrent = Callable[[Table, str, Sequence[tuple[Any, ...]]], list[dict[str, Any]]]


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _metadata_text(metadata: dict[str, str]) -> str:
    return json.dumps(metadata, sort_keys=True, ensure_ascii=False)


class _Folder:
    def __init__(self, ledger: str, fetch_current: FetchCurrent, money_digits: int):
        self.ledger = ledger
        self.fetch_current = fetch_current
        self.money_digits = money_digits
        self.logs: list[dict[str, Any]] = []
        self.postings: list[dict[str, Any]] = []
        self.moves: list[dict[str, Any]] = []
        self.transactions: dict[int, dict[str, Any]] = {}
        self.accounts: dict[str, dict[str, Any]] = {}
        self.balances: dict[tuple[str, str], dict[str, Any]] = {}

    # -- base state --------------------------------------------------------------------------------

    def prefetch(self, parsed: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
        """Fetch, in two round trips, the current rows of every account and transaction the batch updates."""
        created: set[int] = set()
        tx_targets: set[int] = set()
        addresses: set[str] = set()
        for log, data in parsed:
            kind = log["type"]
            if kind in ("NEW_TRANSACTION", "REVERTED_TRANSACTION"):
                tx = data["transaction"]
                created.add(int(tx["id"]))
                for p in tx["postings"]:
                    addresses.update((p["source"], p["destination"]))
                addresses.update(data.get("accountMetadata") or {})
                if kind == "REVERTED_TRANSACTION" and int(data["revertedTransaction"]["id"]) not in created:
                    tx_targets.add(int(data["revertedTransaction"]["id"]))
            elif data.get("targetType") == "ACCOUNT":
                addresses.add(data["targetId"])
            elif data.get("targetType") == "TRANSACTION" and int(data["targetId"]) not in created:
                tx_targets.add(int(data["targetId"]))
        if tx_targets:
            for row in self.fetch_current(TRANSACTIONS, self.ledger, sorted((i,) for i in tx_targets)):
                self.transactions[int(row["id"])] = dict(row)
        if addresses:
            for row in self.fetch_current(ACCOUNTS, self.ledger, sorted((a,) for a in addresses)):
                self.accounts[row["address"]] = dict(row)

    # -- folding -------------------------------------------------------------------------------------

    def apply(self, log: dict[str, Any], data: dict[str, Any]) -> None:
        log_id, kind, date = log["id"], log["type"], log["date"]
        self.logs.append({"ledger": self.ledger, "id": log_id, "type": kind, "date": date,
                          "idempotency_key": log["idempotency_key"], "hash": log["hash"], "data": log["data"],
                          "log_id": log_id})
        if kind == "NEW_TRANSACTION":
            self.transaction(data["transaction"], log_id, date)
            for address, metadata in (data.get("accountMetadata") or {}).items():
                row = self.account(address, log_id, date)
                if row is not None:
                    row["_metadata"].update(metadata)
        elif kind == "REVERTED_TRANSACTION":
            self.transaction(data["transaction"], log_id, date)
            reverted = data["revertedTransaction"]
            row = self.transaction_row(int(reverted["id"]), log_id)
            if row is not None:
                row["reverted_at"] = _time(reverted.get("revertedAt")) or date
        elif kind in ("SET_METADATA", "DELETE_METADATA"):
            if data["targetType"] == "ACCOUNT":
                row = self.account(data["targetId"], log_id, date)
            else:
                row = self.transaction_row(int(data["targetId"]), log_id)
            if row is not None and kind == "SET_METADATA":
                row["_metadata"].update(data["metadata"])
            elif row is not None:
                row["_metadata"].pop(data["key"], None)
        # INSERTED_SCHEMA and future types: kept in `logs`, nothing else to fold.

    @staticmethod
    def _advance(row: dict[str, Any], log_id: int) -> bool:
        """Whether `log_id` still has to be applied to `row`, and if so mark the row as changed by it.

        A row fetched from the warehouse at a newer version already includes this log's effect (a replay
        after a reset or a crash): leaving it alone is what keeps replays from regressing state.
        """
        version = int(row.get("log_id") or 0)
        if version > log_id or (version == log_id and not row.get("_changed")):
            return False
        if "_metadata" not in row:
            text = row.pop("metadata")
            row["_metadata"] = json.loads(text) if text and text != "{}" else {}
        row["log_id"], row["_changed"] = log_id, True
        return True

    def transaction_row(self, tx_id: int, log_id: int) -> dict[str, Any] | None:
        row = self.transactions.get(tx_id)
        if row is None:
            raise MissingBaseRow(
                f"log {log_id} changes transaction {tx_id}, which the warehouse does not hold; "
                "reset the pipeline to 0 to rebuild it"
            )
        return row if self._advance(row, log_id) else None

    def account(self, address: str, log_id: int, date: datetime) -> dict[str, Any] | None:
        row = self.accounts.get(address)
        if row is None:
            row = self.accounts[address] = {"ledger": self.ledger, "address": address, "metadata": "{}",
                                            "first_usage": None, "last_update": date, "log_id": 0}
        if not self._advance(row, log_id):
            return None
        row["last_update"] = date
        return row

    def transaction(self, tx: dict[str, Any], log_id: int, date: datetime) -> None:
        tx_id = int(tx["id"])
        timestamp = _time(tx["timestamp"])
        inserted_at = _time(tx["insertedAt"])
        self.transactions[tx_id] = {
            "ledger": self.ledger, "id": tx_id, "timestamp": timestamp, "inserted_at": inserted_at,
            "reference": tx.get("reference"), "_metadata": dict(tx.get("metadata") or {}),
            "reverted_at": _time(tx.get("revertedAt")), "log_id": log_id, "_changed": True,
        }
        running = {(account, asset): [int(v["input"]), int(v["output"])]
                   for account, assets in (tx.get("preCommitVolumes") or {}).items() for asset, v in assets.items()}
        for index, p in enumerate(tx["postings"]):
            amount = int(p["amount"])
            asset = p["asset"]
            self.postings.append({"ledger": self.ledger, "transaction_id": tx_id, "posting_index": index,
                                  "source": p["source"], "destination": p["destination"], "asset": asset,
                                  "amount": amount, "timestamp": timestamp, "log_id": log_id})
            for account, is_source in ((p["source"], True), (p["destination"], False)):
                volumes = running.setdefault((account, asset), [0, 0])
                volumes[1 if is_source else 0] += amount
                self.moves.append({
                    "ledger": self.ledger, "transaction_id": tx_id, "posting_index": index, "is_source": is_source,
                    "account": account, "asset": asset, "amount": amount, "timestamp": timestamp,
                    "inserted_at": inserted_at,
                    "post_commit_input": volumes[0],
                    "post_commit_output": volumes[1],
                    "post_commit_balance": volumes[0] - volumes[1],
                    "log_id": log_id,
                })
                row = self.account(account, log_id, date)
                if row is not None and timestamp and (row["first_usage"] is None or timestamp < row["first_usage"]):
                    row["first_usage"] = timestamp
        for account, assets in (tx.get("postCommitVolumes") or {}).items():
            for asset, v in assets.items():
                self.balances[(account, asset)] = {
                    "ledger": self.ledger, "account": account, "asset": asset,
                    "input": int(v["input"]),
                    "output": int(v["output"]),
                    "balance": int(v["input"]) - int(v["output"]),
                    "log_id": log_id,
                }

    # -- output --------------------------------------------------------------------------------------

    def tables(self) -> dict[str, pa.Table]:
        def finished(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            # Only rows this batch changed; the helper keys (_metadata, _changed) become the real columns.
            return [
                {**{k: v for k, v in row.items() if not k.startswith("_")},
                 "metadata": _metadata_text(row["_metadata"])}
                for row in rows if row.get("_changed")
            ]

        transactions = finished(list(self.transactions.values()))
        accounts = finished(list(self.accounts.values()))
        return {table.name: _arrow_table(table, rows, self.money_digits) for table, rows in (
            (LOGS, self.logs), (TRANSACTIONS, transactions), (POSTINGS, self.postings), (MOVES, self.moves),
            (ACCOUNTS, accounts), (BALANCES, list(self.balances.values())),
        )}


def _money_array(table: Table, column: str, rows: list[dict[str, Any]], values: list[int],
                 digits: int) -> pa.Array:
    """Exact money column: int64 when every value fits (fast), else Python ints up to `digits` digits."""
    try:
        return pa.array(values, pa.int64()).cast(MONEY_TYPE)
    except (OverflowError, pa.ArrowInvalid):
        limit = 10 ** min(digits, MONEY_DIGITS)
        for row, value in zip(rows, values, strict=True):
            if abs(value) >= limit:
                raise ValueOutOfRange(int(row["log_id"]), table.name, column, value, min(digits, MONEY_DIGITS)) \
                    from None
        return pa.array(values, MONEY_TYPE)


# The columns this fold computes: the tables as they were when it was replaced. Columns added since (signed
# amounts, asset scales, reversal links) and `daily_volumes` are compared with the ledger instead.
NEW_COLUMNS = {"reverts_transaction_id", "reverted_by_transaction_id", "asset_scale", "signed_amount",
               "display_amount", "display_balance"}


def _arrow_table(table: Table, rows: list[dict[str, Any]], money_digits: int = MONEY_DIGITS) -> pa.Table:
    """Build the table column by column (much faster than row dicts to Arrow, and money never a Decimal)."""
    columns = [c for c in table.columns if c.name not in NEW_COLUMNS]
    arrays = []
    for column in columns:
        values = [row[column.name] for row in rows]
        if column.kind is Kind.MONEY:
            arrays.append(_money_array(table, column.name, rows, values, money_digits))
        else:
            arrays.append(pa.array(values, ARROW_TYPES[column.kind]))
    return pa.Table.from_arrays(arrays, schema=pa.schema([table.arrow_schema.field(c.name) for c in columns]))


def transform(ledger: str, rows: Sequence[dict[str, Any]], fetch_current: FetchCurrent,
              money_digits: int = MONEY_DIGITS) -> Batch:
    """Turn a contiguous batch of logs (the reader's rows, as dicts) into warehouse rows.

    `money_digits` is the warehouse's: a wider value stops the pipeline naming the log and that limit.
    """
    if not rows:
        raise ValueError("transform needs at least one log")
    parsed = [(row, json.loads(row["data"])) for row in rows]
    folder = _Folder(ledger, fetch_current, money_digits)
    folder.prefetch(parsed)
    for row, data in parsed:
        folder.apply(row, data)
    return Batch(ledger, rows[0]["id"], rows[-1]["id"], rows[-1]["hash"], folder.tables())
