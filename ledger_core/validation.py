"""Rules for names, addresses, assets, amounts, metadata and timestamps.

Everything that comes from outside passes through here before it reaches the database, so a bad input
is refused with a specific message and nothing is written. Amounts are Python ints from end to end:
a JSON float or a decimal string is refused, never rounded.

Patterns are matched with `fullmatch`: `$` would accept a trailing newline (`"world\n"`). Every free-form
string (metadata, references, keys) is checked by `text()`: PostgreSQL cannot store NUL, and a lone
surrogate cannot be encoded as UTF-8, so both are refused here with the field named.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ledger_core.errors import ValidationError

LEDGER_NAME = re.compile(r"[a-zA-Z0-9_-]{1,63}")
ADDRESS_SEGMENT = r"[a-zA-Z0-9_-]+"
ADDRESS = re.compile(rf"{ADDRESS_SEGMENT}(?::{ADDRESS_SEGMENT})*")
# Formance's asset rule: upper-case code, optional `_SUFFIX`, optional `/precision`.
ASSET = re.compile(r"[A-Z][A-Z0-9]{0,16}(?:_[A-Z]{1,16})?(?:/[0-9]{1,6})?")
MAX_ADDRESS_LENGTH = 1024
MAX_REFERENCE_LENGTH = 1024
WORLD = "world"
# The ledger's bound on money: every amount, and every volume amounts add up to, has at most 76 digits, so
# every destination with 76-digit money (PostgreSQL NUMERIC(76,0), ClickHouse Int256, Arrow decimal256) holds
# whatever the ledger holds. Destinations with 38 digits stop at a wider value with a clear error instead.
MONEY_DIGITS = 76
MAX_AMOUNT = 10**MONEY_DIGITS - 1
MAX_ID = 2**63 - 1  # ids are bigint
# RFC 3339 with a zone; [0-9], not \d, which also matches digits of other scripts.
TIMESTAMP = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]+))?(Z|[+-][0-9]{2}:?[0-9]{2})", re.IGNORECASE)


def text(value: str, *, field: str) -> str:
    """A string PostgreSQL can store and UTF-8 can encode: no NUL character, no lone surrogate."""
    if "\x00" in value:
        raise ValidationError("must not contain the NUL character (\\u0000)", field=field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("must be valid Unicode (it holds a lone surrogate such as \\ud800)",
                              field=field) from None
    return value


def ledger_name(value: Any) -> str:
    if not isinstance(value, str) or not LEDGER_NAME.fullmatch(value):
        raise ValidationError(
            f"invalid ledger name {value!r}: use 1 to 63 letters, digits, '_' or '-'", field="ledger"
        )
    return value


def address(value: Any, *, field: str = "address") -> str:
    if not isinstance(value, str) or len(value) > MAX_ADDRESS_LENGTH or not ADDRESS.fullmatch(value):
        raise ValidationError(
            f"invalid account address {value!r}: segments of letters, digits, '_' or '-' "
            "separated by ':' (for example 'users:001')",
            field=field,
        )
    return value


def asset(value: Any, *, field: str = "asset") -> str:
    if not isinstance(value, str) or not ASSET.fullmatch(value):
        raise ValidationError(
            f"invalid asset {value!r}: an upper-case code with an optional /precision "
            "(for example 'USD', 'USD/2', 'ETH/18')",
            field=field,
        )
    return value


def amount(value: Any, *, field: str = "amount") -> int:
    """A non-negative integer of at most 76 digits (MAX_AMOUNT), from a JSON integer or a string of digits."""
    # bool is an int subclass; a float or Decimal would mean the caller already lost precision.
    if isinstance(value, (bool, float | Decimal)):
        shown = str(value).lower() if isinstance(value, bool) else str(value)
        raise ValidationError(f"must be a non-negative integer, got {shown}", field=field)
    if isinstance(value, str):
        if not value.isascii() or not value.isdigit():
            raise ValidationError(f"must be a non-negative integer, got {_shorten(value)!r}", field=field)
        if len(value.lstrip("0")) > MONEY_DIGITS:  # checked before int(): Python refuses >4300 digits anyway
            raise ValidationError(f"has {len(value.lstrip('0'))} digits; the ledger holds at most "
                                  f"{MONEY_DIGITS}", field=field)
        value = int(value)
    if not isinstance(value, int):
        raise ValidationError(f"must be a non-negative integer, got {type(value).__name__}", field=field)
    if value < 0:
        raise ValidationError(f"must not be negative, got {_shorten(str(value))}", field=field)
    if value > MAX_AMOUNT:
        raise ValidationError(f"has {len(str(value))} digits; the ledger holds at most {MONEY_DIGITS}", field=field)
    return value


def _shorten(value: str, limit: int = 40) -> str:
    return value if len(value) <= limit else value[:limit] + "…"


def metadata(value: Any, *, field: str = "metadata") -> dict[str, str]:
    """Formance v2 metadata: a flat map of string keys to string values."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError("must be an object of string keys to string values", field=field)
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise ValidationError(f"keys must be non-empty strings, got {key!r}", field=field)
        text(key, field=f"{field} key")
        if not isinstance(item, str):
            raise ValidationError(f"value of {key!r} must be a string, got {type(item).__name__}", field=field)
        text(item, field=f"{field}.{key}")
    return dict(value)


def reference(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_REFERENCE_LENGTH:
        raise ValidationError("must be a non-empty string of at most 1024 characters", field="reference")
    return text(value, field="reference")


def timestamp(value: Any, *, field: str = "timestamp") -> datetime:
    """An RFC 3339 timestamp with a time zone, kept to the microsecond (PostgreSQL's precision)."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        # RFC 3339 allows nanoseconds; PostgreSQL keeps microseconds, so more digits would be silently lost.
        match = TIMESTAMP.fullmatch(value)
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
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-01:00 is in year 10000 once in UTC
        raise ValidationError(f"timestamp {value!r} is outside years 0001 to 9999 in UTC", field=field) from None


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with trailing zeros of the fraction dropped, as Go's RFC3339Nano does.

    Built field by field (strftime's %Y does not pad years before 1000); `ledger_core.rfc3339()` in SQL
    gives the same text (tested), which lets the database compute log hashes too.
    """
    value = value.astimezone(UTC)
    out = (f"{value.year:04d}-{value.month:02d}-{value.day:02d}T"
           f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}")
    if value.microsecond:
        out += "." + f"{value.microsecond:06d}".rstrip("0")
    return out + "Z"


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
