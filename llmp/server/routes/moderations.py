"""POST /v1/moderations (OpenAI's shape) on the configured guard model, through the same
admission, rate limits, usage rows and metrics as chat (`routes.inference._serve`);
permission `moderation`."""
from __future__ import annotations

from typing import Any, cast

from aiohttp import web

from llmp.server.auth import requires
from llmp.server.routes.inference import _serve
from llmp.services import moderation


@requires("moderation")
async def create_moderation(request: web.Request) -> web.StreamResponse:
    return await _serve(request, cast(Any, moderation.prepare_moderation), "/v1/moderations")


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/moderations", create_moderation)
