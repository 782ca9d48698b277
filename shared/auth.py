"""API keys: `lsk_<key id>_<secret>`. Only a SHA-256 of the secret is stored (the secret is 192
random bits, so a slow hash buys nothing); lookups are by key id, comparison in constant time."""
from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import insert, select
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
    """Verified keys, remembered briefly so a busy endpoint does not look each one up per request.
    Entries are keyed by a digest of the presented key (the key itself is never kept); a revoked
    key stops working within `ttl` seconds."""

    def __init__(self, ttl: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl, self._clock = ttl, clock
        self._entries: dict[str, tuple[Principal, float]] = {}

    def get(self, presented: str) -> Principal | None:
        entry = self._entries.get(_digest(presented))
        if entry is None or entry[1] < self._clock():
            return None
        return entry[0]

    def put(self, presented: str, principal: Principal) -> None:
        if len(self._entries) > 10_000:  # bounded: a flood of distinct keys cannot grow it forever
            self._entries.clear()
        self._entries[_digest(presented)] = (principal, self._clock() + self._ttl)


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
