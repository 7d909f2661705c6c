"""The integration API under /api/v1: customers, orders, campaigns and sequences for the shop and the ERP.

    error middleware (one JSON error shape) → auth middleware (key, scope, rate limit) → route

`create_api()` returns the sub-application that bot/app.py mounts at /api/v1; it reads the
runtime of the main app (request.config_dict), so there is still one way to assemble the product.
Keys are made with `scrm apikeys create`.
"""

from __future__ import annotations

from aiohttp import web

from bot.api import routes_catalog, routes_customers, routes_events, routes_orders
from bot.api.auth import API_LIMITS, ApiLimits, auth_middleware, install
from bot.api.errors import error_middleware
from bot.api.openapi import openapi_json

PREFIX = "/api/v1"

__all__ = ["API_LIMITS", "PREFIX", "ApiLimits", "create_api"]


def create_api(limits: ApiLimits | None = None) -> web.Application:
    api = web.Application(middlewares=[error_middleware, auth_middleware])
    install(api, limits or ApiLimits())
    api.router.add_get("/openapi.json", openapi_json)
    routes_customers.add_routes(api)
    routes_orders.add_routes(api)
    routes_catalog.add_routes(api)
    routes_events.add_routes(api)
    return api
