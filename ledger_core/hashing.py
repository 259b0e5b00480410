"""The log's hash chain: one definition, computed here and (for version 2) in PostgreSQL.

hash(log) = SHA-256(previous log's hash || canonical(log)), with an empty previous hash for the first log.
Changing any byte of an earlier log changes every later hash.

**Version 2** (every log written since core migration 3): canonical(log) is the UTF-8 text PostgreSQL's
`jsonb` prints for `{"ledger", "id", "type", "date", "idempotencyKey", "data"}`, with `data` whole.

- Why the derived volumes are covered: the pipelines export them (every move's post-commit volumes, the
  balances), and a value a warehouse receives must be one the chain vouches for. Formance leaves them out
  because it may compute them after the fact; this ledger computes them in the write's own transaction,
  before hashing, so covering them costs nothing and makes an edited `postCommitVolumes` a broken link.
- Why jsonb's text: the database produces the very same bytes (`ledger_core.log_canonical()`, migration 3),
  so `logs verify` checks every link set-based inside PostgreSQL, and a pipeline hashes the `data::text` it
  reads without parsing and re-serialising it. jsonb's text is deterministic: keys ordered by byte length
  then bytes, `", "` and `": "` separators, the same string escapes as Python's `json.dumps` with
  `ensure_ascii=False` (tests prove the two agree on generated data).

**Version 1** (logs written before migration 3): Formance's form, compact JSON with sorted keys over the
data *without* derived volumes. Still verified, never written; a chain may move from 1 to 2 once, never back.
Volumes in version-1 logs are covered by `logs verify --deep` (the replay), not by the hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

HASH_VERSION = 2  # what the writer uses

DERIVED_FIELDS = frozenset({"preCommitVolumes", "postCommitVolumes", "postCommitEffectiveVolumes"})
TRANSACTION_KEYS = frozenset({"transaction", "revertedTransaction"})  # where logs carry transaction objects


def _jsonb_key(key: str) -> tuple[int, bytes]:
    raw = key.encode()
    return len(raw), raw


_CONTAINERS = (dict, list)


def _jsonb_ordered(value: Any) -> Any:
    # The writer's hot path (every log is hashed in its batch): no call per key or per scalar where avoidable.
    if isinstance(value, dict):
        keys = sorted(value)  # a str's order is its UTF-8 bytes' order
        if "".join(keys).isascii():
            keys.sort(key=len)  # stable: by length, then bytes (an ASCII key's length is its byte length)
        else:
            keys.sort(key=_jsonb_key)
        ordered = {}
        for key in keys:
            item = value[key]
            ordered[key] = _jsonb_ordered(item) if isinstance(item, _CONTAINERS) else item
        return ordered
    if isinstance(value, list):
        return [_jsonb_ordered(item) if isinstance(item, _CONTAINERS) else item for item in value]
    return value


def jsonb_text(value: Any) -> str:
    """The text PostgreSQL prints for `value` stored as jsonb (integers, strings, bools, null, lists, objects)."""
    return json.dumps(_jsonb_ordered(value), ensure_ascii=False)


def _string(value: str | None) -> str:
    # What json.dumps(value, ensure_ascii=False) returns for a string, without its per-call set-up.
    return "null" if value is None else encode_basestring(value)


def canonical(*, ledger: str, log_id: int, log_type: str, date: str, idempotency_key: str | None,
              data_text: str) -> bytes:
    """Version 2: jsonb's text of the log object, built around `data_text` (jsonb's text of the data).

    The keys are written in jsonb's order (length, then bytes): id, data, date, type, ledger, idempotencyKey.
    """
    return (f'{{"id": {log_id}, "data": {data_text}, "date": {_string(date)}, "type": {_string(log_type)}, '
            f'"ledger": {_string(ledger)}, "idempotencyKey": {_string(idempotency_key)}}}').encode()


def canonical_v1(*, ledger: str, log_id: int, log_type: str, date: str, idempotency_key: str | None,
                 data: Mapping[str, Any]) -> bytes:
    """Version 1: compact sorted JSON, derived volumes stripped from transaction objects only.

    Only there: `accountMetadata` is keyed by address, and `preCommitVolumes` is a valid address.
    """
    stripped = {
        key: {k: v for k, v in value.items() if k not in DERIVED_FIELDS}
        if key in TRANSACTION_KEYS and isinstance(value, Mapping) else value
        for key, value in data.items()
    }
    body = {"ledger": ledger, "id": log_id, "type": log_type, "date": date, "idempotencyKey": idempotency_key,
            "data": stripped}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(previous: bytes | None, canonical_form: bytes) -> bytes:
    digest = hashlib.sha256()
    digest.update(previous or b"")
    digest.update(canonical_form)
    return digest.digest()


@dataclass(frozen=True)
class StoredLog:
    """A log as stored: what its hash covers, in the text forms the database gives."""

    id: int
    type: str
    date: str  # RFC 3339, as validation.format_timestamp writes it
    idempotency_key: str | None
    data_text: str  # jsonb's text of the data (`data::text`)
    hash: bytes
    hash_version: int


def recompute(ledger: str, previous: bytes | None, log: StoredLog) -> bytes:
    """The hash `log` must have if it follows a log whose hash is `previous`."""
    if log.hash_version == 2:
        return chain_hash(previous, canonical(ledger=ledger, log_id=log.id, log_type=log.type, date=log.date,
                                              idempotency_key=log.idempotency_key, data_text=log.data_text))
    if log.hash_version == 1:
        return chain_hash(previous, canonical_v1(ledger=ledger, log_id=log.id, log_type=log.type, date=log.date,
                                                 idempotency_key=log.idempotency_key,
                                                 data=json.loads(log.data_text)))
    raise ValueError(f"unknown hash version {log.hash_version}")


@dataclass(frozen=True)
class BrokenLink:
    log_id: int
    reason: str


def first_broken_link(ledger: str, logs: Iterable[StoredLog], *, previous: bytes | None, previous_id: int,
                      previous_version: int = 1) -> BrokenLink | None:
    """Check `logs` link by link, continuing from the log `previous_id` whose hash is `previous`.

    Ids must follow on from `previous_id` without a gap, versions never go back, and every stored hash must
    equal the one recomputed over the previous *stored* hash, so the first altered log is the one named.
    """
    expected_id, version = previous_id + 1, previous_version
    for log in logs:
        if log.id != expected_id:
            return BrokenLink(expected_id, f"log ids jump from {expected_id - 1} to {log.id}")
        if log.hash_version < version:
            return BrokenLink(log.id, f"hash version {log.hash_version} after version {version}")
        computed = recompute(ledger, previous, log)
        if computed != log.hash:
            return BrokenLink(log.id, f"stored hash {log.hash.hex()[:16]}… recomputed {computed.hex()[:16]}…")
        previous, version, expected_id = log.hash, log.hash_version, expected_id + 1
    return None


def request_hash(request: Mapping[str, Any]) -> bytes:
    """Fingerprint of a write request, to tell a replay (same key, same input) from a conflict."""
    return hashlib.sha256(
        json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).digest()
