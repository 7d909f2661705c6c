"""The OpenAPI 3.1 document of /api/v1, built from the same pydantic models that check requests.

Served without a key at GET /api/v1/openapi.json. Each operation names its query model, body
model and result model; the schemas come from `model_json_schema()` (validation mode for
what callers send, serialization mode for what they get), so the document cannot drift
from what the handlers accept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from bot.api import routes_catalog as catalog
from bot.api import routes_customers as customers
from bot.api import routes_events as events
from bot.api import routes_orders as orders
from bot.api.errors import CODES, dumps

REF = "#/components/schemas/{model}"


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    error: ErrorDetail


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    result: type[BaseModel]
    status: int = 200
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    path_params: tuple[tuple[str, str], ...] = ()  # (name, "integer" | "string")


CUSTOMER = (("customer_id", "integer"),)
OPERATIONS = (
    Operation("get", "/customers", "Find customers (filter by stage, tags, text; paginated)", customers.CustomerPage,
              query=customers.CustomerQuery, errors=(422,)),
    Operation("get", "/customers/{customer_id}", "One customer with stage history and timeline",
              customers.CustomerDetail, query=customers.CardQuery, errors=(404, 422), path_params=CUSTOMER),
    Operation("post", "/customers/{customer_id}/tags", "Add and remove tags", customers.TagResult,
              body=customers.TagChange, errors=(404,), path_params=CUSTOMER),
    Operation("put", "/customers/{customer_id}/stage", "Move the customer to a stage", customers.StageResult,
              body=customers.StageChangeIn, errors=(404, 409), path_params=CUSTOMER),
    Operation("post", "/orders", "Record a paid order (idempotent by order_id: a replay answers 200)",
              orders.OrderResult, status=201, body=orders.OrderIn, errors=(404, 409)),
    Operation("get", "/campaigns", "Group-buy campaigns with their figures", catalog.CampaignPage,
              query=catalog.CampaignQuery, errors=(422,)),
    Operation("get", "/sequences", "Published nurture sequences", catalog.SequencePage, query=catalog.PageQuery,
              errors=(422,)),
    Operation("post", "/sequences/{name}/enrolments", "Enrol a customer in a sequence", catalog.EnrolmentOut,
              status=201, body=catalog.EnrolmentIn, errors=(404, 409), path_params=(("name", "string"),)),
    Operation("post", "/events", "Report an external event (idempotent by event_id): flows with an external: "
              "trigger run on it", events.EventAccepted, status=202, body=events.EventIn, errors=(404,)),
)
WRITE_ERRORS = (400, 403, 413, 415, 422)


def build_document() -> dict[str, Any]:
    inputs = {model for op in OPERATIONS for model in (op.body, op.query) if model is not None}
    outputs = {op.result for op in OPERATIONS} | {ErrorBody}
    keys, schemas = models_json_schema(
        [(model, "validation") for model in inputs] + [(model, "serialization") for model in outputs],
        ref_template=REF,
    )
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, keys)
    paths["/openapi.json"] = {"get": {
        "operationId": "openapi", "summary": "This document", "security": [],
        "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {}}}}},
    }}
    return {
        "openapi": "3.1.0",
        "info": {"title": "SCRM integration API", "version": "1.0.0",
                 "description": "Every error is {\"error\": {\"code\", \"message\", \"details\"}}."},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {"schemas": schemas.get("$defs", {}),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def _operation(op: Operation, keys: dict[Any, Any]) -> dict[str, Any]:
    parameters = [{"name": name, "in": "path", "required": True,
                   "schema": {"type": kind, "minimum": 1} if kind == "integer" else {"type": kind, "maxLength": 64}}
                  for name, kind in op.path_params]
    if op.query is not None:
        schema = op.query.model_json_schema()
        required = set(schema.get("required", ()))
        parameters += [{"name": name, "in": "query", "required": name in required, "schema": prop}
                       for name, prop in schema.get("properties", {}).items()]
    errors = {401, 429, 503, *op.errors, *(WRITE_ERRORS if op.body is not None else ())}
    responses: dict[str, Any] = {str(op.status): {
        "description": "OK", "content": {"application/json": {"schema": keys[(op.result, "serialization")]}}}}
    if op.method == "post" and op.path == "/orders":
        responses["200"] = {"description": "The same order again: the first answer, unchanged",
                            "content": {"application/json": {"schema": keys[(op.result, "serialization")]}}}
    for status in sorted(errors):
        responses[str(status)] = {"description": CODES.get(status, "error"),
                                  "content": {"application/json": {"schema": keys[(ErrorBody, "serialization")]}}}
    operation: dict[str, Any] = {"operationId": f"{op.method}_{op.path.strip('/').replace('/', '_')}",
                                 "summary": op.summary, "parameters": parameters, "responses": responses}
    if op.body is not None:
        operation["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": keys[(op.body, "validation")]}}}
    return operation


DOCUMENT = dumps(build_document())


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(text=DOCUMENT, content_type="application/json")
