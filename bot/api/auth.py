"""Who is calling and what they may do: `Authorization: Bearer <key>`, scopes, and a rate limit per key.

A missing, unknown or revoked key is a 401; a read key on a write route (any method but
GET/HEAD/OPTIONS) is a 403; more than `ApiLimits.requests` requests in a window of
`ApiLimits.window_s` seconds is a 429 with Retry-After. The counter lives in shared state
(Redis with several instances), one key per API key and window: every instance counts the same.

A key found live is trusted for `ApiLimits.key_trusted_s` (10 s) before the store is asked
again, so a busy caller costs no query per request. The bound that buys: a key revoked by
`scrm apikeys revoke` (another process) is refused by every instance within 10 s; one revoked
in this process is refused at once. An unknown or revoked key is never remembered: a new
key works at once, and every refusal is the store's answer.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from aiohttp import web

from bot.api.errors import ApiError, Handler
from bot.runtime import RUNTIME, Runtime
from core.faults import FAULTS, fault_component
from crm_store.api_keys import KEY_TRUSTED_FOR, authenticate, digest, revocations_here
from crm_store.lifecycle import Lifecycle
from flows.assembly import Domain

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC_PATHS = frozenset({"/api/v1/openapi.json"})


@dataclass
class ApiLimits:
    """Mutable so an operator (or a test) can tighten them on a running app."""

    requests: int = 120
    window_s: int = 60
    max_body_bytes: int = 64 * 1024
    key_trusted_s: float = KEY_TRUSTED_FOR.total_seconds()  # 0: ask the store on every request


@dataclass(frozen=True)
class Principal:
    key_id: int
    name: str  # the caller, e.g. "shop": orders are unique per (name, order id)
    scope: str


@dataclass
class LiveKeys:
    """Keys the store said were live, by SHA-256, with when it said so (monotonic seconds)."""

    seen: dict[str, tuple[Principal, float]] = field(default_factory=dict)
    revocations: int = 0  # this process's revocations when `seen` was last trusted

    def get(self, key_sha256: str, trusted_s: float) -> Principal | None:
        if self.revocations != revocations_here():  # a key was revoked here: forget every key at once
            self.seen.clear()
            self.revocations = revocations_here()
        found = self.seen.get(key_sha256)
        if found is None or time.monotonic() - found[1] >= trusted_s:
            return None
        return found[0]

    def remember(self, key_sha256: str, caller: Principal) -> None:
        self.seen[key_sha256] = (caller, time.monotonic())


@dataclass
class ApiContext:
    """What the handlers use: the runtime and its assembled domain (the same pipeline as the worker's)."""

    runtime: Runtime
    domain: Domain
    limits: ApiLimits
    live_keys: LiveKeys = field(default_factory=LiveKeys)

    @property
    def lifecycle(self) -> Lifecycle:
        return self.domain.lifecycle

    @property
    def zone(self) -> ZoneInfo:
        return self.domain.nurture.zone


API_LIMITS = web.AppKey("api_limits", ApiLimits)
PRINCIPAL = web.RequestKey("api_principal", Principal)
_CONTEXTS = web.AppKey("api_contexts", dict)


def context(request: web.Request) -> ApiContext:
    """The API's context for the running app, made on first use (the runtime opens after the routes are set)."""
    cache: dict[int, ApiContext] = request.app[_CONTEXTS]
    runtime = request.config_dict[RUNTIME]
    made = cache.get(id(runtime))
    if made is None or made.runtime is not runtime:
        if runtime.domain is None:
            raise ApiError(503, "unavailable", "the API needs the assembled flows (this bot runs a custom pipeline)")
        made = cache[id(runtime)] = ApiContext(runtime, runtime.domain, request.app[API_LIMITS])
    return made


def install(api: web.Application, limits: ApiLimits) -> None:
    api[API_LIMITS] = limits
    api[_CONTEXTS] = {}


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]  # the auth middleware runs before every non-public route


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    ctx = context(request)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    challenge = {"WWW-Authenticate": 'Bearer realm="scrm"'}
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthorized", "missing API key: send Authorization: Bearer <key>", None, challenge)
    caller = await _caller(ctx, token)
    if caller is None:
        raise ApiError(401, "unauthorized", "unknown or revoked API key", None, challenge)
    await _rate_limit(ctx, caller)
    if request.method not in READ_METHODS and caller.scope != "write":
        raise ApiError(403, "forbidden", f"the key {caller.name!r} is read-only; this route needs a write key")
    request[PRINCIPAL] = caller
    return await handler(request)


async def _caller(ctx: ApiContext, token: str) -> Principal | None:
    """The key's caller: remembered for a while once the store has said the key is live."""
    key_sha256 = digest(token)
    caller = ctx.live_keys.get(key_sha256, ctx.limits.key_trusted_s)
    if caller is not None:
        return caller
    async with ctx.runtime.sessions.begin() as session:
        key = await authenticate(session, token)
        caller = None if key is None else Principal(key.id, key.name, key.scope)
    if caller is not None:
        ctx.live_keys.remember(key_sha256, caller)
    return caller


async def _rate_limit(ctx: ApiContext, caller: Principal) -> None:
    limits = ctx.limits
    now = time.time()
    window = int(now // limits.window_s)
    try:
        count = await ctx.runtime.state.incr(f"api:rate:{caller.key_id}:{window}", limits.window_s + 1)
    except Exception as exc:
        if fault_component(exc) != "redis":
            raise
        FAULTS.seen("redis", "api.rate_limit", exc, retry="requests are not counted until Redis answers")
        return  # open, not shut: a Redis restart must not take the API down with it
    if count > limits.requests:
        retry = max(1, math.ceil((window + 1) * limits.window_s - now))
        raise ApiError(429, "rate_limited", f"more than {limits.requests} requests in {limits.window_s} s",
                       {"limit": limits.requests, "window_s": limits.window_s, "retry_after_s": retry},
                       {"Retry-After": str(retry)})
