"""GET /v1/models (filters, pages) and GET /v1/models/{model_id}."""
from __future__ import annotations

from aiohttp import web

from llmp.server.auth import requires
from llmp.server.state import ADAPTERS, DB
from llmp.services import models as models_service


@requires("models.read")
async def list_models(request: web.Request) -> web.Response:
    return web.json_response(models_service.list_page(
        request.app[DB], dict(request.query), extra=request.app[ADAPTERS]))


@requires("models.read")
async def get_model(request: web.Request) -> web.Response:
    return web.json_response(models_service.get(request.app[DB], request.match_info["model_id"],
                                                request.app[ADAPTERS]))


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/models", list_models)
    # ids may hold slashes ("Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M")
    app.router.add_get("/v1/models/{model_id:.+}", get_model)
