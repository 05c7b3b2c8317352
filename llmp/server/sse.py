"""Server-sent events as OpenAI streams them: `data: {json}\\n\\n` ... `data: [DONE]\\n\\n`."""
from __future__ import annotations

from aiohttp import web

from llmp.services.inference import to_json

HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
           "X-Accel-Buffering": "no"}


async def open_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers=HEADERS)
    await resp.prepare(request)
    return resp


async def send(resp: web.StreamResponse, data: dict) -> None:
    await send_json(resp, to_json(data))


async def send_json(resp: web.StreamResponse, event: str) -> None:
    """Send an event already serialised as JSON text (see `inference.Call.stream`)."""
    await resp.write(f"data: {event}\n\n".encode())


async def done(resp: web.StreamResponse) -> None:
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
