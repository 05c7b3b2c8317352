"""The serving process's background workers, started and stopped in one place (not from the
route modules): the batch runner (its batches are jobs of the durable job runner,
`llmp.jobs`), the fine-tuning job runner, and the webhook deliverer (subscribed to the app's
event bus).

Start: the deliverer first (so events of resumed work are delivered), then the job runners
(each takes back what a killed process left running). Stop: the reverse; a running job is
stopped and queued again (resumed at the next start), not counted as a crash.
"""
from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from llmp.jobs.runner import JobRunner
from llmp.server.state import (
    DB,
    DELIVERER,
    EVENTS,
    FINE_TUNING_HANDLER,
    FINE_TUNING_RUNNER,
    LIMITER,
    POOL,
    RUNNER,
    SETTINGS,
)
from llmp.services import webhooks
from llmp.services.batches import BatchRunner
from llmp.services.files import FileStore
from llmp.services.finetune import FineTuneHandler
from llmp.services.webhooks import Deliverer


async def workers(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context: every worker runs while the app serves."""
    db, settings = app[DB], app[SETTINGS]
    store = FileStore(db, settings)
    deliverer = app[DELIVERER] = Deliverer(db, allow_private=settings.webhook_allow_private)
    unsubscribe = webhooks.subscribe(app[EVENTS], db, wake=deliverer.wake)
    batches = app[RUNNER] = BatchRunner(db, store, app[POOL], limiter=app[LIMITER],
                                        bus=app[EVENTS])
    handler = app[FINE_TUNING_HANDLER] = FineTuneHandler(db, settings, store, app[EVENTS])
    fine_tuning = app[FINE_TUNING_RUNNER] = JobRunner(db, handler, concurrency=1)
    await deliverer.start()
    await batches.start()
    await fine_tuning.start()
    try:
        yield
    finally:
        await fine_tuning.stop()
        await batches.stop()
        unsubscribe()
        await deliverer.stop()
