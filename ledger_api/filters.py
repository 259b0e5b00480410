"""The part of Formance v2's query filters the API understands, turned into the reads' keyword arguments.

Formance list routes take a JSON body such as `{"$and": [{"$match": {"account": "users:"}},
{"$gte": {"timestamp": "2025-01-01T00:00:00Z"}}]}`. We accept `$match` on the fields below, `$gte`/`$lt` on
timestamps, and `$and` of those; anything else is refused by name rather than ignored, since a filter quietly
dropped returns more rows than the caller asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ledger_core.errors import ValidationError
from ledger_core.validation import timestamp

MAX_DEPTH = 8


def parse(body: Any, *, match: Mapping[str, str],
          ranges: Mapping[tuple[str, str], str] | None = None) -> dict[str, Any]:
    """`match` maps a `$match` field to a keyword; `ranges` maps (operator, field) to one (a timestamp)."""
    found: dict[str, Any] = {}
    ranges = ranges or {}
    if body is None or body == {}:
        return found

    def visit(node: Any, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise ValidationError(f"nested more than {MAX_DEPTH} levels", field="filter")
        if not isinstance(node, Mapping) or len(node) != 1:
            raise ValidationError("each filter is an object with one operator ($match, $and, $gte, $lt)",
                                  field="filter")
        [(operator, operand)] = node.items()
        if operator == "$and":
            if not isinstance(operand, list):
                raise ValidationError("$and takes a list of filters", field="filter")
            for item in operand:
                visit(item, depth + 1)
            return
        if not isinstance(operand, Mapping) or len(operand) != 1:
            raise ValidationError(f"{operator} takes an object with one field", field="filter")
        [(name, value)] = operand.items()
        if operator == "$match" and name in match:
            keyword, converted = match[name], value
        elif (operator, name) in ranges:
            keyword, converted = ranges[(operator, name)], timestamp(value, field=f"filter {operator}.{name}")
        else:
            raise ValidationError(f"{operator} on {name!r} is not supported here; supported: "
                                  + ", ".join([f"$match.{k}" for k in match] + [f"{o}.{f}" for o, f in ranges]),
                                  field="filter")
        if operator == "$match" and not isinstance(value, str):
            raise ValidationError(f"$match.{name} takes a string", field="filter")
        if keyword in found and found[keyword] != converted:
            raise ValidationError(f"{operator}.{name} is given twice with different values", field="filter")
        found[keyword] = converted

    visit(body, 0)
    return found
