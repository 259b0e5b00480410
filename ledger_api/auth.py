"""API keys and the short-lived bearer tokens they are exchanged for (OAuth2 client credentials).

A key is a client id and a secret. The secret is 32 random bytes, shown once at creation and stored only as
its SHA-256 digest: a random secret of that size cannot be guessed from its digest, so a slow password hash
would add nothing but latency. A key may be limited to some ledgers, and to reading.

A token is signed, not stored: `lt1.<claims>.<signature>`, the claims (client id, scopes, expiry) in base64url
JSON, the signature an HMAC-SHA256 under a signing secret kept in the database, so every server process of one
database accepts the tokens of the others. A token carries no ledgers or read-only flag: those are read from
the key (cached a few seconds), so revoking a key or narrowing it takes effect within `KEY_CACHE_SECONDS`
whatever the tokens already issued say.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from ledger_api.errors import Forbidden, InvalidClient, InvalidTokenRequest, KeyNotFound, Unauthorized
from ledger_core import migrations
from ledger_core.errors import ValidationError
from ledger_core.validation import format_timestamp, ledger_name, text

READ, WRITE = "ledger:read", "ledger:write"
SCOPES = (READ, WRITE)  # the scopes Formance's SDK asks for
TOKEN_SECONDS = 900
KEY_CACHE_SECONDS = 5.0
CLIENT_ID = re.compile(r"lk_[0-9a-f]{24}")
STALE = object()  # a key not read recently enough to trust

API_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE SCHEMA IF NOT EXISTS ledger_api;
    CREATE TABLE ledger_api.keys (
        client_id     text PRIMARY KEY,
        name          text NOT NULL,
        secret_sha256 bytea NOT NULL,
        ledgers       text[],              -- NULL: every ledger
        read_only     boolean NOT NULL DEFAULT false,
        created_at    timestamptz NOT NULL DEFAULT now(),
        revoked_at    timestamptz
    );
    CREATE TABLE ledger_api.signing_secret (
        id     integer PRIMARY KEY CHECK (id = 1),
        secret bytea NOT NULL
    );
    """,
)
migrations.register("api", API_MIGRATIONS, "ledger_api")


def require_schema(conn: psycopg.Connection) -> None:
    migrations.require(conn, "core", "api")


@dataclass(frozen=True)
class ApiKey:
    client_id: str
    name: str
    ledgers: tuple[str, ...] | None
    read_only: bool
    created_at: datetime
    revoked_at: datetime | None

    @property
    def scopes(self) -> tuple[str, ...]:
        return (READ,) if self.read_only else SCOPES

    def to_json(self) -> dict[str, Any]:
        return {"clientId": self.client_id, "name": self.name,
                "ledgers": list(self.ledgers) if self.ledgers is not None else None,
                "scopes": list(self.scopes), "createdAt": format_timestamp(self.created_at),
                "revokedAt": format_timestamp(self.revoked_at) if self.revoked_at else None}


_KEY_COLUMNS = "client_id, name, ledgers, read_only, created_at, revoked_at"


def _key(row: Sequence[Any]) -> ApiKey:
    return ApiKey(row[0], row[1], tuple(row[2]) if row[2] is not None else None, row[3], row[4], row[5])


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def create_key(conn: psycopg.Connection, name: str, *, ledgers: Sequence[str] | None = None,
               read_only: bool = False) -> tuple[ApiKey, str]:
    """A new key and its secret; the secret is returned here and never again."""
    require_schema(conn)
    name = text(name, field="name").strip()
    if not name or len(name) > 200:
        raise ValidationError("must be 1 to 200 characters", field="name")
    checked = tuple(sorted({ledger_name(x) for x in ledgers})) if ledgers else None
    client_id, secret = f"lk_{secrets.token_hex(12)}", secrets.token_urlsafe(32)
    row = conn.execute(
        f"""INSERT INTO ledger_api.keys (client_id, name, secret_sha256, ledgers, read_only)
            VALUES (%s, %s, %s, %s, %s) RETURNING {_KEY_COLUMNS}""",
        (client_id, name, _digest(secret), list(checked) if checked else None, read_only),
    ).fetchone()
    assert row is not None
    return _key(row), secret


def list_keys(conn: psycopg.Connection) -> list[ApiKey]:
    require_schema(conn)
    return [_key(r) for r in conn.execute(f"SELECT {_KEY_COLUMNS} FROM ledger_api.keys ORDER BY created_at")]


def get_key(conn: psycopg.Connection, client_id: str) -> ApiKey:
    row = conn.execute(f"SELECT {_KEY_COLUMNS} FROM ledger_api.keys WHERE client_id = %s",
                       (text(client_id, field="client id"),)).fetchone()
    if row is None:
        raise KeyNotFound(client_id)
    return _key(row)


def revoke_key(conn: psycopg.Connection, client_id: str) -> ApiKey:
    """Revoke a key: its secret is refused at once, its tokens within KEY_CACHE_SECONDS."""
    require_schema(conn)
    row = conn.execute(
        f"""UPDATE ledger_api.keys SET revoked_at = coalesce(revoked_at, now()) WHERE client_id = %s
            RETURNING {_KEY_COLUMNS}""",
        (text(client_id, field="client id"),),
    ).fetchone()
    if row is None:
        raise KeyNotFound(client_id)
    return _key(row)


def signing_secret(conn: psycopg.Connection) -> bytes:
    """The database's token-signing secret, made on first use (every server of this database shares it)."""
    conn.execute("INSERT INTO ledger_api.signing_secret VALUES (1, %s) ON CONFLICT (id) DO NOTHING",
                 (secrets.token_bytes(32),))
    row = conn.execute("SELECT secret FROM ledger_api.signing_secret WHERE id = 1").fetchone()
    assert row is not None
    return bytes(row[0])


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: its key, and the scopes its token was granted."""

    key: ApiKey
    scopes: frozenset[str]

    def require(self, ledger: str | None, *, write: bool) -> None:
        """Refuse (403) a request outside the key's ledgers or the token's scopes."""
        needed = WRITE if write else READ
        if needed not in self.scopes:
            raise Forbidden(f"this token may not {'write' if write else 'read'} (its scopes: "
                            f"{' '.join(sorted(self.scopes)) or 'none'}); use a key with {needed}")
        if ledger is not None and self.key.ledgers is not None and ledger not in self.key.ledgers:
            raise Forbidden(f"this key may not use ledger {ledger!r}")
        if ledger is None and self.key.ledgers is not None and write:
            raise Forbidden("a key limited to some ledgers may not change what every ledger shares")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


class Authority:
    """Exchanges client credentials for tokens and checks tokens; one per server process."""

    def __init__(self, conn_factory: Any, *, token_seconds: int = TOKEN_SECONDS,
                 key_cache_seconds: float = KEY_CACHE_SECONDS):
        self._connect = conn_factory  # a context manager yielding a connection
        self.token_seconds = token_seconds
        self._key_cache_seconds = key_cache_seconds
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._lock = threading.Lock()
        with self._connect() as conn:
            require_schema(conn)
            self._secret = signing_secret(conn)

    def issue(self, client_id: str, client_secret: str, scope: str | None) -> dict[str, Any]:
        """The client-credentials grant: an access token for a valid key, with the scopes asked for (all of the
        key's when none are)."""
        if not client_id or not client_secret:
            raise InvalidTokenRequest("invalid_request", "client_id and client_secret are required")
        with self._connect() as conn:
            row = conn.execute(f"SELECT {_KEY_COLUMNS}, secret_sha256 FROM ledger_api.keys WHERE client_id = %s",
                               (client_id,)).fetchone() if CLIENT_ID.fullmatch(client_id) else None
        if row is None or row[5] is not None or not hmac.compare_digest(bytes(row[6]), _digest(client_secret)):
            raise InvalidClient("unknown client, wrong secret, or a revoked key")
        key = _key(row[:6])
        asked = set(scope.split()) if scope else set(key.scopes)
        if not asked <= set(key.scopes):
            raise InvalidTokenRequest("invalid_scope", f"this key may have {' '.join(key.scopes)}, "
                                                       f"not {' '.join(sorted(asked - set(key.scopes)))}")
        claims = {"sub": key.client_id, "scp": sorted(asked), "exp": int(time.time()) + self.token_seconds}
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        token = f"lt1.{body}.{_b64(self._sign(body))}"
        return {"access_token": token, "token_type": "Bearer", "expires_in": self.token_seconds,
                "scope": " ".join(sorted(asked))}

    def _sign(self, body: str) -> bytes:
        return hmac.new(self._secret, body.encode(), hashlib.sha256).digest()

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an `Authorization: Bearer …` header, or Unauthorized (may read the key's row)."""
        client_id, scopes = self.token_claims(authorization)
        key = self.cached_key(client_id)
        return self.principal(self.current_key(client_id) if key is STALE else key, scopes)

    def token_claims(self, authorization: str | None) -> tuple[str, frozenset[str]]:
        """The client id and scopes of a bearer token this server signed and that has not expired (no I/O)."""
        if not authorization:
            raise Unauthorized("this route needs a bearer token: exchange an API key for one at /oauth/token")
        scheme, _, token = authorization.partition(" ")
        parts = token.strip().split(".")
        if scheme.lower() != "bearer" or len(parts) != 3 or parts[0] != "lt1":
            raise Unauthorized("the Authorization header must be `Bearer <token>` with a token from /oauth/token")
        try:
            valid = hmac.compare_digest(_unb64(parts[2]), self._sign(parts[1]))
            claims = json.loads(_unb64(parts[1])) if valid else None
        except (ValueError, UnicodeDecodeError):
            valid, claims = False, None
        if not valid or not isinstance(claims, dict):
            raise Unauthorized("the bearer token is not one this server issued")
        if not isinstance(claims.get("exp"), int) or claims["exp"] <= time.time():
            raise Unauthorized("the bearer token has expired: get a new one from /oauth/token")
        return str(claims.get("sub")), frozenset(claims.get("scp") or ())

    def principal(self, key: ApiKey | None, scopes: frozenset[str]) -> Principal:
        if key is None:
            raise Unauthorized("the key this token was issued for is revoked or deleted")
        return Principal(key, scopes & frozenset(key.scopes))

    def cached_key(self, client_id: str) -> ApiKey | object | None:
        """The key as read less than KEY_CACHE_SECONDS ago, or STALE (then `current_key` reads it)."""
        with self._lock:
            cached = self._cache.get(client_id)
        return cached[1] if cached is not None and cached[0] > time.monotonic() else STALE

    def current_key(self, client_id: str) -> ApiKey | None:
        """The key's row as it is now (None: revoked or deleted), remembered for KEY_CACHE_SECONDS."""
        now = time.monotonic()
        with self._connect() as conn:
            row = conn.execute(f"SELECT {_KEY_COLUMNS} FROM ledger_api.keys WHERE client_id = %s",
                               (client_id,)).fetchone()
        key = _key(row) if row is not None and row[5] is None else None
        with self._lock:
            self._cache[client_id] = (now + self._key_cache_seconds, key)
        return key
