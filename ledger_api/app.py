"""The ledger's HTTP API: Formance Ledger v2's routes and JSON shapes, on FastAPI.

Every route is served under `/v2` and under `/api/ledger/v2` (the path Formance's stack and its SDKs use).
Every route needs a bearer token but the health check and the token endpoint; a token comes from an API key
through OAuth2's client-credentials grant at `/oauth/token` (also `/api/auth/oauth/token`, the SDK's default).

Bodies are read as bytes, limited in size, and parsed by the ledger's own JSON reader (amounts stay exact
integers; floats, deep nesting and oversized numbers are refused), so the rules of the CLI hold here too: one
clear error, nothing written. Errors have Formance's shape, `{"errorCode", "errorMessage"}`; the codes our
ledger adds (VOLUMES_OUT_OF_RANGE, SCHEMA_OUT_OF_DATE, the pipelines' codes, UNAUTHORIZED, FORBIDDEN,
BODY_TOO_LARGE) are documented in the README as extensions.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import parse_qs, unquote_plus

import psycopg
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.models import OAuthFlowClientCredentials, OAuthFlows
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import OAuth2
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledger_api import filters
from ledger_api.auth import READ, STALE, WRITE, Principal
from ledger_api.errors import ApiError, BodyTooLarge, InvalidClient, InvalidTokenRequest, NotSupported
from ledger_api.openapi import SCHEMAS, doc
from ledger_api.server import Server, Settings
from ledger_core import ledgers, reads
from ledger_core.errors import LedgerError, ValidationError
from ledger_core.group_commit import write_each, write_until_refused
from ledger_core.models import TargetType
from ledger_core.requests import (
    DeleteMetadata,
    NewTransaction,
    RevertTransaction,
    SetMetadata,
    bulk_element,
    parse_json,
    transaction_id,
)
from ledger_core.validation import address, timestamp
from ledger_core.writer import WriteResult

log = logging.getLogger("ledger_api")

# HTTP status per error code, as Formance answers them; anything not listed is a 400 (a refused request).
STATUS = {
    "NOT_FOUND": 404, "LEDGER_NOT_FOUND": 404, "CONFLICT": 409, "INTERNAL": 500, "SCHEMA_OUT_OF_DATE": 503,
    "PIPELINE_BUSY": 409, "CURSOR_MOVED": 409, "DATABASE_UNAVAILABLE": 503,
}
BUCKET = "_default"  # Formance groups ledgers in buckets; here every ledger lives in the one database


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"errorCode": code, "errorMessage": " ".join(message.split())}, status_code=status)


def error_answer(exc: LedgerError | ApiError | psycopg.OperationalError) -> JSONResponse:
    """The answer to a refusal of the ledger's, of the API's, or to a database out of reach."""
    if isinstance(exc, LedgerError):
        return error_response(STATUS.get(exc.error_code, 400), exc.error_code, str(exc))
    if isinstance(exc, InvalidClient | InvalidTokenRequest):  # the token endpoint answers as RFC 6749 says
        return JSONResponse({"error": exc.error_code, "error_description": str(exc)}, status_code=exc.status)
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.error_code, str(exc))
    log.warning("database unreachable: %s", str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
    return error_response(503, "DATABASE_UNAVAILABLE", "the ledger database cannot be reached; retry shortly")


# -- body limit: a pure ASGI wrapper, so an oversized body is refused before it is read into memory ------------

class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _send_error(send, BodyTooLarge(self.limit))
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # a chunked body with no declared length
                raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)


async def _send_error(send: Send, exc: ApiError) -> None:
    response = error_response(exc.status, exc.error_code, str(exc))
    await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


async def json_body(request: Request, *, required: bool = True) -> Any:
    raw = await request.body()
    if not raw.strip():
        if required:
            raise ValidationError("a JSON body is required", field="body")
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError("the body is not UTF-8", field="body") from None
    return parse_json(text)


# Query parameters Formance defines that change what a route answers, and that this ledger does not implement
# (sorting, point-in-time listings, Numscript's schema versions...): refused by name, never silently ignored.
# `expand` is accepted: volumes are always included.
IGNORED_QUERY = {"expand"}


async def known_query(request: Request) -> None:
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    accepted = {p.alias for p in _query_params(dependant)} | IGNORED_QUERY
    unknown = sorted(set(request.query_params) - accepted)
    if unknown:
        raise ValidationError(f"query parameter(s) {', '.join(unknown)} not supported by this route; it takes "
                              f"{', '.join(sorted(accepted - IGNORED_QUERY)) or 'none'}", field="query")


def _query_params(dependant: Any) -> list[Any]:
    found = list(dependant.query_params)
    for sub in dependant.dependencies:
        found += _query_params(sub)
    return found


# -- auth -------------------------------------------------------------------------------------------------

oauth2 = OAuth2(flows=OAuthFlows(clientCredentials=OAuthFlowClientCredentials(
    tokenUrl="/oauth/token", scopes={READ: "read ledgers", WRITE: "write ledgers"})), auto_error=False)


async def principal_of(server: Server, authorization: str | None) -> Principal:
    # In the event loop: checking a token is CPU only; the key's row is read (in a thread) every few seconds.
    authority = server.authority
    client_id, scopes = authority.token_claims(authorization)
    key = authority.cached_key(client_id)
    if key is STALE:
        key = await run_in_threadpool(authority.current_key, client_id)
    return authority.principal(key, scopes)  # type: ignore[arg-type]


async def _principal(request: Request, authorization: Annotated[str | None, Security(oauth2)]) -> Principal:
    return await principal_of(server_of(request), authorization)


_SCOPED = {False: Security(_principal, scopes=[READ]), True: Security(_principal, scopes=[WRITE])}


def _needs(write: bool) -> Callable[..., Principal]:
    async def check(request: Request, principal: Principal = _SCOPED[write]) -> Principal:
        principal.require(request.path_params.get("ledger"), write=write)
        return principal

    return check


Reader = Depends(_needs(False))
Writer = Depends(_needs(True))


def server_of(request: Request) -> Server:
    return request.app.state.server


async def created_transaction(server: Server, ledger: str, body: Any, idempotency_key: str | None, *,
                              force: bool = False, dry_run: bool = False) -> Response:
    command = NewTransaction.from_json(body, idempotency_key=idempotency_key, force=force)
    return Response(await server.write_one(ledger, command, dry_run=dry_run), media_type="application/json")


class HotPath:
    """`POST /v2/{ledger}/transactions` with no query string, answered without FastAPI's routing and dependency
    resolution: it is the request applications send most, and there the framework cost the server more CPU
    than the write itself (bench/http_write.py). Same checks, same functions, same answers as the routed
    `create_transaction`, which serves the route's other forms (`?dryRun=true`, `?force=true`) and documents
    it; a test sends each answer both ways and compares."""

    PATH = re.compile(r"/v2/([^/]+)/transactions")

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = None
        if scope["type"] == "http" and scope["method"] == "POST" and not scope["query_string"]:
            match = self.PATH.fullmatch(scope["path"])
        if match is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        server: Server = scope["app"].state.server
        try:
            principal = await principal_of(server, request.headers.get("authorization"))
            principal.require(match[1], write=True)
            response = await created_transaction(server, match[1], await json_body(request),
                                                 request.headers.get("idempotency-key"))
        except (LedgerError, ApiError, psycopg.OperationalError) as exc:
            response = error_answer(exc)
        await response(scope, receive, send)


# -- shapes -------------------------------------------------------------------------------------------------

def ledger_json(info: ledgers.LedgerInfo) -> dict[str, Any]:
    return {**info.to_json(), "bucket": BUCKET}


def page_json(page: reads.Page) -> dict[str, Any]:
    return page.to_json()


def in_pages(items: list[Any], page_size: int, cursor: str | None, key: Callable[[Any], str]) -> reads.Page:
    """A page of a list small enough to hold (ledgers, exporters, pipelines), by a cursor on `key`."""
    if not 1 <= page_size <= reads.MAX_PAGE_SIZE:
        raise ValidationError(f"must be between 1 and {reads.MAX_PAGE_SIZE}", field="pageSize")
    after = reads.decode_text_cursor(cursor, "after") if cursor else None
    rest = [i for i in items if after is None or key(i) > after]
    data = rest[:page_size]
    more = len(rest) > page_size
    return reads.Page(data, page_size, more, reads.encode_cursor(key(data[-1]), "after") if more else None)


def _bulk_result(command: Any, outcome: WriteResult | LedgerError) -> dict[str, Any]:
    action = {NewTransaction: "CREATE_TRANSACTION", RevertTransaction: "REVERT_TRANSACTION",
              SetMetadata: "ADD_METADATA", DeleteMetadata: "DELETE_METADATA"}[type(command)]
    if isinstance(outcome, LedgerError):
        return {"responseType": "ERROR", "logID": 0, "errorCode": outcome.error_code,
                "errorDescription": str(outcome)}
    body: dict[str, Any] = {"responseType": action, "logID": outcome.log.id}
    if outcome.transaction is not None:
        body["data"] = outcome.transaction.to_json()
    return body


def _not_run(index: int) -> LedgerError:
    return ValidationError(f"not executed: element {index} was refused and continueOnFailure is false")


# -- routes -------------------------------------------------------------------------------------------------

PageSize = Annotated[int, Query(alias="pageSize", ge=1, le=reads.MAX_PAGE_SIZE)]
Cursor = Annotated[str | None, Query()]


def ledger_routes() -> APIRouter:
    r = APIRouter()

    @r.get("/_info", tags=["ledger"], openapi_extra=doc(None))
    def server_info(_: Principal = Reader) -> dict[str, Any]:
        return {"server": "ledger", "version": "v2"}

    @r.get("", tags=["ledger"], summary="List ledgers", openapi_extra=doc("V2LedgerCursorResponse"))
    async def list_ledgers(request: Request, page_size: PageSize = 15, cursor: Cursor = None,
                           include_deleted: Annotated[bool, Query(alias="includeDeleted")] = False,
                           principal: Principal = Reader) -> dict[str, Any]:
        del include_deleted  # the same answer either way: ledgers are never deleted
        all_ledgers = await server_of(request).run(ledgers.list_ledgers)
        visible = [x for x in all_ledgers if principal.key.ledgers is None or x.name in principal.key.ledgers]
        page = in_pages(visible, page_size, cursor, key=lambda x: x.name)
        return {"cursor": {**page.to_json()["cursor"], "data": [ledger_json(x) for x in page.data]}}

    @r.post("/{ledger}", tags=["ledger"], status_code=204, summary="Create a ledger",
            openapi_extra=doc(None, status=204, body="V2CreateLedgerRequest", body_required=False))
    async def create_ledger(request: Request, ledger: str, _: Principal = Writer) -> Response:
        body = await json_body(request, required=False) or {}
        if not isinstance(body, dict):
            raise ValidationError("must be a JSON object", field="body")
        unknown = set(body) - {"bucket", "metadata", "features"}
        if unknown:
            raise ValidationError(f"unknown field(s) {sorted(unknown)}", field="body")
        if body.get("bucket") not in (None, BUCKET):
            raise ValidationError(f"buckets are not supported: every ledger is in {BUCKET!r}", field="bucket")
        if body.get("features"):
            raise ValidationError("ledger features are not supported; every ledger has the full feature set",
                                  field="features")
        await server_of(request).run(ledgers.create_ledger, ledger, body.get("metadata"))
        return Response(status_code=204)

    @r.get("/{ledger}", tags=["ledger"], summary="Get a ledger", openapi_extra=doc("V2LedgerResponse"))
    async def get_ledger(request: Request, ledger: str, _: Principal = Reader) -> dict[str, Any]:
        return {"data": ledger_json(await server_of(request).run(ledgers.get_ledger, ledger))}

    @r.put("/{ledger}/metadata", tags=["ledger"], status_code=204, summary="Update a ledger's metadata",
           openapi_extra=doc(None, status=204, body="V2Metadata"))
    async def update_ledger_metadata(request: Request, ledger: str, _: Principal = Writer) -> Response:
        await server_of(request).run(ledgers.update_ledger_metadata, ledger, await json_body(request))
        return Response(status_code=204)

    @r.delete("/{ledger}/metadata/{key}", tags=["ledger"], status_code=204, openapi_extra=doc(None, status=204))
    async def delete_ledger_metadata(request: Request, ledger: str, key: str, _: Principal = Writer) -> Response:
        await server_of(request).run(ledgers.delete_ledger_metadata, ledger, key)
        return Response(status_code=204)

    @r.get("/{ledger}/stats", tags=["ledger"], summary="Accounts and transactions in a ledger",
           openapi_extra=doc("V2StatsResponse"))
    async def read_stats(request: Request, ledger: str, _: Principal = Reader) -> dict[str, Any]:
        return {"data": await server_of(request).run(reads.stats, ledger)}

    # -- transactions
    @r.post("/{ledger}/transactions", tags=["transactions"], summary="Create a transaction",
            openapi_extra=doc("V2TransactionResponse", body="V2PostTransaction"))
    async def create_transaction(
        request: Request, ledger: str, dry_run: Annotated[bool, Query(alias="dryRun")] = False,
        force: bool = False, idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
        _: Principal = Writer,
    ) -> dict[str, Any]:
        return await created_transaction(server_of(request), ledger, await json_body(request), idempotency_key,
                                         force=force, dry_run=dry_run)

    @r.get("/{ledger}/transactions", tags=["transactions"], summary="List transactions, newest first",
           openapi_extra=doc("V2TransactionCursorResponse", body="V2Filter", body_required=False))
    async def list_transactions(request: Request, ledger: str, page_size: PageSize = 15, cursor: Cursor = None,
                                _: Principal = Reader) -> dict[str, Any]:
        wanted = filters.parse(await json_body(request, required=False),
                               match={"account": "account", "reference": "reference"},
                               ranges={("$gte", "timestamp"): "start", ("$lt", "timestamp"): "end"})
        page = await server_of(request).run(reads.list_transactions, ledger, page_size=page_size, cursor=cursor,
                                            **wanted)
        return page_json(page)

    def counter(what: str) -> None:
        @r.head(f"/{{ledger}}/{what}", tags=[what], status_code=204, summary=f"Count {what} (the Count header)",
                name=f"count_{what}", openapi_extra=doc(None, status=204))
        async def count(request: Request, ledger: str, _: Principal = Reader) -> Response:
            stats = await server_of(request).run(reads.stats, ledger)
            return Response(status_code=204, headers={"Count": str(stats[what])})

    counter("transactions")
    counter("accounts")

    @r.get("/{ledger}/transactions/{tx_id}", tags=["transactions"], summary="Get a transaction",
           openapi_extra=doc("V2TransactionResponse"))
    async def get_transaction(request: Request, ledger: str, tx_id: str, _: Principal = Reader) -> dict[str, Any]:
        found = await server_of(request).run(reads.get_transaction, ledger, transaction_id(tx_id, field="id"))
        return {"data": found.to_json()}

    @r.post("/{ledger}/transactions/{tx_id}/revert", tags=["transactions"], status_code=201,
            openapi_extra=doc("V2TransactionResponse", status=201))
    async def revert_transaction(
        request: Request, ledger: str, tx_id: str, force: bool = False,
        at_effective_date: Annotated[bool, Query(alias="atEffectiveDate")] = False,
        dry_run: Annotated[bool, Query(alias="dryRun")] = False,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None, _: Principal = Writer,
    ) -> Response:
        command = RevertTransaction(transaction_id(tx_id, field="id"), force, idempotency_key, at_effective_date)
        return Response(await server_of(request).write_one(ledger, command, dry_run=dry_run), status_code=201,
                        media_type="application/json")

    def metadata_routes(kind: TargetType, path: str, target: Callable[[str], Any]) -> None:
        @r.post(f"/{{ledger}}/{path}/{{target_id}}/metadata", tags=["metadata"], status_code=204,
                name=f"set_{kind.lower()}_metadata", openapi_extra=doc(None, status=204, body="V2Metadata"))
        @r.put(f"/{{ledger}}/{path}/{{target_id}}/metadata", tags=["metadata"], status_code=204,
               name=f"put_{kind.lower()}_metadata", openapi_extra=doc(None, status=204, body="V2Metadata"))
        async def set_metadata(request: Request, ledger: str, target_id: str, dry_run: Annotated[
                bool, Query(alias="dryRun")] = False, idempotency_key: Annotated[
                str | None, Header(alias="Idempotency-Key")] = None, _: Principal = Writer) -> Response:
            command = SetMetadata.build(kind, target(target_id), await json_body(request), idempotency_key)
            await server_of(request).write_one(ledger, command, dry_run=dry_run)
            return Response(status_code=204)

        @r.delete(f"/{{ledger}}/{path}/{{target_id}}/metadata/{{key}}", tags=["metadata"], status_code=204,
                  name=f"delete_{kind.lower()}_metadata", openapi_extra=doc(None, status=204))
        async def delete_metadata(request: Request, ledger: str, target_id: str, key: str, idempotency_key: Annotated[
                str | None, Header(alias="Idempotency-Key")] = None, _: Principal = Writer) -> Response:
            command = DeleteMetadata.build(kind, target(target_id), key, idempotency_key)
            await server_of(request).write_one(ledger, command)
            return Response(status_code=204)

    metadata_routes(TargetType.TRANSACTION, "transactions", lambda v: transaction_id(v, field="id"))
    metadata_routes(TargetType.ACCOUNT, "accounts", lambda v: address(v, field="address"))

    # -- accounts, balances, volumes
    @r.get("/{ledger}/accounts", tags=["accounts"], summary="List accounts in address order",
           openapi_extra=doc("V2AccountCursorResponse", body="V2Filter", body_required=False))
    async def list_accounts(request: Request, ledger: str, page_size: PageSize = 15, cursor: Cursor = None,
                            _: Principal = Reader) -> dict[str, Any]:
        wanted = filters.parse(await json_body(request, required=False), match={"address": "address"})
        return page_json(await server_of(request).run(reads.list_accounts, ledger, page_size=page_size,
                                                      cursor=cursor, **wanted))

    @r.get("/{ledger}/accounts/{account}", tags=["accounts"], summary="Get an account with its volumes",
           openapi_extra=doc("V2AccountResponse"))
    async def get_account(request: Request, ledger: str, account: str, pit: datetime | None = None,
                          _: Principal = Reader) -> dict[str, Any]:
        at = timestamp(pit, field="pit") if pit is not None else None
        return {"data": (await server_of(request).run(reads.get_account, ledger, account, effective_at=at)).to_json()}

    @r.get("/{ledger}/aggregate/balances", tags=["balances"],
           summary="Balances per asset, summed over accounts; now or at a point in time (pit)",
           openapi_extra=doc("V2AggregateBalancesResponse", body="V2Filter", body_required=False))
    async def aggregate_balances(
        request: Request, ledger: str, pit: datetime | None = None,
        use_insertion_date: Annotated[bool, Query(alias="useInsertionDate")] = False, _: Principal = Reader,
    ) -> dict[str, Any]:
        wanted = filters.parse(await json_body(request, required=False),
                               match={"address": "address", "asset": "asset_filter"})
        at = timestamp(pit, field="pit") if pit is not None else None
        rows = await server_of(request).run(reads.balances, ledger, **wanted,
                                            **({"inserted_at": at} if use_insertion_date else {"effective_at": at}))
        return {"data": reads.aggregate(rows)}

    @r.get("/{ledger}/volumes", tags=["balances"],
           summary="What flowed in and out of each account per asset in [startTime, endTime)",
           openapi_extra=doc("V2VolumesWithBalanceCursorResponse", body="V2Filter", body_required=False))
    async def volumes(
        request: Request, ledger: str, page_size: PageSize = 15, cursor: Cursor = None,
        start_time: Annotated[datetime | None, Query(alias="startTime")] = None,
        end_time: Annotated[datetime | None, Query(alias="endTime")] = None,
        insertion_date: Annotated[bool, Query(alias="insertionDate")] = False, _: Principal = Reader,
    ) -> dict[str, Any]:
        wanted = filters.parse(await json_body(request, required=False), match={"account": "address"})
        rows = await server_of(request).run(
            reads.volumes_between, ledger, by_insertion=insertion_date, **wanted,
            start=timestamp(start_time, field="startTime") if start_time else None,
            end=timestamp(end_time, field="endTime") if end_time else None)
        page = in_pages(rows, page_size, cursor, key=lambda b: f"{b.address}\x1f{b.asset}")
        return {"cursor": {**page.to_json()["cursor"], "data": [
            {"account": b.address, "asset": b.asset, **b.volumes.to_json()} for b in page.data]}}

    # -- logs and bulk
    @r.get("/{ledger}/logs", tags=["logs"], summary="List logs, newest first", openapi_extra=doc("V2LogCursorResponse"))
    async def list_logs(request: Request, ledger: str, page_size: PageSize = 15, cursor: Cursor = None,
                        _: Principal = Reader) -> dict[str, Any]:
        return page_json(await server_of(request).run(reads.list_logs_page, ledger, page_size=page_size,
                                                      cursor=cursor))

    @r.post("/{ledger}/_bulk", tags=["bulk"], summary="Several writes in one request",
            openapi_extra=doc("V2BulkResponse", body="V2BulkElementList", also={400: "V2BulkResponse"}))
    async def bulk(
        request: Request, ledger: str, atomic: bool = False,
        continue_on_failure: Annotated[bool, Query(alias="continueOnFailure")] = False, _: Principal = Writer,
    ) -> JSONResponse:
        elements = await json_body(request)
        if not isinstance(elements, list):
            raise ValidationError("a bulk is a JSON array of elements", field="body")
        commands = []
        for index, element in enumerate(elements):
            try:
                commands.append(bulk_element(element))
            except ValidationError as exc:
                raise ValidationError(f"element {index}: {exc}") from None
        server = server_of(request)
        outcomes: list[WriteResult | LedgerError]
        if atomic:
            try:
                outcomes = list(await server.write(ledger, commands))
            except LedgerError as refused:
                if refused.command_index is None:
                    raise
                outcomes = [refused if i == refused.command_index else _atomic_skip(refused.command_index)
                            for i in range(len(commands))]
        elif continue_on_failure:
            outcomes = await server.run(write_each, ledger, commands)
        else:  # Formance's default: stop at the first refusal
            written = await server.run(write_until_refused, ledger, commands)
            failed = next((i for i, o in enumerate(written) if not isinstance(o, WriteResult)), 0)
            outcomes = [_not_run(failed) if o is None else o for o in written]
        data = [_bulk_result(c, o) for c, o in zip(commands, outcomes, strict=True)]
        refused = any(isinstance(o, LedgerError) for o in outcomes)
        return JSONResponse({"data": data}, status_code=400 if refused else 200)

    return r


# Formance routes for features this ledger does not have: answered with why, rather than a bare 404.
NOT_SUPPORTED = {
    "/{ledger}/logs/import": "importing logs is not supported: a ledger's log is written only by its own writer, "
                             "so its hash chain is this database's; replay the writes instead",
    "/{ledger}/logs/export": "exporting logs this way is not supported: page through GET /v2/{ledger}/logs, or "
                             "connect a pipeline to an exporter",
    "/{ledger}/schemas": "ledger schemas are not a feature of this ledger",
    "/{ledger}/schemas/{version}": "ledger schemas are not a feature of this ledger",
    "/{ledger}/queries/{query_id}/run": "stored queries are not a feature of this ledger",
    "/_/buckets/{bucket}": "buckets are not a feature of this ledger: every ledger lives in its one database",
    "/_/buckets/{bucket}/restore": "buckets are not a feature of this ledger",
}


def unsupported_routes() -> APIRouter:
    r = APIRouter()
    for path, why in NOT_SUPPORTED.items():
        async def refuse(why: str = why) -> None:
            raise NotSupported(why)

        r.add_api_route(path, refuse, methods=["GET", "POST", "PUT", "DELETE"], include_in_schema=False,
                        name=f"unsupported_{path}", dependencies=[Reader])
    return r


def _atomic_skip(index: int) -> LedgerError:
    return ValidationError(f"not written: the bulk is atomic and element {index} was refused")


def pipeline_routes() -> APIRouter:
    """Exporters and pipelines (our pipelines' registry), when the pipelines package is installed."""
    from ledger_pipelines import registry

    r = APIRouter()

    @r.get("/_/exporters", tags=["exporters"], summary="List exporters", openapi_extra=doc("V2ExporterCursorResponse"))
    async def list_exporters(request: Request, page_size: PageSize = 15, cursor: Cursor = None,
                             _: Principal = Reader) -> dict[str, Any]:
        found = await server_of(request).run(registry.list_exporters)
        page = in_pages(found, page_size, cursor, key=lambda e: e.id)
        return page_json(page)

    @r.post("/_/exporters", tags=["exporters"], status_code=201, summary="Create an exporter",
            openapi_extra=doc("V2ExporterResponse", status=201, body="V2ExporterConfiguration"))
    async def create_exporter(request: Request, _: Principal = Writer) -> JSONResponse:
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("driver"), str):
            raise ValidationError('an exporter is {"driver": "...", "config": {...}}', field="body")
        created = await server_of(request).run(registry.create_exporter, body["driver"], body.get("config"),
                                               name=body.get("name"))
        return JSONResponse({"data": created.to_json()}, status_code=201)

    @r.get("/_/exporters/{exporter_id}", tags=["exporters"], openapi_extra=doc("V2ExporterResponse"))
    async def get_exporter(request: Request, exporter_id: str, _: Principal = Reader) -> dict[str, Any]:
        return {"data": (await server_of(request).run(registry.get_exporter, exporter_id)).to_json()}

    @r.put("/_/exporters/{exporter_id}", tags=["exporters"], status_code=204,
           summary="Change an exporter's config (its driver stays)",
           openapi_extra=doc(None, status=204, body="V2ExporterConfiguration"))
    async def update_exporter(request: Request, exporter_id: str, _: Principal = Writer) -> Response:
        body = await json_body(request)
        if not isinstance(body, dict):
            raise ValidationError("must be a JSON object", field="body")
        server = server_of(request)
        current = await server.run(registry.get_exporter, exporter_id)
        if body.get("driver", current.driver) != current.driver:
            raise ValidationError(f"an exporter's driver cannot change (it is {current.driver!r}); create another",
                                  field="driver")
        await server.run(registry.update_exporter, current.id, body.get("config", {}))
        return Response(status_code=204)

    @r.delete("/_/exporters/{exporter_id}", tags=["exporters"], status_code=204, openapi_extra=doc(None, status=204))
    async def delete_exporter(request: Request, exporter_id: str, _: Principal = Writer) -> Response:
        await server_of(request).run(registry.delete_exporter, exporter_id)
        return Response(status_code=204)

    async def pipeline_of(request: Request, ledger: str, pipeline_id: str) -> Any:
        found = await server_of(request).run(registry.get_pipeline, pipeline_id)
        if found.ledger != ledger:
            raise registry.PipelineNotFound(pipeline_id)
        return found

    @r.get("/{ledger}/pipelines", tags=["pipelines"], summary="List a ledger's pipelines",
           openapi_extra=doc("V2PipelineCursorResponse"))
    async def list_pipelines(request: Request, ledger: str, page_size: PageSize = 15, cursor: Cursor = None,
                             _: Principal = Reader) -> dict[str, Any]:
        found = await server_of(request).run(registry.list_pipelines, ledger=ledger)
        return page_json(in_pages(found, page_size, cursor, key=lambda p: p.id))

    @r.post("/{ledger}/pipelines", tags=["pipelines"], status_code=201, summary="Connect a ledger to an exporter",
            openapi_extra=doc("V2PipelineResponse", status=201, body="V2CreatePipelineRequest"))
    async def create_pipeline(request: Request, ledger: str, _: Principal = Writer) -> JSONResponse:
        body = await json_body(request)
        if not isinstance(body, dict) or not isinstance(body.get("exporterID"), str):
            raise ValidationError('a pipeline is {"exporterID": "..."}', field="body")
        extra = {k: body[k] for k in ("cadence", "name") if body.get(k) is not None}
        created = await server_of(request).run(registry.create_pipeline, ledger, body["exporterID"], **extra)
        return JSONResponse({"data": created.to_json()}, status_code=201)

    @r.get("/{ledger}/pipelines/{pipeline_id}", tags=["pipelines"],
           summary="A pipeline with its progress (lastLogID, and our lag and lastError)",
           openapi_extra=doc("V2PipelineResponse"))
    async def get_pipeline(request: Request, ledger: str, pipeline_id: str, _: Principal = Reader) -> dict[str, Any]:
        return {"data": (await pipeline_of(request, ledger, pipeline_id)).to_json()}

    @r.delete("/{ledger}/pipelines/{pipeline_id}", tags=["pipelines"], status_code=204,
              openapi_extra=doc(None, status=204))
    async def delete_pipeline(request: Request, ledger: str, pipeline_id: str, _: Principal = Writer) -> Response:
        found = await pipeline_of(request, ledger, pipeline_id)
        await server_of(request).run(registry.delete_pipeline, found.id)
        return Response(status_code=204)

    def toggle(action: str, enabled: bool) -> None:
        @r.post(f"/{{ledger}}/pipelines/{{pipeline_id}}/{action}", tags=["pipelines"], status_code=202,
                name=f"{action}_pipeline", openapi_extra=doc(None, status=202))
        async def set_enabled(request: Request, ledger: str, pipeline_id: str, _: Principal = Writer) -> Response:
            found = await pipeline_of(request, ledger, pipeline_id)
            await server_of(request).run(registry.set_enabled, found.id, enabled)
            return Response(status_code=202)

    toggle("start", True)
    toggle("stop", False)

    @r.post("/{ledger}/pipelines/{pipeline_id}/reset", tags=["pipelines"], status_code=202,
            summary="Replay from the start, or (our extension) from after log toLogID",
            openapi_extra=doc(None, status=202))
    async def reset_pipeline(request: Request, ledger: str, pipeline_id: str,
                             to_log_id: Annotated[int, Query(alias="toLogID", ge=0)] = 0,
                             _: Principal = Writer) -> Response:
        found = await pipeline_of(request, ledger, pipeline_id)
        await server_of(request).run(registry.reset_pipeline, found.id, to_log_id)
        return Response(status_code=202)

    return r


# -- the app ----------------------------------------------------------------------------------------------

class StackPaths:
    """Serve Formance's stack paths (`/api/ledger/v2/...`, `/api/auth/oauth/token`, what the SDKs call) as ours,
    by rewriting the path before routing: one set of routes, matched once."""

    ALIASES = (("/api/ledger/", "/"), ("/api/auth/oauth/token", "/oauth/token"))

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            for alias, ours in self.ALIASES:
                if path.startswith(alias):
                    scope = {**scope, "path": ours + path[len(alias):], "raw_path": None}
                    break
        await self.app(scope, receive, send)



def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.server = Server(settings)
        try:
            yield
        finally:
            app.state.server.close()

    app = FastAPI(title="Ledger API", version="2", lifespan=lifespan, dependencies=[Depends(known_query)],
                  generate_unique_id_function=_operation_id,
                  description="Formance Ledger v2's routes over this ledger; see the README for the extensions.")
    routers = [ledger_routes(), unsupported_routes()]
    with contextlib.suppress(ImportError):  # without the pipelines package, no exporter routes
        routers.insert(1, pipeline_routes())
    for router in routers:
        app.include_router(router, prefix="/v2")

    @app.get("/_healthcheck", tags=["health"], summary="Whether the server can reach its database")
    async def health(request: Request) -> dict[str, Any]:
        await server_of(request).run(lambda conn: conn.execute("SELECT 1"))
        return {"status": "ok"}

    async def token(request: Request) -> JSONResponse:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        if form.get("grant_type") != "client_credentials":
            raise InvalidTokenRequest("unsupported_grant_type", "only grant_type=client_credentials is supported")
        # HTTP Basic is the other way RFC 6749 lets a client send its credentials.
        client_id, client_secret = _basic(request.headers.get("authorization")) or (
            form.get("client_id", ""), form.get("client_secret", ""))
        answer = await run_in_threadpool(server_of(request).authority.issue, client_id, client_secret,
                                         form.get("scope"))
        return JSONResponse(answer, headers={"Cache-Control": "no-store"})

    app.add_api_route("/oauth/token", token, methods=["POST"], tags=["auth"],
                      summary="OAuth2 client credentials: an API key's id and secret for a bearer token")

    @app.exception_handler(LedgerError)
    @app.exception_handler(ApiError)
    @app.exception_handler(psycopg.OperationalError)
    async def refused(_: Request, exc: LedgerError | ApiError | psycopg.OperationalError) -> JSONResponse:
        return error_answer(exc)

    @app.exception_handler(StarletteHTTPException)
    async def no_route(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "VALIDATION")
        what = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else exc.detail
        return error_response(exc.status_code, code, str(what))

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return error_response(400, "VALIDATION", f"{where}: {first.get('msg', 'invalid')}")

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            for operation in (op for ops in schema["paths"].values() for op in ops.values()):
                responses = operation["responses"]
                responses.pop("422", None)  # FastAPI's own validation answer: ours is a 400 in Formance's shape
                for answer in responses.values():
                    for content in answer.get("content", {}).values():
                        if "$ref" in content.get("schema", {}):  # ours, not the one FastAPI guessed
                            content["schema"] = {"$ref": content["schema"]["$ref"]}
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                components.pop(unused, None)
            components.update(SCHEMAS)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]
    _add_pipeline_errors(app)
    app.add_middleware(HotPath)  # type: ignore[arg-type]
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)  # type: ignore[arg-type]
    app.add_middleware(StackPaths)  # type: ignore[arg-type]
    return app


def _operation_id(route: APIRoute) -> str:
    """Formance's style: v2CreateTransaction, v2ListAccounts..."""
    return "v2" + "".join(word.title() for word in route.name.split("_"))


def _basic(authorization: str | None) -> tuple[str, str] | None:
    scheme, _, value = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        client_id, _, secret = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        raise InvalidTokenRequest("invalid_request", "the Basic credentials are not base64 of id:secret") from None
    return unquote_plus(client_id), unquote_plus(secret)


def _add_pipeline_errors(app: FastAPI) -> None:
    try:
        from ledger_pipelines.errors import PipelineError
    except ImportError:
        return

    @app.exception_handler(PipelineError)
    async def pipeline_error(_: Request, exc: PipelineError) -> JSONResponse:
        code = getattr(exc, "error_code", "PIPELINE")
        return error_response(STATUS.get(code, 400), code, str(exc))


SETTINGS_VARIABLE = "LEDGER_API_SETTINGS"


def app_from_environment() -> FastAPI:
    """The app of one of several worker processes (`ledgerctl serve --workers N`): uvicorn starts each worker
    by import, so the settings `ledgerctl serve` chose travel in the environment, as JSON."""
    return create_app(Settings(**json.loads(os.environ[SETTINGS_VARIABLE])))
