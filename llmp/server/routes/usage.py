"""GET /v1/usage and GET /v1/usage/billing (usage.read: the caller's own key; admin keys see
every key, or one with `key_id`)."""
from __future__ import annotations

from aiohttp import web

from llmp.db import keys as db_keys
from llmp.errors import NotFoundError, PermissionDeniedError
from llmp.server.auth import requires
from llmp.server.state import API_KEY, DB, LIMITER, SETTINGS
from llmp.services import keys as keys_service
from llmp.services import usage as usage_service


def _scope(request: web.Request) -> dict | None:
    """The key whose usage to report; None: every key (admin only)."""
    key = request[API_KEY]
    wanted = request.query.get("key_id")
    if not keys_service.is_admin(key):
        if wanted not in (None, key["id"]):
            raise PermissionDeniedError("Only admin keys can read the usage of other keys",
                                        param="key_id")
        return key
    if wanted is None:
        return None
    other = db_keys.by_id(request.app[DB], wanted)
    if other is None:
        raise NotFoundError(f"No API key '{wanted}'", param="key_id", code="key_not_found")
    return other


@requires("usage.read")
async def usage(request: web.Request) -> web.Response:
    q = request.query
    scope = _scope(request)
    return web.json_response(usage_service.report(
        request.app[DB], start_date=q.get("start_date"), end_date=q.get("end_date"),
        granularity=q.get("granularity", "day"), model=q.get("model"),
        key_id=scope["id"] if scope else None, group_by=q.get("group_by", "model")))


@requires("usage.read")
async def billing(request: web.Request) -> web.Response:
    scope = _scope(request)
    quota = request.app[LIMITER].quota_of(scope) if scope else None
    return web.json_response(usage_service.billing(request.app[DB], request.app[SETTINGS],
                                                   key=scope, quota=quota))


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/usage", usage)
    app.router.add_get("/v1/usage/billing", billing)
