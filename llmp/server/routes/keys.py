"""POST/GET/DELETE /v1/auth/api-keys: key management. Creating keys needs an admin key; any
key lists and revokes the keys of its user (the spec's "keys for the authenticated user"):
an admin key every key, another key itself."""
from __future__ import annotations

from aiohttp import web

from llmp.server.auth import requires
from llmp.server.middleware import read_json
from llmp.server.state import API_KEY, DB
from llmp.services import keys as keys_service


@requires("admin")
async def create_key(request: web.Request) -> web.Response:
    body = await read_json(request)
    # 200, as every create in OpenAI's API (and the rest of ours) answers
    return web.json_response(keys_service.create(request.app[DB], body))


@requires(None)
async def list_keys(request: web.Request) -> web.Response:
    data = keys_service.list_keys(request.app[DB], request[API_KEY])
    return web.json_response({"object": "list", "data": data, "total": len(data)})


@requires(None)
async def revoke_key(request: web.Request) -> web.Response:
    key = keys_service.revoke(request.app[DB], request.match_info["key_id"], request[API_KEY])
    return web.json_response({**key, "deleted": True})


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/auth/api-keys", create_key)
    app.router.add_get("/v1/auth/api-keys", list_keys)
    app.router.add_delete("/v1/auth/api-keys/{key_id}", revoke_key)
