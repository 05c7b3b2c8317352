"""The model pool: load engines on first use, keep them `keep_alive` seconds, cap how many.

`await pool.get(model_id)` resolves the id to a `ModelSpec` (the registry's job, injected as
`resolve`), loads it in a worker thread the first time (concurrent callers share one load),
and returns its `Engine`. A reaper task unloads engines idle for longer than keep_alive
(`keep_alive < 0`: never). Loading beyond `max_loaded_models` first unloads the least
recently used idle engine; when every loaded engine is busy the new one loads anyway and
the reaper brings the count back down once they go idle.

LoRA: a spec with `lora` (an adapter model) loads its base (`path`, pooled under the base's
`id`) once, loads the adapters into that engine once each, and returns an `AdapterEngine`:
the base engine seen under the adapter's id, its requests tagged with the adapter set.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from llmp.config import Settings
from llmp.engine.embed import EmbeddingEngine
from llmp.engine.engine import Engine, LoraSet
from llmp.engine.types import Completion, Delta, GenerationRequest
from llmp.errors import NotFoundError
from llmp.logs import event

log = logging.getLogger("llmp.engine")
#: how often an engine whose model was removed is checked for idleness before it is unloaded
RETIRE_POLL_S = 0.1


@dataclass
class ModelSpec:
    id: str
    path: str
    n_ctx: int = 0  # total context over all slots (0: settings); split evenly per slot
    n_slots: int = 0  # 0: settings / sized from the device and free memory
    # LoRA adapters (GGUF path, scale) for requests to `served_as`; `id`/`path` are the base's
    lora: list[tuple[str, float]] = field(default_factory=list)
    served_as: str | None = None  # the adapter model's id (None: the base model itself)
    # what the model is for: "generate" (chat / completions), "embed" (an embedding model,
    # served by `EmbeddingEngine`), "guard" (a generative safety classifier for moderations)
    kind: str = "generate"
    guard_profile: str | None = None  # the guard's prompt/verdict profile (kind "guard")


class AdapterEngine:
    """A base model's engine seen through a LoRA adapter set: `model_id` is the adapter
    model's id and every request it runs carries the set; everything else is the base
    engine's (tokenizer, chat template, stats)."""

    def __init__(self, engine: Engine, model_id: str, lora: LoraSet):
        self.engine = engine
        self.model_id = model_id
        self.lora = lora

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    async def generate(self, req: GenerationRequest) -> AsyncIterator[Delta]:
        req.lora = self.lora
        async for d in self.engine.generate(req):
            yield d

    async def complete(self, req: GenerationRequest) -> Completion:
        req.lora = self.lora
        return await self.engine.complete(req)


class ModelPool:
    def __init__(self, settings: Settings, resolve: Callable[[str], ModelSpec], *,
                 backend_sampling: bool | None = None):
        self.settings = settings
        self.resolve = resolve
        self.backend_sampling = backend_sampling
        self._engines: dict[str, Engine] = {}
        self._loads: dict[str, asyncio.Future[Engine]] = {}
        self._reaper: asyncio.Task | None = None
        self._paths: dict[str, str] = {}  # model id -> the file its engine was loaded from
        self._retiring: set[asyncio.Task] = set()  # unloads of engines no longer registered

    @property
    def loading(self) -> list[str]:
        return list(self._loads)

    @property
    def loaded(self) -> list[str]:
        return list(self._engines)

    async def get(self, model_id: str) -> Engine:
        """The engine for `model_id` (an alias resolves to its spec's id), loading it if needed;
        for an adapter model, its base's engine as an `AdapterEngine`.

        The id is resolved on every call (one registry read), so a model removed from the
        registry (`llmp models rm`, possibly by another process) is refused at once with
        NotFoundError and its engine unloaded, and one registered again on another file is
        reloaded from that file."""
        try:
            spec = self.resolve(model_id)
        except NotFoundError:  # an unknown model (perhaps removed while loaded)
            self._retire(model_id)
            raise
        eng = self._engines.get(spec.id)
        if eng is not None and self._paths.get(spec.id, spec.path) != spec.path:
            self._retire(spec.id)  # the id now names another file
            eng = None
        if eng is None:
            eng = await self._load(spec)
        eng.last_used = time.monotonic()
        if spec.lora:
            await eng.load_adapters([p for p, _ in spec.lora])
            view: Any = AdapterEngine(eng, spec.served_as or spec.id,
                                      tuple((p, float(sc)) for p, sc in spec.lora))
            return view
        return eng

    async def _load(self, spec: ModelSpec) -> Engine:
        fut = self._loads.get(spec.id)
        if fut is not None:  # someone is loading it already: share that load
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._loads[spec.id] = fut
        t0 = time.perf_counter()
        event(log, "model.loading", f"loading model {spec.id}", model=spec.id, path=spec.path)
        try:
            await self._make_room()
            if spec.kind == "embed":
                eng: Any = await asyncio.to_thread(EmbeddingEngine.load, spec.id, spec.path,
                                                   self.settings)
            else:
                eng = await asyncio.to_thread(
                    Engine.load, spec.id, spec.path, self.settings, n_ctx=spec.n_ctx,
                    n_slots=spec.n_slots, backend_sampling=self.backend_sampling)
            eng.kind = spec.kind
            eng.guard_profile = spec.guard_profile
        except BaseException as e:
            event(log, "model.load_failed", f"loading model {spec.id} failed: {e}",
                  logging.ERROR, model=spec.id, seconds=round(time.perf_counter() - t0, 3))
            fut.set_exception(e)
            fut.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self._loads.pop(spec.id, None)
        self._engines[spec.id] = eng
        self._paths[spec.id] = spec.path
        st = eng.stats()
        event(log, "model.load", f"loaded model {spec.id}", model=spec.id,
              seconds=round(time.perf_counter() - t0, 3), device=st.get("device"),
              slots=st.get("slots_total"), slot_ctx=st.get("slot_ctx"),
              model_mb=_mb(st.get("model_bytes")), kv_cache_mb=_mb(st.get("kv_cache_bytes")))
        fut.set_result(eng)
        self._ensure_reaper()
        return eng

    def engine(self, model_id: str) -> Engine | None:
        """The loaded engine of `model_id` (a spec id), None when it is not loaded."""
        return self._engines.get(model_id)

    async def unload(self, model_id: str, reason: str = "requested") -> bool:
        eng = self._engines.pop(model_id, None)
        self._paths.pop(model_id, None)
        if eng is None:
            return False
        t0 = time.perf_counter()
        await asyncio.to_thread(eng.close)
        event(log, "model.unload", f"unloaded model {model_id} ({reason})", model=model_id,
              reason=reason, seconds=round(time.perf_counter() - t0, 3))
        return True

    def _retire(self, model_id: str) -> None:
        """Stop serving `model_id` now (no new request reaches its engine) and unload the
        engine once the requests it is running have finished."""
        eng = self._engines.pop(model_id, None)
        self._paths.pop(model_id, None)
        if eng is None:
            return

        async def close_when_idle() -> None:
            while eng.busy:
                await asyncio.sleep(RETIRE_POLL_S)
            await asyncio.to_thread(eng.close)
            event(log, "model.unload", f"unloaded model {model_id} (no longer registered)",
                  model=model_id, reason="removed")

        task = asyncio.get_running_loop().create_task(close_when_idle(),
                                                      name=f"llmp-pool-retire-{model_id}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _make_room(self) -> None:
        cap = max(1, self.settings.max_loaded_models)
        while len(self._engines) >= cap:
            idle = [e for e in self._engines.values() if not e.busy]
            if not idle:
                return
            await self.unload(min(idle, key=lambda e: e.last_used).model_id,
                              reason=f"room for another model (max_loaded_models {cap})")

    def _ensure_reaper(self) -> None:
        if self.settings.keep_alive >= 0 and (self._reaper is None or self._reaper.done()):
            self._reaper = asyncio.create_task(self._reap(), name="llmp-pool-reaper")

    async def _reap(self) -> None:
        keep = self.settings.keep_alive
        period = min(max(keep / 4, 0.05), 30.0)
        while self._engines:
            await asyncio.sleep(period)
            now = time.monotonic()
            idle = sorted((e for e in self._engines.values() if not e.busy), key=lambda e: e.last_used)
            over = len(self._engines) - max(1, self.settings.max_loaded_models)
            for e in idle:
                if now - e.last_used >= keep or over > 0:
                    over -= 1
                    await self.unload(e.model_id, reason="idle" if now - e.last_used >= keep
                                      else "over max_loaded_models")

    def status(self) -> list[dict[str, Any]]:
        out = [dict(e.stats(), id=mid, state="loaded") for mid, e in self._engines.items()]
        out += [{"id": mid, "state": "loading"} for mid in self._loads]
        return out

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for mid in list(self._engines):
            await self.unload(mid, reason="shutdown")
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)


def _mb(n: Any) -> float | None:
    return round(n / 1e6, 1) if isinstance(n, (int, float)) else None
