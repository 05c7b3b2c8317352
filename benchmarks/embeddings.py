"""Embeddings of 256 short inputs: llmp's POST /v1/embeddings against llama-cpp-python's
`Llama.embed` on the same GGUF, in one run (issue 15).

    python3 benchmarks/embeddings.py [--model PATH.gguf | --preset embed-0.6b] [--inputs 256]
                                     [--rounds 3]

Without --model a synthetic embedding model is written (`llmp models synth --preset embed`:
llama architecture, 256 dims, 4 layers, mean pooling). Both sides use the same threads and
batch size (n_batch = n_ubatch = 2048 tokens) and L2-normalise; each is warmed up once, then
timed `--rounds` times (best round reported):

* llama-cpp-python: `Llama(path, embedding=True, n_ctx=2048, n_batch=2048).embed(texts,
  normalize=True)` (it packs inputs into batches of up to n_batch tokens / n_seq_max seqs),
  with its defaults (flash attention off) and with `flash_attn=True` (llama.cpp's default,
  auto, turns it on, and so does llmp's context);
* llmp, one request: the 256 inputs in one body (float encoding), to a real `llmp` server
  on 127.0.0.1 (HTTP, auth, limits, usage rows included);
* llmp, 256 requests: one input per request, 32 in flight (the engine packs concurrent
  requests into shared decodes).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

WORDS = ("the quick brown fox jumps over the lazy dog while a language model predicts the "
         "next token from the tokens before it and the weather is sunny in paris").split()


def texts(n: int) -> list[str]:
    """n distinct short inputs (6-12 words)."""
    out = []
    for i in range(n):
        k = 6 + i % 7
        out.append(" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(k)) + f" #{i}")
    return out


@contextlib.contextmanager
def server(home: Path, model: Path, threads: int):
    from llmp.config import Settings
    from llmp.models import registry
    from llmp.server import runner
    from llmp.server.app import create_app
    from llmp.server.state import DB
    from llmp.services import keys

    settings = Settings(home=home, n_threads=threads, n_batch=2048, keep_alive=-1,
                        log_level="warning").ensure_dirs()
    loop = asyncio.new_event_loop()
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()

    async def up():
        app = create_app(settings)
        registry.register(app[DB], model, model_id="embed")
        r, port = await runner.start(app, "127.0.0.1", 0, shutdown_timeout=5)
        return app, r, port

    app, r, port = asyncio.run_coroutine_threadsafe(up(), loop).result(120)
    key = keys.create(app[DB], {"name": "bench", "permissions": ["admin"]})["api_key"]
    try:
        yield f"http://127.0.0.1:{port}", key
    finally:
        asyncio.run_coroutine_threadsafe(r.cleanup(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        t.join(10)


async def llmp_run(url: str, key: str, inputs: list[str], per_request: int,
                   concurrency: int) -> tuple[float, np.ndarray]:
    import aiohttp

    headers = {"Authorization": f"Bearer {key}"}
    chunks = [inputs[i:i + per_request] for i in range(0, len(inputs), per_request)]
    out: list = [None] * len(chunks)
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(headers=headers) as s:
        async def one(i: int, chunk: list[str]) -> None:
            async with sem:
                async with s.post(url + "/v1/embeddings",
                                  json={"model": "embed", "input": chunk}) as resp:
                    body = await resp.json()
                    assert resp.status == 200, body
                    out[i] = [d["embedding"] for d in body["data"]]

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i, c) for i, c in enumerate(chunks)))
        dt = time.perf_counter() - t0
    return dt, np.array([v for c in out for v in c], dtype=np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--preset", default="embed",
                    help="synthetic preset without --model (embed-0.6b: Qwen3-Embedding-0.6B shape)")
    ap.add_argument("--inputs", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    import llama_cpp

    from llmp.config import physical_cores
    from llmp.models.synth import synthesize

    threads = args.threads or physical_cores()
    tmp = Path(tempfile.mkdtemp(prefix="llmp-embed-bench-"))
    model = args.model or synthesize(args.preset, tmp / f"{args.preset}-f16.gguf")
    inputs = texts(args.inputs)

    def baseline(flash_attn: bool) -> tuple[list[float], np.ndarray, int]:
        llm = llama_cpp.Llama(str(model), embedding=True, n_ctx=2048, n_batch=2048,
                              n_ubatch=2048, n_threads=threads, n_threads_batch=threads,
                              flash_attn=flash_attn, verbose=False)
        llm.embed(inputs[:8], normalize=True)  # warm-up
        ts = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            out = np.array(llm.embed(inputs, normalize=True), dtype=np.float64)
            ts.append(time.perf_counter() - t0)
        n = sum(len(llm.tokenize(t.encode())) for t in inputs)
        llm.close()
        return ts, out, n

    # llama-cpp-python's default (flash attention off), and with flash attention on, as
    # llama.cpp's own default (auto) and so llmp's context have it
    lcp, ref, n_tokens = baseline(False)
    lcp_fa, _, _ = baseline(True)

    with server(tmp / "home", model, threads) as (url, key):
        asyncio.run(llmp_run(url, key, inputs[:8], 8, 1))  # warm-up (loads the model)
        one, many = [], []
        for _ in range(args.rounds):
            dt, got = asyncio.run(llmp_run(url, key, inputs, len(inputs), 1))
            one.append(dt)
            dt2, got2 = asyncio.run(llmp_run(url, key, inputs, 1, 32))
            many.append(dt2)
    err = max(float(np.abs(got - ref).max()), float(np.abs(got2 - ref).max()))

    def row(name: str, ts: list[float]) -> str:
        best = min(ts)
        return (f"| {name} | {best * 1000:,.0f} | {statistics.median(ts) * 1000:,.0f} | "
                f"{len(inputs) / best:,.0f} | {n_tokens / best:,.0f} | {min(lcp) / best:.2f}x | "
                f"{min(lcp_fa) / best:.2f}x |")

    print(f"model {model} ({args.inputs} inputs, {n_tokens} tokens, {threads} threads, "
          f"best of {args.rounds}; max |llmp - llama-cpp-python| = {err:.2e})")
    print("| path | best ms | median ms | inputs/s | tokens/s | vs Llama.embed | "
          "vs Llama.embed (flash_attn) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(row("llama-cpp-python `Llama.embed` (in-process, defaults)", lcp))
    print(row("llama-cpp-python `Llama.embed` (in-process, flash_attn=True)", lcp_fa))
    print(row("llmp `/v1/embeddings`, 1 request x 256 inputs (HTTP)", one))
    print(row("llmp `/v1/embeddings`, 256 requests x 1 input, 32 in flight (HTTP)", many))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
