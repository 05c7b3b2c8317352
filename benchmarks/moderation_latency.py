"""Moderation latency (issue 15): p50/p95 of POST /v1/moderations for a ~200-token input,
alone and while chat streams run on the same model (one engine, one scheduler).

    python3 benchmarks/moderation_latency.py [--preset small] [--requests 10] [--streams 4]

A synthetic model (default preset `small`) is registered once, marked as a guard
(llama-guard-3 profile) and also served for chat: moderations and chat share its engine.
Each moderation is a distinct ~200-token text (the guard prompt's template part is the same
every time: the prefix cache keeps it). Under load, `--streams` chat requests (128-token
prompts, 64 generated tokens, `ignore_eos`) run back to back for the whole measurement.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from embeddings import WORDS  # noqa: E402


def text(i: int, n_words: int = 150) -> str:
    return f"Request {i}: " + " ".join(WORDS[(i + j * 5) % len(WORDS)] for j in range(n_words))


async def run(url: str, key: str, requests: int, streams: int) -> tuple[list[float], int, int]:
    import aiohttp

    stop = asyncio.Event()
    chats = 0
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as s:
        async def chat_loop(k: int) -> None:
            nonlocal chats
            n = 0
            while not stop.is_set():
                body = {"model": "m", "max_tokens": 64, "ignore_eos": True,
                        "messages": [{"role": "user", "content": f"{k}-{n} " + text(1000 + n, 90)}]}
                async with s.post(url + "/v1/chat/completions", json=body) as r:
                    assert r.status == 200, await r.text()
                    await r.read()
                chats += 1
                n += 1

        loops = [asyncio.create_task(chat_loop(k)) for k in range(streams)]
        if streams:
            await asyncio.sleep(1.0)  # let the streams start
        lat = []
        tokens = 0
        for i in range(requests):
            t0 = time.perf_counter()
            async with s.post(url + "/v1/moderations",
                              json={"model": "omni-moderation-latest", "input": text(i)}) as r:
                body = await r.json()
                assert r.status == 200, body
            lat.append(time.perf_counter() - t0)
            tokens = body["usage"]["prompt_tokens"]
        stop.set()
        await asyncio.gather(*loops)
    return lat, tokens, chats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--requests", type=int, default=10)
    ap.add_argument("--streams", type=int, default=4)
    args = ap.parse_args()

    import threading

    from llmp.config import Settings
    from llmp.models import registry
    from llmp.models.synth import synthesize
    from llmp.server import runner
    from llmp.server.app import create_app
    from llmp.server.state import DB
    from llmp.services import keys
    from llmp.services.moderation import set_guard

    tmp = Path(tempfile.mkdtemp(prefix="llmp-modr-bench-"))
    model = synthesize(args.preset, tmp / f"{args.preset}.gguf")
    settings = Settings(home=tmp / "home", keep_alive=-1, n_slots=8, slot_ctx=2048,
                        log_level="warning").ensure_dirs()
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()

    async def up():
        app = create_app(settings)
        registry.register(app[DB], model, model_id="m")
        set_guard(app[DB], "m", "llama-guard-3")
        r, port = await runner.start(app, "127.0.0.1", 0, shutdown_timeout=5)
        return app, r, port

    app, r, port = asyncio.run_coroutine_threadsafe(up(), loop).result(120)
    key = keys.create(app[DB], {"name": "bench", "permissions": ["admin"]})["api_key"]
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(run(url, key, 1, 0))  # warm-up: loads the model, caches the template
        rows = []
        for streams in (0, args.streams):
            lat, tokens, chats = asyncio.run(run(url, key, args.requests, streams))
            lat.sort()
            p95 = lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]
            rows.append((streams, statistics.median(lat), p95, tokens, chats))
    finally:
        asyncio.run_coroutine_threadsafe(r.cleanup(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
    print(f"preset {args.preset}, {args.requests} moderations per row, guard prompt "
          f"{rows[0][3]} tokens (input ~200 of them), {settings.threads} threads")
    print("| chat streams | moderation p50 ms | p95 ms | chat requests done meanwhile |")
    print("| ---: | ---: | ---: | ---: |")
    for streams, p50, p95, _, chats in rows:
        print(f"| {streams} | {p50 * 1000:,.0f} | {p95 * 1000:,.0f} | {chats} |")


if __name__ == "__main__":
    main()
