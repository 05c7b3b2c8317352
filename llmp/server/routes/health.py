"""GET /health (503 while a model is loading) and GET /metrics (Prometheus text); no key needed."""
from __future__ import annotations

import time

from aiohttp import web

from llmp import __version__
from llmp.server.state import METRICS, POOL, SHUTDOWN, STARTED_AT


async def health(request: web.Request) -> web.Response:
    pool = request.app[POOL]
    models = pool.status()
    loading = pool.loading
    stopping = request.app[SHUTDOWN].draining
    body = {"status": "stopping" if stopping else "loading" if loading else "ok",
            "version": __version__,
            "uptime_s": round(time.time() - request.app[STARTED_AT], 1),
            "loading": loading, "models": models}
    return web.json_response(body, status=503 if loading or stopping else 200)


async def metrics(request: web.Request) -> web.Response:
    text = request.app[METRICS].render(request.app[POOL].status())
    return web.Response(body=text.encode(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def setup(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
