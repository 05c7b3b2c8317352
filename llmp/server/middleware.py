"""Request ids, the one error renderer, request metrics and the response headers.

Every response carries `x-request-id` (the client's own `x-request-id` is kept when it looks
sane, else `req_` + base62); every error is rendered once, here, as
`{"error": {"message", "type", "param", "code"}, "request_id"}`; an authenticated response
also carries the key's `X-RateLimit-*` headers (added just before the headers go out, so
streaming responses get them too).
"""
from __future__ import annotations

import asyncio
import logging
import re
import time

from aiohttp import web

from llmp.errors import (
    InvalidRequestError,
    LlmpError,
    NotFoundError,
    PayloadTooLargeError,
    ServerError,
    ServiceUnavailableError,
)
from llmp.ids import new_id
from llmp.logs import event
from llmp.protocol.base import loads
from llmp.server.state import (
    API_KEY,
    IN_FLIGHT,
    LIMITER,
    LOG_FIELDS,
    METRICS,
    REQUEST_ID,
    SETTINGS,
    SHUTDOWN,
)

log = logging.getLogger("llmp.server")
access_log = logging.getLogger("llmp.access")

#: paths polled by monitors: their access lines are logged at DEBUG
QUIET_PATHS = ("/health", "/metrics")


def log_access(request: web.Request, status: int, seconds: float) -> None:
    """The request's one access line: request id, key id (never a secret), method, path,
    status, latency, and what the handler added (model, prompt/completion tokens)."""
    path = request.rel_url.raw_path  # percent-encoded: no control characters reach the log
    level = logging.DEBUG if path in QUIET_PATHS and status < 400 else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    key = request.get(API_KEY)
    ms = round(seconds * 1000, 1)
    event(access_log, "access", f"{request.method} {path} {status} {ms:g}ms", level,
          json_fields={"method": request.method, "path": path, "status": status,
                       "latency_ms": ms},
          request_id=request.get(REQUEST_ID), key_id=key["id"] if key else None,
          **request.get(LOG_FIELDS, {}))

_CLIENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def error_response(err: LlmpError, request_id: str) -> web.Response:
    body = {"error": err.to_dict(), "request_id": request_id}
    return web.json_response(body, status=err.status, headers=err.headers)


def _from_http(exc: web.HTTPException, request: web.Request) -> LlmpError:
    if exc.status == 404:
        return NotFoundError(f"Unknown URL: {request.method} {request.path}", code="unknown_url")
    if exc.status == 405:
        err = InvalidRequestError(f"Method {request.method} is not allowed on {request.path}",
                                  code="method_not_allowed")
        err.status = 405
        allow = exc.headers.get("Allow")
        if allow:
            err.headers["Allow"] = allow
        return err
    if exc.status == 413:
        return too_large(request)
    err = InvalidRequestError(exc.reason or exc.text or "Bad request", code="http_error")
    err.status = exc.status
    return err


#: HTTP status recorded for a request whose client went away (nginx's convention)
CLIENT_CLOSED = 499


@web.middleware
async def request_context(request: web.Request, handler) -> web.StreamResponse:
    """Assign the request id; render every error; count the request. A client that went
    away is a 499 (metrics, logs), never an error with a traceback."""
    client_id = request.headers.get("x-request-id", "")
    rid = client_id if _CLIENT_ID.match(client_id) else new_id("req")
    request[REQUEST_ID] = rid
    t0 = time.perf_counter()
    shutdown = request.app[SHUTDOWN]
    in_flight = request.app[IN_FLIGHT]
    in_flight[id(request)] = request
    status: int | None = None
    resp: web.StreamResponse | None = None
    try:
        if shutdown.draining and request.path not in ("/health", "/metrics"):
            raise ServiceUnavailableError("The server is shutting down; retry in a moment",
                                          code="server_shutting_down",
                                          headers={"Retry-After": "5", "Connection": "close"})
        resp = await handler(request)
    except LlmpError as e:
        resp = error_response(e, rid)
    except web.HTTPException as e:
        if e.status < 400:  # redirects and the like pass through
            raise
        resp = error_response(_from_http(e, request), rid)
    except (ConnectionError, asyncio.CancelledError) as e:
        status = CLIENT_CLOSED
        if isinstance(e, asyncio.CancelledError):
            raise
        resp = web.Response(status=CLIENT_CLOSED)  # not sent: the connection is gone
    except Exception:
        log.exception("unhandled error in %s %s (%s)", request.method, request.path, rid)
        resp = error_response(ServerError("The server had an error while processing your "
                                          "request; the request id identifies it in the server "
                                          "log", code="internal_error"), rid)
    finally:
        del in_flight[id(request)]
        if not in_flight:
            shutdown.idle.set()
        if status is None and resp is not None:
            status = resp.status
        if status is not None:
            route = request.match_info.route.resource
            request.app[METRICS].count_request(
                request.method, route.canonical if route is not None else "(unmatched)", status)
            log_access(request, status, time.perf_counter() - t0)
    assert resp is not None
    return resp


async def end_partial_bodies(app: web.Application) -> None:
    """On shutdown (before in-flight handlers get their grace period): a request whose body is
    still arriving has not started its work, so it ends now with a 503 instead of holding the
    shutdown for a slow or stalled client (an upload cut this way leaves no file behind)."""
    for request in list(app[IN_FLIGHT].values()):
        if not request.content.is_eof():
            # close the connection after the 503 instead of reading the rest of the body
            # (aiohttp's lingering read would meet the exception set below and log it)
            if hasattr(request.protocol, "_lingering_time"):
                request.protocol._lingering_time = 0.0
            request.content.set_exception(ServiceUnavailableError(
                "The server is shutting down; retry in a moment", code="server_shutting_down"))


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Headers every response gets: the request id and, when a key was authenticated, its
    rate-limit state."""
    response.headers["x-request-id"] = request.get(REQUEST_ID) or new_id("req")
    key = request.get(API_KEY)
    if key is not None:
        for name, value in request.app[LIMITER].state(key).headers().items():
            response.headers.setdefault(name, value)


def too_large(request: web.Request) -> PayloadTooLargeError:
    limit = request.app[SETTINGS].max_request_bytes
    return PayloadTooLargeError(
        f"The request body is larger than the {limit:,}-byte limit (max_request_bytes)",
        code="request_too_large")


async def read_json(request: web.Request) -> dict:
    """The request body as a JSON object; a clear invalid_request_error otherwise (413
    request_too_large over `max_request_bytes`, refused before reading when the
    Content-Length says so)."""
    length = request.content_length
    if length is not None and length > request.app[SETTINGS].max_request_bytes:
        raise too_large(request)
    body = loads(await request.read())
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object", code="invalid_json")
    return body


def int_param(request: web.Request, name: str, default: int) -> int:
    """The query parameter `name` as an integer (`default` when absent); a clear
    invalid_request_error when it is not one."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequestError(f"Invalid '{name}': expected an integer", param=name,
                                  code="invalid_parameter") from None
