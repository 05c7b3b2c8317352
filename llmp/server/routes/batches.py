"""/v1/batches: create, list, retrieve, cancel (the batch runner: `llmp.server.workers`)."""
from __future__ import annotations

from aiohttp import web

from llmp.server.auth import requires
from llmp.server.middleware import int_param, read_json
from llmp.server.routes.files import store
from llmp.server.state import API_KEY, DB, RUNNER
from llmp.services.batches import Batches


def batches(request: web.Request) -> Batches:
    return Batches(request.app[DB], store(request.app), request.app[RUNNER])


@requires("batches.write")
async def create(request: web.Request) -> web.Response:
    return web.json_response(batches(request).create(request[API_KEY], await read_json(request)))


@requires("batches.read")
async def list_batches(request: web.Request) -> web.Response:
    return web.json_response(batches(request).list(
        request[API_KEY], after=request.query.get("after") or None,
        limit=int_param(request, "limit", 20)))


@requires("batches.read")
async def retrieve(request: web.Request) -> web.Response:
    return web.json_response(batches(request).get(request.match_info["batch_id"], request[API_KEY]))


@requires("batches.write")
async def cancel(request: web.Request) -> web.Response:
    return web.json_response(batches(request).cancel(request.match_info["batch_id"],
                                                     request[API_KEY]))


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/batches", create)
    app.router.add_get("/v1/batches", list_batches)
    app.router.add_get("/v1/batches/{batch_id}", retrieve)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel)
