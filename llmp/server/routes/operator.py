"""Small endpoints for the dashboard (`llmp tui`) and other remote operators' tools; llmp's own
(neither the spec nor OpenAI has them).

GET /v1/auth/me     any valid key: the key itself as GET /v1/auth/api-keys shows it (id, name,
                    permissions, tier, limits...), so a client can hide what the key may not do.
GET /v1/admin/status admin: what /health and /metrics do not say: the process (pid, RSS, requests
                    in flight), the device (GPU offload built in, CPUs, memory total/available)
                    and the app's event bus (counts by type and the last RECENT events, kept
                    by a subscriber since start: no DB polling). {"object": "server.status",
                    "version", "uptime_s", "process": {...}, "device": {...},
                    "events": {"counts": {type: n}, "recent": [{id, type, created_at,
                    key_id}]}}
GET /v1/admin/logs  admin: the server's log file ($LLMP_HOME/logs/llmp.log, what `llmp logs`
                    reads), so a remote client can follow it. Query: `lines` (the last N, default
                    200, at most 5000) or `offset` (the byte offset a previous answer returned:
                    the lines written since; a rotated file starts over). Answers
                    {"object": "log", "file", "offset", "lines": [...]}; "lines" is empty while
                    no log file exists (a server started without one).
"""
from __future__ import annotations

import asyncio
import collections
import os
import threading
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from llmp import __version__, logs
from llmp.engine.native import gpu_offload_supported
from llmp.errors import InvalidRequestError
from llmp.events import Event
from llmp.server.auth import requires
from llmp.server.state import API_KEY, EVENTS, IN_FLIGHT, SETTINGS, STARTED_AT
from llmp.services import keys as keys_service

#: at most this many bytes of log are sent by one answer
MAX_BYTES = 1 << 20
MAX_LINES = 5000
#: events kept for /v1/admin/status
RECENT = 50


class EventLog:
    """A bus subscriber: counts by type and the last RECENT events (any thread publishes)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self.recent: collections.deque[Event] = collections.deque(maxlen=RECENT)

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.counts[event.type] += 1
            self.recent.append(event)

    def view(self) -> dict[str, Any]:
        with self.lock:
            return {"counts": dict(self.counts),
                    "recent": [{"id": e.id, "type": e.type, "created_at": e.created_at,
                                "key_id": e.key_id} for e in reversed(self.recent)]}


EVENT_LOG = web.AppKey("operator_event_log", EventLog)


def _meminfo() -> dict[str, int | None]:
    out: dict[str, int | None] = {"memory_total_bytes": None, "memory_available_bytes": None}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("MemTotal", "MemAvailable"):
                key = "memory_total_bytes" if name == "MemTotal" else "memory_available_bytes"
                out[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def _rss() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@requires("admin")
async def status(request: web.Request) -> web.Response:
    """The server process, its device and its recent events"""
    app = request.app
    return web.json_response({
        "object": "server.status", "version": __version__,
        "uptime_s": round(time.time() - app[STARTED_AT], 1),
        "process": {"pid": os.getpid(), "rss_bytes": _rss(), "in_flight": len(app[IN_FLIGHT])},
        "device": {"gpu_offload": gpu_offload_supported(), "cpu_count": os.cpu_count(),
                   **_meminfo()},
        "events": app[EVENT_LOG].view()})


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
    app[EVENT_LOG] = EventLog()
    app[EVENTS].subscribe(app[EVENT_LOG])
    app.router.add_get("/v1/auth/me", me)
    app.router.add_get("/v1/admin/status", status)
    app.router.add_get("/v1/admin/logs", admin_logs)
