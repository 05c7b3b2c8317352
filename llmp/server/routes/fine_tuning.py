"""Fine-tuning jobs under OpenAI's /v1/fine_tuning/jobs and the spec's /v1/fine-tuning/jobs
(the same handlers), DELETE /v1/models/{fine-tuned model}; the job runner:
`llmp.server.workers`."""
from __future__ import annotations

import re

from aiohttp import web

from llmp.server.auth import requires
from llmp.server.middleware import int_param, read_json
from llmp.server.routes.files import store
from llmp.server.state import (
    API_KEY,
    DB,
    FINE_TUNING_HANDLER,
    FINE_TUNING_RUNNER,
    LIMITER,
    SETTINGS,
)
from llmp.services.finetune import FineTuning

RUNNER, HANDLER = FINE_TUNING_RUNNER, FINE_TUNING_HANDLER  # started in llmp.server.workers
PREFIXES = ("/v1/fine_tuning/jobs", "/v1/fine-tuning/jobs")
_META = re.compile(r"^metadata\[(.{1,64})\]$")


def service(request: web.Request) -> FineTuning:
    app = request.app
    return FineTuning(app[DB], app[SETTINGS], store(app), app[RUNNER], limiter=app[LIMITER])


def _job_id(request: web.Request) -> str:
    return request.match_info["fine_tuning_job_id"]


@requires("fine_tuning.write")
async def create(request: web.Request) -> web.Response:
    return web.json_response(await service(request).create(request[API_KEY],
                                                           await read_json(request)))


@requires("fine_tuning.read")
async def list_jobs(request: web.Request) -> web.Response:
    metadata = {m.group(1): v for k, v in request.query.items() if (m := _META.match(k))}
    return web.json_response(service(request).list(
        request[API_KEY], after=request.query.get("after") or None,
        limit=int_param(request, "limit", 20), metadata=metadata or None))


@requires("fine_tuning.read")
async def retrieve(request: web.Request) -> web.Response:
    return web.json_response(service(request).get(_job_id(request), request[API_KEY]))


@requires("fine_tuning.write")
async def cancel(request: web.Request) -> web.Response:
    return web.json_response(await service(request).cancel(_job_id(request), request[API_KEY]))


@requires("fine_tuning.write")
async def pause(request: web.Request) -> web.Response:
    return web.json_response(await service(request).pause(_job_id(request), request[API_KEY]))


@requires("fine_tuning.write")
async def resume(request: web.Request) -> web.Response:
    return web.json_response(await service(request).resume(_job_id(request), request[API_KEY]))


@requires("fine_tuning.read")
async def events(request: web.Request) -> web.Response:
    return web.json_response(service(request).events(
        _job_id(request), request[API_KEY], after=request.query.get("after") or None,
        limit=int_param(request, "limit", 20)))


@requires("fine_tuning.read")
async def checkpoints(request: web.Request) -> web.Response:
    return web.json_response(service(request).checkpoints(
        _job_id(request), request[API_KEY], after=request.query.get("after") or None,
        limit=int_param(request, "limit", 10)))


@requires("fine_tuning.write")
async def delete_model(request: web.Request) -> web.Response:
    return web.json_response(await service(request).delete_model(request.match_info["model_id"],
                                                                 request[API_KEY]))


def setup(app: web.Application) -> None:
    for p in PREFIXES:
        app.router.add_post(p, create)
        app.router.add_get(p, list_jobs)
        app.router.add_get(p + "/{fine_tuning_job_id}", retrieve)
        app.router.add_post(p + "/{fine_tuning_job_id}/cancel", cancel)
        app.router.add_post(p + "/{fine_tuning_job_id}/pause", pause)
        app.router.add_post(p + "/{fine_tuning_job_id}/resume", resume)
        app.router.add_get(p + "/{fine_tuning_job_id}/events", events)
        app.router.add_get(p + "/{fine_tuning_job_id}/checkpoints", checkpoints)
    app.router.add_delete("/v1/models/{model_id:.+}", delete_model)
