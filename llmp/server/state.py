"""Typed keys for what the app shares with its handlers (`request.app[DB]`, ...)."""
from __future__ import annotations

from aiohttp import web
from sqlite_utils import Database

from llmp.config import Settings
from llmp.engine.pool import ModelPool
from llmp.server.metrics import Metrics
from llmp.services.limits import Limiter

SETTINGS = web.AppKey("settings", Settings)
DB = web.AppKey("db", Database)
POOL = web.AppKey("pool", ModelPool)
LIMITER = web.AppKey("limiter", Limiter)
METRICS = web.AppKey("metrics", Metrics)
STARTED_AT = web.AppKey("started_at", float)  # time.time() when the app was made
IN_FLIGHT = web.AppKey("in_flight", dict)  # the requests being handled, by id(request)

# per-request storage
REQUEST_ID = web.RequestKey("request_id", str)  # set by the middleware: req_...
API_KEY = web.RequestKey("api_key", dict)  # the authenticated key record, set by @requires
