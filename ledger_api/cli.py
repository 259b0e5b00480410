"""`ledgerctl serve` and `ledgerctl keys`: the API's commands, added to ledgerctl through its plugin entry point."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from typing import Any

import click

from ledger_api import MAX_BODY_BYTES, auth
from ledger_api.errors import ApiError


def register(context: Any) -> None:
    cli, open_db, emit = context.cli, context.open_db, context.emit
    handles_errors, database_url = context.handles_errors, context.database_url
    context.errors(ApiError)

    @cli.command("serve")
    @click.option("--host", default="127.0.0.1", show_default=True)
    @click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
    @click.option("--group-commit/--no-group-commit", default=True, show_default=True,
                  help="Gather concurrent writes to a ledger into one database transaction.")
    @click.option("--max-body-bytes", default=MAX_BODY_BYTES, show_default=True, type=click.IntRange(1))
    @click.option("--token-seconds", default=auth.TOKEN_SECONDS, show_default=True, type=click.IntRange(1),
                  help="How long a bearer token from /oauth/token is valid.")
    @click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
                  help="HTTP processes; with group commit, all send their writes to one writer process.")
    @handles_errors
    def serve(host: str, port: int, group_commit: bool, max_body_bytes: int, token_seconds: int,
              workers: int) -> None:
        """Serve the Formance-v2-compatible HTTP API (every route but /_healthcheck needs a bearer token)."""
        import uvicorn

        from ledger_api.app import SETTINGS_VARIABLE, create_app
        from ledger_api.server import Settings
        from ledger_api.writer_process import WriterProcess

        url = database_url()
        with open_db() as conn:
            auth.require_schema(conn)  # refuse to start on a database `ledgerctl db migrate` has not prepared
        writer = WriterProcess(url).start() if group_commit else None
        settings = Settings(url, writer_socket=str(writer.socket_path) if writer else None,
                            max_body_bytes=max_body_bytes, token_seconds=token_seconds)
        click.echo(f"ledgerctl: serving the ledger API on http://{host}:{port} with {workers} HTTP process(es)"
                   f"{' and a writer process' if writer else ''} (OpenAPI at /openapi.json)", err=True)
        # No access log: tokens travel in headers and client secrets in bodies, and neither may reach a log.
        options: dict[str, Any] = {"host": host, "port": port, "log_level": logging.WARNING, "access_log": False,
                                   "server_header": False}
        try:
            if workers == 1:
                uvicorn.run(create_app(settings), **options)
            else:
                os.environ[SETTINGS_VARIABLE] = json.dumps(asdict(settings))
                uvicorn.run("ledger_api.app:app_from_environment", factory=True, workers=workers, **options)
        finally:
            if writer is not None:
                writer.stop()

    @cli.group()
    def keys() -> None:
        """API keys: a client id and a secret, exchanged for bearer tokens at /oauth/token."""

    @keys.command("create")
    @click.option("--name", required=True, help="What the key is for (shown in `keys list`).")
    @click.option("--ledger", "ledgers", multiple=True, help="Limit the key to this ledger (repeatable).")
    @click.option("--read-only", is_flag=True, help="The key may read, never write.")
    @handles_errors
    def keys_create(name: str, ledgers: tuple[str, ...], read_only: bool) -> None:
        """Create a key; its secret is printed this once and stored only as a digest."""
        with open_db() as conn:
            key, secret = auth.create_key(conn, name, ledgers=ledgers or None, read_only=read_only)
        emit({**key.to_json(), "clientSecret": secret})

    @keys.command("list")
    @handles_errors
    def keys_list() -> None:
        """Every key, without secrets."""
        with open_db() as conn:
            emit([k.to_json() for k in auth.list_keys(conn)])

    @keys.command("revoke")
    @click.argument("client_id")
    @handles_errors
    def keys_revoke(client_id: str) -> None:
        """Revoke a key: its secret is refused at once, tokens already issued within seconds."""
        with open_db() as conn:
            emit(auth.revoke_key(conn, client_id).to_json())
