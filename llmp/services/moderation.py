"""POST /v1/moderations on a guard model (a GGUF registered with a guard profile).

The OpenAI moderation model names (`omni-moderation-latest`, `text-moderation-latest`,
`text-moderation-stable`, ...) resolve to the configured guard (`settings.moderation_model`,
else the first registered model with a guard profile: `services.models.guard_for`, so the
pool and the batch runner resolve them too); a guard model may also be named directly. With
no guard: 404 `guard_not_configured` saying how to add one.

For each input text, on the guard's engine (the same scheduler as chat; the three steps run
one after another so the prompt's KV is reused from the prefix cache):

1. the prompt: the profile renders exactly what the guard's chat template renders
   (`llmp.engine.guard`), tokenized with its special tokens;
2. P(unsafe): the engine scores the next token after `prompt + verdict_prefix`; the
   probabilities of the first tokens of the safe and unsafe words (and Qwen3Guard's
   "Controversial") are renormalised over those words: P(unsafe) = softmax over their logits
   (`Engine.score` returns full-vocabulary log-probabilities; renormalising them over the
   candidates is the softmax over the candidates' logits);
3. per-category scores, by teacher forcing: the engine scores the token after
   `prompt + category_prefix` (e.g. `"\\n\\nunsafe\\n"`), the distribution over the first
   tokens of the category codes; codes sharing a first token (`S1` / `S10` in some
   vocabularies) are told apart one token further (`_sequence_probs`). Renormalised over the
   codes this is P(first listed category = c | unsafe), and
   score(c) = P(unsafe) * P(c | unsafe); an OpenAI category's score is the sum of the scores
   of the guard categories mapped onto it (`GuardProfile.mapping`; at most P(unsafe)), 0 for
   one nothing maps to;
4. the verdict: greedy generation constrained to the profile's format by a grammar, parsed
   (`safe` / `unsafe\\nS1,S2`, `Safety: Unsafe\\nCategories: Violent`).

An OpenAI category is flagged when the verdict is unsafe and names a guard category mapped
onto it, or when its score reaches its threshold (`moderation_threshold`, per category
`moderation_thresholds`); `flagged` is whether any category is.
"""
from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

from llmp import backends
from llmp.config import Settings
from llmp.db import models as db_models
from llmp.engine.guard import OPENAI_CATEGORIES, GuardProfile, Verdict, profile
from llmp.engine.types import GenerationRequest, Priority, SamplingParams, Usage
from llmp.errors import ConfigError, ContextLengthExceededError, InvalidRequestError
from llmp.ids import random_base62
from llmp.protocol.base import parse
from llmp.protocol.embeddings import ModerationRequest

#: OpenAI's moderation model names; each resolves to the configured guard model
OPENAI_MODELS = ("omni-moderation-latest", "omni-moderation-2024-09-26",
                 "text-moderation-latest", "text-moderation-stable", "text-moderation-007")
HOW_TO_ADD = ("register a guard model (e.g. Llama Guard 3 or Qwen3Guard GGUF) and mark it: "
              "`llmp models add PATH --name ID` then `llmp models set-guard ID --profile "
              "llama-guard-3|llama-guard-3-1b|qwen3-guard`")


def thresholds(settings: Settings) -> dict[str, float]:
    """Per OpenAI category: `moderation_threshold`, overridden by `moderation_thresholds`
    ("violence=0.3,hate=0.6")."""
    out = {c: float(settings.moderation_threshold) for c in OPENAI_CATEGORIES}
    for part in (settings.moderation_thresholds or "").split(","):
        name, sep, value = part.partition("=")
        if sep and name.strip() in out:
            try:
                out[name.strip()] = float(value)
            except ValueError:
                raise ConfigError(f"setting 'moderation_thresholds': {part.strip()!r} is not "
                                  "CATEGORY=NUMBER") from None
    return out


def defuse(text: str) -> str:
    """An input's text with special-token markup broken (`<|eot_id|>` -> `<\u200b|eot_id|>`),
    so that parsing the rendered prompt's special tokens cannot parse one from the input."""
    return text.replace("<|", "<\u200b|")


def set_guard(db, model_id: str, profile_name: str | None) -> dict:
    """`llmp models set-guard`: mark a registered model as a guard with a profile (`None`:
    detected from its name and chat template; "none": unmark it). Returns its record."""
    from llmp.engine.guard import PROFILES
    from llmp.models import registry
    from llmp.models.guards import detect

    m = registry.resolve(db, model_id)
    if profile_name == "none":
        return db_models.update(db, m["id"], {"guard_profile": None})
    if m.get("category") == "embedding":
        raise InvalidRequestError(f"{m['id']} is an embedding model; a guard model generates "
                                  "its verdict", param="model")
    name = profile_name or detect(m.get("name") or m["id"], m.get("chat_template"))
    if name is None:
        raise InvalidRequestError(f"cannot tell the guard family of {m['id']} from its "
                                  f"metadata: give --profile ({'|'.join(PROFILES)})",
                                  param="profile")
    profile(name)  # checks the name
    return db_models.update(db, m["id"], {"guard_profile": name})


@dataclass
class GuardResult:
    verdict: Verdict
    output: str
    p_unsafe: float
    code_probs: dict[str, float]  # P(first listed category = code | unsafe)
    prompt_tokens: int
    completion_tokens: int


async def _sequence_probs(engine, prefix: list[int], conts: dict[str, list[int]], *,
                          priority: Priority, depth: int = 0) -> dict[str, float]:
    """P(continuation) for continuations that are told apart by their first tokens (read
    from one scoring of `prefix`); those sharing a first token are told apart one token
    further (a continuation that ends there gets what the longer ones leave)."""
    groups: dict[int, list[str]] = {}
    for name, toks in conts.items():
        groups.setdefault(toks[0], []).append(name)
    lps = await engine.score(prefix, list(groups), priority=priority)
    out: dict[str, float] = {}
    for (tok, names), lp in zip(groups.items(), lps):
        p = math.exp(lp)
        if len(names) == 1 or depth >= 3:
            for n in names:
                out[n] = p / len(names)
            continue
        longer = {n: conts[n][1:] for n in names if len(conts[n]) > 1}
        ended = [n for n in names if len(conts[n]) == 1]
        sub = await _sequence_probs(engine, prefix + [tok], longer, priority=priority,
                                    depth=depth + 1) if longer else {}
        for n, q in sub.items():
            out[n] = p * q
        for n in ended:
            out[n] = p * max(0.0, 1.0 - sum(sub.values())) / len(ended)
    return out


def _normalised(probs: dict[str, float]) -> dict[str, float]:
    total = sum(probs.values())
    return {k: (v / total if total > 0 else 0.0) for k, v in probs.items()}


async def classify(engine, prof: GuardProfile, prompt: list[int], *,
                   priority: Priority = Priority.INTERACTIVE, request_id: str = "") -> GuardResult:
    """Score and judge one rendered prompt (see the module docstring)."""
    def tok(text: str) -> list[int]:
        return engine.tokenize(text, add_special=False, parse_special=False)

    words = {"safe": tok(prof.safe_word), "unsafe": tok(prof.unsafe_word)}
    for w in prof.other_words:
        words[w.strip().lower()] = tok(w)
    verdict_p = _normalised(await _sequence_probs(
        engine, prompt + tok(prof.verdict_prefix), words, priority=priority))
    p_unsafe = verdict_p["unsafe"]
    codes = {c: tok(t) for c, t in prof.code_texts().items()}
    code_p = _normalised(await _sequence_probs(
        engine, prompt + tok(prof.category_prefix), codes, priority=priority))
    req = GenerationRequest(prompt=list(prompt),
                            params=SamplingParams(temperature=0.0, max_tokens=prof.max_tokens,
                                                  grammar=prof.grammar()),
                            priority=priority, request_id=request_id, prompt_param="input")
    done = await engine.complete(req)
    return GuardResult(verdict=prof.parse(done.text), output=done.text, p_unsafe=p_unsafe,
                       code_probs=code_p, prompt_tokens=len(prompt),
                       completion_tokens=done.usage.completion_tokens)


def result_body(prof: GuardProfile, r: GuardResult, limits: dict[str, float]) -> dict:
    """One `results[]` item in OpenAI's shape (plus `guard`: what the guard said)."""
    scores = {c: 0.0 for c in OPENAI_CATEGORIES}
    for code, p in r.code_probs.items():
        for c in prof.mapping.get(code, ()):
            scores[c] += r.p_unsafe * p
    scores = {c: min(1.0, max(0.0, v)) for c, v in scores.items()}
    named = {c for code in (r.verdict.codes if r.verdict.unsafe else ())
             for c in prof.mapping.get(code, ())}
    cats = {c: c in named or scores[c] >= limits[c] for c in OPENAI_CATEGORIES}
    return {"flagged": any(cats.values()), "categories": cats, "category_scores": scores,
            "category_applied_input_types": {c: ["text"] for c in OPENAI_CATEGORIES},
            "guard": {"profile": prof.name, "label": r.verdict.label,
                      "categories": list(r.verdict.codes), "unsafe_probability": r.p_unsafe,
                      "output": r.output}}


@dataclass
class ModerationCall:
    engine: Any
    model: str  # the guard model's id (usage and metrics)
    requested: str  # the model the client named (the response's `model`)
    profile: GuardProfile
    prompts: list[list[int]]
    limits: dict[str, float]
    request_id: str
    priority: Priority = Priority.INTERACTIVE
    streaming: bool = False
    ttft: float | None = None
    generated: int = 0
    usage: Usage = field(default_factory=Usage)
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.usage = Usage(prompt_tokens=self.prompt_tokens)

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def max_tokens(self) -> int:
        return self.profile.max_tokens * len(self.prompts)

    @property
    def token_estimate(self) -> int:
        return self.prompt_tokens + self.max_tokens

    @property
    def completion_tokens_so_far(self) -> int:
        return self.usage.completion_tokens

    def check_context(self) -> None:
        ctx = int(getattr(self.engine, "slot_ctx", 0) or 0)
        for i, p in enumerate(self.prompts):
            if ctx and len(p) + self.profile.max_tokens + 8 > ctx:
                raise ContextLengthExceededError(
                    f"The guard model's context per request is {ctx} tokens; input {i} makes a "
                    f"prompt of {len(p)} tokens. Shorten it.", param="input")

    async def run(self) -> dict:
        # at most one input per engine slot at a time (a 2048-input request does not flood
        # the engine's queue); the first failure cancels the rest (TaskGroup)
        sem = asyncio.Semaphore(max(1, int(getattr(self.engine, "n_slots", 1) or 1)))

        async def one(p: list[int]) -> GuardResult:
            async with sem:
                return await classify(self.engine, self.profile, p, priority=self.priority,
                                      request_id=self.request_id)

        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(one(p)) for p in self.prompts]
        except BaseExceptionGroup as eg:  # the first failure, as a single call would raise it
            raise eg.exceptions[0] from None
        results = [t.result() for t in tasks]
        self.usage.completion_tokens = sum(r.completion_tokens for r in results)
        self.generated = self.usage.completion_tokens
        u = self.usage
        # `usage` is beyond OpenAI's shape: what the request was billed (batch lines read it)
        return {"id": "modr-" + random_base62(24), "model": self.requested,
                "results": [result_body(self.profile, r, self.limits) for r in results],
                "usage": {"prompt_tokens": u.prompt_tokens,
                          "completion_tokens": u.completion_tokens,
                          "total_tokens": u.total_tokens}}


async def prepare_moderation(pool, body: dict | ModerationRequest, *,
                             priority: Priority = Priority.INTERACTIVE, request_id: str,
                             **_: Any) -> ModerationCall:
    """Validate, resolve the guard (an OpenAI moderation name: `moderation_model`, else the
    first registered guard), render and tokenize the prompts (off the loop)."""
    req = body if isinstance(body, ModerationRequest) else parse(ModerationRequest, body)
    settings: Settings = pool.settings
    target = settings.moderation_model if (req.model in OPENAI_MODELS and
                                           settings.moderation_model) else req.model
    spec = pool.resolve(target)  # NotFoundError: unknown model, or no guard configured
    if spec.kind != "guard" or not spec.guard_profile:
        raise InvalidRequestError(f"The model '{target}' is not a guard model: {HOW_TO_ADD}",
                                  param="model", code="model_not_supported")
    prof = profile(spec.guard_profile)
    engine = await pool.get(target)
    backends.require(engine, "moderate")
    texts = req.texts()
    ctx = int(getattr(engine, "slot_ctx", 0) or 0)
    for i, t in enumerate(texts):
        if ctx and len(t) > ctx * 64:
            raise ContextLengthExceededError(
                f"The guard model's context per request is {ctx} tokens; input {i} has "
                f"{len(t):,} characters, far more than fit. Shorten it.", param="input")

    def render_all() -> list[list[int]]:
        # the prompt's own special tokens are parsed; an input cannot smuggle one in
        return [engine.tokenize(prof.render(defuse(t)), add_special=False, parse_special=True)
                for t in texts]

    prompts = await asyncio.to_thread(render_all)
    return ModerationCall(engine=engine, model=spec.id, requested=req.model, profile=prof,
                          prompts=prompts, limits=thresholds(settings), request_id=request_id,
                          priority=priority)


async def moderations(pool, body: dict, *, priority: Priority = Priority.INTERACTIVE,
                      request_id: str) -> dict:
    """A response body at once (the batch runner's one-step entry point)."""
    return await (await prepare_moderation(pool, body, priority=priority,
                                           request_id=request_id)).run()


# ----------------------------------------------------------------------------- input moderation
def _texts_of(value: Any) -> list[str]:
    """Every string in a message content / prompt (text parts included), in order."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [t for v in value for t in _texts_of(v)]
    if isinstance(value, dict):
        if isinstance(value.get("text"), str):
            return [value["text"]]
        return _texts_of(value.get("content"))
    return []


def input_texts(endpoint: str, body: Any) -> list[str]:
    """What a chat/completions body sends the model, one text per message / prompt (token id
    prompts are not text: they are left out)."""
    if not isinstance(body, dict):
        return []
    if endpoint == "/v1/chat/completions":
        msgs = body.get("messages")
        out = ["\n".join(_texts_of(m.get("content"))) for m in
               (msgs if isinstance(msgs, list) else []) if isinstance(m, dict)]
    else:
        p = body.get("prompt")
        out = [p] if isinstance(p, str) else [x for x in p if isinstance(x, str)] \
            if isinstance(p, list) else []
    return [t for t in out if t.strip()]


async def check_input(pool, endpoint: str, body: Any, *, request_id: str,
                      priority: Priority = Priority.INTERACTIVE) -> None:
    """For a key with input moderation: InvalidRequestError 400 `content_policy_violation`
    naming the flagged categories when the guard flags any of the request's input texts."""
    texts = input_texts(endpoint, body)
    if not texts:
        return
    call = await prepare_moderation(pool, {"input": texts, "model": "omni-moderation-latest"},
                                    priority=priority, request_id=request_id)
    call.check_context()
    resp = await call.run()
    flagged = sorted({c for r in resp["results"] for c, v in r["categories"].items() if v})
    if flagged:
        raise InvalidRequestError(
            "Your input was flagged by the content policy of this API key (categories: "
            f"{', '.join(flagged)}); it was not processed.",
            param="messages" if endpoint == "/v1/chat/completions" else "prompt",
            code="content_policy_violation")


#: the endpoints whose inputs a key's input moderation checks
MODERATED_ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
