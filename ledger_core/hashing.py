"""The log's hash chain.

hash(log) = SHA-256(previous log's hash || canonical(log)), with an empty previous hash for the first
log. The canonical form is compact JSON with sorted keys over the ledger, id, type, date, idempotency
key and the data *without* derived fields (pre/post-commit volumes): those are computed from the
chain itself, so leaving them out keeps the hash about what was asked, as Formance does. Changing any
byte of an earlier log changes every later hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ledger_core.validation import format_timestamp

DERIVED_FIELDS = frozenset({"preCommitVolumes", "postCommitVolumes", "postCommitEffectiveVolumes"})


TRANSACTION_KEYS = frozenset({"transaction", "revertedTransaction"})  # where logs carry transaction objects


def _strip_derived(data: Mapping[str, Any]) -> dict[str, Any]:
    """Drop derived fields from the transaction objects a log carries, and from nothing else.

    Only those objects: `accountMetadata` is keyed by address, and `preCommitVolumes` is a valid address.
    """
    return {
        key: {k: v for k, v in value.items() if k not in DERIVED_FIELDS}
        if key in TRANSACTION_KEYS and isinstance(value, Mapping) else value
        for key, value in data.items()
    }


def canonical_bytes(
    *, ledger: str, log_id: int, log_type: str, date: datetime, data: Mapping[str, Any],
    idempotency_key: str | None,
) -> bytes:
    body = {
        "ledger": ledger,
        "id": log_id,
        "type": log_type,
        "date": format_timestamp(date),
        "idempotencyKey": idempotency_key,
        "data": _strip_derived(data),
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(previous: bytes | None, canonical: bytes) -> bytes:
    digest = hashlib.sha256()
    digest.update(previous or b"")
    digest.update(canonical)
    return digest.digest()


def request_hash(request: Mapping[str, Any]) -> bytes:
    """Fingerprint of a write request, to tell a replay (same key, same input) from a conflict."""
    return hashlib.sha256(
        json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).digest()
