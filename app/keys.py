"""API keys: printed once, stored as a salted hash, compared in constant time.

A key looks like ``rgo_<prefix>_<secret>``: the prefix finds the row, the secret is checked
against ``sha256(salt || secret)`` with :func:`hmac.compare_digest`. A token of any other shape
is refused before it costs a database connection.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

from core.access import ALL, Grant
from core.errors import AuthError, RagopsError, ScopeError
from core.money import parse_usd

SCOPES = frozenset({"query", "admin"})
_KEY_PREFIX = "rgo"
_PREFIX_BYTES, _SECRET_BYTES = 4, 24
# rgo_, 8 hex digits, _, then token_urlsafe(24): 32 characters of the URL-safe alphabet.
_TOKEN_SHAPE = re.compile(rf"{_KEY_PREFIX}_[0-9a-f]{{{2 * _PREFIX_BYTES}}}_[A-Za-z0-9_-]{{{_SECRET_BYTES * 4 // 3}}}")
_TOKEN_CHARS = len(_KEY_PREFIX) + 2 + 2 * _PREFIX_BYTES + _SECRET_BYTES * 4 // 3


@dataclass(frozen=True)
class ApiKey:
    """A stored key, without its secret."""

    id: int
    name: str
    prefix: str
    scopes: tuple[str, ...]
    collections: tuple[str, ...]  # "*": every collection
    configs: tuple[str, ...]  # "*": every configuration; empty: the service's default only
    budget_usd_day: Decimal | None
    budget_usd_month: Decimal | None
    rpm: int | None
    tpm: int | None
    created_at: datetime
    revoked_at: datetime | None

    def require(self, scope: str) -> None:
        """Raise :class:`ScopeError` unless the key has ``scope``."""
        if scope not in self.scopes:
            raise ScopeError(f"API key {self.name!r} lacks the {scope!r} scope")

    def grant(self, default_config: str) -> Grant:
        """The collections and configurations this key may use."""
        return Grant.of(self.collections, self.configs or (default_config,))


_COLUMNS = (
    "id, name, prefix, scopes, collections, configs, budget_usd_day, budget_usd_month, rpm, tpm, created_at, revoked_at"
)


def _hash(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode()).digest()


def create_key(
    conn: psycopg.Connection,
    name: str,
    scopes: list[str],
    *,
    collections: list[str],
    configs: list[str] | None = None,
    budget_usd_day: Decimal | None = None,
    budget_usd_month: Decimal | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
) -> tuple[ApiKey, str]:
    """Store a new key; returns it and the full key string, which is never retrievable again.

    ``collections`` must be named (``["*"]`` for all): a key is granted nothing by default.
    ``configs`` unset: the service's default configuration only. Budgets: None is no budget, 0 a
    budget of $0 (every priced request refused); an amount the database cannot store exactly
    (negative, beyond nano-dollars) is refused rather than rounded.
    """
    unknown = set(scopes) - SCOPES
    if not scopes or unknown:
        raise RagopsError(f"scopes must be a non-empty subset of {sorted(SCOPES)}; unknown: {sorted(unknown)}")
    if not name.strip():
        raise RagopsError("a key needs a name")
    collections, configs = _names("collections", collections), _names("configs", configs or [])
    if not collections:
        raise RagopsError("name the collections the key may use (or '*' for all of them)")
    budgets = [None if b is None else parse_usd(b, f"budget_usd_{p}") for b, p in
               ((budget_usd_day, "day"), (budget_usd_month, "month"))]  # fmt: skip
    prefix = secrets.token_hex(_PREFIX_BYTES)
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    salt = secrets.token_bytes(16)
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            f"""INSERT INTO api_keys (name, prefix, salt, secret_hash, scopes, collections, configs, budget_usd_day,
                                      budget_usd_month, rpm, tpm)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}""",
            (
                name,
                prefix,
                salt,
                _hash(salt, secret),
                sorted(set(scopes)),
                collections,
                configs,
                *budgets,
                rpm,
                tpm,
            ),
        ).fetchone()
    assert row is not None
    return _key(row), f"{_KEY_PREFIX}_{prefix}_{secret}"


def _names(what: str, names: list[str]) -> list[str]:
    """Collection or configuration names, stripped, deduplicated and checked: ``*`` stands alone."""
    cleaned = sorted({n.strip() for n in names if n.strip()})
    if ALL in cleaned and len(cleaned) > 1:
        raise RagopsError(f"{what}: '*' already means all of them; give it alone")
    for n in cleaned:
        if len(n) > 64 or "\x00" in n or "," in n:
            raise RagopsError(f"{what}: {n[:70]!r} is not a valid name (at most 64 characters, no commas)")
    return cleaned


def _key(row: dict[str, Any]) -> ApiKey:
    lists = {name: tuple(row[name]) for name in ("scopes", "collections", "configs")}
    return ApiKey(**{**row, **lists})


def check_key_shape(presented: str) -> None:
    """:class:`AuthError` unless ``presented`` is shaped like a key ragops issues (no database needed)."""
    if len(presented) != _TOKEN_CHARS or not _TOKEN_SHAPE.fullmatch(presented):
        raise AuthError("invalid API key")


def verify_key(conn: psycopg.Connection, presented: str) -> ApiKey:
    """The key a bearer token names; :class:`AuthError` for anything else (same message either way)."""
    check_key_shape(presented)
    _, prefix, secret = presented.split("_", 2)
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(f"SELECT {_COLUMNS}, salt, secret_hash FROM api_keys WHERE prefix = %s", (prefix,)).fetchone()
    # Hash even when the prefix is unknown, so timing does not reveal which prefixes exist.
    salt, stored = (bytes(row.pop("salt")), bytes(row.pop("secret_hash"))) if row else (b"\0" * 16, b"\0" * 32)
    if not hmac.compare_digest(_hash(salt, secret), stored) or row is None:
        raise AuthError("invalid API key")
    key = _key(row)
    if key.revoked_at is not None:
        raise AuthError("API key revoked")
    return key


def get_key(conn: psycopg.Connection, key_id: int) -> ApiKey:
    """The key with ``key_id`` as it is now; :class:`AuthError` when it is gone or revoked (a console session ends)."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE id = %s", (key_id,)).fetchone()
    if row is None or row["revoked_at"] is not None:
        raise AuthError("API key revoked")
    return _key(row)


def list_keys(conn: psycopg.Connection) -> list[ApiKey]:
    """Every key, newest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        return [_key(r) for r in cur.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY id DESC").fetchall()]


def revoke_key(conn: psycopg.Connection, key_id_or_prefix: str) -> ApiKey:
    """Revoke a key by prefix or id; revoking twice keeps the first time.

    The prefix is tried first: a random prefix can be all digits and must not be read as an id.
    """
    with conn.cursor(row_factory=dict_row) as cur:
        row = None
        for column in ("prefix", "id") if key_id_or_prefix.isdigit() else ("prefix",):
            value: str | int = int(key_id_or_prefix) if column == "id" else key_id_or_prefix
            row = cur.execute(
                f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE {column} = %s"
                f" RETURNING {_COLUMNS}",
                (value,),
            ).fetchone()
            if row is not None:
                break
    if row is None:
        raise RagopsError(f"no API key {key_id_or_prefix!r}")
    return _key(row)


class VerifiedKeys:
    """Keys verified in the last ``ttl_s`` seconds, so a busy client costs no lookup per request.

    Keyed by a hash of the presented token: a hit means this exact secret was verified moments
    ago. Revocation, scopes and limits take effect within ``ttl_s`` (0 turns the cache off).
    """

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[bytes, tuple[float, ApiKey]] = {}
        self._lock = threading.Lock()

    def verify(self, conn_factory: Callable[[], AbstractContextManager[psycopg.Connection]], presented: str) -> ApiKey:
        """The key for ``presented``, from the cache or from the database (failures are never cached).

        A token of the wrong shape is refused before ``conn_factory`` is called.
        """
        check_key_shape(presented)
        if self.ttl_s <= 0:
            with conn_factory() as conn:
                return verify_key(conn, presented)
        digest = hashlib.sha256(presented.encode()).digest()
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        with conn_factory() as conn:
            key = verify_key(conn, presented)
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries = {d: e for d, e in self._entries.items() if e[0] > now}
            self._entries[digest] = (now + self.ttl_s, key)
        return key
