"""API keys: `lsk_<key id>_<secret>`. Only a SHA-256 of the secret is stored (the secret is 192
random bits, so a slow hash buys nothing); lookups are by key id, comparison in constant time."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .db import api_keys

Role = Literal["source", "admin"]


@dataclass(frozen=True)
class Principal:
    key_id: str
    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(presented: str) -> tuple[str, str] | None:
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != "lsk" or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


async def create_key(conn: AsyncConnection, name: str, role: Role) -> str:
    """Store a new key and return it; this is the only time the full key is ever seen."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(24)
    await conn.execute(
        insert(api_keys).values(key_id=key_id, name=name, role=role, secret_sha256=_digest(secret))
    )
    return f"lsk_{key_id}_{secret}"


class KeyCache:
    """Verified keys, remembered so a busy endpoint does not look each one up per request.

    Entries are keyed by a digest of the presented key (the key itself is never kept). Revocation
    is not left to a TTL: every entry is trusted only while the keys table's revocation version
    (how many keys exist, how many are revoked, the latest revocation) is the one seen when the
    entry was made, and that version is re-read at most every `check_every` seconds (one tiny query
    per process, however many keys are in use). A revoked key therefore stops working on every
    service within `check_every` seconds. When the version cannot be read (database away) nothing
    cached is trusted: the lookup goes to the database and fails like any other write would."""

    def __init__(self, ttl: float = 300.0, clock: Callable[[], float] = time.monotonic,
                 check_every: float = 0.5) -> None:
        self._ttl, self._clock, self._check_every = ttl, clock, check_every
        self._entries: dict[str, tuple[Principal, float]] = {}
        self._version: tuple | None = None
        self._checked_at = float("-inf")
        self._lock = asyncio.Lock()
        self._failed: tuple[float, BaseException] | None = None  # the last version read that failed, and when

    def get(self, presented: str) -> Principal | None:
        """The cached principal, if its entry is young and the revocation version was confirmed
        within `check_every` seconds; else None (ask the database)."""
        now = self._clock()
        if self._version is None or now - self._checked_at > self._check_every:
            return None
        entry = self._entries.get(_digest(presented))
        if entry is None or entry[1] < now:
            return None
        return entry[0]

    def put(self, presented: str, principal: Principal) -> None:
        if self._version is None:
            return  # nothing to check it against later
        if len(self._entries) > 10_000:  # bounded: a flood of distinct keys cannot grow it forever
            self._entries.clear()
        self._entries[_digest(presented)] = (principal, self._clock() + self._ttl)

    def observe(self, version: tuple | None) -> None:
        """Record the revocation version just read; a changed (or unknown) one drops every entry."""
        if version is None or version != self._version:
            self._entries.clear()
        self._version, self._checked_at = version, self._clock() if version is not None else float("-inf")

    def _fail_if_just_failed(self) -> None:
        """The requests that waited for a version read which failed fail with it, until the next
        check is due: each trying again in turn, the last of a burst would wait a database
        timeout per request before it (a frozen database answers nothing)."""
        if self._failed is not None and self._clock() - self._failed[0] <= self._check_every:
            raise ConnectionError("the database did not answer the key check moments ago") from self._failed[1]

    async def verify(self, connect: Callable[[], Any], presented: str) -> Principal | None:
        """The principal of a presented key, from the cache when it is still provably valid.
        `connect()` gives an async context manager yielding an AsyncConnection."""
        principal = self.get(presented)
        if principal is not None:
            return principal
        if self._clock() - self._checked_at > self._check_every:
            # One version read per interval, not one per waiting request; the others wait for it
            # without holding a pooled connection (a burst of requests must not drain the pool).
            async with self._lock:
                if self._clock() - self._checked_at > self._check_every:
                    self._fail_if_just_failed()
                    try:
                        async with connect() as conn:
                            version = await revocation_version(conn)
                    except BaseException as exc:
                        self.observe(None)  # unknown: trust nothing cached
                        self._failed = (self._clock(), exc)
                        raise
                    self.observe(version)
                    self._failed = None
            principal = self.get(presented)  # still valid: the version did not change
            if principal is not None:
                return principal
        # The version is read before the key: a revocation committed in between changes the
        # version, so the entry put below is dropped at the next check.
        version = self._version
        async with connect() as conn:
            principal = await verify_key(conn, presented)
        if principal is not None and version is not None and version == self._version:
            self.put(presented, principal)
        return principal


async def revocation_version(conn: AsyncConnection) -> tuple:
    """Changes whenever a key is created, revoked or deleted."""
    row = (await conn.execute(select(func.count(), func.count(api_keys.c.revoked_at),
                                     func.max(api_keys.c.revoked_at)))).one()
    return tuple(row)


async def list_keys(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Every key without its secret (only the hash is stored; the hash is not shown either)."""
    rows = await conn.execute(select(api_keys.c.key_id, api_keys.c.name, api_keys.c.role,
                                     api_keys.c.created_at, api_keys.c.revoked_at)
                              .order_by(api_keys.c.created_at, api_keys.c.key_id))
    return [dict(row._mapping) for row in rows]


async def replace_named_key(conn: AsyncConnection, name: str, role: Role) -> str:
    """A new key named `name`, the live keys of that name revoked (`leadsla dev`'s admin key: one
    per start, not one more valid admin key left behind by every start)."""
    await conn.execute(update(api_keys).where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))
                       .values(revoked_at=func.now()))
    return await create_key(conn, name, role)


async def revoke_key(conn: AsyncConnection, key: str) -> bool:
    """Revoke by key id (or by the whole key, whose id part is used). False: no such live key."""
    parts = split_key(key)
    key_id = parts[0] if parts else key
    result = await conn.execute(update(api_keys).where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                                .values(revoked_at=func.now()))
    return result.rowcount == 1


async def verify_key(conn: AsyncConnection, presented: str) -> Principal | None:
    parts = split_key(presented)
    if parts is None:
        return None
    key_id, secret = parts
    row = (
        await conn.execute(
            select(api_keys.c.name, api_keys.c.role, api_keys.c.secret_sha256).where(
                api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None)
            )
        )
    ).first()
    if row is None or not hmac.compare_digest(row.secret_sha256, _digest(secret)):
        return None
    return Principal(key_id=key_id, name=row.name, role=row.role)
