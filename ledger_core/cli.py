"""`ledgerctl`: the command line over the ledger (and, when installed, its pipelines).

One convention for every command: success prints JSON on stdout and exits 0; a refused or failed command
prints one line `error: CODE: message` on stderr and exits 1; a usage error (unknown option, missing
argument, an argument of the wrong type) prints one line `error: USAGE: message` and exits 2. Nothing else
reaches the terminal: an unexpected failure is `error: INTERNAL: …` (LEDGER_DEBUG=1 shows the traceback).
This module and the Dagster resources are the only places that read the environment: LEDGER_DATABASE_URL
(else the project's own local server under LEDGER_HOME/.ledger, LEDGER_HOME defaulting to the working
folder), LEDGER_PG_BIN and LEDGER_DEBUG.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click
import psycopg

from ledger_core import localpg, migrations, reads
from ledger_core.audit import verify_deep
from ledger_core.db import connect, local_data_dir, local_database_url
from ledger_core.errors import LedgerError, ValidationError
from ledger_core.ledgers import create_ledger, list_ledgers
from ledger_core.localpg import LocalServer
from ledger_core.requests import (
    Command,
    DeleteMetadata,
    NewTransaction,
    RevertTransaction,
    SetMetadata,
    bulk_element,
    parse_json,
)
from ledger_core.validation import timestamp
from ledger_core.writer import write


def ledger_home() -> Path:
    return Path(os.environ.get("LEDGER_HOME", ".")).resolve()


def database_url() -> str:
    url = os.environ.get("LEDGER_DATABASE_URL")
    if url:
        return url

    def started(server: LocalServer) -> None:  # never silent: which server, and where its data lives
        what = "created a new, empty" if server.initialised else "started the"
        click.echo(f"ledgerctl: {what} local PostgreSQL server for {ledger_home()}: data in {server.data_dir}, "
                   f"port {server.port} (set LEDGER_DATABASE_URL or LEDGER_HOME to use another)", err=True)

    return local_database_url(ledger_home(), pg_bin=os.environ.get("LEDGER_PG_BIN"), on_start=started)


def emit(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


EXIT_FAILED = 1  # the command was refused or failed: `error: CODE: message`
EXIT_USAGE = 2  # the command line itself is wrong: `error: USAGE: message`


def error_line(code: str, message: str) -> None:
    """The one line every failure prints; user input echoed in it can never break the terminal encoding."""
    first = " ".join(message.split()) or code
    click.echo(f"error: {code}: {first}".encode("utf-8", "backslashreplace").decode("utf-8"), err=True)


class CliError(click.ClickException):
    exit_code = EXIT_FAILED

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code

    def show(self, file: Any = None) -> None:
        error_line(self.code, self.format_message())


class LedgerCommandLine(click.Group):
    """The root group: runs a command and turns every way it can end into the one convention above."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs.pop("standalone_mode", None)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as exc:
            message = exc.format_message()
            if isinstance(exc, click.exceptions.NoArgsIsHelpError) and isinstance(exc.ctx.command, click.Group):
                message = f"missing a command: one of {', '.join(exc.ctx.command.list_commands(exc.ctx))}"
            where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
            error_line("USAGE", message + where)
            sys.exit(EXIT_USAGE)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            error_line("ABORTED", "interrupted")
            sys.exit(130)
        except Exception as exc:  # a bug: still one line, with a way to see more
            if os.environ.get("LEDGER_DEBUG"):
                raise
            error_line("INTERNAL", f"{type(exc).__name__}: {exc} (run with LEDGER_DEBUG=1 for the traceback)")
            sys.exit(EXIT_FAILED)
        sys.exit(code if isinstance(code, int) else 0)


def handles_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn every expected failure into one line on stderr and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except LedgerError as exc:
            raise CliError(type(exc).error_code, str(exc)) from None
        except psycopg.errors.InsufficientPrivilege as exc:
            first = str(exc).strip().splitlines()[0]
            raise CliError("PERMISSION_DENIED", f"the database role may not do this ({first}); use a role with "
                                                "the privileges it needs") from None
        except psycopg.OperationalError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CliError("DATABASE", f"cannot reach the ledger database: {first}") from None
        except tuple(PLUGIN_ERRORS) as exc:
            raise CliError(getattr(exc, "error_code", "ERROR"), str(exc)) from None

    return wrapper


@dataclass(frozen=True)
class CommandContext:
    """What a command plugin gets from `ledgerctl`: the root group, and how its commands reach the database,
    print results and turn its own errors (subclasses of `error_root`, which carry an `error_code`) into lines."""

    cli: click.Group
    open_db: Callable[[], psycopg.Connection]
    database_url: Callable[[], str]
    emit: Callable[[Any], None]
    handles_errors: Callable[[Callable[..., Any]], Callable[..., Any]]

    def errors(self, error_root: type[Exception]) -> None:
        PLUGIN_ERRORS.append(error_root)


PLUGIN_ERRORS: list[type[Exception]] = []
COMMAND_PLUGINS = "ledgerctl.commands"  # entry-point group: installed packages that add commands (the pipelines)


def open_db() -> psycopg.Connection:
    return connect(database_url())


def read_text(path: str, *, field: str) -> str:
    """The UTF-8 text of a file, or of stdin for `-`; any file that cannot be read is one ValidationError."""
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except IsADirectoryError:
        raise ValidationError(f"{path!r} is a directory, not a file", field=field) from None
    except FileNotFoundError:
        raise ValidationError(f"no such file {path!r}", field=field) from None
    except (OSError, ValueError) as exc:  # ValueError: a path with a NUL character
        raise ValidationError(f"cannot read {path!r}: {getattr(exc, 'strerror', None) or exc}", field=field) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"{path!r} is not UTF-8 text (invalid byte at offset {exc.start})",
                              field=field) from None


def read_body(value: str) -> Any:
    """A JSON argument given inline, as @path, or as - for stdin."""
    if value == "-" or value.startswith("@"):
        return parse_json(read_text(value if value == "-" else value[1:], field="file"))
    return parse_json(value)


def parse_time(value: str | None, field: str) -> Any:
    return None if value is None else timestamp(value, field=field)


@click.group(cls=LedgerCommandLine, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """A double-entry ledger on PostgreSQL with a hash-chained log."""


# -- ledgers -----------------------------------------------------------------------------------------

@cli.group()
def ledgers() -> None:
    """Create and list ledgers."""


@ledgers.command("create")
@click.argument("name")
@click.option("--metadata", "meta", default=None, help="JSON object of string metadata.")
@handles_errors
def ledgers_create(name: str, meta: str | None) -> None:
    """Create the ledger NAME."""
    with open_db() as conn:
        emit(create_ledger(conn, name, parse_json(meta) if meta else None).to_json())


@ledgers.command("list")
@handles_errors
def ledgers_list() -> None:
    """List every ledger."""
    with open_db() as conn:
        emit([info.to_json() for info in list_ledgers(conn)])


# -- transactions ------------------------------------------------------------------------------------

@cli.group()
def tx() -> None:
    """Create, revert, read and annotate transactions."""


@tx.command("create")
@click.argument("ledger")
@click.option("--json", "body", required=True, help="Transaction in Formance v2 shape: inline, @file or -.")
@click.option("--idempotency-key", default=None, help="Replays with the same key return the first result.")
@click.option("--dry-run", is_flag=True, help="Validate and compute volumes without writing anything.")
@click.option("--force", is_flag=True, help="Skip balance checks (overdraft allowed everywhere).")
@handles_errors
def tx_create(ledger: str, body: str, idempotency_key: str | None, dry_run: bool, force: bool) -> None:
    """Create a transaction in LEDGER."""
    command = NewTransaction.from_json(read_body(body), idempotency_key=idempotency_key, force=force)
    with open_db() as conn:
        [result] = write(conn, ledger, [command], dry_run=dry_run)
    emit(result.to_json())


def bulk_command(element: Any, line: int) -> Command:
    try:
        return bulk_element(element)
    except ValidationError as exc:
        raise ValidationError(f"line {line}: {exc}") from None


def read_ndjson(path: str) -> Iterator[tuple[int, Any]]:
    # Split on \n only: str.splitlines() would also split inside JSON strings holding U+2028 and the like.
    for number, line in enumerate(read_text(path, field="file").split("\n"), start=1):
        if line.strip():
            yield number, parse_json(line, what=f"line {number}")


@tx.command("bulk")
@click.argument("ledger")
@click.option("--file", "path", required=True, help="NDJSON file, one body or bulk element a line (- for stdin).")
@click.option("--dry-run", is_flag=True, help="Validate everything, write nothing.")
@handles_errors
def tx_bulk(ledger: str, path: str, dry_run: bool) -> None:
    """Apply many writes in one database transaction, all or nothing."""
    commands = [bulk_command(element, line) for line, element in read_ndjson(path)]
    if not commands:
        raise ValidationError("the file holds no transaction", field="file")
    with open_db() as conn:
        results = write(conn, ledger, commands, dry_run=dry_run)
    emit([r.to_json() for r in results])


@tx.command("revert")
@click.argument("ledger")
@click.argument("transaction_id", type=int)
@click.option("--force", is_flag=True, help="Revert even if a destination no longer holds the funds.")
@click.option("--idempotency-key", default=None)
@click.option("--at-effective-date", is_flag=True,
              help="Date the reversal at the original's effective time instead of now.")
@handles_errors
def tx_revert(ledger: str, transaction_id: int, force: bool, idempotency_key: str | None,
              at_effective_date: bool) -> None:
    """Revert a transaction: write its postings reversed and mark it reverted."""
    with open_db() as conn:
        [result] = write(conn, ledger, [RevertTransaction(transaction_id, force, idempotency_key,
                                                          at_effective_date)])
    emit(result.to_json())


@tx.command("get")
@click.argument("ledger")
@click.argument("transaction_id", type=int)
@handles_errors
def tx_get(ledger: str, transaction_id: int) -> None:
    """Show one transaction."""
    with open_db() as conn:
        emit(reads.get_transaction(conn, ledger, transaction_id).to_json())


@tx.command("list")
@click.argument("ledger")
@click.option("--account", default=None, help="Address or pattern (users: , users:*:main).")
@click.option("--reference", default=None)
@click.option("--start", default=None, help="Effective timestamp lower bound (inclusive), RFC 3339.")
@click.option("--end", default=None, help="Effective timestamp upper bound (exclusive), RFC 3339.")
@click.option("--page-size", default=15, show_default=True, type=int)
@click.option("--cursor", default=None, help="The `next` cursor of the previous page.")
@handles_errors
def tx_list(ledger: str, account: str | None, reference: str | None, start: str | None, end: str | None,
            page_size: int, cursor: str | None) -> None:
    """List transactions, newest first, one page at a time."""
    with open_db() as conn:
        page = reads.list_transactions(
            conn, ledger, account=account, reference=reference, start=parse_time(start, "start"),
            end=parse_time(end, "end"), page_size=page_size, cursor=cursor,
        )
    emit(page.to_json())


def _metadata_commands(group: click.Group, target: str, id_type: Any) -> None:
    """`set-metadata` and `delete-metadata` for one target type (accounts or transactions)."""

    @group.command("set-metadata")
    @click.argument("ledger")
    @click.argument("target_id", type=id_type)
    @click.option("--json", "body", required=True, help="JSON object of string values: inline, @file or -.")
    @click.option("--idempotency-key", default=None)
    @handles_errors
    def set_metadata(ledger: str, target_id: Any, body: str, idempotency_key: str | None) -> None:
        """Set metadata keys (one SET_METADATA log)."""
        command = SetMetadata.build(target, target_id, read_body(body), idempotency_key)
        with open_db() as conn:
            [result] = write(conn, ledger, [command])
        emit(result.log.to_json())

    @group.command("delete-metadata")
    @click.argument("ledger")
    @click.argument("target_id", type=id_type)
    @click.argument("key")
    @click.option("--idempotency-key", default=None)
    @handles_errors
    def delete_metadata(ledger: str, target_id: Any, key: str, idempotency_key: str | None) -> None:
        """Delete one metadata key (one DELETE_METADATA log)."""
        command = DeleteMetadata.build(target, target_id, key, idempotency_key)
        with open_db() as conn:
            [result] = write(conn, ledger, [command])
        emit(result.log.to_json())


_metadata_commands(tx, "TRANSACTION", int)


# -- accounts, balances, volumes ---------------------------------------------------------------------

@cli.group()
def accounts() -> None:
    """Read and annotate accounts."""


@accounts.command("get")
@click.argument("ledger")
@click.argument("address")
@handles_errors
def accounts_get(ledger: str, address: str) -> None:
    """Show an account with its volumes per asset and its metadata."""
    with open_db() as conn:
        emit(reads.get_account(conn, ledger, address).to_json())


_metadata_commands(accounts, "ACCOUNT", str)


@cli.command("balances")
@click.argument("ledger")
@click.option("--address", default=None, help="Address or pattern (users: , users:*:main).")
@click.option("--asset", default=None)
@click.option("--effective-at", default=None, help="Balances as of this effective time (RFC 3339).")
@click.option("--inserted-at", default=None, help="Balances as the ledger had recorded them at this time.")
@handles_errors
def balances_cmd(ledger: str, address: str | None, asset: str | None, effective_at: str | None,
                 inserted_at: str | None) -> None:
    """Balances per account and asset, now or at a point in time, with per-asset totals."""
    with open_db() as conn:
        rows = reads.balances(conn, ledger, address=address, asset_filter=asset,
                              effective_at=parse_time(effective_at, "effective-at"),
                              inserted_at=parse_time(inserted_at, "inserted-at"))
    emit({"data": [r.to_json() for r in rows], "totals": reads.aggregate(rows)})


@cli.command("volumes")
@click.argument("ledger")
@click.option("--start", default=None, help="Window start (inclusive), RFC 3339.")
@click.option("--end", default=None, help="Window end (exclusive), RFC 3339.")
@click.option("--address", default=None)
@click.option("--by", type=click.Choice(["effective", "insertion"]), default="effective", show_default=True)
@handles_errors
def volumes_cmd(ledger: str, start: str | None, end: str | None, address: str | None, by: str) -> None:
    """What flowed in and out of each account per asset in a time window."""
    with open_db() as conn:
        rows = reads.volumes_between(conn, ledger, start=parse_time(start, "start"), end=parse_time(end, "end"),
                                     address=address, by_insertion=by == "insertion")
    emit({"data": [r.to_json() for r in rows]})


# -- logs --------------------------------------------------------------------------------------------

@cli.group()
def logs() -> None:
    """Read and verify the hash-chained log."""


@logs.command("list")
@click.argument("ledger")
@click.option("--after", default=0, show_default=True, type=int, help="Only logs with a greater id.")
@click.option("--limit", default=100, show_default=True, type=int)
@handles_errors
def logs_list(ledger: str, after: int, limit: int) -> None:
    """List logs in id order."""
    with open_db() as conn:
        emit([log.to_json() for log in reads.list_logs(conn, ledger, after=after, limit=limit)])


@logs.command("verify")
@click.argument("ledger")
@click.option("--deep", is_flag=True,
              help="Also replay the log and prove transactions, moves, volumes and accounts equal it.")
@handles_errors
def logs_verify(ledger: str, deep: bool) -> None:
    """Recompute the hash chain (and with --deep, the tables); name the first difference (exit 1)."""
    with open_db() as conn:
        emit(verify_deep(conn, ledger).to_json() if deep else reads.verify_chain(conn, ledger).to_json())


@cli.group()
def db() -> None:
    """The ledger database itself."""


@db.command("url")
@handles_errors
def db_url() -> None:
    """Print the database URL in use (starting the local server if needed)."""
    emit({"url": database_url()})


@db.command("migrate")
@handles_errors
def db_migrate() -> None:
    """Bring the database's schema up to date (the ledger's and, when installed, the pipelines'): once per
    upgrade, with a role that may create tables. Commands never migrate on their own; they say when to run this."""
    with connect(database_url(), check_schema=False) as conn:
        applied = migrations.migrate_all(conn)
        emit({"applied": applied, "versions": migrations.versions(conn)})


@db.command("status")
@handles_errors
def db_status() -> None:
    """Which database is used, and the local server's state (never starts it)."""
    configured = os.environ.get("LEDGER_DATABASE_URL")
    local = localpg.server_status(local_data_dir(ledger_home()))
    emit({"using": "LEDGER_DATABASE_URL" if configured else "local server", "ledgerHome": str(ledger_home()),
          "local": local.to_json()})


@db.command("stop")
@handles_errors
def db_stop() -> None:
    """Stop the local server of LEDGER_HOME (its data stays; the next command starts it again)."""
    data_dir = local_data_dir(ledger_home())
    emit({"stopped": localpg.stop_server(data_dir, bin_dir=os.environ.get("LEDGER_PG_BIN")),
          "dataDir": str(localpg.locate(data_dir))})


@db.command("remove")
@click.option("--yes", is_flag=True, help="Really delete: without it, only say what would be removed.")
@handles_errors
def db_remove(yes: bool) -> None:
    """Stop every local server of LEDGER_HOME (the ledger's, the benchmarks') and delete their data."""
    clusters = localpg.local_clusters(ledger_home())
    where = [str(localpg.locate(c)) for c in clusters]
    if not yes:
        emit({"wouldRemove": where, "hint": "run again with --yes to delete them"})
        return
    for cluster, real in zip(clusters, where, strict=True):
        click.echo(f"ledgerctl: stopping and removing the local PostgreSQL server at {real}", err=True)
        localpg.remove_server(cluster, bin_dir=os.environ.get("LEDGER_PG_BIN"))
    emit({"removed": where})


def _load_command_plugins() -> None:
    """Commands of installed plugins (entry points); the ledger alone works without any."""
    context = CommandContext(cli, open_db, database_url, emit, handles_errors)
    for entry_point in entry_points(group=COMMAND_PLUGINS):
        try:
            register = entry_point.load()
        except ImportError:  # its optional dependencies (an extra) are not installed
            continue
        register(context)


_load_command_plugins()


def main() -> None:
    cli.main(prog_name="ledgerctl")


if __name__ == "__main__":
    main()
