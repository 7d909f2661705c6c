"""One error shape for the whole API, and the reading of requests that produces it.

    ApiError (status, code, message, details)      raised by handlers, answered as JSON
    ├── 400 bad_json        the body is not JSON (or not UTF-8, or NaN/Infinity)
    ├── 401 unauthorized    no key, an unknown key or a revoked key
    ├── 403 forbidden       a read key on a write route
    ├── 404 not_found       no such route, customer, sequence
    ├── 409 conflict        an order id reused with another body, a stage move not allowed
    ├── 413 too_large       the body is over the limit
    ├── 415 unsupported_media_type
    ├── 422 invalid         the body or query does not match the schema (unknown fields included)
    ├── 429 rate_limited    too many requests for this key (Retry-After says when to come back)
    └── 503 unavailable     the store or Redis is restarting: nothing was changed, try again

Everything else is a 500 `internal`, logged with its traceback, never with details.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from core.faults import FAULTS, fault_component

log = logging.getLogger("scrm.api")

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_DEPTH = 32
CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
         409: "conflict", 413: "too_large", 415: "unsupported_media_type", 422: "invalid", 429: "rate_limited",
         503: "unavailable"}
RETRY_AFTER_S = 5


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: Any = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return error_response(self.status, self.code, self.message, self.details, self.headers)


def error_response(status: int, code: str, message: str, details: Any = None,
                   headers: Mapping[str, str] | None = None) -> web.Response:
    body = {"error": {"code": code, "message": message, "details": details}}
    return web.json_response(body, status=status, headers=headers, dumps=dumps)


def dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, default=str)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:  # the router's 404 and 405
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, CODES.get(exc.status, "error"), exc.reason, None, headers)
    except Exception as exc:
        component = fault_component(exc)
        if component is not None:  # the transaction did not commit: nothing half-written
            FAULTS.seen(component, "api", exc, retry="the client's")
            return error_response(503, "unavailable", f"{component} unavailable; nothing was changed, try again",
                                  None, {"Retry-After": str(RETRY_AFTER_S)})
        log.exception("api.request.failed %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error; it has been logged")


async def read_json(request: web.Request, model: type[M], limit: int) -> M:
    """The body as `model`: 415 when not JSON, 413 when over `limit`, 400 when malformed, 422 when invalid."""
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as Content-Type: application/json")
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "too_large", f"the body is over {limit} bytes", {"limit": limit})
    raw = bytearray()
    while chunk := await request.content.read(65536):
        raw += chunk
        if len(raw) > limit:
            raise ApiError(413, "too_large", f"the body is over {limit} bytes", {"limit": limit})
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ApiError(400, "bad_json", f"the body is not valid JSON: {exc}"[:300]) from None
    return validate(model, data)


def read_query(request: web.Request, model: type[M]) -> M:
    """The query string as `model`; a repeated parameter arrives as a list (and fails unless one is allowed)."""
    data: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        data[key] = values if len(values) > 1 else values[0]
    return validate(model, data)


def validate(model: type[M], data: Any) -> M:
    problem = _bad_text(data, "body", 0)
    if problem:
        raise ApiError(422, "invalid", problem)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = exc.errors(include_url=False, include_context=False, include_input=False)
        raise ApiError(422, "invalid", "the request does not match the schema", _plain(details)) from None


def path_id(request: web.Request, name: str) -> int:
    """A positive 64-bit id from the path; anything else is a 404 (no such thing), never a database error."""
    text = request.match_info.get(name, "")
    if not text.isdigit() or len(text) > 19 or not 0 < int(text) < 2**63:
        raise ApiError(404, "not_found", f"no such {name.removesuffix('_id')}: {text[:40]!r}")
    return int(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _bad_text(value: Any, where: str, depth: int) -> str:
    """Strings the store cannot hold (NUL, lone surrogates) and absurd nesting, said before validation."""
    if depth > MAX_DEPTH:
        return f"{where}: nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, str):
        if "\x00" in value:
            return f"{where}: text may not contain NUL characters"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{where}: text is not valid Unicode (unpaired surrogate)"
        return ""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        problem = _bad_text(key, where, depth + 1) if isinstance(key, str) else ""
        problem = problem or _bad_text(item, f"{where}.{key}", depth + 1)
        if problem:
            return problem[:300]
    return ""


def _plain(details: Any) -> Any:
    """Validation details with only JSON types (tuples of locations become lists)."""
    return json.loads(dumps(details))
