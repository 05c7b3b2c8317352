"""Per-request sampler chains over llama.cpp's sampler API.

Two places can sample: the CPU (`llama_sampler_sample` over a slot's logits) and the
backend (GPU) itself, where a chain attached with `llama_set_sampler` runs inside the
decode graph and `llama_get_sampled_token_ith` reads the token. The backend can run the
plain chain (top_k, top_p, min_p, temperature, dist / greedy); grammar, penalties,
logit_bias and logprobs need the CPU. `backend_capable` says which a request allows.
"""
from __future__ import annotations

import math

import llama_cpp as L
import numpy as np

from llmp.engine.native import Model
from llmp.engine.types import SamplingParams, TokenLogprob
from llmp.errors import InvalidRequestError


def backend_capable(p: SamplingParams) -> bool:
    """True when the whole chain can run on the backend (no CPU-only stage)."""
    return (p.grammar is None and not p.logit_bias and p.logprobs is None and not p.ignore_eos
            and p.frequency_penalty == 0 and p.presence_penalty == 0 and p.repeat_penalty == 1.0)


def validate(p: SamplingParams) -> None:
    """The engine's own guard for callers that build `SamplingParams` by hand; HTTP bodies and
    batch lines are validated once, with the same ranges, by `llmp.protocol.inference`."""
    for name, ok in (("temperature", p.temperature >= 0), ("top_p", 0 <= p.top_p <= 1),
                     ("top_k", p.top_k >= 0), ("min_p", 0 <= p.min_p <= 1),
                     ("max_tokens", p.max_tokens is None or p.max_tokens >= 0),
                     ("top_logprobs", p.logprobs is None or 0 <= p.logprobs <= 20)):
        if not ok:
            raise InvalidRequestError(f"Invalid '{name}': out of range", param=name,
                                      code="invalid_parameter")


class SamplerChain:
    """An owned llama.cpp sampler chain built from `SamplingParams` (freed with `free`)."""

    def __init__(self, model: Model, p: SamplingParams, *, backend: bool = False):
        validate(p)
        self.ptr = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        add = lambda s: L.llama_sampler_chain_add(self.ptr, s)  # noqa: E731
        if not backend:
            bias = {t: b for t, b in p.logit_bias.items() if 0 <= int(t) < model.n_vocab}
            if p.ignore_eos:
                bias.update({t: -math.inf for t in model.eog_tokens})
            if bias:
                arr = (L.llama_logit_bias * len(bias))()
                for i, (t, b) in enumerate(bias.items()):
                    arr[i] = L.llama_logit_bias(int(t), float(b))
                add(L.llama_sampler_init_logit_bias(model.n_vocab, len(bias), arr))
            if p.grammar:
                g = L.llama_sampler_init_grammar(model.vocab, p.grammar.encode(), b"root")
                if not g:
                    self.free()
                    raise InvalidRequestError("invalid grammar (GBNF did not parse)",
                                              param="response_format", code="invalid_schema")
                add(g)
            if p.frequency_penalty or p.presence_penalty or p.repeat_penalty != 1.0:
                add(L.llama_sampler_init_penalties(model.n_vocab, 64, p.repeat_penalty,
                                                   p.frequency_penalty, p.presence_penalty))
        if p.temperature <= 0:
            add(L.llama_sampler_init_greedy())
            return
        if p.top_k > 0:
            add(L.llama_sampler_init_top_k(p.top_k))
        if p.top_p < 1.0:
            add(L.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0:
            add(L.llama_sampler_init_min_p(p.min_p, 1))
        add(L.llama_sampler_init_temp(p.temperature))
        seed = L.LLAMA_DEFAULT_SEED if p.seed is None else int(p.seed) & 0xFFFFFFFF
        add(L.llama_sampler_init_dist(seed))

    def sample(self, ctx: L.llama_context_p, idx: int) -> int:
        """CPU sampling from output `idx` of the last decode (also accepts the token)."""
        return int(L.llama_sampler_sample(self.ptr, ctx, idx))

    def free(self) -> None:
        if self.ptr:
            L.llama_sampler_free(self.ptr)
            self.ptr = None


def token_logprob(model: Model, ctx: L.llama_context_p, idx: int, token: int, k: int) -> TokenLogprob:
    """The chosen token's log-probability under the model, and the k most likely tokens."""
    ptr = L.llama_get_logits_ith(ctx, idx)
    logits = np.ctypeslib.as_array(ptr, shape=(model.n_vocab,)).astype(np.float64)
    m = logits.max()
    lse = m + math.log(np.exp(logits - m).sum())

    def entry(t: int) -> tuple[str, float, list[int]]:
        b = model.piece(t)
        return b.decode("utf-8", "replace"), float(logits[t] - lse), list(b)

    text, lp, raw = entry(token)
    top: list[tuple[str, float, list[int]]] = []
    if k > 0:
        ids = np.argpartition(-logits, k - 1)[:k]
        top = [entry(int(t)) for t in sorted(ids, key=lambda t: -logits[t])]
    return TokenLogprob(token=text, logprob=lp, bytes=raw, top_logprobs=top)
