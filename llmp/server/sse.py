"""Server-sent events as OpenAI streams them: `data: {json}\\n\\n` ... `data: [DONE]\\n\\n`."""
from __future__ import annotations

import json

from aiohttp import web

HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
           "X-Accel-Buffering": "no"}


async def open_stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers=HEADERS)
    await resp.prepare(request)
    return resp


async def send(resp: web.StreamResponse, data: dict) -> None:
    await resp.write(b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False)
                     .encode() + b"\n\n")


async def done(resp: web.StreamResponse) -> None:
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
