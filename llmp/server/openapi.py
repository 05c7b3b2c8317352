"""GET /openapi.json: an OpenAPI 3.1 document built from the app's router and the request
models of llmp.protocol.

Every route the router holds is listed (HEAD routes aside), so an endpoint added later
appears without more work: its auth comes from `@requires(...)` (the handler's `permission`),
its request schema from the model registered for it with `llmp.protocol.endpoints.endpoint`,
its path parameters from the route, and its error responses from what the middleware and the
auth layer answer, all in the spec's error format.
"""
from __future__ import annotations

import importlib
import pkgutil
import re
from typing import Any

from aiohttp import web
from pydantic.json_schema import models_json_schema

import llmp.protocol
from llmp import __version__
from llmp.protocol.endpoints import Endpoint, endpoints_of


def _import_protocol() -> None:
    """Import every module of llmp.protocol, so each model's `@endpoint` has registered."""
    for mod in pkgutil.iter_modules(llmp.protocol.__path__):
        importlib.import_module(f"llmp.protocol.{mod.name}")

OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{model}"
_PARAM = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Every error, in the spec's format (OpenAI's, plus the request id).",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string", "examples": ["invalid_request_error"]},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
            "additionalProperties": False,
        },
        "request_id": {"type": "string"},
    },
    "additionalProperties": False,
}

_ERRORS = {
    400: "Invalid request (a body, parameter or value the API does not accept)",
    401: "Missing, invalid, expired or revoked API key",
    403: "The API key lacks the permission this endpoint needs",
    404: "No such resource (or one the key may not see)",
    405: "Method not allowed",
    413: "Request body over the server's `max_request_bytes`",
    429: "Rate limit (requests or tokens per minute) or monthly quota reached",
    503: "Server shutting down, model loading or queue full; retry later",
}

#: routes outside /v1 that are public, with what they answer
_PUBLIC = {
    "/health": ("Liveness and models (503 while a model loads or the server stops)",
                {"200": {"description": "Serving", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Health"}}}},
                 "503": {"description": "Loading or stopping", "content": {"application/json": {
                     "schema": {"$ref": "#/components/schemas/Health"}}}}}),
    "/metrics": ("Prometheus metrics",
                 {"200": {"description": "Metrics in Prometheus' text format",
                          "content": {"text/plain": {"schema": {"type": "string"}}}}}),
    "/openapi.json": ("This document",
                      {"200": {"description": "The OpenAPI 3.1 description of this server",
                               "content": {"application/json": {"schema": {"type": "object"}}}}}),
}

HEALTH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["status"],
    "properties": {"status": {"type": "string", "enum": ["ok", "loading", "stopping"]},
                   "version": {"type": "string"}, "uptime_s": {"type": "number"},
                   "loading": {}, "models": {"type": "array"}},
}


def _error_response(status: int) -> dict:
    return {"description": _ERRORS[status], "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}


def _operation_id(handler: Any, method: str, seen: set[str]) -> str:
    module = getattr(handler, "__module__", "") or ""
    base = f"{module.rsplit('.', 1)[-1]}_{getattr(handler, '__name__', 'handler')}"
    op = base if base not in seen else f"{base}_{method.lower()}"
    n = 2
    while op in seen:
        op, n = f"{base}_{n}", n + 1
    seen.add(op)
    return op


def build(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `app`'s routes."""
    _import_protocol()
    routes: list[tuple[str, str, Any]] = []
    for route in app.router.routes():
        if route.method in ("HEAD", "*") or route.resource is None:
            continue
        routes.append((route.method, route.resource.canonical, route.handler))

    models = {e.model for method, path, _ in routes for e in endpoints_of(method, path)}
    keyed = sorted(models, key=lambda m: (m.__module__, m.__qualname__))
    refs, defs = models_json_schema([(m, "validation") for m in keyed], ref_template=REF)
    components: dict[str, Any] = dict(defs.get("$defs", {}))
    components["ErrorResponse"] = ERROR_SCHEMA
    components["Health"] = HEALTH_SCHEMA

    def schema_of(model: type) -> dict:
        return refs[(model, "validation")]

    def component(model: type) -> dict:
        name = schema_of(model)["$ref"].rsplit("/", 1)[-1]
        return components[name]

    paths: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for method, path, handler in routes:
        op: dict[str, Any] = {"operationId": _operation_id(handler, method, seen)}
        module = (getattr(handler, "__module__", "") or "").rsplit(".", 1)[-1]
        if module:
            op["tags"] = [module]
        entries = endpoints_of(method, path)
        summary = next((e.summary for e in entries if e.summary), None)
        doc = (getattr(handler, "__doc__", None) or "").strip()
        if summary or doc:
            op["summary"] = summary or doc.splitlines()[0]
        if doc:
            op["description"] = doc
        params = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in _PARAM.findall(path)]
        body: Endpoint | None = None
        for e in entries:
            if e.where == "query":
                comp = component(e.model)
                required = set(comp.get("required", []))
                for name, prop in comp.get("properties", {}).items():
                    params.append({"name": name, "in": "query", "required": name in required,
                                   "schema": prop})
            else:
                body = e
        if params:
            op["parameters"] = params
        if body is not None:
            if body.where == "form":
                comp = component(body.model)
                props = dict(comp.get("properties", {}))
                props.update({f: {"type": "string", "format": "binary"} for f in body.files})
                form = {"type": "object", "properties": props,
                        "required": list(comp.get("required", [])) + list(body.files)}
                op["requestBody"] = {"required": True,
                                     "content": {"multipart/form-data": {"schema": form}}}
            else:
                op["requestBody"] = {"required": True, "content": {
                    "application/json": {"schema": schema_of(body.model)}}}

        permission = getattr(handler, "permission", None)
        public = path in _PUBLIC
        if public:
            op["summary"] = op.get("summary") or _PUBLIC[path][0]
            op["security"] = []
            op["responses"] = dict(_PUBLIC[path][1])
        else:
            ok: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
            if body is not None and body.streams:
                ok["text/event-stream"] = {"schema": {
                    "type": "object", "description": "Server-sent events (with \"stream\": "
                    "true): each `data` is a JSON chunk, the last one `[DONE]`",
                    "properties": {"data": {"type": "string"}}}}
            if path.endswith("/content"):
                ok = {"application/octet-stream": {"schema": {"type": "string",
                                                              "format": "binary"}}}
            op["responses"] = {"200": {"description": "Success", "content": ok}}
            statuses = [400, 404, 405, 503]
            if permission is not None:
                op["security"] = [{"bearerAuth": []}]
                op["x-permission"] = permission
                statuses += [401, 403, 429]
            else:
                op["security"] = []
            if body is not None:
                statuses.append(413)
            for status in sorted(statuses):
                op["responses"][str(status)] = _error_response(status)
        paths.setdefault(path, {})[method.lower()] = op

    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "llmp", "version": __version__,
                 "description": "Local LLM serving platform: an OpenAI-style /v1 API over "
                                "llama.cpp with keys, limits, usage, files and batches. Every "
                                "error answers in the ErrorResponse format."},
        "servers": [{"url": "/"}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": components,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "An llmp API key (sk-...)"}},
        },
        "security": [{"bearerAuth": []}],
    }
