"""Formance's list filters: the subset the API understands is turned into keywords; the rest is refused by name."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ledger_api.filters import parse
from ledger_core.errors import ValidationError

MATCH = {"account": "account", "reference": "reference"}
RANGES = {("$gte", "timestamp"): "start", ("$lt", "timestamp"): "end"}


def test_match_and_ranges_become_keywords():
    body = {"$and": [{"$match": {"account": "users:"}}, {"$gte": {"timestamp": "2026-01-01T00:00:00Z"}},
                     {"$and": [{"$lt": {"timestamp": "2026-02-01T00:00:00+01:00"}}]}]}
    assert parse(body, match=MATCH, ranges=RANGES) == {
        "account": "users:", "start": datetime(2026, 1, 1, tzinfo=UTC),
        "end": datetime(2026, 1, 31, 23, tzinfo=UTC)}
    assert parse(None, match=MATCH) == {} and parse({}, match=MATCH) == {}


@pytest.mark.parametrize(("body", "named"), [
    ({"$match": {"metadata[k]": "v"}}, "not supported"),
    ({"$lte": {"timestamp": "2026-01-01T00:00:00Z"}}, "not supported"),
    ({"$match": {"account": 1}}, "takes a string"),
    ({"$match": {"account": "a"}, "$and": []}, "one operator"),
    ({"$and": {"$match": {"account": "a"}}}, "list of filters"),
    ({"$and": [{"$match": {"account": "a"}}, {"$match": {"account": "b"}}]}, "twice"),
    ({"$gte": {"timestamp": "yesterday"}}, "timestamp"),
    ([], "one operator"),
    ({"$and": [{"$and": [{"$and": [{"$and": [{"$and": [{"$and": [{"$and": [{"$and": [{"$and": [
        {"$match": {"account": "a"}}]}]}]}]}]}]}]}]}]}, "nested"),
])
def test_anything_else_is_refused_by_name(body, named):
    with pytest.raises(ValidationError, match=named):
        parse(body, match=MATCH, ranges=RANGES)
