"""Operator endpoints (admin key): what the model pool holds, and loading/unloading models.
These back `llmp ps` and `llmp models load|unload`; they are llmp's own (neither the spec nor
OpenAI has them), under /v1/admin/ because they take an API key as every /v1 route does.

GET  /v1/admin/models           {"object": "list", "data": [loaded model...], "loading": [ids],
                              "keep_alive": s, "max_loaded_models": n}; a loaded model:
                              id, state, device, slots_busy, slots_total, slot_ctx,
                              queue_depth, model_bytes, kv_cache_bytes, tokens_per_second,
                              loaded_at, idle_seconds, keep_alive_left (s; null: never unloaded)
POST /v1/admin/models/load   {"model": ID} -> the loaded model (waits for the load)
POST /v1/admin/models/unload {"model": ID, "force": false} -> {"id", "unloaded": bool};
                              a model with requests in flight is refused unless `force`
                              (they then end with 503)
POST /v1/admin/models/{id}/price   {"input_price", "output_price", "training_price",
                              "currency"} (per 1K tokens; what is left out is kept) -> the
                              model as GET /v1/models/{id} shows it (`llmp models set-price`)
POST /v1/admin/models/{id}/aliases {"add": [...], "remove": [...]} -> the model with its
                              aliases (`llmp models alias`)
"""
from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from llmp.errors import InvalidRequestError
from llmp.protocol.admin import (
    LoadModelRequest,
    ModelAliasesRequest,
    SetPriceRequest,
    UnloadModelRequest,
)
from llmp.protocol.base import parse
from llmp.server.auth import requires
from llmp.server.middleware import read_json
from llmp.server.state import DB, POOL, SETTINGS
from llmp.services import models as models_service

log = logging.getLogger("llmp.server")


def _entry(st: dict[str, Any], keep_alive: float) -> dict[str, Any]:
    out = dict(st)
    if st.get("state") == "loaded":
        idle = float(st.get("idle_seconds") or 0.0)
        out["keep_alive_left"] = None if keep_alive < 0 else round(max(0.0, keep_alive - idle), 1)
    return out


@requires("admin")
async def list_loaded(request: web.Request) -> web.Response:
    pool, settings = request.app[POOL], request.app[SETTINGS]
    status = pool.status()
    return web.json_response({
        "object": "list",
        "data": [_entry(st, settings.keep_alive) for st in status if st.get("state") == "loaded"],
        "loading": pool.loading, "keep_alive": settings.keep_alive,
        "max_loaded_models": settings.max_loaded_models})


@requires("admin")
async def load(request: web.Request) -> web.Response:
    model = parse(LoadModelRequest, await read_json(request)).model
    pool = request.app[POOL]
    t0 = time.perf_counter()
    eng = await pool.get(model)
    mid = getattr(eng, "model_id", model)
    st = next((s for s in pool.status() if s["id"] == mid or s.get("model") == mid), {"id": mid})
    out = _entry(st, request.app[SETTINGS].keep_alive)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return web.json_response(out)


@requires("admin")
async def unload(request: web.Request) -> web.Response:
    body = parse(UnloadModelRequest, await read_json(request))
    pool = request.app[POOL]
    spec = pool.resolve(body.model)  # NotFoundError for an unknown model
    eng = pool.engine(spec.id)
    if eng is not None and eng.busy and not body.force:
        raise InvalidRequestError(f"model {spec.id} has requests in flight; unload it with "
                                  "force (`llmp models unload --force`) to end them",
                                  param="model", code="model_busy")
    return web.json_response({"id": spec.id, "unloaded": await pool.unload(spec.id)})


@requires("admin")
async def set_price(request: web.Request) -> web.Response:
    body = parse(SetPriceRequest, await read_json(request))
    return web.json_response(models_service.set_price(
        request.app[DB], request.match_info["model_id"], body))


@requires("admin")
async def update_aliases(request: web.Request) -> web.Response:
    body = parse(ModelAliasesRequest, await read_json(request))
    return web.json_response(models_service.update_aliases(
        request.app[DB], request.match_info["model_id"], body))


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/admin/models", list_loaded)
    app.router.add_post("/v1/admin/models/load", load)
    app.router.add_post("/v1/admin/models/unload", unload)
    # ids may hold slashes ("Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_K_M")
    app.router.add_post("/v1/admin/models/{model_id:.+}/price", set_price)
    app.router.add_post("/v1/admin/models/{model_id:.+}/aliases", update_aliases)
