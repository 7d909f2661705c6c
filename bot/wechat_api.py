"""A small async client for the few WeCom / OA endpoints on the hot path.

wechatpy's clients are synchronous (requests); sending from the event loop wants
aiohttp. The access token is shared by every instance through `SharedState` and
refreshed under a lock, so an expired token (40014/42001) causes one refresh, not a storm.
Each instance also holds it in memory for up to TOKEN_HELD_S, so a call does not read the
shared state first: a token another instance refreshed in the meantime is seen within that
time, or at once when WeChat rejects the held one.

When the shared state cannot be read (Redis restarting), a call uses the token this process
holds while it is certainly still valid; without one the call is not made at all (`NotSent`).

The exception tree:

    ApiError                 WeChat answered with an errcode, or did not answer usably
    ├── RetryableApiError    45009 (slow down), -1 (busy), 5xx, timeouts: try again later
    │   └── NotSent          the request never left: no token (shared state down), connection refused
    └── (ApiError itself)    anything else: permanent, recorded with the reason

`download()` GETs a file (media/get) with the same token handling and errors; a file larger than
the caller's limit is `crm_store.media_store.MediaTooLarge`, raised before the rest is read.
`upload()` POSTs one (media/upload) as multipart form data, again with the same handling.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import aiohttp

from core.content import MediaKind
from core.faults import FAULTS, fault_component
from core.shared_state import LockNotAcquired, SharedState
from crm_store.media_store import MediaTooLarge

log = logging.getLogger("scrm.api")

TOKEN_INVALID = {40001, 40014, 42001}
RATE_LIMITED = 45009
RETRYABLE = {-1, RATE_LIMITED, 45033}
TOKEN_MARGIN_S = 300
TOKEN_HELD_S = 60.0  # how long a process uses its copy of the shared token before reading it again
NOT_CONNECTED, NO_TOKEN = -4, -5  # our codes for a request that never left
# HTTP 503 "currently unable to handle the request" (RFC 9110 §15.6.4): not taken, so not carried out.
# 500, 502 and 504 say something failed behind the gateway, perhaps after the call took effect: unknown.
UNAVAILABLE = -503
REDIS_RETRY_S = 5.0  # while the shared state is down, how often a held token's holder looks again
NOT_A_FILE = -6  # our code for a download answered with JSON that is neither an error nor a link
DOWNLOAD_CHUNK = 64 * 1024
JSON_ANSWER_MAX = 64 * 1024  # an error or a video_url answer is a few hundred bytes
_FILENAME_STAR = re.compile(r"filename\*\s*=\s*(?:utf-8)?'[^']*'([^;]+)", re.IGNORECASE)  # RFC 6266 / 5987
_FILENAME = re.compile(r'filename\s*=\s*"([^"]*)"|filename\s*=\s*([^;]+)', re.IGNORECASE)

# Called once, just before a request leaves: after it, the outcome may be unknown.
Leaving = Callable[[], Awaitable[None]]


class ApiError(Exception):
    retryable = False

    def __init__(self, errcode: int, errmsg: str, path: str = "") -> None:
        super().__init__(f"{path}: errcode {errcode}: {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg

    @property
    def refused(self) -> bool:
        """WeChat answered with an errcode, so the call certainly had no effect.

        So did an HTTP 503 (the service would not take the request). Transport failures, timeouts
        and other HTTP errors (our negative codes below -1) leave the outcome unknown: the request
        may have been carried out before the answer was lost.
        """
        return self.errcode >= -1 or self.errcode == UNAVAILABLE


class RetryableApiError(ApiError):
    retryable = True


class NotSent(RetryableApiError):
    """The request never left this process, so it certainly had no effect: try again later."""

    def __init__(self, errcode: int, errmsg: str, path: str = "", component: str = "") -> None:
        super().__init__(errcode, errmsg, path)
        self.component = component  # "redis" when our shared state was the cause

    @property
    def refused(self) -> bool:
        return True


@dataclass(frozen=True)
class Credential:
    """What buys an access token: WeCom corp id + app secret, or OA appid + secret."""

    name: str
    base_url: str
    token_path: str
    token_params: tuple[tuple[str, str], ...]


def wecom_credential(name: str, base_url: str, corp_id: str, secret: str) -> Credential:
    return Credential(name, base_url, "gettoken", (("corpid", corp_id), ("corpsecret", secret)))


def oa_credential(base_url: str, app_id: str, secret: str) -> Credential:
    return Credential(
        "oa", base_url, "token", (("grant_type", "client_credential"), ("appid", app_id), ("secret", secret))
    )


class WeChatApi:
    """Calls one credential's endpoints: `await api.post("kf/send_msg", {...})`."""

    def __init__(
        self, http: aiohttp.ClientSession, state: SharedState, credential: Credential, timeout_s: float = 5.0
    ) -> None:
        self.http = http
        self.state = state
        self.credential = credential
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        # A download may take longer than a call in all, but no single read may stall longer.
        self.download_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
        self.token_fetches = 0
        # This process's copy of the token: until when it is used without reading the shared state,
        # and until when it is certainly valid (used instead of the shared state when that is down).
        self._held: tuple[str, float, float] = ("", 0.0, 0.0)

    @property
    def _token_key(self) -> str:
        return f"token:{self.credential.name}"

    async def post(self, path: str, body: dict[str, Any], leaving: Leaving | None = None) -> dict[str, Any]:
        """POST `body`; `leaving` is awaited once, when the token is in hand and the request is about to leave."""
        return await self._call("POST", path, body, {}, leaving)

    async def get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        return await self._call("GET", path, None, params, None)

    async def upload(self, path: str, params: dict[str, str], data: bytes, filename: str,
                     content_type: str) -> dict[str, Any]:
        """POST a file as the multipart field "media" (`media/upload`), with post()'s token handling and errors.

        The form is built anew for each attempt: aiohttp sends a FormData once. The file name goes as UTF-8,
        as browsers send it (percent-encoded, WeChat would show the escapes)."""
        def form() -> aiohttp.FormData:
            built = aiohttp.FormData(quote_fields=False)
            built.add_field("media", data, filename=filename, content_type=content_type or "application/octet-stream")
            return built

        return await self._call("POST", path, None, params, None, form)

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None, params: dict[str, str], leaving: Leaving | None,
        form: Callable[[], aiohttp.FormData] | None = None,
    ) -> dict[str, Any]:
        token = await self.access_token()
        if leaving is not None:
            await leaving()
        try:
            return await self._request(method, path, body, {**params, "access_token": token}, form)
        except ApiError as exc:
            if exc.errcode not in TOKEN_INVALID:
                raise
            log.info("api.token.rejected name=%s errcode=%s", self.credential.name, exc.errcode)
            token = await self.access_token(stale=token)
            return await self._request(method, path, body, {**params, "access_token": token}, form)

    async def access_token(self, stale: str | None = None) -> str:
        """The shared token; with `stale`, a fresh one unless another instance already refreshed it.

        NotSent when the shared state cannot be reached and this process holds no token that is
        still valid: fetching one of our own would take the lock's place and, on the OA, cut short
        the token every other instance is using."""
        held, reread_at, valid_until = self._held
        now = time.monotonic()
        if held and held != stale and now < reread_at:
            return held
        try:
            return await self._shared_token(stale)
        except LockNotAcquired as exc:
            raise NotSent(NO_TOKEN, "no access token: another instance is still refreshing it",
                          self.credential.token_path) from exc
        except Exception as exc:
            if fault_component(exc) != "redis":
                raise
            if held and held != stale and now < valid_until:
                FAULTS.seen("redis", f"api.token.{self.credential.name}", exc,
                            retry="with this process's token while it is valid")
                self._held = (held, now + REDIS_RETRY_S, valid_until)
                return held
            raise NotSent(NO_TOKEN, f"no access token: shared state unavailable ({type(exc).__name__})",
                          self.credential.token_path, "redis") from exc

    async def _shared_token(self, stale: str | None) -> str:
        cached = await self.state.get(self._token_key)
        if cached and cached != stale:
            return self._hold(cached, TOKEN_MARGIN_S)  # a shared token is valid for its ttl plus the margin
        async with self.state.lock(self._token_key, ttl_s=15, wait_s=15):
            cached = await self.state.get(self._token_key)
            if cached and cached != stale:
                return self._hold(cached, TOKEN_MARGIN_S)
            data = await self._request(
                "GET", self.credential.token_path, None, dict(self.credential.token_params)
            )
            token = str(data["access_token"])
            expires_in = int(data.get("expires_in", 7200))
            ttl = max(60, expires_in - TOKEN_MARGIN_S)
            await self.state.set(self._token_key, token, ttl_s=ttl)
            self.token_fetches += 1
            log.info("api.token.refreshed name=%s ttl_s=%s", self.credential.name, ttl)
            return self._hold(token, max(60, expires_in - 60))

    def _hold(self, token: str, valid_s: float) -> str:
        now = time.monotonic()
        self._held = (token, now + min(TOKEN_HELD_S, valid_s), now + valid_s)
        return token

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None, params: dict[str, str],
        form: Callable[[], aiohttp.FormData] | None = None,
    ) -> dict[str, Any]:
        url = f"{self.credential.base_url.rstrip('/')}/{path}"
        payload: bytes | aiohttp.FormData | None = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json; charset=utf-8"} if payload is not None else None
        if form is not None:  # a file: as long as its bytes take, with no single read stalled (as a download)
            payload, headers = form(), None
        timeout = self.timeout if form is None else self.download_timeout
        try:
            async with self.http.request(
                method, url, params=params, data=payload, headers=headers, timeout=timeout
            ) as response:
                if response.status >= 500:
                    raise RetryableApiError(-response.status, f"HTTP {response.status}", path)
                if response.status != 200:
                    raise ApiError(-response.status, f"HTTP {response.status}", path)
                data = await response.json(content_type=None)
        except aiohttp.ClientConnectorError as exc:  # no connection was made: nothing was sent
            raise NotSent(NOT_CONNECTED, f"{type(exc).__name__}: {exc}", path) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise RetryableApiError(-2, f"{type(exc).__name__}: {exc}", path) from None
        except ValueError:
            raise RetryableApiError(-3, "answer is not JSON", path) from None
        _raise_errcode(data, path)
        return data

    @asynccontextmanager
    async def download(self, path: str, params: dict[str, str], max_bytes: int = 0,
                       kind: MediaKind = "file") -> AsyncIterator[Downloaded]:
        """GET a file: `async with api.download("media/get", {"media_id": m}, limit, "image") as got: ...`.

        WeChat answers a download with the file, or with JSON (told apart by the Content-Type, an
        attachment being a file whatever its type): an errcode is raised as post() raises it (a rejected
        token is refreshed once), a `video_url` (the OA's answer for a video) is followed. The file is
        streamed while the block runs and released after it; past `max_bytes` (0: no limit) it is
        MediaTooLarge, at once from its Content-Length, else as soon as the bytes read pass the limit."""
        token = await self.access_token()
        try:
            response = await self._open_download(path, {**params, "access_token": token})
        except ApiError as exc:
            if exc.errcode not in TOKEN_INVALID:
                raise
            log.info("api.token.rejected name=%s errcode=%s", self.credential.name, exc.errcode)
            token = await self.access_token(stale=token)
            response = await self._open_download(path, {**params, "access_token": token})
        try:
            declared = response.content_length
            if max_bytes and declared is not None and declared > max_bytes:
                log.info("api.download.too_large path=%s kind=%s declared=%s limit=%s", path, kind, declared, max_bytes)
                raise MediaTooLarge(kind, max_bytes, 0)
            yield Downloaded(_file_chunks(response, path, max_bytes, kind), response.headers.get("Content-Type", ""),
                             disposition_filename(response.headers.get("Content-Disposition", "")), declared)
        finally:
            response.release()

    async def _open_download(self, path: str, params: dict[str, str], link: str = "") -> aiohttp.ClientResponse:
        """The response that carries the file, once its status and kind are checked; `link`: a video_url
        being followed (a plain link: no token, and not followed further)."""
        url = link or f"{self.credential.base_url.rstrip('/')}/{path}"
        try:
            response = await self.http.get(url, params=params, timeout=self.download_timeout)
        except aiohttp.ClientConnectorError as exc:
            raise NotSent(NOT_CONNECTED, f"{type(exc).__name__}: {exc}", path) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise RetryableApiError(-2, f"{type(exc).__name__}: {exc}", path) from None
        try:
            if response.status >= 500:
                raise RetryableApiError(-response.status, f"HTTP {response.status}", path)
            if response.status != 200:
                raise ApiError(-response.status, f"HTTP {response.status}", path)
            if not _is_json_answer(response.headers):
                return response
            data = await _json_answer(response, path)
        except BaseException:
            response.release()
            raise
        response.release()
        _raise_errcode(data, path)
        video_url = str(data.get("video_url") or "")
        if video_url and not link:
            return await self._open_download(path, {}, video_url)
        raise ApiError(NOT_A_FILE, f"answered JSON, not a file: {sorted(data)[:5]}", path)


@dataclass(frozen=True)
class Downloaded:
    """A file WeChat answered with: its chunks (read once, never past the caller's limit), type and name."""

    stream: AsyncIterator[bytes]
    content_type: str
    filename: str  # from Content-disposition, as sent: data only, never a path
    size: int | None  # the Content-Length, when the server gave one

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.stream])


def _raise_errcode(data: dict[str, Any], path: str) -> None:
    errcode = int(data.get("errcode", 0) or 0)
    if errcode:
        error = RetryableApiError if errcode in RETRYABLE else ApiError
        raise error(errcode, str(data.get("errmsg", "")), path)


def _is_json_answer(headers: Mapping[str, str]) -> bool:
    """WeChat's JSON (an error, or the OA's video_url), not a file: a file comes as an attachment, and an
    answer without one is JSON when typed so (the OA sends its errors as text/plain)."""
    if "attachment" in headers.get("Content-Disposition", "").lower():
        return False
    mime = headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    return mime in ("application/json", "text/json", "text/plain")


async def _json_answer(response: aiohttp.ClientResponse, path: str) -> dict[str, Any]:
    body = bytearray()
    try:
        async for chunk in response.content.iter_chunked(DOWNLOAD_CHUNK):
            body += chunk
            if len(body) > JSON_ANSWER_MAX:
                raise RetryableApiError(-3, "answer is not a file and too long for JSON", path)
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise RetryableApiError(-2, f"{type(exc).__name__}: {exc}", path) from None
    try:
        data = json.loads(bytes(body))
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise RetryableApiError(-3, "answer is neither a file nor JSON", path)
    return data


async def _file_chunks(response: aiohttp.ClientResponse, path: str, max_bytes: int,
                       kind: MediaKind) -> AsyncIterator[bytes]:
    """The body as it arrives; MediaTooLarge as soon as it passes `max_bytes` (the rest is never read)."""
    received = 0
    try:
        async for chunk in response.content.iter_chunked(DOWNLOAD_CHUNK):
            received += len(chunk)
            if max_bytes and received > max_bytes:
                log.info("api.download.too_large path=%s kind=%s read=%s limit=%s", path, kind, received, max_bytes)
                raise MediaTooLarge(kind, max_bytes, received)
            yield chunk
    except (TimeoutError, aiohttp.ClientError) as exc:  # a stalled or cut-off body: try again later
        raise RetryableApiError(-2, f"{type(exc).__name__}: {exc}", path) from None


def disposition_filename(value: str) -> str:
    """The file name a Content-Disposition header gives (its UTF-8 `filename*` form first), "" for none."""
    star = _FILENAME_STAR.search(value)
    if star:
        return unquote(star[1].strip().strip('"'))
    plain = _FILENAME.search(value)
    return (plain[1] if plain[1] is not None else plain[2].strip()) if plain else ""
