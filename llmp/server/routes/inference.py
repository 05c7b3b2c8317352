"""POST /v1/completions and /v1/chat/completions, streaming (SSE) and not.

Per request: quota check, validation and prompt rendering (services.inference), a token
reservation against the key's tokens-per-minute (prompt + max_tokens, settled after), the
generation, then one usage row (failed and disconnected requests too) and the metrics.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from llmp.db import models as db_models
from llmp.errors import LlmpError, ServerError, ServiceUnavailableError
from llmp.server import sse
from llmp.server.auth import requires
from llmp.server.middleware import read_json
from llmp.server.state import (
    API_KEY,
    DB,
    EVENTS,
    LIMITER,
    LOG_FIELDS,
    METRICS,
    POOL,
    REQUEST_ID,
    SHUTDOWN,
)
from llmp.services import inference, moderation, usage
from llmp.services.limits import Admission
from llmp.services.models import model_version

log = logging.getLogger("llmp.server")

#: HTTP status recorded for a request whose client went away (nginx's convention).
CLIENT_CLOSED = 499

# what prepares a call: inference.Call here, EmbeddingCall and ModerationCall (routes of their
# own) alike: prepare(pool, body, request_id=..., priority=...) -> a call with run()
Prepare = Callable[..., Awaitable[Any]]


async def _stream(request: web.Request, call: inference.Call) -> web.StreamResponse:
    """Send the call's chunks as SSE. The first chunk is produced before the response starts,
    so admission errors (queue full, context length) still get their own status."""
    async with contextlib.aclosing(call.stream()) as chunks:
        first = await anext(chunks)
        resp = await sse.open_stream(request)
        try:
            await sse.send_json(resp, first)
            async for chunk in chunks:
                await sse.send_json(resp, chunk)
        except asyncio.CancelledError:
            if not _shutting_down(request):
                raise
            # the grace period is over: end the stream in-band, as OpenAI reports errors
            # after the headers, so the client knows it was cut (and not finished)
            await sse.send(resp, {"error": ServiceUnavailableError(
                "The server is shutting down; this response was cut short. Retry in a "
                "moment.", code="server_shutting_down").to_dict(),
                "request_id": request[REQUEST_ID]})
        except ConnectionError:
            raise
        except LlmpError as e:  # after the headers: report in-band, as OpenAI does
            await sse.send(resp, {"error": e.to_dict(), "request_id": request[REQUEST_ID]})
        except Exception:
            log.exception("stream %s failed", request[REQUEST_ID])
            await sse.send(resp, {"error": ServerError("The server had an error while "
                                                       "streaming").to_dict(),
                                  "request_id": request[REQUEST_ID]})
        await sse.done(resp)
        return resp


def _shutting_down(request: web.Request) -> bool:
    """True when the handler was cancelled by `graceful_stop` at the end of the grace period
    (not by its client going away): the cancellation is then taken back, so the handler can
    still answer."""
    task = asyncio.current_task()
    if request.app[SHUTDOWN].aborting and task is not None:
        task.uncancel()
        return True
    return False


def estimates(call: inference.Call, registered: dict | None) -> tuple[int, float, int | None]:
    """What to reserve for a call: tokens (prompt + max_tokens capped at the context), the
    cost of that many tokens, and the least it needs (its prompt) when max_tokens is unset."""
    tokens = call.token_estimate
    cost = usage.price(registered, call.prompt_tokens, tokens - call.prompt_tokens)
    return tokens, cost, call.prompt_tokens if call.max_tokens is None else None


async def _serve(request: web.Request, prepare: Prepare, endpoint: str) -> web.StreamResponse:
    app = request.app
    key, limiter, db = request[API_KEY], app[LIMITER], app[DB]
    t0 = time.perf_counter()
    call: inference.Call | None = None
    model: str | None = None
    admission: Admission | None = None
    status, error_type = 200, None
    try:
        body = await read_json(request)
        model = body.get("model") if isinstance(body.get("model"), str) else None
        limiter.check_quota(key)  # a key over its quota is refused before any work
        if key.get("moderate_input") and endpoint in moderation.MODERATED_ENDPOINTS:
            # the key's input moderation: the guard model sees the input first
            await moderation.check_input(app[POOL], endpoint, body,
                                         request_id=request[REQUEST_ID])
        registered = db_models.get(db, model) if model else None
        call = await prepare(app[POOL], body, request_id=request[REQUEST_ID],
                             model_version=model_version(registered) if registered else None)
        model = call.model
        call.check_context()
        tokens, cost, least = estimates(call, registered)
        admission = limiter.admit(key, tokens, cost=cost, min_tokens=least)
        if call.streaming:
            return await _stream(request, call)
        return web.json_response(await call.run())
    except LlmpError as e:
        status, error_type = e.status, e.type
        raise
    except asyncio.CancelledError:
        if _shutting_down(request):  # not answered yet when the grace period ended
            status, error_type = 503, ServiceUnavailableError.type
            raise ServiceUnavailableError("The server is shutting down; retry in a moment",
                                          code="server_shutting_down") from None
        status, error_type = CLIENT_CLOSED, "client_closed"
        raise
    except ConnectionError:
        status, error_type = CLIENT_CLOSED, "client_closed"
        raise
    except Exception:
        status, error_type = 500, "server_error"
        raise
    finally:
        latency = time.perf_counter() - t0
        # bill only what was processed: a refusal costs nothing; a dropped stream pays for
        # its prompt and what was generated before the drop (once its prompt was processed)
        processed = call is not None and (status < 400 or (
            status == CLIENT_CLOSED and (call.ttft is not None or call.generated > 0)))
        prompt = call.prompt_tokens if processed and call else 0
        completion = call.completion_tokens_so_far if processed and call else 0
        ttft = call.ttft if call else None
        request[LOG_FIELDS] = {"model": model, "prompt_tokens": prompt,
                               "completion_tokens": completion,
                               "ttft_ms": round(ttft * 1000, 1) if ttft is not None else None,
                               "stream": call.streaming if call else None}
        # counted against the key's quotas (the limiter listens to the bus) in the same step
        # as the admission's reservation is given back, then stored off the loop
        usage.record(db, key["id"], model, endpoint, prompt, completion, latency * 1000,
                     ttft * 1000 if ttft is not None else None, status, bus=app[EVENTS],
                     error_type=error_type, request_id=request[REQUEST_ID],
                     cached_tokens=call.usage.cached_tokens if processed and call else 0)
        if admission is not None:
            limiter.settle_admission(admission, prompt + completion)
        if call is not None and processed:
            app[METRICS].observe_inference(call.model, prompt, completion, latency, ttft)


@requires("inference")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _serve(request, inference.prepare_chat, "/v1/chat/completions")


@requires("inference")
async def completions(request: web.Request) -> web.StreamResponse:
    return await _serve(request, inference.prepare_completion, "/v1/completions")


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
