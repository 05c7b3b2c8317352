"""/v1/webhooks: endpoints, their deliveries and a test event; the deliverer lives as long as
the app."""
from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from llmp.protocol.base import parse
from llmp.protocol.resources import CreateWebhookRequest
from llmp.server.auth import requires
from llmp.server.middleware import int_param, read_json
from llmp.server.state import API_KEY, DB, EVENTS, SETTINGS
from llmp.services import webhooks
from llmp.services.webhooks import Deliverer

DELIVERER = web.AppKey("webhook_deliverer", Deliverer)


@requires("webhooks")
async def create(request: web.Request) -> web.Response:
    body = parse(CreateWebhookRequest, await read_json(request))
    return web.json_response(webhooks.create(
        request.app[DB], request[API_KEY], url=body.url, events=body.events,
        secret=body.secret, allow_private=request.app[SETTINGS].webhook_allow_private))


@requires("webhooks")
async def list_endpoints(request: web.Request) -> web.Response:
    return web.json_response(webhooks.list_endpoints(request.app[DB], request[API_KEY]))


@requires("webhooks")
async def retrieve(request: web.Request) -> web.Response:
    return web.json_response(webhooks.get(request.app[DB], request[API_KEY],
                                          request.match_info["webhook_id"]))


@requires("webhooks")
async def delete(request: web.Request) -> web.Response:
    return web.json_response(webhooks.delete(request.app[DB], request[API_KEY],
                                             request.match_info["webhook_id"]))


@requires("webhooks")
async def deliveries(request: web.Request) -> web.Response:
    return web.json_response(webhooks.deliveries(
        request.app[DB], request[API_KEY], request.match_info["webhook_id"],
        after=request.query.get("after") or None, limit=int_param(request, "limit", 20)))


@requires("webhooks")
async def test(request: web.Request) -> web.Response:
    return web.json_response(webhooks.send_test(request.app[DB], request[API_KEY],
                                                request.match_info["webhook_id"],
                                                wake=request.app[DELIVERER].wake))


async def _deliverer(app: web.Application) -> AsyncIterator[None]:
    deliverer = Deliverer(app[DB], allow_private=app[SETTINGS].webhook_allow_private)
    app[DELIVERER] = deliverer
    unsubscribe = webhooks.subscribe(app[EVENTS], app[DB], wake=deliverer.wake)
    await deliverer.start()
    yield
    unsubscribe()
    await deliverer.stop()


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/webhooks", create)
    app.router.add_get("/v1/webhooks", list_endpoints)
    app.router.add_get("/v1/webhooks/{webhook_id}", retrieve)
    app.router.add_delete("/v1/webhooks/{webhook_id}", delete)
    app.router.add_get("/v1/webhooks/{webhook_id}/deliveries", deliveries)
    app.router.add_post("/v1/webhooks/{webhook_id}/test", test)
    app.cleanup_ctx.append(_deliverer)
