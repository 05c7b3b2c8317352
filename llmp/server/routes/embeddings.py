"""POST /v1/embeddings (OpenAI's shape), through the same admission, rate limits, usage rows
and metrics as chat and completions (`routes.inference._serve`)."""
from __future__ import annotations

from typing import Any, cast

from aiohttp import web

from llmp.server.auth import requires
from llmp.server.routes.inference import _serve
from llmp.services import embeddings


@requires("inference")
async def create_embeddings(request: web.Request) -> web.StreamResponse:
    return await _serve(request, cast(Any, embeddings.prepare_embeddings), "/v1/embeddings")


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/embeddings", create_embeddings)
