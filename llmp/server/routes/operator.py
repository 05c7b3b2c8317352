"""Small endpoints for the dashboard (`llmp tui`) and other remote operators' tools; llmp's own
(neither the spec nor OpenAI has them).

GET /v1/auth/me     any valid key: the key itself as GET /v1/auth/api-keys shows it (id, name,
                    permissions, tier, limits...), so a client can hide what the key may not do.
GET /v1/admin/logs  admin: the server's log file ($LLMP_HOME/logs/llmp.log, what `llmp logs`
                    reads), so a remote client can follow it. Query: `lines` (the last N, default
                    200, at most 5000) or `offset` (the byte offset a previous answer returned:
                    the lines written since; a rotated file starts over). Answers
                    {"object": "log", "file", "offset", "lines": [...]}; "lines" is empty while
                    no log file exists (a server started without one).
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web

from llmp import logs
from llmp.errors import InvalidRequestError
from llmp.server.auth import requires
from llmp.server.state import API_KEY, SETTINGS
from llmp.services import keys as keys_service

#: at most this many bytes of log are sent by one answer
MAX_BYTES = 1 << 20
MAX_LINES = 5000


@requires(None)
async def me(request: web.Request) -> web.Response:
    """The calling API key"""
    return web.json_response(keys_service.public(request[API_KEY]))


def _int(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise InvalidRequestError(f"'{name}' must be a non-negative integer", param=name,
                                  code="invalid_parameter")
    return value


def read_log(path: Path, lines: int, offset: int | None) -> dict[str, Any]:
    """The last `lines` lines of `path`, or what follows byte `offset` (bounded)."""
    try:
        size = path.stat().st_size
    except OSError:
        return {"object": "log", "file": str(path), "offset": 0, "lines": []}
    with path.open("rb") as f:
        if offset is not None:
            start = 0 if offset > size else offset  # rotated: the new file from its start
            f.seek(start)
            data = f.read(MAX_BYTES)
            # only whole lines: a half-written last line comes with the next call
            cut = data.rfind(b"\n") + 1
            data = data[:cut]
            end = start + len(data)
            text = data.decode("utf-8", errors="replace").splitlines()
        else:
            f.seek(max(0, size - MAX_BYTES))
            data = f.read(MAX_BYTES)
            cut = data.rfind(b"\n") + 1
            end = size - len(data) + cut
            text = data[:cut].decode("utf-8", errors="replace").splitlines()[-lines:] if lines else []
    return {"object": "log", "file": str(path), "offset": end, "lines": text}


@requires("admin")
async def admin_logs(request: web.Request) -> web.Response:
    """The server's log, its last lines or those after an offset"""
    lines = min(_int(request, "lines", 200) or 0, MAX_LINES)
    offset = _int(request, "offset", None)
    path = logs.log_file(request.app[SETTINGS].home)
    return web.json_response(await asyncio.to_thread(read_log, path, lines, offset))


def setup(app: web.Application) -> None:
    app.router.add_get("/v1/auth/me", me)
    app.router.add_get("/v1/admin/logs", admin_logs)
