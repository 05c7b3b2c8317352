"""The engine: continuous batching over one llama.cpp context with N sequence slots.

One `Engine` per loaded model. A dedicated thread runs the step loop; every step builds ONE
`llama_batch` holding the next token of every decoding slot plus chunks of the prompts of
admitting slots (chunked prefill under the `n_batch` token budget), calls `llama_decode`
(ctypes releases the GIL meanwhile), then samples one token per slot that produced logits.
Requests join and leave between steps.

The asyncio side submits jobs through a condition-guarded priority queue and receives
`Delta`s through an `asyncio.Queue` fed with `loop.call_soon_threadsafe`, once per step and
event loop for all the step's deltas (`_flush`).

Prefix cache: each slot keeps the tokens whose KV it holds; a new request goes to the free
slot sharing the longest prefix with its prompt, `llama_memory_seq_rm` drops the rest and
only the new suffix is prefilled (`usage.cached_tokens`).

Preemption: an interactive request that finds every slot busy takes the slot of the batch
job that generated least. That job goes back to the queue keeping its progress (tokens,
text stream, sampler chain); when admitted again it prefills prompt + generated tokens (only
the missing suffix, thanks to the prefix cache) and goes on as if never interrupted.

Sampling: on the CPU per slot (`llama_sampler_sample`), or, when `backend_sampling` is on
and the request's parameters allow it (see `sampling.backend_capable`), inside the decode
graph via `llama_set_sampler` + `llama_get_sampled_token_ith` -- much faster on a GPU at
high concurrency. Context size semantics follow llama-server: `n_ctx` is the total, split
evenly over the slots; a prompt that does not fit one slot is rejected, generation that
fills it ends with `finish_reason="length"`.

LoRA: adapters are loaded once per engine (`load_adapters`, run on the step thread between
steps; the base model is not reloaded) and a request names its adapter set (`req.lora`).
llama.cpp applies one set to a whole decode, so each step serves one *group* of slots (those
with the same set) and `llama_set_adapters_lora` switches sets between steps. Groups take
turns, least recently served first, each for a quantum of steps while the others wait: a
switch costs llama.cpp a graph re-reservation, so the quantum is sized from measurements
(`_quantum`: switching takes at most ~10% of a turn, between LORA_QUANTUM_MIN and _MAX
steps). Turns keep every group moving; none starves. With one
group (a base-only workload) nothing changes. A slot's prefix cache is only reused by a job
with the same adapter set: KV computed under another set is not the same.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import ctypes
import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import llama_cpp as L
import numpy as np

from llmp.config import Settings
from llmp.engine.chat import render_chat
from llmp.engine.native import Model, gpu_offload_supported
from llmp.engine.sampling import SamplerChain, backend_capable, token_logprob
from llmp.engine.textstream import TextStream
from llmp.engine.types import (
    ChatPrompt,
    Completion,
    Delta,
    GenerationRequest,
    Priority,
    SamplingParams,
    TokenLogprob,
    Usage,
)
from llmp.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    LlmpError,
    ServerError,
    ServiceUnavailableError,
)
from llmp.logs import event

log = logging.getLogger("llmp.engine")

#: at most one "queue full" log line per engine per this many seconds
QUEUE_FULL_LOG_S = 5.0

CPU_DEFAULT_SLOTS = 8
GPU_DEFAULT_SLOTS = 64
# steps a group of slots with one adapter set runs before the next group's turn (see `_quantum`)
LORA_QUANTUM_MIN = 4
LORA_QUANTUM_MAX = 32
LORA_SWITCH_SHARE = 0.1  # the share of a turn that switching adapter sets may take

LoraSet = tuple[tuple[str, float], ...]  # (adapter GGUF path, scale) pairs; () is the base


@dataclass(eq=False)
class _Job:
    """A request and its generation progress. The progress lives here, not in the slot, so
    that a preempted job (see `Engine._suspend`) keeps it while it waits for a slot again."""
    req: GenerationRequest
    tokens: list[int]  # the prompt
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue
    chain: SamplerChain  # keeps penalty / grammar / RNG state across a preemption
    text: TextStream
    backend: bool
    order: int
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    ttft_sent: bool = False
    generated: list[int] = field(default_factory=list)  # every token sampled so far
    ids: list[int] = field(default_factory=list)  # sampled tokens not yet sent
    lps: list[TokenLogprob] = field(default_factory=list)  # their logprobs
    cached: int | None = None  # prompt tokens found in the KV cache; None until first started
    scores: list[float] | None = None  # a scoring job's result (see `Engine.score`)
    # the prompt's logprobs (`GenerationRequest.prompt_logprobs`): entry k for token k + 1
    prompt_lps: list[TokenLogprob] = field(default_factory=list)
    prompt_lps_sent: bool = False
    first_at: float | None = None

    def context(self) -> list[int]:
        """The tokens to have in the KV cache before the next sample: the prompt, plus what
        was generated before a preemption."""
        return self.tokens + self.generated

    @property
    def lora(self) -> LoraSet:
        return self.req.lora

    def send(self, item: Delta | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:  # the caller's loop is closed: nobody is listening any more
            self.cancelled = True


@dataclass(eq=False)
class _Slot:
    seq: int
    cache: list[int] = field(default_factory=list)  # tokens whose KV this sequence holds
    job: _Job | None = None
    todo: list[int] = field(default_factory=list)  # tokens still to prefill
    last: int | None = None  # sampled token, decoded in the next step
    out_idx: int = -1  # batch index of this slot's logits in the current step
    prompt_idx: list[tuple[int, int]] = field(default_factory=list)  # (batch index, position)
    lora: LoraSet = ()  # the adapter set its cached KV was computed with

    @property
    def running(self) -> _Job:
        """The job of a slot known to be busy."""
        assert self.job is not None, f"slot {self.seq} has no job"
        return self.job


def _deliver(items: list[tuple[_Job, Delta]]) -> None:
    """On the event loop: hand one step's deltas to their requests."""
    for job, d in items:
        job.out.put_nowait(d)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


class Engine:
    """One loaded model serving many concurrent requests (see the module docstring)."""

    kind = "generate"  # or "guard" (set by the pool from the model's spec)
    guard_profile: str | None = None

    def __init__(self, model_id: str, model: Model, settings: Settings, *, n_ctx: int = 0,
                 n_slots: int = 0, backend_sampling: bool | None = None):
        self.model_id = model_id
        self.model = model
        self.settings = settings
        gpu = gpu_offload_supported() and settings.n_gpu_layers != 0
        self.device = "gpu" if gpu else "cpu"
        self.backend_sampling = gpu if backend_sampling is None else backend_sampling
        info = model.info
        slots = n_slots or settings.n_slots
        total = n_ctx or settings.n_ctx
        slot_ctx = min(total // slots if total and slots else settings.slot_ctx, info.n_ctx_train)
        if not slots:
            slots = GPU_DEFAULT_SLOTS if gpu else CPU_DEFAULT_SLOTS
            if total:
                slot_ctx = min(max(256, total // slots), info.n_ctx_train)
            if not gpu:  # keep the KV cache within half of the free host memory
                fit = _available_memory() // 2 // max(1, info.kv_bytes_per_token * slot_ctx)
                slots = max(1, min(slots, fit))
        self.n_batch = max(settings.n_batch, slots)
        params = L.llama_context_default_params()
        params.n_ctx = slot_ctx * slots
        params.n_seq_max = slots
        params.n_batch = self.n_batch
        params.n_ubatch = min(512, self.n_batch)
        params.n_threads = params.n_threads_batch = settings.threads
        params.kv_unified = False  # one KV stream per slot: n_ctx / n_slots each
        params.no_perf = True
        self.ctx = L.llama_init_from_model(model.ptr, params)
        if not self.ctx:
            raise ServerError(f"llama.cpp could not create a context for {model_id} "
                              f"({slots} slots x {slot_ctx} tokens)")
        self.n_slots = int(L.llama_n_seq_max(self.ctx))
        self.slot_ctx = int(L.llama_n_ctx_seq(self.ctx))
        self._mem = L.llama_get_memory(self.ctx)
        self._batch = L.llama_batch_init(self.n_batch, 0, 1)
        self._slots = [_Slot(seq=i) for i in range(self.n_slots)]
        self._pending: list[tuple[int, int, _Job]] = []
        self._outbox: list[tuple[_Job, Delta]] = []  # this step's deltas, see `_flush`
        self._cv = threading.Condition()
        self._order = itertools.count()
        self._stopping = False
        self.loaded_at = time.time()
        self.last_used = time.monotonic()
        self._counters: collections.Counter[str] = collections.Counter()
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._adapters: dict[str, Any] = {}  # GGUF path -> llama_adapter_lora pointer
        self._calls: list[tuple[Any, concurrent.futures.Future]] = []  # run on the step thread
        self._applied: LoraSet = ()  # the adapter set now set on the context
        self._group: LoraSet | None = None  # the group of slots being served
        self._group_left = 0  # steps left in its turn
        self._step_s = 0.0  # moving averages: a step's decode time, and what a switch adds
        self._switch_s = 0.0
        self._served: dict[LoraSet, int] = {}  # group -> step number of its last turn
        self._steps = 0
        self._thread = threading.Thread(target=self._run, name=f"llmp-engine-{model_id}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, model_id: str, path: str, settings: Settings, *, n_ctx: int = 0, n_slots: int = 0,
             backend_sampling: bool | None = None) -> Engine:
        """Load a GGUF file and start its engine (blocking: call it in a worker thread)."""
        model = Model(path, n_gpu_layers=settings.n_gpu_layers, log_level=settings.log_level)
        try:
            return cls(model_id, model, settings, n_ctx=n_ctx, n_slots=n_slots,
                       backend_sampling=backend_sampling)
        except BaseException:
            model.free()
            raise

    # ------------------------------------------------------------------ text
    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = True) -> list[int]:
        return self.model.tokenize(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids: list[int]) -> str:
        return self.model.detokenize(ids)

    def render_chat(self, messages: list[dict], *, tools: list[dict] | None = None,
                    tool_choice: Any = None, response_format: dict | None = None,
                    **template_kwargs: Any) -> ChatPrompt:
        return render_chat(self.model, messages, tools=tools, tool_choice=tool_choice,
                           response_format=response_format, **template_kwargs)

    # ------------------------------------------------------------------ LoRA adapters
    @property
    def adapters(self) -> list[str]:
        return list(self._adapters)

    async def load_adapters(self, paths: list[str]) -> None:
        """Load the adapters not loaded yet (once each; the base model stays as it is).
        Runs on the step thread between two steps: llama.cpp's adapter list is read while a
        step builds its graph."""
        todo = [p for p in dict.fromkeys(paths) if p not in self._adapters]
        if todo:
            def load_all() -> None:
                for p in todo:
                    self._load_adapter(p)

            await asyncio.wrap_future(self._call(load_all))

    def _load_adapter(self, path: str) -> None:
        if path in self._adapters:
            return
        ptr = L.llama_adapter_lora_init(self.model.ptr, path.encode())
        if not ptr:
            raise InvalidRequestError(f"llama.cpp could not load the LoRA adapter {path} on "
                                      f"{self.model_id}", param="model", code="invalid_adapter")
        self._adapters[path] = ptr
        self._counters["adapters_loaded"] += 1

    def _call(self, fn: Any) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            if self._stopping:
                raise ServiceUnavailableError(f"model {self.model_id} is unloading; retry")
            self._calls.append((fn, fut))
            self._cv.notify()
        return fut

    def _run_calls(self) -> None:
        with self._cv:
            calls, self._calls = self._calls, []
        for fn, fut in calls:
            try:
                fut.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                fut.set_exception(e)

    def _apply(self, lora: LoraSet) -> None:
        """Set the context's adapter set (llama.cpp re-reserves its graph on a change)."""
        if lora == self._applied:
            return
        n = len(lora)
        arr = (L.llama_adapter_lora_p_ctypes * max(1, n))(*[self._adapters[p] for p, _ in lora])
        scales = (ctypes.c_float * max(1, n))(*[float(sc) for _, sc in lora])
        L.llama_set_adapters_lora(self.ctx, arr if n else None, n, scales if n else None)
        self._applied = lora
        self._counters["adapter_switches"] += 1

    # ------------------------------------------------------------------ async API
    async def generate(self, req: GenerationRequest) -> AsyncGenerator[Delta, None]:
        """Stream `Delta`s; the last carries `finish_reason` and `usage`.

        Leaving the loop early (or cancelling the task) frees the slot at the next step."""
        job = self._make_job(req)
        self._submit(job)
        done = False
        try:
            while True:
                item = await job.out.get()
                if isinstance(item, BaseException):
                    done = True
                    raise item
                done = item.finish_reason is not None
                yield item
                if done:
                    return
        finally:
            if not done:
                self._cancel(job)

    async def complete(self, req: GenerationRequest) -> Completion:
        parts: list[str] = []
        ids: list[int] = []
        lps: list[TokenLogprob] | None = [] if req.params.logprobs is not None else None
        ttft = None
        t0 = time.perf_counter()
        async for d in self.generate(req):
            parts.append(d.text)
            ids.extend(d.token_ids)
            if lps is not None and d.logprobs:
                lps.extend(d.logprobs)
            if d.ttft is not None:
                ttft = d.ttft
            if d.finish_reason is not None:
                return Completion(text="".join(parts), finish_reason=d.finish_reason,
                                  usage=d.usage or Usage(), token_ids=ids, logprobs=lps, ttft=ttft,
                                  latency=time.perf_counter() - t0)
        raise ServerError("generation ended without a finish reason")  # pragma: no cover

    async def score(self, tokens: list[int], candidates: list[int], *,
                    priority: Priority = Priority.INTERACTIVE, request_id: str = "") -> list[float]:
        """The log-probabilities of `candidates` as the token following `tokens`: the
        log-softmax over the whole vocabulary of the logits at the last prompt position.

        Runs as a request of the scheduler (continuous batching, prefix cache, priorities):
        scoring several continuations of one prompt one after another prefills only their
        new suffixes. This is what a guard model's moderation scores are read from."""
        n_vocab = self.model.n_vocab
        if not candidates or not all(0 <= t < n_vocab for t in candidates):
            raise InvalidRequestError("score candidates must be token ids of the vocabulary",
                                      code="invalid_parameter")
        req = GenerationRequest(prompt=list(tokens),
                                params=SamplingParams(temperature=0.0, max_tokens=1, logprobs=0),
                                priority=priority, request_id=request_id,
                                score_tokens=list(candidates))
        async for d in self.generate(req):
            if d.finish_reason is not None:
                return list(d.scores or [])
        raise ServerError("scoring ended without a result")  # pragma: no cover

    def _make_job(self, req: GenerationRequest) -> _Job:
        if isinstance(req.prompt, str):
            tokens = self.tokenize(req.prompt, add_special=req.add_special and self.model.add_bos)
        else:
            tokens = [int(t) for t in req.prompt]
            n_vocab = self.model.n_vocab
            if not all(0 <= t < n_vocab for t in tokens):  # llama_decode would fail the whole step
                raise InvalidRequestError(
                    f"Invalid '{req.prompt_param}': token ids must be from 0 to {n_vocab - 1} "
                    f"for {self.model_id}", param=req.prompt_param, code="invalid_parameter")
        if not tokens:
            tokens = [L.llama_vocab_bos(self.model.vocab)] if self.model.add_bos else self.tokenize(" ")
        missing = [p for p, _ in req.lora if p not in self._adapters]
        if missing:
            raise ServerError(f"LoRA adapter {missing[0]} is not loaded on {self.model_id}")
        if len(tokens) >= self.slot_ctx:
            raise ContextLengthExceededError(
                f"This model's context per request is {self.slot_ctx} tokens; the prompt has "
                f"{len(tokens)} tokens. Shorten the prompt.",
                param=req.prompt_param)
        backend = self.backend_sampling and backend_capable(req.params) \
            and req.prompt_logprobs is None
        chain = SamplerChain(self.model, req.params, backend=backend)
        return _Job(req=req, tokens=tokens, loop=asyncio.get_running_loop(), out=asyncio.Queue(),
                    chain=chain, text=TextStream(req.params.stop), backend=backend,
                    order=next(self._order))

    def _submit(self, job: _Job) -> None:
        with self._cv:
            if self._stopping:
                job.chain.free()
                raise ServiceUnavailableError(f"model {self.model_id} is unloading; retry")
            if len(self._pending) >= self.settings.queue_size:
                job.chain.free()
                self._queue_full_log()
                raise ServiceUnavailableError(
                    f"model {self.model_id} is overloaded ({len(self._pending)} requests waiting); retry later")
            self._enqueue(job)
            self.last_used = time.monotonic()
            self._cv.notify()

    def _queue_full_log(self) -> None:
        self._counters["queue_full"] += 1
        now = time.monotonic()
        if now - getattr(self, "_queue_full_logged", -QUEUE_FULL_LOG_S) >= QUEUE_FULL_LOG_S:
            self._queue_full_logged = now
            event(log, "queue.full", f"model {self.model_id}: queue full, refusing requests (503)",
                  logging.WARNING, model=self.model_id, queue_size=self.settings.queue_size,
                  refused_total=self._counters["queue_full"])

    def _enqueue(self, job: _Job) -> None:
        """Queue a job by priority, then arrival order (under the lock)."""
        heapq.heappush(self._pending, (int(job.req.priority), job.order, job))

    def _cancel(self, job: _Job) -> None:
        with self._cv:
            job.cancelled = True
            self._cv.notify()

    # ------------------------------------------------------------------ status
    @property
    def busy(self) -> bool:
        """Whether a request is queued or running. Read under the lock: `_admit` pops a job off
        the queue before it gives it a slot, and an unlocked read in between saw an idle engine."""
        with self._cv:
            return bool(self._pending) or any(s.job is not None for s in self._slots)

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        window = [n for t, n in list(self._recent) if now - t <= 10.0]
        c = self._counters
        busy = self.busy
        return {
            "model": self.model_id,
            "device": self.device,
            "slots_busy": sum(1 for s in self._slots if s.job is not None),
            "slots_total": self.n_slots,
            "slot_ctx": self.slot_ctx,
            "queue_depth": len(self._pending),
            "requests_total": c["requests"],
            "prompt_tokens_total": c["prompt_tokens"],
            "cached_tokens_total": c["cached_tokens"],
            "generated_tokens_total": c["generated_tokens"],
            "preemptions_total": c["preemptions"],
            "adapters_loaded": len(self._adapters),
            "adapter_switches_total": c["adapter_switches"],
            "adapter_quantum_steps": self._quantum(),
            "tokens_per_second": round(sum(window) / 10.0, 2),
            "backend_sampling": self.backend_sampling,
            "model_bytes": self.model.info.size_bytes,
            "kv_cache_bytes": self.model.info.kv_bytes_per_token * self.slot_ctx * self.n_slots,
            "loaded_at": self.loaded_at,
            "idle_seconds": round(now - self.last_used, 1) if not busy else 0.0,
        }

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        """Stop the step thread, fail waiting requests, free llama.cpp memory."""
        with self._cv:
            if self._stopping:
                return
            self._stopping = True
            self._cv.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()
        for _, fut in self._calls:
            fut.set_exception(ServiceUnavailableError(f"model {self.model_id} was unloaded"))
        self._calls.clear()
        err = ServiceUnavailableError(f"model {self.model_id} was unloaded")
        for _, _, job in self._pending:
            job.send(err)
            job.chain.free()
        self._pending.clear()
        for s in self._slots:
            if s.job is not None:
                s.job.send(err)
                self._release(s)
        L.llama_batch_free(self._batch)
        L.llama_free(self.ctx)
        self.ctx = None
        self.model.free()

    # ------------------------------------------------------------------ the step thread
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._pending and not self._calls and all(
                        s.job is None for s in self._slots):
                    self._cv.wait()
                if self._stopping:
                    self._flush()
                    return
                calls = bool(self._calls)
            if calls:
                self._run_calls()
            with self._cv:
                for s in self._slots:
                    if s.job is not None and s.job.cancelled:
                        self._release(s)
                self._admit()
            if any(s.job is not None for s in self._slots):
                try:
                    self._step()
                except Exception as e:  # keep serving: fail the jobs of this step, reset their KV
                    for s in self._slots:
                        if s.job is not None:
                            self._fail(s, e)
            if not any(s.job is not None for s in self._slots):  # no `_step` to flush them
                self._flush()

    def _flush(self) -> None:
        """Send the deltas of the last step: one wake-up per event loop, not one per request
        (each wake-up costs a self-pipe write and a GIL hand-off to the loop's thread)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Delta]]] = {}
        for job, d in self._outbox:
            by_loop.setdefault(job.loop, []).append((job, d))
        self._outbox.clear()
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                for job, _ in items:
                    job.cancelled = True

    def _fail(self, slot: _Slot, e: Exception) -> None:
        """Deliver an error to the slot's job (after the deltas already queued for it, so the
        error comes last), free the slot and forget its KV cache."""
        self._flush()
        slot.running.send(e if isinstance(e, LlmpError) else ServerError(f"engine step failed: {e}"))
        self._release(slot)
        L.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
        slot.cache.clear()

    def _admit(self) -> None:
        """Move waiting jobs (best priority first) into free slots; called under the lock.

        Preemption: when no slot is free, a waiting job takes the slot of a running job of
        lower priority (an interactive request never waits behind batch work)."""
        while self._pending:
            _, _, job = self._pending[0]
            if job.cancelled:
                heapq.heappop(self._pending)
                job.chain.free()
                continue
            free = [s for s in self._slots if s.job is None]
            if not free:
                victim = self._victim(job)
                if victim is None:
                    return
                self._suspend(victim)  # queued behind `job`: its priority is lower
                free = [victim]
            heapq.heappop(self._pending)
            tokens = job.context()
            # the longest cached prefix computed with the job's adapter set (another set's KV
            # differs); among slots with none, one whose cache is worth least
            slot = max(free, key=lambda s: (_common_prefix(s.cache, tokens) if s.lora == job.lora
                                            else 0, -len(s.cache)))
            try:
                self._start(slot, job, tokens)
            except Exception as e:
                slot.job = job
                self._fail(slot, e)

    def _start(self, slot: _Slot, job: _Job, tokens: list[int]) -> None:
        """Give the slot to the job: keep the KV of the longest common prefix of `tokens`
        (`job.context()`), queue the rest for prefill. A resumed (preempted) job prefills its
        prompt plus the tokens it had generated, so its next sample sees the context it would
        have had uninterrupted (a recomputed KV can differ in the last bits: greedy output stays
        the same)."""
        keep = min(_common_prefix(slot.cache, tokens), len(tokens) - 1)
        if slot.lora != job.lora or (job.req.prompt_logprobs is not None
                                     and len(job.prompt_lps) < len(job.tokens) - 1):
            keep = 0  # (prompt logprobs: every position's logits are needed)
            slot.lora = job.lora
        if not L.llama_memory_seq_rm(self._mem, slot.seq, keep, -1):
            L.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
            keep = 0
        del slot.cache[keep:]
        slot.job, slot.todo, slot.last, slot.out_idx = job, tokens[keep:], None, -1
        slot.prompt_idx = []
        if job.backend:
            L.llama_set_sampler(self.ctx, slot.seq, job.chain.ptr)
        if job.cached is not None:  # resumed after a preemption: already counted
            return
        job.cached = keep
        self._counters["requests"] += 1
        self._counters["prompt_tokens"] += len(job.tokens)
        self._counters["cached_tokens"] += keep
        if job.req.params.max_tokens == 0 and job.req.prompt_logprobs is None:
            self._finish(slot, "length", "")  # (with prompt logprobs: once the prompt is read)

    def _victim(self, job: _Job) -> _Slot | None:
        """The slot to preempt for `job`: among those running a job of lower priority, the one
        that generated least, latest arrival first (the least work to redo); None if none."""
        running = [s for s in self._slots
                   if s.job is not None and s.job.req.priority > job.req.priority]
        return min(running, key=lambda s: (len(s.running.generated), -s.running.order),
                   default=None)

    def _suspend(self, slot: _Slot) -> None:
        """Preempt the slot's job: back to the queue with its original place, keeping its
        progress (generated tokens, text stream, sampler chain, unsent tokens). Its KV stays in
        the slot until the next job overwrites it; `_start` re-prefills whatever is missing."""
        job = self._detach(slot)
        if job.backend:  # llama.cpp attaches a backend chain only once: resume with a new one
            job.chain.free()  # (stateless for greedy; a seeded draw restarts from its seed)
            job.chain = SamplerChain(self.model, job.req.params, backend=True)
        self._enqueue(job)
        self._counters["preemptions"] += 1
        event(log, "preemption", f"model {self.model_id}: preempted a request of priority "
              f"{int(job.req.priority)} for a more urgent one", model=self.model_id,
              slot=slot.seq, generated=len(job.generated), preemptions_total=self._counters["preemptions"])

    def _detach(self, slot: _Slot) -> _Job:
        """Take the job off the slot (the KV cache and `slot.cache` are left as they are)."""
        job = slot.running
        if job.backend:
            L.llama_set_sampler(self.ctx, slot.seq, None)
        slot.job, slot.todo, slot.last = None, [], None
        return job

    def _release(self, slot: _Slot) -> None:
        """The job is over (finished, failed or cancelled): free the slot and the job's chain.
        The engine counts as used until then: `keep_alive` runs from the end of the last job."""
        if slot.job is not None:
            self._detach(slot).chain.free()
            self.last_used = time.monotonic()

    def _step(self) -> None:
        b = self._batch
        n = 0

        def put(tok: int, slot: _Slot, logits: bool) -> None:
            nonlocal n
            b.token[n] = tok
            b.pos[n] = len(slot.cache)
            b.n_seq_id[n] = 1
            b.seq_id[n][0] = slot.seq
            b.logits[n] = logits
            slot.cache.append(tok)
            n += 1

        active = self._serve_group([s for s in self._slots if s.job is not None])
        for s in active:
            s.out_idx = -1
            if s.last is not None:
                s.out_idx = n
                put(s.last, s, True)
                s.last = None
        budget = self.n_batch - n
        # prefill budget: interactive jobs first, then by arrival
        for s in sorted((s for s in active if s.todo), key=lambda s: (s.running.req.priority, s.running.order)):
            if budget <= 0:
                break
            chunk, s.todo = s.todo[:budget], s.todo[budget:]
            every = s.running.req.prompt_logprobs is not None
            for i, tok in enumerate(chunk):
                if every:
                    s.prompt_idx.append((n, len(s.cache)))
                put(tok, s, every or (not s.todo and i == len(chunk) - 1))
            if not s.todo:
                s.out_idx = n - 1
            budget -= len(chunk)
        b.n_tokens = n
        switched = active[0].running.lora != self._applied
        if switched:
            self._apply(active[0].running.lora)
        # The previous step's deltas: sent now, the event loop does its work while
        # llama_decode runs without the GIL instead of contending for it with this thread.
        self._flush()
        t0 = time.perf_counter()
        rc = L.llama_decode(self.ctx, b)
        if rc != 0:
            raise ServerError(f"llama_decode failed ({rc}): the KV cache is full or the batch is invalid")
        now = time.perf_counter()
        if switched:
            extra = max(0.0, now - t0 - self._step_s)
            self._switch_s = extra if not self._switch_s else 0.8 * self._switch_s + 0.2 * extra
        elif len(self._served) > 1:  # only measured while adapter groups take turns
            self._step_s = now - t0 if not self._step_s else 0.9 * self._step_s + 0.1 * (now - t0)
        produced = 0
        for s in active:
            if s.prompt_idx:
                self._prompt_logprobs(s)
            if s.out_idx >= 0 and s.job is not None:
                if s.job.req.params.max_tokens == 0:  # the prompt's logprobs only
                    self._finish(s, "length", "")
                    continue
                self._sample(s, now)
                produced += 1
        self._counters["generated_tokens"] += produced
        t = time.monotonic()
        self._recent.append((t, produced))
        while t - self._recent[0][0] > 10.0:
            self._recent.popleft()

    def _prompt_logprobs(self, s: _Slot) -> None:
        """Read the log-probability of each prompt token from the logits of the position
        before it (the positions this step prefilled)."""
        job = s.running
        k = job.req.prompt_logprobs or 0
        for idx, pos in s.prompt_idx:
            if pos + 1 < len(job.tokens) and pos == len(job.prompt_lps):
                job.prompt_lps.append(token_logprob(self.model, self.ctx, idx,
                                                    job.tokens[pos + 1], k))
        s.prompt_idx = []

    def _serve_group(self, active: list[_Slot]) -> list[_Slot]:
        """The slots this step serves: all of them when they share one adapter set (the
        common case), else one group's, in turns (see the module docstring)."""
        self._steps += 1
        first = active[0].running.lora
        if all(s.running.lora == first for s in active):
            self._group = first
            return active
        groups = {s.running.lora for s in active}
        if self._group not in groups or self._group_left <= 0:
            others = [g for g in groups if g != self._group] or list(groups)
            self._group = min(others, key=lambda g: self._served.get(g, -1))
            self._group_left = self._quantum()
        self._group_left -= 1
        self._served[self._group] = self._steps
        return [s for s in active if s.running.lora == self._group]

    def _quantum(self) -> int:
        """Steps per turn: enough that switching costs at most LORA_SWITCH_SHARE of a turn."""
        if not self._step_s or not self._switch_s:
            return LORA_QUANTUM_MIN
        want = self._switch_s / (LORA_SWITCH_SHARE * self._step_s)
        return int(min(LORA_QUANTUM_MAX, max(LORA_QUANTUM_MIN, -(-want // 1))))

    def _sample(self, s: _Slot, now: float) -> None:
        job = s.running
        p = job.req.params
        if job.req.score_tokens is not None:  # a scoring job: read the logits, generate nothing
            ptr = L.llama_get_logits_ith(self.ctx, s.out_idx)
            logits = np.ctypeslib.as_array(ptr, shape=(self.model.n_vocab,)).astype(np.float64)
            m = logits.max()
            lse = m + math.log(float(np.exp(logits - m).sum()))
            job.scores = [float(logits[t] - lse) for t in job.req.score_tokens]
            if job.first_at is None:
                job.first_at = now
            self._finish(s, "stop", "")
            return
        if job.backend:
            tok = int(L.llama_get_sampled_token_ith(self.ctx, s.out_idx))
        else:
            tok = job.chain.sample(self.ctx, s.out_idx)
        if job.first_at is None:
            job.first_at = now
        if tok in self.model.eog_tokens and not p.ignore_eos:
            self._finish(s, "stop", "")
            return
        job.generated.append(tok)
        job.ids.append(tok)
        if p.logprobs is not None:
            job.lps.append(token_logprob(self.model, self.ctx, s.out_idx, tok, p.logprobs))
        text = job.text.feed(self.model.piece(tok))
        if job.text.stopped:
            self._finish(s, "stop", text)
        elif p.max_tokens is not None and len(job.generated) >= p.max_tokens:
            self._finish(s, "length", text)
        elif len(s.cache) >= self.slot_ctx:
            self._finish(s, "length", text)
        else:
            s.last = tok
            if text or p.logprobs is not None:
                self._emit(s, text)

    def _emit(self, s: _Slot, text: str, finish: str | None = None, usage: Usage | None = None) -> None:
        job = s.running
        d = Delta(text=text, token_ids=job.ids, finish_reason=finish, usage=usage,
                  logprobs=job.lps if job.req.params.logprobs is not None else None,
                  scores=job.scores if finish is not None else None)
        if job.req.prompt_logprobs is not None and not job.prompt_lps_sent:
            d.prompt_token_ids = list(job.tokens)
            d.prompt_logprobs = [None, *job.prompt_lps]
            job.prompt_lps_sent = True
        if job.first_at is not None and not job.ttft_sent:
            d.ttft = job.first_at - job.submitted
            job.ttft_sent = True
        job.ids, job.lps = [], []
        self._outbox.append((job, d))

    def _finish(self, s: _Slot, reason: str, text: str) -> None:
        job = s.running
        text += job.text.finish()
        usage = Usage(prompt_tokens=len(job.tokens), completion_tokens=len(job.generated),
                      cached_tokens=job.cached or 0)
        self._emit(s, text, reason, usage)
        self._release(s)
