"""The ledger's objects as frozen dataclasses, and their Formance v2 JSON shapes.

Amounts are Python ints of any size and are written to JSON as JSON numbers, as Formance does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from ledger_core.validation import format_timestamp


class LogType(StrEnum):
    NEW_TRANSACTION = "NEW_TRANSACTION"
    SET_METADATA = "SET_METADATA"
    REVERTED_TRANSACTION = "REVERTED_TRANSACTION"
    DELETE_METADATA = "DELETE_METADATA"
    INSERTED_SCHEMA = "INSERTED_SCHEMA"


class TargetType(StrEnum):
    ACCOUNT = "ACCOUNT"
    TRANSACTION = "TRANSACTION"


@dataclass(frozen=True)
class Posting:
    source: str
    destination: str
    amount: int
    asset: str

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "destination": self.destination, "amount": self.amount,
                "asset": self.asset}


@dataclass(frozen=True)
class Volumes:
    input: int = 0
    output: int = 0

    @property
    def balance(self) -> int:
        return self.input - self.output

    def to_json(self) -> dict[str, int]:
        return {"input": self.input, "output": self.output, "balance": self.balance}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Volumes:
        return cls(int(data["input"]), int(data["output"]))


# account -> asset -> volumes
VolumesByAccount = Mapping[str, Mapping[str, Volumes]]


def volumes_to_json(volumes: VolumesByAccount) -> dict[str, dict[str, dict[str, int]]]:
    return {account: {asset: v.to_json() for asset, v in assets.items()} for account, assets in volumes.items()}


def volumes_from_json(data: Mapping[str, Any]) -> dict[str, dict[str, Volumes]]:
    return {account: {asset: Volumes.from_json(v) for asset, v in assets.items()}
            for account, assets in data.items()}


@dataclass(frozen=True)
class Transaction:
    id: int
    postings: tuple[Posting, ...]
    metadata: Mapping[str, str]
    timestamp: datetime
    inserted_at: datetime
    reference: str | None = None
    reverted_at: datetime | None = None
    pre_commit_volumes: VolumesByAccount = field(default_factory=dict)
    post_commit_volumes: VolumesByAccount = field(default_factory=dict)

    @property
    def reverted(self) -> bool:
        return self.reverted_at is not None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "postings": [p.to_json() for p in self.postings],
            "metadata": dict(self.metadata),
            "timestamp": format_timestamp(self.timestamp),
            "insertedAt": format_timestamp(self.inserted_at),
        }
        if self.reference is not None:
            body["reference"] = self.reference
        body["reverted"] = self.reverted
        if self.reverted_at is not None:
            body["revertedAt"] = format_timestamp(self.reverted_at)
        body["preCommitVolumes"] = volumes_to_json(self.pre_commit_volumes)
        body["postCommitVolumes"] = volumes_to_json(self.post_commit_volumes)
        return body


@dataclass(frozen=True)
class Log:
    ledger: str
    id: int
    type: LogType
    date: datetime
    data: Mapping[str, Any]
    hash: bytes
    idempotency_key: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ledger": self.ledger,
            "id": self.id,
            "type": str(self.type),
            "date": format_timestamp(self.date),
            "data": self.data,
            "hash": self.hash.hex(),
        }
        if self.idempotency_key is not None:
            body["idempotencyKey"] = self.idempotency_key
        return body


@dataclass(frozen=True)
class Account:
    address: str
    metadata: Mapping[str, str]
    volumes: Mapping[str, Volumes]
    first_usage: datetime | None
    insertion_date: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "metadata": dict(self.metadata),
            "volumes": {asset: v.to_json() for asset, v in self.volumes.items()},
            "firstUsage": format_timestamp(self.first_usage) if self.first_usage else None,
            "insertionDate": format_timestamp(self.insertion_date),
            "updatedAt": format_timestamp(self.updated_at),
        }


@dataclass(frozen=True)
class Balance:
    """An account's volumes in one asset, possibly as of a point in time."""

    address: str
    asset: str
    volumes: Volumes

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "asset": self.asset, **self.volumes.to_json()}
