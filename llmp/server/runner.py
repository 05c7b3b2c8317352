"""Start the app on a TCP port (shared by `llmp serve` and the tests' `server` fixture)."""
from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from llmp.errors import InvalidRequestError
from llmp.ids import new_id
from llmp.server.middleware import end_partial_bodies
from llmp.server.state import IN_FLIGHT, SHUTDOWN

log = logging.getLogger("llmp.server")

#: seconds in-flight requests get to finish on shutdown
SHUTDOWN_TIMEOUT = 30.0


class _Connection(RequestHandler):
    """aiohttp's connection handler, whose own error answers (a request line or headers it
    cannot parse never reach the app's middleware) are in the spec's error format and logged
    as one line: a malformed request is the client's error, not a traceback in the log."""

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response "
                                  "with the error message")
        rid = new_id("req")
        detail = (message or (str(exc) if exc else "") or "bad request").splitlines()[0][:200]
        log.info("malformed HTTP request from %s (%s): %s %s", request.remote, rid, status,
                 detail)
        err = InvalidRequestError(f"The HTTP request could not be parsed ({detail})",
                                  code="invalid_http_request")
        resp = web.json_response({"error": err.to_dict(), "request_id": rid}, status=status,
                                 headers={"x-request-id": rid})
        resp.force_close()
        return resp


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)


async def start(app: web.Application, host: str, port: int, *,
                shutdown_timeout: float = SHUTDOWN_TIMEOUT) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port (0: a free port); returns the runner and the bound port.

    Handlers are cancelled when their client disconnects, so a dropped request frees its
    engine slot at the next step. `await runner.cleanup()` stops accepting, lets in-flight
    requests finish (up to `shutdown_timeout`), then runs the app's cleanup (pool, DB)."""
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=shutdown_timeout,
                           access_log=None)
    await runner.setup()
    runner.server.__class__ = _Server  # its connections answer malformed HTTP as above
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:  # e.g. the port is in use: stop what setup() started (workers, DB)
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner, int(bound)


#: seconds the handlers ended at the end of the grace period get to write their last event
ABORT_WAIT_S = 3.0


async def graceful_stop(runner: web.AppRunner, app: web.Application, grace: float) -> None:
    """Stop serving within `grace` + a few seconds:

    1. stop admitting: new requests get 503 `server_shutting_down` (bodies still arriving
       too, at once); /health answers 503 "stopping";
    2. let the requests in flight, streams included, finish for up to `grace` seconds;
    3. then end every open stream with an in-band error event and `data: [DONE]` (a request
       that has not started its answer gets the 503), wait up to ABORT_WAIT_S for them;
    4. close the connections and run the app's cleanup (batch runner: unfinished lines stay
       pending and resume on the next start; the database writer writes what is queued)."""
    state = app[SHUTDOWN]
    state.draining = True
    await end_partial_bodies(app)
    in_flight = app[IN_FLIGHT]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, grace)
    while in_flight and loop.time() < deadline:
        state.idle.clear()
        if not in_flight:
            break
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(state.idle.wait(), deadline - loop.time())
    if in_flight:
        log.warning("grace period over: ending %d open request(s)", len(in_flight))
        state.aborting = True
        tasks = [t for r in list(in_flight.values()) if (t := r.task) is not None and not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=ABORT_WAIT_S)
    await runner.cleanup()
