"""Start the app on a TCP port (shared by `llmp serve` and the tests' `server` fixture)."""
from __future__ import annotations

from aiohttp import web

#: seconds in-flight requests get to finish on shutdown
SHUTDOWN_TIMEOUT = 30.0


async def start(app: web.Application, host: str, port: int, *,
                shutdown_timeout: float = SHUTDOWN_TIMEOUT) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port (0: a free port); returns the runner and the bound port.

    Handlers are cancelled when their client disconnects, so a dropped request frees its
    engine slot at the next step. `await runner.cleanup()` stops accepting, lets in-flight
    requests finish (up to `shutdown_timeout`), then runs the app's cleanup (pool, DB)."""
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=shutdown_timeout,
                           access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner, int(bound)
