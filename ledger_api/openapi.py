"""The API's OpenAPI document: request and response schemas in Formance v2's shapes.

Bodies are parsed by the ledger's own JSON reader (exact integers), not by FastAPI's models, so the schemas
are written here and attached to the routes; tests/api validates real answers against the document served.
"""

from __future__ import annotations

from typing import Any

INT = {"type": "integer", "description": "an exact integer of any size (JSON number, never rounded)"}
TIME = {"type": "string", "format": "date-time"}
METADATA = {"type": "object", "additionalProperties": {"type": "string"}}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _cursor(item: str) -> dict[str, Any]:
    return {"type": "object", "required": ["cursor"], "properties": {"cursor": {
        "type": "object", "required": ["pageSize", "hasMore", "data"],
        "properties": {"pageSize": {"type": "integer"}, "hasMore": {"type": "boolean"},
                       "next": {"type": ["string", "null"]}, "data": {"type": "array", "items": ref(item)}}}}}


def _data(item: str) -> dict[str, Any]:
    return {"type": "object", "required": ["data"], "properties": {"data": ref(item)}}


VOLUMES = {"type": "object", "additionalProperties": {"type": "object", "additionalProperties": ref("V2Volume")}}

SCHEMAS: dict[str, Any] = {
    "V2Error": {"type": "object", "required": ["errorCode", "errorMessage"],
                "properties": {"errorCode": {"type": "string"}, "errorMessage": {"type": "string"}}},
    "V2Posting": {"type": "object", "required": ["source", "destination", "amount", "asset"],
                  "properties": {"source": {"type": "string"}, "destination": {"type": "string"},
                                 "amount": {**INT, "minimum": 0}, "asset": {"type": "string"}}},
    "V2Volume": {"type": "object", "required": ["input", "output", "balance"],
                 "properties": {"input": INT, "output": INT, "balance": INT}},
    "V2Transaction": {
        "type": "object", "required": ["id", "postings", "metadata", "timestamp", "insertedAt", "reverted"],
        "properties": {"id": {"type": "integer"}, "postings": {"type": "array", "items": ref("V2Posting")},
                       "metadata": METADATA, "timestamp": TIME, "insertedAt": TIME, "reference": {"type": "string"},
                       "reverted": {"type": "boolean"}, "revertedAt": TIME,
                       "preCommitVolumes": VOLUMES, "postCommitVolumes": VOLUMES}},
    "V2PostTransaction": {
        "type": "object", "required": ["postings"], "additionalProperties": False,
        "properties": {"postings": {"type": "array", "minItems": 1, "items": ref("V2Posting")},
                       "metadata": METADATA, "reference": {"type": "string"}, "timestamp": TIME,
                       "accountMetadata": {"type": "object", "additionalProperties": METADATA},
                       "force": {"type": "boolean"}}},
    "V2Account": {"type": "object", "required": ["address", "metadata"],
                  "properties": {"address": {"type": "string"}, "metadata": METADATA,
                                 "volumes": {"type": "object", "additionalProperties": ref("V2Volume")},
                                 "firstUsage": {"type": ["string", "null"], "format": "date-time"},
                                 "insertionDate": TIME, "updatedAt": TIME}},
    "V2Ledger": {"type": "object", "required": ["name", "addedAt", "bucket"],
                 "properties": {"name": {"type": "string"}, "addedAt": TIME, "bucket": {"type": "string"},
                                "metadata": METADATA,
                                "lastLogID": {"type": "integer", "description": "extension: the last log's id"}}},
    "V2Log": {"type": "object", "required": ["id", "type", "date", "data", "hash"],
              "properties": {"id": {"type": "integer"}, "type": {"type": "string", "enum": [
                  "NEW_TRANSACTION", "SET_METADATA", "REVERTED_TRANSACTION", "DELETE_METADATA"]},
                  "date": TIME, "data": {"type": "object"}, "hash": {"type": "string"},
                  "idempotencyKey": {"type": "string"}, "ledger": {"type": "string"}}},
    "V2VolumesWithBalance": {"type": "object", "required": ["account", "asset", "input", "output", "balance"],
                             "properties": {"account": {"type": "string"}, "asset": {"type": "string"},
                                            "input": INT, "output": INT, "balance": INT}},
    "V2BulkElement": {"type": "object", "required": ["action", "data"],
                      "properties": {"action": {"type": "string", "enum": [
                          "CREATE_TRANSACTION", "ADD_METADATA", "REVERT_TRANSACTION", "DELETE_METADATA"]},
                          "ik": {"type": "string"}, "data": {"type": "object"}}},
    "V2BulkElementList": {"type": "array", "items": ref("V2BulkElement")},
    "V2BulkElementResult": {"type": "object", "required": ["responseType", "logID"],
                            "properties": {"responseType": {"type": "string"}, "logID": {"type": "integer"},
                                           "data": ref("V2Transaction"), "errorCode": {"type": "string"},
                                           "errorDescription": {"type": "string"}}},
    "V2Exporter": {"type": "object", "required": ["id", "driver", "config", "createdAt"],
                   "properties": {"id": {"type": "string"}, "driver": {"type": "string"},
                                  "config": {"type": "object"}, "createdAt": TIME,
                                  "name": {"type": "string", "description": "extension: a unique, readable name"}}},
    "V2Pipeline": {"type": "object", "required": ["id", "ledger", "exporterID", "createdAt"],
                   "properties": {"id": {"type": "string"}, "ledger": {"type": "string"},
                                  "exporterID": {"type": "string"}, "createdAt": TIME,
                                  "lastLogID": {"type": "integer"}, "enabled": {"type": "boolean"},
                                  "lag": {"type": "integer", "description": "extension: logs not yet exported"},
                                  "lastError": {"type": ["string", "null"],
                                                "description": "extension: why the last sync failed"}}},
    "V2ExporterConfiguration": {"type": "object", "required": ["driver", "config"],
                                "properties": {"driver": {"type": "string"}, "config": {"type": "object"},
                                               "name": {"type": "string"}}},
    "V2CreatePipelineRequest": {"type": "object", "required": ["exporterID"],
                                "properties": {"exporterID": {"type": "string"}, "cadence": {"type": "string"},
                                               "name": {"type": "string"}}},
    "V2CreateLedgerRequest": {"type": "object", "additionalProperties": False,
                              "properties": {"bucket": {"type": "string", "enum": ["_default"]},
                                             "metadata": METADATA}},
    "V2Metadata": METADATA,
    "V2Filter": {"type": "object", "description": "Formance's filter subset: $match, $gte/$lt on timestamp, $and"},
    "V2TokenResponse": {"type": "object", "required": ["access_token", "token_type", "expires_in"],
                        "properties": {"access_token": {"type": "string"}, "token_type": {"const": "Bearer"},
                                       "expires_in": {"type": "integer"}, "scope": {"type": "string"}}},
    **{f"{name}Response": _data(name) for name in ("V2Transaction", "V2Account", "V2Ledger", "V2Exporter",
                                                     "V2Pipeline")},
    **{f"{name}CursorResponse": _cursor(name) for name in ("V2Transaction", "V2Account", "V2Ledger", "V2Log",
                                                            "V2Exporter", "V2Pipeline", "V2VolumesWithBalance")},
    "V2AggregateBalancesResponse": {"type": "object", "required": ["data"],
                                    "properties": {"data": {"type": "object", "additionalProperties": INT}}},
    "V2StatsResponse": {"type": "object", "required": ["data"], "properties": {"data": {
        "type": "object", "required": ["accounts", "transactions"],
        "properties": {"accounts": {"type": "integer"}, "transactions": {"type": "integer"}}}}},
    "V2BulkResponse": {"type": "object", "required": ["data"],
                       "properties": {"data": {"type": "array", "items": ref("V2BulkElementResult")}}},
}


def doc(answer: str | None, *, status: int = 200, body: str | None = None, body_required: bool = True,
        also: dict[int, str] | None = None) -> dict[str, Any]:
    """A route's `openapi_extra` (merged last into its operation): its JSON request body and its answers, the
    success with this schema (or none) and errors in Formance's shape."""
    success: dict[str, Any] = {"description": "OK"}
    if answer:
        success["content"] = {"application/json": {"schema": ref(answer)}}
    error = {"content": {"application/json": {"schema": ref("V2Error")}}}
    extra: dict[str, Any] = {"responses": {str(status): success, "4XX": {"description": "refused", **error},
                                           "5XX": {"description": "failed", **error}}}
    for other, schema in (also or {}).items():  # a refusal with a shape of its own (a bulk's per-element results)
        extra["responses"][str(other)] = {"description": "refused", "content": {
            "application/json": {"schema": ref(schema)}}}
    if body:
        extra["requestBody"] = {"required": body_required,
                                "content": {"application/json": {"schema": ref(body)}}}
    return extra
