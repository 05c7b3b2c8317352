"""Batch throughput vs the engine's aggregate throughput, and interactive TTFT under a batch.

    python3 benchmarks/batch_throughput.py [--requests 1000] [--max-tokens 16] [--preset tiny]

In one process and on one loaded engine (a synthetic model, so it runs anywhere):
1. engine: N short completions sent straight through `llmp.services.inference` at the
   engine's slot count of concurrency (the best the engine does at that concurrency);
2. batch: the same N requests as a /v1/batches input file, run by the real `BatchRunner`
   from creation to `completed` (validation, per-line persistence and output files included);
3. interactive TTFT: streaming chat requests one after another, on the idle engine and then
   while a batch of longer generations (`--ttft-max-tokens`, 128 by default) keeps every slot
   busy; p50/p95 of the time to the first token (that batch is cancelled once measured).
Target: batch >= 80% of the engine's tokens/s; interactive p95 TTFT not much worse.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from llmp.config import load_settings
from llmp.db import open_home
from llmp.engine.pool import ModelPool, ModelSpec
from llmp.engine.types import Priority
from llmp.errors import NotFoundError
from llmp.models.synth import synthesize
from llmp.services import inference
from llmp.services.batches import BatchRunner, Batches
from llmp.services.files import FileStore

KEY = {"id": "key_bench", "permissions": ["admin"]}


def body(i: int, max_tokens: int) -> dict:
    return {"model": "bench", "prompt": f"Request number {i}: say something.",
            "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.0}


async def engine_run(pool, n: int, concurrency: int, max_tokens: int) -> tuple[float, int]:
    sem = asyncio.Semaphore(concurrency)
    tokens = 0

    async def one(i: int) -> None:
        nonlocal tokens
        async with sem:
            r = await inference.completion(pool, body(i, max_tokens), priority=Priority.BATCH,
                                           request_id=f"req_{i}")
            tokens += r["usage"]["completion_tokens"]

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - t0, tokens


async def submit_batch(batches: Batches, store: FileStore, n: int, max_tokens: int) -> str:
    up = store.begin()
    for i in range(n):
        up.write((json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions",
                              "body": body(i, max_tokens)}) + "\n").encode())
    f = store.commit(up, owner=KEY["id"], filename="bench.jsonl", purpose="batch")
    return batches.create(KEY, {"input_file_id": f["id"], "endpoint": "/v1/completions",
                                "completion_window": "24h"})["id"]


async def wait_batch(batches: Batches, batch_id: str) -> dict:
    while True:
        b = batches.get(batch_id, KEY)
        if b["status"] in ("completed", "failed", "expired", "cancelled"):
            return b
        await asyncio.sleep(0.05)


async def ttfts(pool, n: int) -> list[float]:
    """Seconds from submit to first token (the engine's own measure, queueing included) of
    `n` interactive chat requests sent one after another."""
    out = []
    for i in range(n):
        call = await inference.prepare_chat(pool, {
            "model": "bench", "messages": [{"role": "user", "content": f"Hello {i}"}],
            "max_tokens": 4}, request_id=f"req_i{i}")
        await call.run()
        out.append(call.ttft or 0.0)
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] * 1000


async def main(args: argparse.Namespace) -> dict:
    home = Path(tempfile.mkdtemp(prefix="llmp-bench-"))
    settings = load_settings(home, keep_alive=-1, queue_size=4096, n_threads=args.threads)
    db = open_home(settings)
    model = synthesize(args.preset, home / f"{args.preset}.gguf")

    def resolve(mid: str) -> ModelSpec:
        if mid != "bench":
            raise NotFoundError(mid)
        return ModelSpec(id="bench", path=str(model))

    pool = ModelPool(settings, resolve)
    engine = await pool.get("bench")
    slots = engine.n_slots
    store = FileStore(db, settings)
    runner = BatchRunner(db, store, pool)
    batches = Batches(db, store, runner)
    await runner.start()
    try:
        await engine_run(pool, 2 * slots, slots, args.max_tokens)  # warm-up
        e_s, e_tok = await engine_run(pool, args.requests, slots, args.max_tokens)
        t0 = time.perf_counter()
        b = await wait_batch(batches, await submit_batch(batches, store, args.requests,
                                                         args.max_tokens))
        b_s = time.perf_counter() - t0
        b_tok = b["usage"]["output_tokens"]
        idle = await ttfts(pool, args.interactive)
        bid = await submit_batch(batches, store, args.requests, args.ttft_max_tokens)
        while engine.stats()["slots_busy"] < slots:
            await asyncio.sleep(0.01)
        busy = await ttfts(pool, args.interactive)
        preemptions = engine.stats()["preemptions_total"]
        still_running = batches.get(bid, KEY)["status"] == "in_progress"
        batches.cancel(bid, KEY)
        await wait_batch(batches, bid)
    finally:
        await runner.stop()
        await pool.close()
    return {
        "device": engine.device, "slots": slots, "requests": args.requests,
        "max_tokens": args.max_tokens, "batch_status": b["status"],
        "engine_s": round(e_s, 3), "engine_tok_s": round(e_tok / e_s, 1),
        "batch_s": round(b_s, 3), "batch_tok_s": round(b_tok / b_s, 1),
        "batch_vs_engine": round((b_tok / b_s) / (e_tok / e_s), 3),
        "ttft_idle_p50_ms": round(pct(idle, 50), 1), "ttft_idle_p95_ms": round(pct(idle, 95), 1),
        "ttft_batch_p50_ms": round(pct(busy, 50), 1), "ttft_batch_p95_ms": round(pct(busy, 95), 1),
        "ttft_mean_idle_ms": round(statistics.mean(idle) * 1000, 1),
        "ttft_batch_max_tokens": args.ttft_max_tokens,
        "batch_running_during_ttft": still_running,
        "preemptions": preemptions,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--interactive", type=int, default=20, help="interactive requests per TTFT run")
    ap.add_argument("--ttft-max-tokens", type=int, default=128,
                    help="max_tokens of the batch lines running during the busy TTFT run")
    ap.add_argument("--threads", type=int, default=0,
                    help="llama.cpp threads (0: physical cores; 1 is steadier on a busy machine)")
    ap.add_argument("--preset", default="tiny", help="synthetic model preset (tiny, small, 1b, 8b)")
    res = asyncio.run(main(ap.parse_args()))
    print(json.dumps(res, indent=2))
    sys.exit(0 if res["batch_vs_engine"] >= 0.8 else 1)
