"""Versioned schema migrations.

Each component (the ledger core, the pipelines registry) owns an ordered list of SQL steps. A step is
applied once, inside one transaction together with its row in `ledger_core.schema_migrations`, under an
advisory lock so two processes starting at once do not race. Steps are append-only: a released step is
never edited, a change is a new step, so an existing database upgrades in place.

Migrating is explicit (`ledgerctl db migrate`; the project's local server migrates itself): it takes a global
lock and needs CREATE privilege, which an application's role, a read-only analyst or a sensor tick should not
need. Every connection instead checks, with one cheap query (once per process and database), that the schema is
the one this code expects, and says what to run when it is not. Components register here (`register`); the
pipelines register theirs when imported, so the core never imports them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from ledger_core.errors import SchemaOutOfDate

_LOCK_KEY = 7_245_113_001  # arbitrary, constant: the advisory lock that serialises migrations

CORE_MIGRATIONS: Sequence[str] = (
    # 1: ledgers, the log, transactions, accounts, volumes and moves.
    """
    CREATE TABLE ledger_core.ledgers (
        name                text PRIMARY KEY,
        created_at          timestamptz NOT NULL DEFAULT now(),
        metadata            jsonb NOT NULL DEFAULT '{}',
        last_log_id         bigint NOT NULL DEFAULT 0,
        last_log_hash       bytea,
        last_log_date       timestamptz,
        last_transaction_id bigint NOT NULL DEFAULT 0
    );

    CREATE TABLE ledger_core.logs (
        ledger           text NOT NULL REFERENCES ledger_core.ledgers(name),
        id               bigint NOT NULL,
        type             text NOT NULL,
        date             timestamptz NOT NULL,
        idempotency_key  text,
        idempotency_hash bytea,
        data             jsonb NOT NULL,
        hash             bytea NOT NULL,
        PRIMARY KEY (ledger, id)
    );
    CREATE UNIQUE INDEX logs_idempotency_key ON ledger_core.logs (ledger, idempotency_key)
        WHERE idempotency_key IS NOT NULL;

    CREATE TABLE ledger_core.transactions (
        ledger              text NOT NULL REFERENCES ledger_core.ledgers(name),
        id                  bigint NOT NULL,
        timestamp           timestamptz NOT NULL,
        inserted_at         timestamptz NOT NULL,
        reference           text,
        metadata            jsonb NOT NULL DEFAULT '{}',
        postings            jsonb NOT NULL,
        pre_commit_volumes  jsonb NOT NULL,
        post_commit_volumes jsonb NOT NULL,
        reverted_at         timestamptz,
        log_id              bigint NOT NULL,
        PRIMARY KEY (ledger, id)
    );
    CREATE UNIQUE INDEX transactions_reference ON ledger_core.transactions (ledger, reference)
        WHERE reference IS NOT NULL;
    CREATE INDEX transactions_timestamp ON ledger_core.transactions (ledger, timestamp);

    CREATE TABLE ledger_core.accounts (
        ledger         text NOT NULL REFERENCES ledger_core.ledgers(name),
        address        text NOT NULL,
        metadata       jsonb NOT NULL DEFAULT '{}',
        first_usage    timestamptz,
        insertion_date timestamptz NOT NULL,
        updated_at     timestamptz NOT NULL,
        PRIMARY KEY (ledger, address)
    );

    -- Current volumes per account and asset; the row is what writers lock.
    CREATE TABLE ledger_core.volumes (
        ledger             text NOT NULL REFERENCES ledger_core.ledgers(name),
        account            text NOT NULL,
        asset              text NOT NULL,
        input              numeric NOT NULL DEFAULT 0 CHECK (input >= 0),
        output             numeric NOT NULL DEFAULT 0 CHECK (output >= 0),
        max_effective_date timestamptz,
        PRIMARY KEY (ledger, account, asset)
    );

    -- One row per account side of a posting, with the account's volumes after it in insertion order
    -- (post_commit_*) and in effective order (post_commit_effective_*): the two point-in-time views.
    CREATE TABLE ledger_core.moves (
        seq                          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        ledger                       text NOT NULL,
        transaction_id               bigint NOT NULL,
        posting_index                integer NOT NULL,
        account                      text NOT NULL,
        asset                        text NOT NULL,
        amount                       numeric NOT NULL CHECK (amount >= 0),
        is_source                    boolean NOT NULL,
        effective_date               timestamptz NOT NULL,
        insertion_date               timestamptz NOT NULL,
        post_commit_input            numeric NOT NULL,
        post_commit_output           numeric NOT NULL,
        post_commit_effective_input  numeric,
        post_commit_effective_output numeric
    );
    CREATE INDEX moves_effective ON ledger_core.moves (ledger, account, asset, effective_date, seq);
    CREATE INDEX moves_insertion ON ledger_core.moves (ledger, account, asset, seq);
    CREATE INDEX moves_transaction ON ledger_core.moves (ledger, transaction_id);
    CREATE INDEX moves_account_tx ON ledger_core.moves (ledger, account, transaction_id);
    """,
    # 2: moves_insertion (ledger, account, asset, seq) already serves lookups by account; the extra index
    # only cost every write (measured in bench/ledger_write.py).
    "DROP INDEX IF EXISTS ledger_core.moves_account_tx",
    # 3: hash version 2 (the whole log, derived volumes included, in jsonb's text; see hashing.py), and the
    # SQL that computes it, so chain checks run set-based. Logs written before keep version 1.
    """
    ALTER TABLE ledger_core.logs ADD COLUMN hash_version smallint NOT NULL DEFAULT 1;
    ALTER TABLE ledger_core.logs ALTER COLUMN hash_version SET DEFAULT 2;

    -- validation.format_timestamp, in SQL: RFC 3339 in UTC, fraction without trailing zeros.
    CREATE FUNCTION ledger_core.rfc3339(timestamptz) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE AS $$
        SELECT to_char($1 AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
               || CASE WHEN extract(microseconds FROM $1)::bigint % 1000000 = 0 THEN ''
                       ELSE '.' || rtrim(to_char($1 AT TIME ZONE 'UTC', 'US'), '0') END
               || 'Z' $$;

    -- hashing.canonical, in SQL: the bytes a version-2 log hash covers.
    CREATE FUNCTION ledger_core.log_canonical(text, bigint, text, timestamptz, text, jsonb) RETURNS bytea
        LANGUAGE sql STABLE PARALLEL SAFE AS $$
        SELECT convert_to(jsonb_build_object('ledger', $1, 'id', $2, 'type', $3, 'date', ledger_core.rfc3339($4),
                                             'idempotencyKey', $5, 'data', $6)::text, 'UTF8') $$;

    -- Metadata as the log builds it: fold {"set": {...}} and {"delete": "key"} operations in log order.
    CREATE FUNCTION ledger_core.metadata_step(jsonb, jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
        SELECT CASE WHEN $2 ? 'delete' THEN $1 - ($2->>'delete') ELSE $1 || ($2->'set') END $$;
    CREATE AGGREGATE ledger_core.fold_metadata(jsonb) (
        SFUNC = ledger_core.metadata_step, STYPE = jsonb, INITCOND = '{}');
    """,
    # 4: effective-order history as per-day volumes instead of per-move running sums. A backdated move used to
    # restate the effective volumes of every later move of its account (a cost that grew with the account's
    # history: `world` is in nearly every transaction); now it adds to one row, its (account, asset, UTC day).
    # A balance as of T is the days before T's day plus that day's moves up to T (see reads.balances).
    """
    CREATE TABLE ledger_core.daily_volumes (
        ledger  text NOT NULL,
        account text NOT NULL,
        asset   text NOT NULL,
        day     date NOT NULL,
        input   numeric NOT NULL,
        output  numeric NOT NULL,
        PRIMARY KEY (ledger, account, asset, day)
    );
    INSERT INTO ledger_core.daily_volumes (ledger, account, asset, day, input, output)
        SELECT ledger, account, asset, (effective_date AT TIME ZONE 'UTC')::date,
               sum(CASE WHEN is_source THEN 0 ELSE amount END), sum(CASE WHEN is_source THEN amount ELSE 0 END)
        FROM ledger_core.moves GROUP BY 1, 2, 3, 4;
    ALTER TABLE ledger_core.moves DROP COLUMN post_commit_effective_input,
                                  DROP COLUMN post_commit_effective_output;
    ALTER TABLE ledger_core.volumes DROP COLUMN max_effective_date;
    -- It served the per-move restatement. Reads by effective date filter accounts by pattern (no index helps)
    -- and take a day's moves at most; every backdated write paid for it with an insert at a random position.
    DROP INDEX ledger_core.moves_effective;
    """,
)


def migrate(conn: psycopg.Connection, component: str, steps: Sequence[str], schema: str) -> int:
    """Apply the steps of `component` that the database lacks; return how many were applied."""
    applied = 0
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute("CREATE SCHEMA IF NOT EXISTS ledger_core")
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        conn.execute(
            """CREATE TABLE IF NOT EXISTS ledger_core.schema_migrations (
                   component text NOT NULL, version integer NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (component, version))"""
        )
        row = conn.execute(
            "SELECT coalesce(max(version), 0) FROM ledger_core.schema_migrations WHERE component = %s",
            (component,),
        ).fetchone()
        current = int(row[0]) if row else 0
        for version, sql in enumerate(steps, start=1):
            if version <= current:
                continue
            conn.execute(sql)
            conn.execute(
                "INSERT INTO ledger_core.schema_migrations (component, version) VALUES (%s, %s)",
                (component, version),
            )
            applied += 1
    return applied


def migrate_core(conn: psycopg.Connection) -> int:
    return migrate_component(conn, "core")


@dataclass(frozen=True)
class Component:
    name: str
    steps: Sequence[str]
    schema: str


COMPONENTS: dict[str, Component] = {"core": Component("core", CORE_MIGRATIONS, "ledger_core")}


def register(name: str, steps: Sequence[str], schema: str) -> None:
    """Add a component whose schema `migrate_all` applies and `require` checks (the pipelines call this)."""
    COMPONENTS[name] = Component(name, steps, schema)


def migrate_component(conn: psycopg.Connection, name: str) -> int:
    """Apply one registered component's missing steps; how many it applied."""
    component = COMPONENTS[name]
    applied = migrate(conn, name, component.steps, component.schema)
    _checked.clear()
    return applied


def migrate_all(conn: psycopg.Connection) -> dict[str, int]:
    """Apply every registered component's missing steps; how many each applied."""
    return {name: migrate_component(conn, name) for name in COMPONENTS}


def versions(conn: psycopg.Connection) -> dict[str, int]:
    """The version each component's schema has in this database (0: never migrated)."""
    if conn.execute("SELECT to_regclass('ledger_core.schema_migrations')").fetchone() == (None,):
        return {}
    rows = conn.execute("SELECT component, max(version) FROM ledger_core.schema_migrations GROUP BY component")
    return {name: int(version) for name, version in rows.fetchall()}


_checked: set[tuple[str, str]] = set()  # (database, component) found up to date by this process


def require(conn: psycopg.Connection, *components: str) -> None:
    """Raise SchemaOutOfDate unless each component's schema is the one this code expects (cheap; cached)."""
    where = conn.info.dsn
    wanted = [c for c in (components or ("core",)) if (where, c) not in _checked]
    if not wanted:
        return
    found = versions(conn)
    for name in wanted:
        have, need = found.get(name, 0), len(COMPONENTS[name].steps)
        if have != need:
            raise SchemaOutOfDate(name, have, need)
        _checked.add((where, name))
