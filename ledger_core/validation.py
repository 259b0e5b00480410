"""Rules for names, addresses, assets, amounts, metadata and timestamps.

Everything that comes from outside passes through here before it reaches the database, so a bad input
is refused with a specific message and nothing is written. Amounts are Python ints from end to end:
a JSON float or a decimal string is refused, never rounded.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ledger_core.errors import ValidationError

LEDGER_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,63}$")
ADDRESS_SEGMENT = r"[a-zA-Z0-9_-]+"
ADDRESS = re.compile(rf"^{ADDRESS_SEGMENT}(?::{ADDRESS_SEGMENT})*$")
# Formance's asset rule: upper-case code, optional `_SUFFIX`, optional `/precision`.
ASSET = re.compile(r"^[A-Z][A-Z0-9]{0,16}(?:_[A-Z]{1,16})?(?:/\d{1,6})?$")
MAX_ADDRESS_LENGTH = 1024
MAX_REFERENCE_LENGTH = 1024
WORLD = "world"


def ledger_name(value: Any) -> str:
    if not isinstance(value, str) or not LEDGER_NAME.match(value):
        raise ValidationError(
            f"invalid ledger name {value!r}: use 1 to 63 letters, digits, '_' or '-'", field="ledger"
        )
    return value


def address(value: Any, *, field: str = "address") -> str:
    if not isinstance(value, str) or len(value) > MAX_ADDRESS_LENGTH or not ADDRESS.match(value):
        raise ValidationError(
            f"invalid account address {value!r}: segments of letters, digits, '_' or '-' "
            "separated by ':' (for example 'users:001')",
            field=field,
        )
    return value


def asset(value: Any, *, field: str = "asset") -> str:
    if not isinstance(value, str) or not ASSET.match(value):
        raise ValidationError(
            f"invalid asset {value!r}: an upper-case code with an optional /precision "
            "(for example 'USD', 'USD/2', 'ETH/18')",
            field=field,
        )
    return value


def amount(value: Any, *, field: str = "amount") -> int:
    """A non-negative integer of any size, from a JSON integer or a string of digits."""
    # bool is an int subclass; a float or Decimal would mean the caller already lost precision.
    if isinstance(value, (bool, float | Decimal)):
        shown = str(value).lower() if isinstance(value, bool) else str(value)
        raise ValidationError(f"must be a non-negative integer, got {shown}", field=field)
    if isinstance(value, str):
        if not value.isascii() or not value.isdigit():
            raise ValidationError(f"must be a non-negative integer, got {value!r}", field=field)
        value = int(value)
    if not isinstance(value, int):
        raise ValidationError(f"must be a non-negative integer, got {type(value).__name__}", field=field)
    if value < 0:
        raise ValidationError(f"must not be negative, got {value}", field=field)
    return value


def metadata(value: Any, *, field: str = "metadata") -> dict[str, str]:
    """Formance v2 metadata: a flat map of string keys to string values."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError("must be an object of string keys to string values", field=field)
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise ValidationError(f"keys must be non-empty strings, got {key!r}", field=field)
        if not isinstance(item, str):
            raise ValidationError(f"value of '{key}' must be a string, got {type(item).__name__}", field=field)
    return dict(value)


def reference(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_REFERENCE_LENGTH:
        raise ValidationError("must be a non-empty string of at most 1024 characters", field="reference")
    return value


def timestamp(value: Any, *, field: str = "timestamp") -> datetime:
    """An RFC 3339 timestamp with a time zone, kept to the microsecond (PostgreSQL's precision)."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        text = value.strip()
        # RFC 3339 allows nanoseconds; PostgreSQL keeps microseconds, so more digits would be silently lost.
        match = re.match(r"^(.*T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:?\d{2})$", text, re.IGNORECASE)
        if not match:
            raise ValidationError(
                f"invalid timestamp {value!r}: use RFC 3339 with a time zone, e.g. 2024-01-15T10:30:00Z",
                field=field,
            )
        head, fraction, zone = match.groups()
        if fraction and len(fraction.rstrip("0")) > 6:
            raise ValidationError(f"timestamp {value!r} is more precise than a microsecond", field=field)
        fraction = (fraction or "").rstrip("0")[:6].ljust(6, "0")
        zone = "+00:00" if zone.upper() == "Z" else zone
        try:
            parsed = datetime.fromisoformat(f"{head}.{fraction}{zone}")
        except ValueError as exc:
            raise ValidationError(f"invalid timestamp {value!r}: {exc}", field=field) from None
    else:
        raise ValidationError(f"must be an RFC 3339 string, got {type(value).__name__}", field=field)
    if parsed.tzinfo is None:
        raise ValidationError(f"timestamp {value!r} has no time zone", field=field)
    return parsed.astimezone(UTC)


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with trailing zeros of the fraction dropped, as Go's RFC3339Nano does."""
    value = value.astimezone(UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += "." + f"{value.microsecond:06d}".rstrip("0")
    return text + "Z"


def address_pattern(pattern: str) -> str:
    """Turn an address pattern into a PostgreSQL regular expression.

    `users:001` matches one address; `users:` (trailing colon) matches every address below `users`;
    `users:*:main` matches any single segment where the `*` stands.
    """
    if not isinstance(pattern, str) or not pattern:
        raise ValidationError("must be a non-empty address pattern", field="address")
    prefix = pattern.endswith(":")
    segments = pattern.rstrip(":").split(":")
    parts = []
    for segment in segments:
        if segment == "*":
            parts.append("[^:]+")
        elif re.fullmatch(ADDRESS_SEGMENT, segment):
            parts.append(segment)
        else:
            raise ValidationError(f"invalid address pattern {pattern!r}", field="address")
    return "^" + ":".join(parts) + (":.+$" if prefix else "$")
