"""/v1/webhooks: endpoints, their deliveries and a test event (the deliverer:
`llmp.server.workers`)."""
from __future__ import annotations

from aiohttp import web

from llmp.protocol.base import parse
from llmp.protocol.resources import CreateWebhookRequest
from llmp.server.auth import requires
from llmp.server.middleware import int_param, read_json
from llmp.server.state import API_KEY, DB, DELIVERER, SETTINGS
from llmp.services import webhooks


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


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/webhooks", create)
    app.router.add_get("/v1/webhooks", list_endpoints)
    app.router.add_get("/v1/webhooks/{webhook_id}", retrieve)
    app.router.add_delete("/v1/webhooks/{webhook_id}", delete)
    app.router.add_get("/v1/webhooks/{webhook_id}/deliveries", deliveries)
    app.router.add_post("/v1/webhooks/{webhook_id}/test", test)
