"""`llmp bench`: aggregate throughput and time to first token under concurrent load.

For each concurrency level it runs the same fixed workload (prompt of --prompt-tokens,
--gen-tokens generated with EOS ignored, a distinct first token per request so no prefix
cache helps) against:
  llmp      llmp's engine, in-process;
  baseline  llama-cpp-python's `Llama.create_completion`, serialized behind one lock (what
            llama-cpp-python's own server does);
  url       optionally any OpenAI-compatible server (--url: a running llmp, llama-server...).
and prints one table with the ratios llmp / baseline (and llmp / url).

`--adapters K` measures LoRA serving instead: at each level the same number of streams run
spread over K adapters (the model's registered adapters, else random ones of
`--adapter-rank`) and on the base alone, in one engine, and the table shows the ratio.
"""
from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Optional

import typer
from llama_cpp import Llama, StoppingCriteriaList
from rich.table import Table

from llmp.cli.ui import console
from llmp.config import Settings, load_settings
from llmp.engine.engine import Engine
from llmp.engine.types import GenerationRequest, SamplingParams
from llmp.errors import InvalidRequestError

_FILLER = "The quick brown fox jumps over the lazy dog. A language model predicts the next token. "


@dataclass
class Run:
    """One (target, concurrency) measurement."""
    tokens: int = 0
    seconds: float = 0.0
    ttfts: list[float] = field(default_factory=list)

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def ttft(self, q: float) -> float:
        if not self.ttfts:
            return 0.0
        xs = sorted(self.ttfts)
        return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]

    def as_dict(self) -> dict:
        return {"tokens_per_s": round(self.tps, 1), "ttft_p50_ms": round(self.ttft(0.5) * 1000, 1),
                "ttft_p95_ms": round(self.ttft(0.95) * 1000, 1), "tokens": self.tokens,
                "seconds": round(self.seconds, 3)}


def _prompts(engine: Engine, n_prompt: int, count: int, start: int) -> list[list[int]]:
    """`count` prompts of `n_prompt` tokens that share no prefix with each other nor with those
    of other levels or earlier runs (a distinct first token from `start` on), so that no
    prefix cache, in-process or in a long-running server, makes a level look faster."""
    base = engine.tokenize(_FILLER * (1 + n_prompt // 8))
    while len(base) < n_prompt:
        base += base
    base = base[:n_prompt]
    vocab = [t for t in range(engine.model.n_vocab) if t not in engine.model.eog_tokens and engine.model.piece(t)]
    return [[vocab[((start + i) * 7919) % len(vocab)]] + base[1:] for i in range(count)]


async def _bench_engine(engine: Engine, prompts: list[list[int]], conc: int, gen: int,
                        adapters: list[str] | None = None) -> Run:
    """`conc` streams over `prompts`; with `adapters`, request i uses adapter i mod K."""
    run = Run()
    sem = asyncio.Semaphore(conc)
    order = iter(range(len(prompts)))

    async def one(p: list[int]) -> None:
        i = next(order)
        lora = ((adapters[i % len(adapters)], 1.0),) if adapters else ()
        async with sem:
            c = await engine.complete(GenerationRequest(p, SamplingParams(
                temperature=0, max_tokens=gen, ignore_eos=True), lora=lora))
            run.tokens += c.usage.completion_tokens
            run.ttfts.append(c.ttft or 0.0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(p) for p in prompts))
    run.seconds = time.perf_counter() - t0
    return run


class _Baseline:
    """llama-cpp-python's high-level `Llama`, one request at a time (its server's behaviour)."""

    def __init__(self, path: str, n_ctx: int, threads: int, eog: frozenset[int]):
        self.llm = Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                         n_batch=512, verbose=False)
        self.lock = threading.Lock()
        self.bias = {t: -1e9 for t in eog}

    def complete(self, prompt: list[int], gen: int, t_submit: float) -> tuple[int, float]:
        # A stopping criterion counts tokens: create_completion skips its own max_tokens check
        # while the text ends in an incomplete UTF-8 character (frequent with random weights).
        produced = 0

        def enough(ids, logits) -> bool:
            nonlocal produced
            produced += 1
            return produced >= gen

        with self.lock:
            ttft = None
            for _ in self.llm.create_completion(prompt, max_tokens=gen, temperature=0, stream=True,
                                                logit_bias=self.bias, stopping_criteria=StoppingCriteriaList([enough])):
                if ttft is None:
                    ttft = time.perf_counter() - t_submit
            return produced, ttft or 0.0


async def _bench_baseline(b: _Baseline, prompts: list[list[int]], conc: int, gen: int) -> Run:
    run = Run()
    sem = asyncio.Semaphore(conc)

    async def one(p: list[int]) -> None:
        async with sem:
            n, ttft = await asyncio.to_thread(b.complete, p, gen, time.perf_counter())
            run.tokens += n
            run.ttfts.append(ttft)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(p) for p in prompts))
    run.seconds = time.perf_counter() - t0
    return run




async def _bench_url(url: str, model: str, api_key: str | None, texts: list[str] | list[list[int]], conc: int,
                     gen: int) -> Run:
    """Load an OpenAI-compatible server at `url` through llmp's one HTTP client
    (`llmp.client.AsyncClient` and its SSE parser)."""
    from llmp.client import AsyncClient, httpx

    run = Run()
    sem = asyncio.Semaphore(conc)

    async def one(client: AsyncClient, text: str | list[int]) -> None:
        async with sem:
            body = {"model": model, "prompt": text, "max_tokens": gen, "temperature": 0, "stream": True,
                    "ignore_eos": True, "stream_options": {"include_usage": True}}
            t0 = time.perf_counter()
            ttft, n, usage = None, 0, None
            async for data in client.stream("POST", "/v1/completions", json=body):
                if data.get("usage"):
                    usage = data["usage"].get("completion_tokens")
                if data.get("choices") and data["choices"][0].get("text"):
                    n += 1
                    if ttft is None:
                        ttft = time.perf_counter() - t0
            run.tokens += usage or n
            run.ttfts.append(ttft or 0.0)

    t0 = time.perf_counter()
    # One connection per request: llama-server closes the connection after a streamed
    # response although it announces keep-alive, so a pooled one fails on reuse.
    http = httpx.AsyncClient(timeout=httpx.Timeout(3600.0, connect=10.0),
                             limits=httpx.Limits(max_connections=None, max_keepalive_connections=0))
    async with AsyncClient(url, api_key or "", http=http) as client:
        try:
            await asyncio.gather(*(one(client, t) for t in texts))
        finally:
            await http.aclose()
    run.seconds = time.perf_counter() - t0
    return run


def _model_path(settings: Settings, model: str | None, preset: str | None) -> tuple[str, str]:
    if preset:
        from llmp.models.synth import PRESETS, synthesize
        if preset not in PRESETS:
            raise InvalidRequestError(f"unknown preset {preset!r} (one of {', '.join(PRESETS)})", param="preset")
        path = settings.models_dir / f"synth-{preset}.gguf"
        if not path.exists():
            settings.ensure_dirs()
            console.print(f"synthesizing the {preset} preset into {path} ...")
            synthesize(preset, path, dtype="f16")
        return f"synth-{preset}", str(path)
    if not model:
        raise InvalidRequestError("give --model (id or GGUF path) or --preset", param="model")
    if Path(model).expanduser().is_file():
        return Path(model).stem, str(Path(model).expanduser())
    from llmp.db import open_home
    from llmp.services.models import resolver
    spec = resolver(open_home(settings))(model)
    return spec.id, spec.path


def _adapter_paths(settings: Settings, model_id: str, path: str, k: int, rank: int) -> list[str]:
    """K adapters for the model: its registered ones first, then random ones (cached)."""
    from llmp.db import models as db_models
    from llmp.db import open_home
    from llmp.models.lora import synth_adapter

    out: list[str] = []
    db = open_home(settings)
    try:
        for child in db_models.children(db, model_id)[:k]:
            rec = db_models.get(db, child)
            if rec is not None:
                out.append(rec["path"])
    finally:
        db.close()
    folder = settings.adapters_dir / "bench"
    for i in range(len(out), k):
        target = folder / f"{Path(path).stem}-r{rank}-{i}.gguf"
        if not target.exists():
            synth_adapter(path, target, rank=rank, seed=i)
        out.append(str(target))
    return out


async def _main(settings: Settings, model_id: str, path: str, levels: list[int], n_prompt: int, gen: int,
                requests: int, baseline: bool, url: str | None, url_model: str | None, api_key: str | None,
                backend_sampling: bool | None, adapters: list[str] | None = None) -> dict[str, dict[int, Run]]:
    top = max(levels)
    engine = await asyncio.to_thread(Engine.load, model_id, path, settings.replace(
        n_slots=max(settings.n_slots, top), n_ctx=0, slot_ctx=n_prompt + gen + 8), backend_sampling=backend_sampling)
    if adapters:
        return await _main_adapters(engine, levels, n_prompt, gen, requests, adapters)
    results: dict[str, dict[int, Run]] = {"llmp": {}}
    try:
        base = _Baseline(path, 2 * (n_prompt + gen) + 256, settings.threads, engine.model.eog_tokens) if baseline else None
        start = random.randrange(1 << 20)  # this run's prompts differ from any earlier run's
        warm = _prompts(engine, n_prompt, 2, start)  # first decodes allocate graphs: keep them out of the figures
        start += 2
        await _bench_engine(engine, warm, 2, 4)
        if base is not None:
            await _bench_baseline(base, warm, 1, 4)
        for c in levels:
            prompts = _prompts(engine, n_prompt, max(c, requests or 4), start)
            start += len(prompts)
            results["llmp"][c] = await _bench_engine(engine, prompts, c, gen)
            if base is not None:
                results.setdefault("baseline", {})[c] = await _bench_baseline(base, prompts, c, gen)
            if url:
                texts = [engine.detokenize(p) for p in prompts]
                results.setdefault("url", {})[c] = await _bench_url(url, url_model or model_id, api_key, texts, c, gen)
    finally:
        await asyncio.to_thread(engine.close)
    return results


async def _main_adapters(engine: Engine, levels: list[int], n_prompt: int, gen: int,
                         requests: int, adapters: list[str]) -> dict[str, dict[int, Run]]:
    """Each level twice in one engine: the streams on the base, then spread over the adapters."""
    results: dict[str, dict[int, Run]] = {"base": {}, f"{len(adapters)} adapters": {}}
    try:
        await engine.load_adapters(adapters)
        start = random.randrange(1 << 20)
        warm = _prompts(engine, n_prompt, 2 * len(adapters), start)
        start += len(warm)
        await _bench_engine(engine, warm, len(warm), 4)
        await _bench_engine(engine, warm, len(warm), 4, adapters)
        for c in levels:
            for name, ads in (("base", None), (f"{len(adapters)} adapters", adapters)):
                prompts = _prompts(engine, n_prompt, max(c, requests or 4), start)
                start += len(prompts)
                results[name][c] = await _bench_engine(engine, prompts, c, gen, ads)
    finally:
        await asyncio.to_thread(engine.close)
    return results


def bench(
    what: Annotated[Optional[str], typer.Argument(
        metavar="[finetune]", help="`finetune`: training tokens/s through the fine-tuning job "
        "system of a running server against the same loop run directly (see `llmp finetune "
        "bench`).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Registered model id/alias or a GGUF path.")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Synthesize a model of this preset (tiny, small, 1b, 8b).")] = None,
    concurrency: Annotated[str, typer.Option(help="Comma-separated concurrency levels.")] = "1,4,16,64",
    prompt_tokens: Annotated[int, typer.Option(help="Prompt length of every request.")] = 128,
    gen_tokens: Annotated[int, typer.Option(help="Tokens generated per request (EOS ignored).")] = 128,
    requests: Annotated[int, typer.Option(
        show_default=False, help="Requests per level (default: the concurrency, at least 4).")] = 0,
    baseline: Annotated[bool, typer.Option(help="Also run serialized llama-cpp-python Llama.")] = True,
    url: Annotated[Optional[str], typer.Option(help="Also load an OpenAI-compatible server at this base URL.")] = None,
    url_model: Annotated[Optional[str], typer.Option(help="Model name to send to --url.")] = None,
    api_key: Annotated[Optional[str], typer.Option(envvar="LLMP_API_KEY", help="Bearer key for --url.")] = None,
    backend_sampling: Annotated[Optional[bool], typer.Option(
        "--backend-sampling/--cpu-sampling", help="Force sampling in the decode graph or on the CPU (default: GPU only).")] = None,
    adapters: Annotated[int, typer.Option(
        "--adapters", metavar="K", help="Measure LoRA serving: the streams spread over K adapters against "
        "the same streams on the base alone.")] = 0,
    adapter_rank: Annotated[int, typer.Option(
        help="Rank of the random adapters made when the model has fewer than K.")] = 16,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Measure generated tokens/s and time to first token at several concurrency levels.

    Examples:

      llmp bench --preset tiny --concurrency 1,4 --gen-tokens 32

      llmp bench -m qwen2.5-0.5b-instruct:q4_k_m --no-baseline --json
    """
    if what is not None:
        if what != "finetune":
            raise InvalidRequestError(f"unknown benchmark {what!r}; try `llmp bench finetune`")
        if not model:
            raise InvalidRequestError("`llmp bench finetune` needs --model (a model with a "
                                      "Hugging Face source)", param="model")
        from llmp.cli.finetune import bench_finetune

        bench_finetune(model, json_out=json_)
        return
    try:
        levels = sorted({int(x) for x in concurrency.split(",") if x.strip()})
    except ValueError:
        raise InvalidRequestError("--concurrency takes integers like 1,4,16", param="concurrency") from None
    if not levels or min(levels) < 1 or prompt_tokens < 1 or gen_tokens < 1:
        raise InvalidRequestError("concurrency, prompt and gen tokens must be >= 1", param="concurrency")
    settings = load_settings()
    model_id, path = _model_path(settings, model, preset)
    if adapters < 0 or adapter_rank < 1:
        raise InvalidRequestError("--adapters and --adapter-rank must be positive", param="adapters")
    paths = _adapter_paths(settings, model_id, path, adapters, adapter_rank) if adapters else None
    results = asyncio.run(_main(settings, model_id, path, levels, prompt_tokens, gen_tokens, requests,
                                baseline, url, url_model, api_key, backend_sampling, paths))
    if json_:
        console.print_json(data={"model": model_id, "prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens,
                                 "results": {n: {str(c): r.as_dict() for c, r in runs.items()}
                                             for n, runs in results.items()}})
        return
    table = Table(title=f"llmp bench: {model_id}, {prompt_tokens} prompt + {gen_tokens} generated tokens per request")
    table.add_column("concurrency", justify="right")
    for name in results:
        table.add_column(f"{name} tok/s", justify="right")
        table.add_column(f"{name} TTFT p50/p95 ms", justify="right")
    first = next(iter(results))
    others = [n for n in results if n != first]
    for n in others:
        table.add_column(f"{n}/{first}" if adapters else f"llmp/{n}", justify="right",
                         style="bold")
    for c in levels:
        row = [str(c)]
        for runs in results.values():
            r = runs[c]
            row += [f"{r.tps:,.1f}", f"{r.ttft(0.5) * 1000:,.0f} / {r.ttft(0.95) * 1000:,.0f}"]
        for n in others:
            o, f = results[n][c].tps, results[first][c].tps
            if adapters:
                row.append(f"{o / f:.2f}" if f else "-")
            else:
                row.append(f"{f / o:.2f}x" if o else "-")
        table.add_row(*row)
    console.print(table)

