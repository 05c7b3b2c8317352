"""GET /openapi.json: the OpenAPI 3.1 description of every route this app serves (no key
needed), built once from the router and the request models (llmp.server.openapi)."""
from __future__ import annotations

import json

from aiohttp import web

from llmp.server import openapi

DOCUMENT = web.AppKey("openapi_document", dict)


async def document(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 description of this server"""
    cache = request.app[DOCUMENT]
    if "body" not in cache:  # the router is frozen once serving: build it once
        cache["body"] = json.dumps(openapi.build(request.app)).encode()
    return web.Response(body=cache["body"], content_type="application/json")


def setup(app: web.Application) -> None:
    app[DOCUMENT] = {}
    app.router.add_get("/openapi.json", document)
