"""API keys of the integration API: made once, shown once, stored only as a SHA-256, revoked not deleted.

A key reads `scrm_<prefix>_<secret>`: the prefix is kept in clear so an admin can tell keys
apart in `scrm apikeys list`, the whole key only as its SHA-256 (a key is random and long,
so a plain hash is enough: nothing to guess). A revoked key stays listed, and is refused at
once by the process that revoked it; a process that has seen the key live may trust it for
`KEY_TRUSTED_FOR` more (the API does: no store query per request), so every process refuses
it within that bound.
`last_used_at` is written at most once a minute per key.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_store.api_models import ApiKey
from crm_store.models import as_utc, utcnow

Scope = Literal["read", "write"]
SCOPES: tuple[Scope, ...] = ("read", "write")
KEY_START = "scrm_"
TOUCH_EVERY = timedelta(minutes=1)
KEY_TRUSTED_FOR = timedelta(seconds=10)  # a live key is read again after this: a revocation's bound
_revoked_here = 0  # keys revoked by this process: what it remembers as live is forgotten at once


class ApiKeyError(ValueError):
    """A key that cannot be made or revoked, said plainly."""


@dataclass(frozen=True)
class NewKey:
    id: int
    name: str
    scope: str
    key: str  # shown once, never stored


@dataclass(frozen=True)
class KeyView:
    id: int
    name: str
    prefix: str
    scope: str
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


async def create_key(session: AsyncSession, name: str, scope: str) -> NewKey:
    name = name.strip()
    if not name or len(name) > 64:
        raise ApiKeyError("an API key needs a name of 1-64 characters (who uses it: shop, erp…)")
    if scope not in SCOPES:
        raise ApiKeyError(f"scope must be one of: {', '.join(SCOPES)}")
    prefix = secrets.token_hex(4)
    key = f"{KEY_START}{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(name=name, prefix=prefix, key_sha256=digest(key), scope=scope, created_at=utcnow())
    session.add(row)
    await session.flush()
    return NewKey(row.id, row.name, row.scope, key)


async def list_keys(session: AsyncSession, include_revoked: bool = True) -> list[KeyView]:
    query = select(ApiKey).order_by(ApiKey.id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return [_view(row) for row in await session.scalars(query)]


async def revoke_key(session: AsyncSession, key_id: int) -> KeyView:
    global _revoked_here
    row = await session.get(ApiKey, key_id)
    if row is None:
        raise ApiKeyError(f"no API key {key_id} (see: scrm apikeys list)")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        _revoked_here += 1
    return _view(row)


def revocations_here() -> int:
    """How many keys this process has revoked: a change tells a cache of live keys to forget them all."""
    return _revoked_here


async def authenticate(session: AsyncSession, key: str) -> ApiKey | None:
    """The live key behind `key`, its use noted; None for an unknown or revoked key."""
    if not key.startswith(KEY_START) or len(key) > 200:
        return None
    row = await session.scalar(select(ApiKey).where(ApiKey.key_sha256 == digest(key)))
    if row is None or row.revoked_at is not None:
        return None
    now = utcnow()
    if row.last_used_at is None or now - as_utc(row.last_used_at) >= TOUCH_EVERY:
        row.last_used_at = now
    return row


def _view(row: ApiKey) -> KeyView:
    return KeyView(row.id, row.name, row.prefix, row.scope, row.created_at, row.revoked_at, row.last_used_at)
