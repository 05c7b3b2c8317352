"""The aiohttp application: `create_app(settings, *, pool=None)`.

Shared state lives under the typed keys of `llmp.server.state`. Each resource is a module of
`llmp.server.routes` with a `setup(app)` function (routes only); `ROUTE_MODULES` lists them.
The background workers (job runner, batch runner, webhook deliverer) start and stop in one
place: `llmp.server.workers`.
"""
from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import AsyncIterator

from aiohttp import web

from llmp.config import Settings
from llmp.db import open_home
from llmp.db import writer as db_writer
from llmp.engine.pool import ModelPool
from llmp.events import Bus
from llmp.server.metrics import Metrics
from llmp.server.middleware import end_partial_bodies, on_prepare, request_context
from llmp.server.state import (
    ADAPTERS,
    DB,
    EVENTS,
    IN_FLIGHT,
    LIMITER,
    METRICS,
    POOL,
    SETTINGS,
    SHUTDOWN,
    STARTED_AT,
    WRITER,
    Shutdown,
)
from llmp.server.workers import workers
from llmp.services.limits import Limiter
from llmp.services.models import resolver

ROUTE_MODULES = ["health", "openapi", "keys", "models", "inference", "usage", "files", "batches",
                 "webhooks", "embeddings", "moderations", "admin",
                 "fine_tuning", "operator"]


def create_app(settings: Settings, *, pool: ModelPool | None = None,
               adapters: dict[str, dict] | None = None) -> web.Application:
    """The /v1 app over the home in `settings`; a `pool` passed in is not closed by the app.
    `adapters`: LoRA adapter records served without being registered (`llmp serve --lora`)."""
    app = web.Application(middlewares=[request_context],
                          client_max_size=settings.max_request_bytes)
    db = open_home(settings)
    app[SETTINGS] = settings
    app[DB] = db
    app[ADAPTERS] = dict(adapters or {})
    app[POOL] = pool or ModelPool(settings, resolver(db, app[ADAPTERS]))
    # the app's event bus: batch.*, usage.recorded, usage.limit.reached... published once;
    # the limiter, webhooks (routes/webhooks.py) and metrics consume them
    app[EVENTS] = Bus()
    app[LIMITER] = Limiter(db, bus=app[EVENTS])
    app[METRICS] = Metrics()
    app[EVENTS].subscribe(app[METRICS].count_event)
    app[STARTED_AT] = time.time()
    app[IN_FLIGHT] = {}
    app[SHUTDOWN] = Shutdown()
    # every write of the serving process goes through one thread with its own connection:
    # the event loop (and /health) never waits on SQLite's write lock
    app[WRITER] = db_writer.Writer(settings.db_path)
    db_writer.register(db, app[WRITER])
    app.on_response_prepare.append(on_prepare)
    app.on_shutdown.append(end_partial_bodies)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        yield
        if pool is None:
            await app[POOL].close()
        db_writer.register(app[DB], None)
        await asyncio.to_thread(app[WRITER].close)  # what is queued is written first
        app[DB].close()

    app.cleanup_ctx.append(lifecycle)
    app.cleanup_ctx.append(workers)  # after lifecycle: stopped before the writer closes
    for name in ROUTE_MODULES:
        importlib.import_module(f"llmp.server.routes.{name}").setup(app)
    return app
