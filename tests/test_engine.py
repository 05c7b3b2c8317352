"""The engine on the tiny synthetic model: batching, sampling, stops, cache, admission, pool."""
from __future__ import annotations

import asyncio
import time

import pytest

from llmp.config import Settings
from llmp.engine.engine import Engine
from llmp.engine.pool import ModelPool, ModelSpec
from llmp.engine.textstream import TextStream
from llmp.engine.types import GenerationRequest, Priority, SamplingParams
from llmp.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
)


@pytest.fixture(scope="module")
def engine(tiny_model_path, tmp_path_factory):
    settings = Settings(home=tmp_path_factory.mktemp("home"), n_slots=4, n_ctx=4 * 512)
    eng = Engine.load("tiny", str(tiny_model_path), settings)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def one_slot(tiny_model_path, tmp_path_factory):
    """One slot, at most two waiting requests: for admission and priority tests."""
    settings = Settings(home=tmp_path_factory.mktemp("home1"), n_slots=1, n_ctx=512, queue_size=2)
    eng = Engine.load("tiny1", str(tiny_model_path), settings)
    yield eng
    eng.close()


def greedy(n: int = 24, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, **kw)


async def wait_for(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_generate_streams_deltas_with_usage(engine):
    deltas = [d async for d in engine.generate(GenerationRequest("Hello there", greedy(10)))]
    last = deltas[-1]
    assert last.finish_reason == "length"
    assert last.usage.completion_tokens == 10
    assert last.usage.prompt_tokens == len(engine.tokenize("Hello there"))
    assert sum(len(d.token_ids) for d in deltas) == 10
    assert deltas[0].ttft is not None and deltas[0].ttft > 0
    assert "".join(d.text for d in deltas) == engine.detokenize([t for d in deltas for t in d.token_ids])


async def test_same_seed_same_output(engine):
    params = dict(temperature=1.0, top_p=0.9, top_k=50, max_tokens=30, ignore_eos=True)
    a = await engine.complete(GenerationRequest("Tell me a story", SamplingParams(seed=7, **params)))
    b = await engine.complete(GenerationRequest("Tell me a story", SamplingParams(seed=7, **params)))
    c = await engine.complete(GenerationRequest("Tell me a story", SamplingParams(seed=8, **params)))
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


async def test_concurrent_greedy_equals_sequential(engine):
    reqs = [GenerationRequest(f"Question {i}: what is the weather in Paris?", greedy(32)) for i in range(6)]
    together = await asyncio.gather(*(engine.complete(r) for r in reqs))
    alone = [await engine.complete(r) for r in reqs]
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]


async def test_cancellation_frees_the_slot(engine):
    gen = engine.generate(GenerationRequest("Write a long poem", greedy(400)))
    async for _ in gen:
        break
    await gen.aclose()
    await wait_for(lambda: engine.stats()["slots_busy"] == 0)
    task = asyncio.create_task(engine.complete(GenerationRequest("Another long one", greedy(400))))
    await wait_for(lambda: engine.stats()["slots_busy"] == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: engine.stats()["slots_busy"] == 0)


async def test_stop_string_across_token_boundary_never_leaks(engine):
    full = await engine.complete(GenerationRequest("The quick brown fox", greedy(40)))
    pieces = [engine.detokenize([t]) for t in full.token_ids]

    def boundary_stop(k: int) -> tuple[str, str] | None:
        """A stop made of the end of token k and the start of token k+1, first seen there."""
        a, b = pieces[k], pieces[k + 1]
        if not a or not b or "\ufffd" in a + b:
            return None
        stop, prefix = a[-2:] + b[:2], "".join(pieces[:k]) + a[:-2]
        return None if stop in prefix + a[-2:] + b[:1] else (stop, prefix)

    stop, prefix = next(filter(None, map(boundary_stop, range(2, len(pieces) - 1))))
    deltas = [d async for d in engine.generate(GenerationRequest("The quick brown fox", greedy(40, stop=[stop])))]
    text = "".join(d.text for d in deltas)
    assert text == prefix
    assert deltas[-1].finish_reason == "stop"
    assert all(stop not in d.text for d in deltas)


def test_utf8_split_over_tokens_is_never_broken(engine):
    text = "𝄞 naïve 🙂 日本"
    ids = engine.tokenize(text)
    pieces = [engine.model.piece(t) for t in ids]
    assert any(not p.decode("utf-8", "ignore") for p in pieces), "a character spans tokens"
    stream = TextStream()
    out = [stream.feed(p) for p in pieces]
    out.append(stream.finish())
    assert "".join(out) == text
    assert all("\ufffd" not in o for o in out)


def test_textstream_holds_back_possible_stop_prefix():
    s = TextStream(["END"])
    assert s.feed(b"abc E") == "abc "
    assert s.feed(b"N") == ""
    assert s.feed(b"x") == "ENx"
    assert s.feed(b" E") == " "
    assert s.finish() == "E"
    s = TextStream(["END"])
    assert s.feed(b"abEN") == "ab"
    assert s.feed(b"Dzz") == ""
    assert s.stopped


async def test_prefix_cache_reports_cached_tokens(engine):
    prompt = "You are a helpful assistant. The user asked a question and the assistant gave an answer."
    first = await engine.complete(GenerationRequest(prompt, greedy(4)))
    second = await engine.complete(GenerationRequest(prompt, greedy(4)))
    n = len(engine.tokenize(prompt))
    assert first.usage.prompt_tokens == n
    assert second.usage.cached_tokens == n - 1
    assert second.token_ids == first.token_ids


async def test_prompt_longer_than_context_is_rejected(engine):
    with pytest.raises(ContextLengthExceededError) as e:
        await engine.complete(GenerationRequest([10] * engine.slot_ctx))
    assert e.value.param == "prompt" and e.value.code == "context_length_exceeded"
    chat = GenerationRequest([10] * (engine.slot_ctx + 5), prompt_param="messages")
    with pytest.raises(ContextLengthExceededError) as e:
        await engine.complete(chat)
    assert e.value.param == "messages"


async def test_prompt_token_ids_outside_the_vocabulary_are_rejected(engine):
    """Checked at admission: in a batch, llama_decode would fail every request of the step."""
    n_vocab = engine.model.n_vocab
    for bad in ([1, n_vocab], [-1, 2]):
        with pytest.raises(InvalidRequestError) as e:
            await engine.complete(GenerationRequest(bad, greedy(2)))
        assert e.value.param == "prompt" and e.value.code == "invalid_parameter"
    assert (await engine.complete(GenerationRequest([1, n_vocab - 1], greedy(2)))).finish_reason


async def test_generation_filling_the_context_ends_with_length(engine):
    n = engine.slot_ctx - 6
    c = await engine.complete(GenerationRequest([10] * n, SamplingParams(temperature=0, ignore_eos=True)))
    assert c.finish_reason == "length"
    assert c.usage.completion_tokens == 7  # 6 fill the KV cache; the 7th is sampled, never decoded


async def test_logprobs(engine):
    c = await engine.complete(GenerationRequest("Hello", greedy(5, logprobs=3)))
    assert len(c.logprobs) == 5
    for lp in c.logprobs:
        assert lp.logprob <= 0 and len(lp.top_logprobs) == 3
        assert lp.top_logprobs[0][1] == pytest.approx(lp.logprob)  # greedy picks the top one


async def test_queue_full_and_priority(one_slot):
    order: list[str] = []

    async def run(name: str, prio: Priority, n: int):
        await one_slot.complete(GenerationRequest(name, greedy(n), priority=prio))
        order.append(name)

    blocker = asyncio.create_task(one_slot.complete(GenerationRequest("blocker", greedy(450))))
    await wait_for(lambda: one_slot.stats()["slots_busy"] == 1)
    batch = asyncio.create_task(run("batch", Priority.BATCH, 3))
    await wait_for(lambda: one_slot.stats()["queue_depth"] == 1)
    inter = asyncio.create_task(run("interactive", Priority.INTERACTIVE, 3))
    await wait_for(lambda: one_slot.stats()["queue_depth"] == 2)
    with pytest.raises(ServiceUnavailableError):
        await one_slot.complete(GenerationRequest("one too many", greedy(3)))
    blocker.cancel()
    await asyncio.gather(batch, inter)
    assert order == ["interactive", "batch"]


async def test_backend_sampling_is_deterministic(tiny_model_path, tmp_path):
    eng = Engine.load("tiny-bs", str(tiny_model_path), Settings(home=tmp_path, n_slots=2, n_ctx=1024),
                      backend_sampling=True)
    try:
        p = SamplingParams(temperature=0.8, top_k=40, seed=3, max_tokens=16, ignore_eos=False)
        a, b = await asyncio.gather(*(eng.complete(GenerationRequest("Hi", p)) for _ in range(2)))
        assert a.token_ids == b.token_ids and a.usage.completion_tokens > 0
    finally:
        eng.close()


async def test_pool_loads_once_and_unloads_when_idle(tiny_model_path, tmp_path):
    def resolve(model_id: str) -> ModelSpec:
        if model_id != "tiny":
            raise NotFoundError(f"model {model_id!r} not found")
        return ModelSpec("tiny", str(tiny_model_path), n_ctx=512, n_slots=2)

    pool = ModelPool(Settings(home=tmp_path, keep_alive=0.2), resolve)
    try:
        a, b = await asyncio.gather(pool.get("tiny"), pool.get("tiny"))
        assert a is b and a.n_slots == 2 and a.slot_ctx == 256
        assert pool.status()[0]["state"] == "loaded"
        with pytest.raises(NotFoundError):
            await pool.get("nope")
        await a.complete(GenerationRequest("hi", greedy(2)))
        await wait_for(lambda: not pool.loaded)
    finally:
        await pool.close()
