"""Write requests, parsed and validated from their Formance v2 JSON before any database work.

A request is a frozen dataclass; `fingerprint()` is what idempotency compares: the same key with the
same fingerprint is a replay, with another fingerprint a conflict.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from ledger_core import validation as v
from ledger_core.errors import ValidationError
from ledger_core.models import Posting, TargetType
from ledger_core.validation import format_timestamp

# Account metadata keys that set an account's overdraft rule: for every asset, or for one asset.
OVERDRAFT_KEY = "ledger/overdraft"
UNBOUNDED = "unbounded"


# Far more than any id or amount the ledger accepts (76 digits), far less than Python's 4,300-digit limit.
MAX_NUMBER_DIGITS = 100
MAX_JSON_DEPTH = 64  # the deepest valid request is 5 levels; deeper input is refused before parsing


def parse_json(text: str, *, what: str = "body") -> Any:
    """Parse JSON keeping every number exact: a non-integer number is refused, never turned into a float.

    Hostile input gets a ValidationError, never a crash: nesting past MAX_JSON_DEPTH, numbers of more than
    MAX_NUMBER_DIGITS digits, NUL characters and lone surrogates (checked by the validators downstream).
    """

    def refuse_float(literal: str) -> Decimal:
        if len(literal) > MAX_NUMBER_DIGITS:
            raise ValidationError(f"a number of {len(literal)} characters is too long", field=what)
        return Decimal(literal)  # kept as Decimal so the amount validator names it in its error

    def bounded_int(literal: str) -> int:
        if len(literal) > MAX_NUMBER_DIGITS:
            raise ValidationError(f"an integer of {len(literal.lstrip('-'))} digits is too large "
                                  f"(amounts have at most {v.MONEY_DIGITS})", field=what)
        return int(literal)

    if _nesting(text) > MAX_JSON_DEPTH:
        raise ValidationError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels", field=what)
    try:
        return json.loads(text, parse_float=refuse_float, parse_int=bounded_int)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"invalid JSON: {exc}", field=what) from None


def _nesting(text: str) -> int:
    """An upper bound of the JSON's nesting depth (brackets inside strings count too: a safe over-estimate)."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def overdraft_rule(value: str, *, field: str) -> int | None:
    """Validate an overdraft rule value: 'unbounded' (None) or a non-negative integer bound."""
    if value == UNBOUNDED:
        return None
    return v.amount(value, field=field)


def _check_overdraft_metadata(metadata: Mapping[str, str], field: str) -> None:
    for key, value in metadata.items():
        if key == OVERDRAFT_KEY or key.startswith(OVERDRAFT_KEY + "/"):
            if key != OVERDRAFT_KEY:
                v.asset(key[len(OVERDRAFT_KEY) + 1 :], field=f"{field}.{key}")
            overdraft_rule(value, field=f"{field}.{key}")


@dataclass(frozen=True)
class PostingRequest:
    """A posting with its optional overdraft permission for the source."""

    posting: Posting
    allow_overdraft: bool = False  # unbounded overdraft for this posting's source
    overdraft_limit: int | None = None  # the source may go down to -limit for this posting

    @classmethod
    def from_json(cls, data: Any, index: int) -> PostingRequest:
        where = f"postings[{index}]"
        if not isinstance(data, Mapping):
            raise ValidationError("must be an object", field=where)
        unknown = set(data) - {"source", "destination", "amount", "asset", "allowOverdraft", "overdraftLimit"}
        if unknown:
            raise ValidationError(f"unknown field(s) {sorted(unknown)}", field=where)
        for name in ("source", "destination", "amount", "asset"):
            if name not in data:
                raise ValidationError("is required", field=f"{where}.{name}")
        allow = data.get("allowOverdraft", False)
        if not isinstance(allow, bool):
            raise ValidationError("must be true or false", field=f"{where}.allowOverdraft")
        limit = data.get("overdraftLimit")
        return cls(
            Posting(
                source=v.address(data["source"], field=f"{where}.source"),
                destination=v.address(data["destination"], field=f"{where}.destination"),
                amount=v.amount(data["amount"], field=f"{where}.amount"),
                asset=v.asset(data["asset"], field=f"{where}.asset"),
            ),
            allow_overdraft=allow,
            overdraft_limit=None if limit is None else v.amount(limit, field=f"{where}.overdraftLimit"),
        )

    def fingerprint(self) -> dict[str, Any]:
        return {**self.posting.to_json(), "amount": str(self.posting.amount),
                "allowOverdraft": self.allow_overdraft,
                "overdraftLimit": None if self.overdraft_limit is None else str(self.overdraft_limit)}


@dataclass(frozen=True)
class NewTransaction:
    postings: tuple[PostingRequest, ...]
    metadata: Mapping[str, str] = field(default_factory=dict)
    reference: str | None = None
    timestamp: datetime | None = None
    account_metadata: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    idempotency_key: str | None = None
    force: bool = False  # skip balance checks, as Formance's `force`

    @classmethod
    def from_json(cls, body: Any, *, idempotency_key: str | None = None, force: bool = False) -> NewTransaction:
        if not isinstance(body, Mapping):
            raise ValidationError("must be a JSON object", field="body")
        unknown = set(body) - {"postings", "metadata", "reference", "timestamp", "accountMetadata", "force"}
        if unknown:
            raise ValidationError(f"unknown field(s) {sorted(unknown)}", field="body")
        postings = body.get("postings")
        if not isinstance(postings, list) or not postings:
            raise ValidationError("a transaction needs at least one posting", field="postings")
        account_metadata = body.get("accountMetadata") or {}
        if not isinstance(account_metadata, Mapping):
            raise ValidationError("must be an object of address to metadata", field="accountMetadata")
        checked_accounts: dict[str, dict[str, str]] = {}
        for address, meta in account_metadata.items():
            where = f"accountMetadata.{address}"
            checked = v.metadata(meta, field=where)
            _check_overdraft_metadata(checked, where)
            checked_accounts[v.address(address, field="accountMetadata")] = checked
        body_force = body.get("force", False)
        if not isinstance(body_force, bool):
            raise ValidationError("must be true or false", field="force")
        return cls(
            postings=tuple(PostingRequest.from_json(p, i) for i, p in enumerate(postings)),
            metadata=v.metadata(body.get("metadata")),
            reference=v.reference(body.get("reference")),
            timestamp=None if body.get("timestamp") is None else v.timestamp(body["timestamp"]),
            account_metadata=checked_accounts,
            idempotency_key=_idempotency_key(idempotency_key),
            force=force or body_force,
        )

    def fingerprint(self) -> dict[str, Any]:
        return {
            "kind": "NEW_TRANSACTION",
            "postings": [p.fingerprint() for p in self.postings],
            "metadata": dict(self.metadata),
            "reference": self.reference,
            "timestamp": format_timestamp(self.timestamp) if self.timestamp else None,
            "accountMetadata": {k: dict(m) for k, m in self.account_metadata.items()},
            "force": self.force,
        }


@dataclass(frozen=True)
class RevertTransaction:
    """Write a transaction's postings reversed. `at_effective_date`: date the reversal at the original's effective
    time (Formance's `atEffectiveDate`), so a refund of a March order lands in March, not on the day it is made."""

    transaction_id: int
    force: bool = False
    idempotency_key: str | None = None
    at_effective_date: bool = False

    def __post_init__(self) -> None:
        transaction_id(self.transaction_id)
        for value, name in ((self.force, "force"), (self.at_effective_date, "atEffectiveDate")):
            if not isinstance(value, bool):
                raise ValidationError("must be true or false", field=name)
        _idempotency_key(self.idempotency_key)

    def fingerprint(self) -> dict[str, Any]:
        fingerprint = {"kind": "REVERTED_TRANSACTION", "id": self.transaction_id, "force": self.force}
        if self.at_effective_date:  # only when set: keys used before the option existed keep their fingerprint
            fingerprint["atEffectiveDate"] = True
        return fingerprint


def _target(target_type: Any, target_id: Any) -> tuple[TargetType, str | int]:
    try:
        kind = TargetType(target_type)
    except ValueError:
        raise ValidationError("must be ACCOUNT or TRANSACTION", field="targetType") from None
    if kind is TargetType.ACCOUNT:
        return kind, v.address(target_id, field="targetId")
    return kind, transaction_id(target_id, field="targetId")


@dataclass(frozen=True)
class SetMetadata:
    target_type: TargetType
    target_id: str | int
    metadata: Mapping[str, str]
    idempotency_key: str | None = None

    @classmethod
    def build(cls, target_type: Any, target_id: Any, metadata: Any,
              idempotency_key: str | None = None) -> SetMetadata:
        kind, target = _target(target_type, target_id)
        checked = v.metadata(metadata)
        if not checked:
            raise ValidationError("must set at least one key", field="metadata")
        if kind is TargetType.ACCOUNT:
            _check_overdraft_metadata(checked, "metadata")
        return cls(kind, target, checked, _idempotency_key(idempotency_key))

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": "SET_METADATA", "targetType": str(self.target_type), "targetId": self.target_id,
                "metadata": dict(self.metadata)}


@dataclass(frozen=True)
class DeleteMetadata:
    target_type: TargetType
    target_id: str | int
    key: str
    idempotency_key: str | None = None

    @classmethod
    def build(cls, target_type: Any, target_id: Any, key: Any, idempotency_key: str | None = None) -> DeleteMetadata:
        kind, target = _target(target_type, target_id)
        if not isinstance(key, str) or not key:
            raise ValidationError("must be a non-empty string", field="key")
        return cls(kind, target, v.text(key, field="key"), _idempotency_key(idempotency_key))

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": "DELETE_METADATA", "targetType": str(self.target_type), "targetId": self.target_id,
                "key": self.key}


Command = NewTransaction | RevertTransaction | SetMetadata | DeleteMetadata


def _idempotency_key(key: Any) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not key or len(key) > 256:
        raise ValidationError("must be a non-empty string of at most 256 characters", field="idempotency key")
    return v.text(key, field="idempotency key")


def transaction_id(value: Any, *, field: str = "transaction id") -> int:
    """A transaction id: an integer from 0 to 2^63 - 1 (or a string of its digits)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= v.MAX_ID:
        raise ValidationError(f"must be a transaction id (an integer from 0 to {v.MAX_ID})", field=field)
    return value


BULK_ACTIONS = ("CREATE_TRANSACTION", "ADD_METADATA", "REVERT_TRANSACTION", "DELETE_METADATA")


def bulk_element(element: Any) -> Command:
    """One element of a bulk: a plain transaction body, or a Formance bulk element {"action", "data", "ik"}."""
    if not isinstance(element, dict) or "action" not in element:
        return NewTransaction.from_json(element)
    action, data, key = element["action"], element.get("data"), element.get("ik")
    if not isinstance(data, dict):
        raise ValidationError("must be a JSON object", field="data")
    if action == "CREATE_TRANSACTION":
        return NewTransaction.from_json(data, idempotency_key=key)
    if action == "ADD_METADATA":
        return SetMetadata.build(data.get("targetType"), data.get("targetId"), data.get("metadata"), key)
    if action == "DELETE_METADATA":
        return DeleteMetadata.build(data.get("targetType"), data.get("targetId"), data.get("key"), key)
    if action == "REVERT_TRANSACTION":
        return RevertTransaction(data.get("id"), data.get("force", False), key, data.get("atEffectiveDate", False))
    raise ValidationError(f"unknown action {action!r}; expected one of {', '.join(BULK_ACTIONS)}")
