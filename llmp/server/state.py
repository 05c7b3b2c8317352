"""Typed keys for what the app shares with its handlers (`request.app[DB]`, ...)."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web
from sqlite_utils import Database

from llmp.config import Settings
from llmp.db.writer import Writer
from llmp.engine.pool import ModelPool
from llmp.events import Bus
from llmp.jobs.runner import JobRunner
from llmp.server.metrics import Metrics
from llmp.services.batches import BatchRunner
from llmp.services.finetune import FineTuneHandler
from llmp.services.limits import Limiter
from llmp.services.webhooks import Deliverer


@dataclass
class Shutdown:
    """Where a graceful stop stands (see `llmp.server.runner.graceful_stop`)."""
    draining: bool = False  # new requests get 503 server_shutting_down
    aborting: bool = False  # the grace period is over: open streams end with an error event
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set when nothing is in flight


SETTINGS = web.AppKey("settings", Settings)
DB = web.AppKey("db", Database)
POOL = web.AppKey("pool", ModelPool)
LIMITER = web.AppKey("limiter", Limiter)
EVENTS = web.AppKey("events", Bus)  # the app's event bus (llmp.events)
# the background workers (started in llmp.server.workers)
RUNNER = web.AppKey("batch_runner", BatchRunner)
DELIVERER = web.AppKey("webhook_deliverer", Deliverer)
FINE_TUNING_RUNNER = web.AppKey("fine_tuning_runner", JobRunner)  # kind "fine_tuning"
FINE_TUNING_HANDLER = web.AppKey("fine_tuning_handler", FineTuneHandler)
METRICS = web.AppKey("metrics", Metrics)
STARTED_AT = web.AppKey("started_at", float)  # time.time() when the app was made
IN_FLIGHT = web.AppKey("in_flight", dict)  # the requests being handled, by id(request)
SHUTDOWN = web.AppKey("shutdown", Shutdown)
WRITER = web.AppKey("writer", Writer)  # the one database writer (off the event loop)
ADAPTERS = web.AppKey("adapters", dict)  # `llmp serve --lora` adapters (not registered), by id

# per-request storage
REQUEST_ID = web.RequestKey("request_id", str)  # set by the middleware: req_...
API_KEY = web.RequestKey("api_key", dict)  # the authenticated key record, set by @requires
# what a handler adds to its access-log line (model, prompt_tokens, completion_tokens, ...)
LOG_FIELDS = web.RequestKey("log_fields", dict)
