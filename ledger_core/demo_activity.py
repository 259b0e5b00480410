"""Realistic demo activity: a marketplace over several simulated days.

Customers pay in from `world`, the platform keeps a fee, sellers are paid out, some orders are refunded
(as reverts), accounts and transactions carry metadata, and some payments arrive late (backdated).
Every write carries a deterministic idempotency key, so running it again replays instead of duplicating.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg

from ledger_core.errors import LedgerAlreadyExists
from ledger_core.ledgers import create_ledger
from ledger_core.requests import Command, NewTransaction, RevertTransaction, SetMetadata
from ledger_core.writer import write

START = datetime(2025, 3, 1, tzinfo=UTC)
FEE_PERCENT = 3


def _posting(source: str, destination: str, amount: int, asset: str) -> dict:
    return {"source": source, "destination": destination, "amount": amount, "asset": asset}


def marketplace_days(days: int, orders_per_day: int, seed: int = 7) -> Iterator[list[Command]]:
    """One bulk of commands per simulated day."""
    rng = random.Random(seed)
    customers = [f"customers:{i:04d}" for i in range(200)]
    sellers = [f"sellers:{i:03d}" for i in range(25)]
    assets = ["USD/2", "USD/2", "USD/2", "EUR/2"]
    order = 0
    for day in range(days):
        day_start = START + timedelta(days=day)
        commands: list[Command] = []
        if day == 0:
            for seller in sellers:
                commands.append(SetMetadata.build("ACCOUNT", f"{seller}:main", {
                    "name": f"Seller {seller[-3:]}", "country": rng.choice(["FR", "DE", "US", "ES"]),
                }, idempotency_key=f"demo-seller-{seller}"))
        for _ in range(orders_per_day):
            order += 1
            customer, seller, asset = rng.choice(customers), rng.choice(sellers), rng.choice(assets)
            amount = rng.randint(500, 250_000)
            fee = amount * FEE_PERCENT // 100
            when = day_start + timedelta(seconds=rng.randint(0, 86_399))
            if rng.random() < 0.03 and day > 0:
                when -= timedelta(days=rng.randint(1, day))  # a late-arriving payment notice
            commands.append(NewTransaction.from_json({
                "postings": [
                    _posting("world", f"{customer}:wallet", amount, asset),
                    _posting(f"{customer}:wallet", f"orders:{order:06d}", amount, asset),
                    _posting(f"orders:{order:06d}", "platform:fees", fee, asset),
                    _posting(f"orders:{order:06d}", f"{seller}:main", amount - fee, asset),
                ],
                "metadata": {"kind": "order", "order": str(order), "channel": rng.choice(["web", "app"])},
                "reference": f"order-{order:06d}",
                "timestamp": when.isoformat(),
                "accountMetadata": {f"orders:{order:06d}": {"customer": customer, "seller": seller}},
            }, idempotency_key=f"demo-order-{order}"))
        yield commands
        # Refunds revert some of today's orders, dated at the order's effective time (not the day the demo runs);
        # payouts sweep seller balances at the end of the day.
        refunds: list[Command] = [
            RevertTransaction(tx_id, idempotency_key=f"demo-refund-{tx_id}", at_effective_date=True)
            for tx_id in range(order - orders_per_day + 1, order + 1) if rng.random() < 0.02
        ]
        payouts: list[Command] = [
            NewTransaction.from_json({
                "postings": [_posting(f"{seller}:main", f"payouts:{seller.split(':')[1]}", rng.randint(1, 400),
                                      "USD/2")],
                "metadata": {"kind": "payout", "day": day_start.date().isoformat()},
                "timestamp": (day_start + timedelta(hours=23, minutes=59)).isoformat(),
            }, idempotency_key=f"demo-payout-{day}-{seller}")
            for seller in rng.sample(sellers, 5)
        ]
        yield refunds + payouts


def seed_marketplace(conn: psycopg.Connection, ledger: str, *, days: int = 7, orders_per_day: int = 400) -> int:
    """Create `ledger` (if needed) and write the activity; return how many writes were new (not replays)."""
    with contextlib.suppress(LedgerAlreadyExists):
        create_ledger(conn, ledger, {"purpose": "demo marketplace"})
    new = 0
    for commands in marketplace_days(days, orders_per_day):
        # A refund an earlier run made is skipped (one made before refunds were dated would conflict on its key).
        commands = _not_yet_reverted(conn, ledger, commands)
        if commands:
            new += sum(not result.replayed for result in write(conn, ledger, commands))
    return new


def _not_yet_reverted(conn: psycopg.Connection, ledger: str, commands: list[Command]) -> list[Command]:
    targets = [c.transaction_id for c in commands if isinstance(c, RevertTransaction)]
    if not targets:
        return commands
    done = {tx_id for (tx_id,) in conn.execute(
        "SELECT id FROM ledger_core.transactions WHERE ledger = %s AND id = ANY(%s) AND reverted_at IS NOT NULL",
        (ledger, targets))}
    return [c for c in commands if not (isinstance(c, RevertTransaction) and c.transaction_id in done)]
