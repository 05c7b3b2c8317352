"""Preemption: an interactive request takes a slot from batch work instead of waiting for it."""
from __future__ import annotations

import asyncio
import time

import pytest

from llmp.config import Settings
from llmp.engine.engine import Engine
from llmp.engine.types import Delta, GenerationRequest, Priority, SamplingParams

LONG = 900  # batch generations far longer than anything the interactive requests do


@pytest.fixture(scope="module")
def two_slots(tiny_model_path, tmp_path_factory):
    settings = Settings(home=tmp_path_factory.mktemp("home2"), n_slots=2, n_ctx=2 * 1024,
                        n_threads=1)
    eng = Engine.load("tiny-prio2", str(tiny_model_path), settings)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def one_slot(tiny_model_f32_path, tmp_path_factory):
    """One slot on the f32 model, for exact greedy comparisons: every step then decodes one
    sequence, as a request running alone does (llama.cpp's results depend slightly on how many
    sequences share a step), and a resumed job's one-batch re-prefill matches token-by-token
    decoding bit for bit only with f32 weights (f16 matmuls round differently)."""
    settings = Settings(home=tmp_path_factory.mktemp("home1"), n_slots=1, n_ctx=512, n_threads=1)
    eng = Engine.load("tiny-prio1", str(tiny_model_f32_path), settings)
    yield eng
    eng.close()


def batch(prompt: str, n: int = LONG) -> GenerationRequest:
    return GenerationRequest(prompt, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True),
                             priority=Priority.BATCH)


def interactive(prompt: str, n: int = 8) -> GenerationRequest:
    return GenerationRequest(prompt, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))


async def wait_for(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.002)


class Stream:
    """Consumes `engine.generate(req)` in a task, recording the tokens and the final delta."""

    def __init__(self, engine: Engine, req: GenerationRequest):
        self.ids: list[int] = []
        self.last: Delta | None = None
        self.task = asyncio.create_task(self._consume(engine, req))

    async def _consume(self, engine: Engine, req: GenerationRequest) -> None:
        async for d in engine.generate(req):
            self.ids.extend(d.token_ids)
            self.last = d

    @property
    def running(self) -> bool:
        return not self.task.done()

    async def cancel(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def test_interactive_request_preempts_batch_jobs(two_slots):
    eng = two_slots
    before = eng.stats()["preemptions_total"]
    jobs = [Stream(eng, batch(f"Batch job {i}: write a very long essay")) for i in range(2)]
    await wait_for(lambda: all(j.ids for j in jobs))  # both slots are generating
    c = await eng.complete(interactive("Hello, quick question"))
    assert c.usage.completion_tokens == 8 and c.ttft is not None
    # the interactive request finished while both batch jobs were still running
    assert all(j.running for j in jobs)
    assert eng.stats()["preemptions_total"] == before + 1
    await wait_for(lambda: eng.stats()["slots_busy"] == 2 and eng.stats()["queue_depth"] == 0)
    for j in jobs:
        await j.cancel()
    await wait_for(lambda: eng.stats()["slots_busy"] == 0)


# The repeat penalty keeps the last tokens in the sampler chain: that state must survive a
# preemption. (Exact equality needs greedy decoding: the re-prefilled KV differs from the
# token-by-token one by ~1e-5 in the logits, which a seeded random draw can notice.)
PENALTIES = dict(repeat_penalty=1.3)


@pytest.mark.parametrize("penalties", [{}, PENALTIES], ids=["greedy", "greedy-with-penalties"])
async def test_preempted_greedy_output_equals_uninterrupted_run(one_slot, penalties):
    eng = one_slot
    n = eng.slot_ctx - 100
    req = batch("Batch line one: tell me about the sea", n)
    req.params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, **penalties)
    alone = await eng.complete(req)
    before = eng.stats()["preemptions_total"]
    job = Stream(eng, req)
    for i in range(3):  # each one preempts the batch job, which then resumes where it was
        seen = len(job.ids)
        await wait_for(lambda seen=seen: len(job.ids) > seen and eng.stats()["queue_depth"] == 0)
        await eng.complete(interactive(f"Interactive question {i} about something else", 16))
        assert job.running
    await job.task
    assert eng.stats()["preemptions_total"] == before + 3
    assert job.ids == alone.token_ids
    assert job.last.finish_reason == "length"
    assert job.last.usage.prompt_tokens == alone.usage.prompt_tokens
    assert job.last.usage.completion_tokens == n


async def test_preempting_a_backend_sampled_job(tiny_model_f32_path, tmp_path):
    """A chain attached to the decode graph (`backend_sampling`) can be attached only once:
    the resumed job gets a fresh one, and greedy output stays the same."""
    eng = Engine.load("tiny-bs1", str(tiny_model_f32_path),
                      Settings(home=tmp_path, n_slots=1, n_ctx=512, n_threads=1),
                      backend_sampling=True)
    try:
        req = GenerationRequest("Batch line one: tell me about the sea",
                                SamplingParams(temperature=0, max_tokens=400), priority=Priority.BATCH)
        alone = await eng.complete(req)
        assert alone.usage.completion_tokens == 400  # no EOS: it runs long enough to be preempted
        job = Stream(eng, req)
        await wait_for(lambda: bool(job.ids))
        c = await eng.complete(GenerationRequest("Interactive", SamplingParams(max_tokens=8, seed=1)))
        assert job.running and c.usage.completion_tokens > 0
        await job.task
        assert eng.stats()["preemptions_total"] == 1
        assert job.ids == alone.token_ids
    finally:
        eng.close()


async def test_cancelling_a_suspended_batch_job(two_slots):
    eng = two_slots
    first = Stream(eng, batch("The first batch job, started early"))
    await wait_for(lambda: len(first.ids) >= 5)
    second = Stream(eng, batch("The second batch job, started later"))
    await wait_for(lambda: bool(second.ids))
    # a long interactive request preempts the job that generated least: the second one
    inter = Stream(eng, interactive("An interactive request that talks for a while", LONG))
    await wait_for(lambda: bool(inter.ids))
    assert eng.stats()["queue_depth"] == 1 and first.running and second.running
    await second.cancel()
    await wait_for(lambda: eng.stats()["queue_depth"] == 0)
    assert first.running and inter.running
    await first.cancel()
    await inter.task
    assert inter.last.usage.completion_tokens == LONG
    await wait_for(lambda: eng.stats()["slots_busy"] == 0)
    c = await eng.complete(batch("Still serving", 4))  # the engine is healthy afterwards
    assert c.usage.completion_tokens == 4
