"""The embedding engine: pooled, L2-normalised embeddings of many inputs per `llama_decode`.

One `EmbeddingEngine` per loaded embedding model (registry category `embedding`): a
`llama_context` created with `embeddings = true` and the pooling the GGUF declares
(`<arch>.pooling_type`: mean, cls or last; a model that declares none is pooled by mean), and
a dedicated thread running the step loop, as the generation `Engine` does.

Requests (each a list of token sequences) queue by priority (interactive before batch) and
arrival. Every step packs as many waiting sequences as fit into ONE `llama_batch` (up to
`n_batch` tokens and `n_seq_max` sequences, each in its own sequence id, every token an
output as llama.cpp's embedding mode wants), clears the KV cache, decodes once, and reads the
pooled vector of each sequence (`llama_get_embeddings_seq`). So 100 inputs of one request,
or the inputs of many concurrent requests, share a few decodes instead of one call per input.
The asyncio side awaits a future resolved with `loop.call_soon_threadsafe`; nothing runs on
the event loop. One input may have at most `n_batch` tokens (`slot_ctx`): a whole sequence
is decoded in one micro-batch, which pooling over non-causal attention requires.
"""
from __future__ import annotations

import asyncio
import collections
import ctypes
import heapq
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import llama_cpp as L
import numpy as np

from llmp.config import Settings
from llmp.engine.native import Model, gpu_offload_supported
from llmp.engine.types import Priority
from llmp.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    ServerError,
    ServiceUnavailableError,
)

POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}
#: GGUF key saying the embeddings may be truncated (Matryoshka); see llmp.models.synth
MATRYOSHKA_KEY = "llmp.embedding.matryoshka"
#: the most sequences one decode holds (llama.cpp's own cap is llama_max_parallel_sequences)
MAX_SEQS = 256
#: the most tokens one decode holds (and so one input may have)
MAX_BATCH = 8192


@dataclass(eq=False)
class _EmbedJob:
    inputs: list[list[int]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    priority: int
    order: int
    out: np.ndarray = field(default_factory=lambda: np.empty((0, 0), dtype=np.float32))
    next: int = 0  # the next input to schedule
    done: int = 0  # inputs embedded
    submitted: float = field(default_factory=time.perf_counter)

    @property
    def cancelled(self) -> bool:
        return self.future.done()


def _resolve(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        if isinstance(value, BaseException):
            fut.set_exception(value)
        else:
            fut.set_result(value)


class EmbeddingEngine:
    """One loaded embedding model computing batched embeddings (see the module docstring)."""

    kind = "embed"

    def __init__(self, model_id: str, model: Model, settings: Settings, *, n_batch: int = 0):
        self.model_id = model_id
        self.model = model
        self.settings = settings
        gpu = gpu_offload_supported() and settings.n_gpu_layers != 0
        self.device = "gpu" if gpu else "cpu"
        info = model.info
        arch = model.meta("general.architecture") or "llama"
        declared = model.meta(f"{arch}.pooling_type")
        pooling = int(declared) if declared and declared.isdigit() else 0
        if pooling not in (1, 2, 3):
            pooling = 1  # none / rank / absent: mean pooling gives one vector per input
        self.pooling = POOLING_NAMES[pooling]
        self.truncatable = (model.meta(MATRYOSHKA_KEY) or "").lower() in ("true", "1")
        n = n_batch or settings.n_batch
        n = max(32, min(n, MAX_BATCH, info.n_ctx_train or MAX_BATCH))
        params = L.llama_context_default_params()
        params.embeddings = True
        params.pooling_type = pooling
        params.n_ctx = n
        params.n_batch = params.n_ubatch = n
        params.n_seq_max = min(n, MAX_SEQS, int(L.llama_max_parallel_sequences()))
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = settings.threads
        params.no_perf = True
        self.ctx = L.llama_init_from_model(model.ptr, params)
        if not self.ctx:
            raise ServerError(f"llama.cpp could not create an embedding context for {model_id}")
        self.n_batch = n
        self.n_seq_max = int(L.llama_n_seq_max(self.ctx))
        self.slot_ctx = n  # the most tokens of one input
        self.n_slots = 8  # requests a batch runner keeps in flight (all share each decode)
        self.n_embd = int(L.llama_model_n_embd(model.ptr))
        self._mem = L.llama_get_memory(self.ctx)
        self._batch = L.llama_batch_init(n, 0, 1)
        self._pending: list[tuple[int, int, _EmbedJob]] = []
        self._cv = threading.Condition()
        self._order = itertools.count()
        self._stopping = False
        self._running: list[_EmbedJob] = []
        self.loaded_at = time.time()
        self.last_used = time.monotonic()
        self._counters: collections.Counter = collections.Counter()
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._thread = threading.Thread(target=self._run, name=f"llmp-embed-{model_id}",
                                        daemon=True)
        self._thread.start()

    @classmethod
    def load(cls, model_id: str, path: str, settings: Settings, *, n_batch: int = 0,
             **_: Any) -> EmbeddingEngine:
        """Load a GGUF file and start its engine (blocking: call it in a worker thread)."""
        model = Model(path, n_gpu_layers=settings.n_gpu_layers, log_level=settings.log_level)
        try:
            return cls(model_id, model, settings, n_batch=n_batch)
        except BaseException:
            model.free()
            raise

    # ------------------------------------------------------------------ text
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """An input as llama-cpp-python's `Llama.embed` tokenizes it: the model's BOS/EOS
        added as its vocabulary asks, special-token text not parsed."""
        return self.model.tokenize(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids: list[int]) -> str:
        return self.model.detokenize(ids)

    # ------------------------------------------------------------------ async API
    async def embed(self, inputs: list[list[int]], *,
                    priority: Priority = Priority.INTERACTIVE) -> np.ndarray:
        """L2-normalised pooled embeddings, one row per input (float32, n_inputs x n_embd)."""
        n_vocab = self.model.n_vocab
        for i, toks in enumerate(inputs):
            if not toks:
                raise InvalidRequestError(f"Invalid 'input[{i}]': an input may not be empty",
                                          param="input", code="invalid_parameter")
            if len(toks) > self.slot_ctx:
                raise ContextLengthExceededError(
                    f"This model's maximum input is {self.slot_ctx} tokens; input {i} has "
                    f"{len(toks)} tokens. Shorten it.", param="input")
            if not all(0 <= t < n_vocab for t in toks):
                raise InvalidRequestError(
                    f"Invalid 'input': token ids must be from 0 to {n_vocab - 1} for "
                    f"{self.model_id}", param="input", code="invalid_parameter")
        loop = asyncio.get_running_loop()
        job = _EmbedJob(inputs=inputs, loop=loop, future=loop.create_future(),
                        priority=int(priority), order=next(self._order))
        job.out = np.empty((len(inputs), self.n_embd), dtype=np.float32)
        with self._cv:
            if self._stopping:
                raise ServiceUnavailableError(f"model {self.model_id} is unloading; retry")
            if len(self._pending) >= self.settings.queue_size:
                raise ServiceUnavailableError(
                    f"model {self.model_id} is overloaded ({len(self._pending)} requests "
                    "waiting); retry later")
            heapq.heappush(self._pending, (job.priority, job.order, job))
            self.last_used = time.monotonic()
            self._cv.notify()
        if not inputs:
            _resolve(job.future, job.out)
        try:
            return await job.future
        finally:
            if not job.future.done():  # cancelled: the step loop skips what is left of it
                job.future.cancel()
                with self._cv:
                    self._cv.notify()

    # ------------------------------------------------------------------ status
    @property
    def busy(self) -> bool:
        with self._cv:
            return bool(self._pending) or bool(self._running)

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        window = [n for t, n in list(self._recent) if now - t <= 10.0]
        c = self._counters
        return {
            "model": self.model_id, "kind": self.kind, "device": self.device,
            "pooling": self.pooling, "n_embd": self.n_embd,
            "slots_busy": len(self._running), "slots_total": self.n_slots,
            "slot_ctx": self.slot_ctx, "queue_depth": len(self._pending),
            "requests_total": c["requests"], "inputs_total": c["inputs"],
            "prompt_tokens_total": c["prompt_tokens"], "decodes_total": c["decodes"],
            "tokens_per_second": round(sum(window) / 10.0, 2),
            "model_bytes": self.model.info.size_bytes, "loaded_at": self.loaded_at,
            "idle_seconds": round(now - self.last_used, 1) if not self.busy else 0.0,
        }

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        with self._cv:
            if self._stopping:
                return
            self._stopping = True
            self._cv.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()
        err = ServiceUnavailableError(f"model {self.model_id} was unloaded")
        for _, _, job in self._pending:
            self._send(job, err)
        self._pending.clear()
        L.llama_batch_free(self._batch)
        L.llama_free(self.ctx)
        self.ctx = None
        self.model.free()

    # ------------------------------------------------------------------ the step thread
    @staticmethod
    def _send(job: _EmbedJob, value: Any) -> None:
        try:
            job.loop.call_soon_threadsafe(_resolve, job.future, value)
        except RuntimeError:  # the caller's loop is closed
            pass

    def _take(self) -> list[tuple[_EmbedJob, int]]:
        """Under the lock: the (job, input index) pairs of the next decode, best priority
        first, as many as fit in n_batch tokens and n_seq_max sequences."""
        picked: list[tuple[_EmbedJob, int]] = []
        tokens = 0
        while self._pending and len(picked) < self.n_seq_max:
            _, _, job = self._pending[0]
            if job.cancelled:
                heapq.heappop(self._pending)
                continue
            n = len(job.inputs[job.next])
            if tokens + n > self.n_batch:
                break
            if job.next == 0:
                self._counters["requests"] += 1
            picked.append((job, job.next))
            tokens += n
            job.next += 1
            if job.next == len(job.inputs):
                heapq.heappop(self._pending)
        return picked

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._pending:
                    self._cv.wait()
                if self._stopping:
                    return
                picked = self._take()
                self._running = list({id(j): j for j, _ in picked}.values())
            if picked:
                try:
                    self._decode(picked)
                except Exception as e:  # noqa: BLE001 - fail the jobs of this decode, go on
                    err = e if isinstance(e, (ServerError, InvalidRequestError)) else \
                        ServerError(f"embedding decode failed: {e}")
                    for job in {id(j): j for j, _ in picked}.values():
                        self._send(job, err)
                        job.next = len(job.inputs)
                        with self._cv:
                            self._pending = [p for p in self._pending if p[2] is not job]
                            heapq.heapify(self._pending)
            with self._cv:
                self._running = []
                self.last_used = time.monotonic()

    def _decode(self, picked: list[tuple[_EmbedJob, int]]) -> None:
        b = self._batch
        n = 0
        for seq, (job, i) in enumerate(picked):
            for pos, tok in enumerate(job.inputs[i]):
                b.token[n] = tok
                b.pos[n] = pos
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = seq
                b.logits[n] = True  # embedding mode: every token is an output
                n += 1
        b.n_tokens = n
        L.llama_memory_clear(self._mem, True)
        rc = L.llama_decode(self.ctx, b)
        if rc != 0:
            raise ServerError(f"llama_decode failed ({rc}) computing embeddings")
        d = self.n_embd
        finished = []
        for seq, (job, i) in enumerate(picked):
            ptr = L.llama_get_embeddings_seq(self.ctx, seq)
            if not ptr:
                raise ServerError("llama.cpp returned no pooled embedding")
            v = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (d,))
            norm = float(np.linalg.norm(v.astype(np.float64)))
            job.out[i] = v / norm if norm > 0 else v
            job.done += 1
            if job.done == len(job.inputs):
                finished.append(job)
        self._counters["decodes"] += 1
        self._counters["inputs"] += len(picked)
        self._counters["prompt_tokens"] += n
        t = time.monotonic()
        self._recent.append((t, n))
        while t - self._recent[0][0] > 10.0:
            self._recent.popleft()
        for job in finished:
            self._send(job, job.out)
