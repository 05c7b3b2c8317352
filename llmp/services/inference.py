"""OpenAI-shaped request bodies -> engine requests -> OpenAI-shaped responses.

THE one place where /v1/completions and /v1/chat/completions bodies are validated and turned
into `GenerationRequest`s, and where results become response bodies and stream chunks, so
that the HTTP routes and the batch runner produce identical bodies.

Two steps, so that the server can reserve rate-limit tokens between them:

    call = await prepare_chat(pool, body, request_id=rid)   # validates, renders, tokenizes
    limiter.reserve_tokens(key, call.token_estimate)
    body = await call.run()            # or: async for chunk in call.stream(): ...
    call.usage, call.ttft              # for accounting (also after a failure or disconnect)

`chat_completion(pool, body, ...)` and `completion(pool, body, ...)` do both steps at once.

Parameters beyond OpenAI's that llama.cpp servers accept too: top_k, min_p, repeat_penalty,
ignore_eos. Response bodies also carry the spec's `metadata` {request_id, processing_time_ms,
model_version} beside OpenAI's keys (chat: see `Call.metadata`).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from llmp import __version__, backends
from llmp.engine.tools import ToolCallParser
from llmp.engine.types import (
    Delta,
    GenerationRequest,
    Priority,
    SamplingParams,
    TokenLogprob,
    Usage,
)
from llmp.errors import ContextLengthExceededError, InvalidRequestError
from llmp.ids import new_id
from llmp.protocol.base import parse
from llmp.protocol.inference import ChatCompletionRequest, CompletionRequest

#: identifies the serving software in every response (OpenAI's `system_fingerprint`)
SYSTEM_FINGERPRINT = f"llmp-{__version__}"
#: compact JSON, as every stream chunk is serialised (one encoder: `json.dumps` with options
#: builds a new one per call)
to_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
#: a string as `to_json` writes it (the C encoder behind it)
_json_str = json.encoder.encode_basestring
#: stands for the text in a pre-serialised chunk (see `Call._text_chunk`)
_TEXT_SLOT = "\0text\0"


def _bad(message: str, param: str, code: str = "invalid_parameter") -> InvalidRequestError:
    return InvalidRequestError(message, param=param, code=code)


# ----------------------------------------------------------------------------- rendering
def _logprobs_chat(lps: list[TokenLogprob]) -> list[dict]:
    return [{"token": t.token, "logprob": t.logprob, "bytes": t.bytes,
             "top_logprobs": [{"token": a, "logprob": b, "bytes": c} for a, b, c in t.top_logprobs]}
            for t in lps]


#: a token of the legacy completions' logprobs: (token, logprob, top_logprobs); logprob and
#: top are None for the first token of an echoed prompt (nothing before it predicts it)
TextEntry = tuple[str, "float | None", "dict[str, float] | None"]


def _logprobs_text(lps: list[TokenLogprob], offset: int,
                   prompt: list[TextEntry] | None = None) -> dict:
    """The legacy `logprobs` object; `prompt`: the echoed prompt's tokens first (`offset` is
    then where the prompt starts)."""
    entries: list[TextEntry] = list(prompt or [])
    entries += [(t.token, t.logprob, {a: b for a, b, _ in t.top_logprobs}) for t in lps]
    offsets, pos = [], offset
    for tok, _, _ in entries:
        offsets.append(pos)
        pos += len(tok)
    return {"tokens": [e[0] for e in entries], "token_logprobs": [e[1] for e in entries],
            "top_logprobs": [e[2] for e in entries], "text_offset": offsets}


def _usage_dict(u: Usage) -> dict:
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens,
            "prompt_tokens_details": {"cached_tokens": u.cached_tokens}}


async def _merge(streams: list[AsyncGenerator[Delta, None]]
                 ) -> AsyncGenerator[tuple[int, Delta], None]:
    """Interleave several delta streams as (index, delta); closing this closes them all."""
    if len(streams) == 1:
        async with contextlib.aclosing(streams[0]) as only:
            async for d in only:
                yield 0, d
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i: int, s: AsyncGenerator[Delta, None]) -> None:
        try:
            async for d in s:
                await queue.put((i, d))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            await queue.put((i, e))
        finally:
            await queue.put((i, done))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(tasks)
        while left:
            i, item = await queue.get()
            if item is done:
                left -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# ----------------------------------------------------------------------------- the call
@dataclass
class Call:
    """A validated request, ready to run once (non-streaming) or stream. What is common to
    chat and text completions lives here (running, accounting, chunk framing); what differs
    is its `strategy` (ChatStrategy, CompletionStrategy)."""

    kind: str  # "chat" | "completion": picks the call's Strategy (STRATEGIES)
    engine: Any
    model: str
    requests: list[GenerationRequest]  # one per choice
    prompt_tokens: int  # over the distinct prompts
    max_tokens: int | None
    request_id: str
    streaming: bool = False
    include_usage: bool = False
    model_version: str | None = None
    # chat
    tool_family: str | None = None
    legacy_functions: bool = False
    tool_parsing: dict = field(default_factory=dict)  # ToolCallParser's max_calls, forced, names
    # completions
    echo_texts: list[str] = field(default_factory=list)  # per choice: the prompt when echo
    want_logprobs: bool = False
    # filled while running
    id: str = ""
    created: int = 0
    usage: Usage = field(default_factory=Usage)
    ttft: float | None = None
    generated: int = 0  # tokens received so far, over all choices
    started: float = field(default_factory=time.perf_counter)
    _chunk_head: str = field(default="", init=False, repr=False)  # see `_chunk_json`
    _chunk_tail: str = field(default="}", init=False, repr=False)
    _offsets: list[int] = field(default_factory=list, init=False, repr=False)  # text_offset
    _text_templates: dict[int, tuple[str, str]] = field(default_factory=dict, init=False,
                                                        repr=False)  # see `_text_chunk`
    strategy: Strategy = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in STRATEGIES:
            raise ValueError(f"unknown call kind {self.kind!r}")
        self.strategy = STRATEGIES[self.kind]
        self.id = self.id or new_id(self.strategy.id_prefix)
        self.created = self.created or int(time.time())
        self.usage = Usage(prompt_tokens=self.prompt_tokens)

    @property
    def token_estimate(self) -> int:
        """Tokens to reserve against a rate limit: prompt + max_tokens per choice, at most
        the rest of a slot's context (where generation stops anyway)."""
        ctx = int(getattr(self.engine, "slot_ctx", 0))
        room = max(0, ctx - self.prompt_tokens // max(1, len(self.requests)))
        per_choice = room if self.max_tokens is None else \
            min(self.max_tokens, room) if ctx else self.max_tokens
        return self.prompt_tokens + per_choice * len(self.requests)

    def check_context(self) -> None:
        """ContextLengthExceededError now, before anything is reserved for the call, when a
        prompt leaves no room in a slot's context (the engine would refuse it at admission)."""
        ctx = int(getattr(self.engine, "slot_ctx", 0))
        for r in self.requests:
            if ctx and not isinstance(r.prompt, str) and len(r.prompt) >= ctx:
                raise ContextLengthExceededError(
                    f"This model's context per request is {ctx} tokens; the prompt has "
                    f"{len(r.prompt)} tokens. Shorten the prompt.", param=r.prompt_param)

    def metadata(self) -> dict:
        """The spec's `metadata` {request_id, processing_time_ms, model_version}, with the
        spec's types everywhere (processing_time_ms a number of milliseconds), as the top-level
        keys to add to a body or a stream's last chunk.

        The spec shows it on /completions, whose OpenAI schema has no `metadata`: it is there
        as is. OpenAI's chat completion schema (and the openai client) types `metadata` as a
        map of strings, so a number is not valid there: chat bodies carry `metadata`
        {request_id, model_version} (strings by nature) and `processing_time_ms` one level up,
        beside `usage` (OpenAI's schema allows keys it does not list; the openai client keeps
        it in `model_extra`)."""
        elapsed = round((time.perf_counter() - self.started) * 1000)
        return self.strategy.metadata(self, self.model_version or self.model, elapsed)

    def _account(self, d: Delta) -> None:
        if d.ttft is not None and self.ttft is None:
            self.ttft = d.ttft
        if d.usage is not None:  # the final delta of one choice
            self.usage.completion_tokens += d.usage.completion_tokens
            self.usage.cached_tokens = max(self.usage.cached_tokens, d.usage.cached_tokens)
        self.generated += len(d.token_ids)

    @property
    def completion_tokens_so_far(self) -> int:
        """Generated tokens, counted from deltas too (for a stream that ended early)."""
        return max(self.usage.completion_tokens, self.generated)

    def _streams(self) -> AsyncGenerator[tuple[int, Delta], None]:
        return _merge([self.engine.generate(r) for r in self.requests])

    # -- non-streaming ------------------------------------------------------------
    async def run(self) -> dict:
        texts = [""] * len(self.requests)
        lps: list[list[TokenLogprob]] = [[] for _ in self.requests]
        reasons: list[str] = ["stop"] * len(self.requests)
        prompts: list[list[TextEntry] | None] = [None] * len(self.requests)
        async for i, d in self._streams():
            self._account(d)
            texts[i] += d.text
            if d.logprobs:
                lps[i].extend(d.logprobs)
            if d.prompt_logprobs is not None:
                prompts[i] = self._prompt_entries(d)
            if d.finish_reason is not None:
                reasons[i] = d.finish_reason
        choices = [self._choice(i, texts[i], lps[i], reasons[i], prompts[i])
                   for i in range(len(texts))]
        return {"id": self.id, "object": self.strategy.object, "created": self.created, "model": self.model,
                "system_fingerprint": SYSTEM_FINGERPRINT, "choices": choices,
                "usage": _usage_dict(self.usage), **self.metadata()}

    def _prompt_entries(self, d: Delta) -> list[TextEntry]:
        """An echoed prompt's tokens with their logprobs (from the engine's first delta);
        a leading BOS, which is not in the echoed text, is left out."""
        ids, lps = d.prompt_token_ids or [], d.prompt_logprobs or []
        model = self.engine.model
        out: list[TextEntry] = []
        for k, (tok, lp) in enumerate(zip(ids, lps)):
            if k == 0 and tok == getattr(model, "bos", None):
                continue
            if lp is None:
                out.append((model.piece(tok).decode("utf-8", "replace"), None, None))
            else:
                out.append((lp.token, lp.logprob, {a: b for a, b, _ in lp.top_logprobs}))
        return out

    def _choice(self, i: int, text: str, lps: list[TokenLogprob], reason: str,
                prompt: list[TextEntry] | None = None) -> dict:
        """One choice of a non-streamed body."""
        return self.strategy.choice(self, i, text, lps, reason, prompt)

    def _parser(self) -> ToolCallParser:
        return ToolCallParser(self.tool_family or "hermes", **self.tool_parsing)

    # -- streaming ------------------------------------------------------------------
    def _chunk(self, choices: list[dict]) -> dict:
        """A stream chunk. With stream_options.include_usage every chunk carries `usage`:
        null in all but the last (which has no choices), as OpenAI streams it."""
        out = {"id": self.id, "object": self.strategy.chunk_object, "created": self.created, "model": self.model,
               "system_fingerprint": SYSTEM_FINGERPRINT, "choices": choices}
        if self.include_usage:
            out["usage"] = None
        return out

    def _chunk_json(self, choices: list[dict]) -> str:
        """`to_json(self._chunk(choices))`, serialising the part that is the same in every
        chunk of the request (id, object, created, model, fingerprint, usage) only once."""
        if not self._chunk_head:
            head, tail = to_json(self._chunk([])).rsplit('"choices":[]', 1)
            self._chunk_head, self._chunk_tail = head + '"choices":', tail
        return self._chunk_head + to_json(choices) + self._chunk_tail

    def _text_chunk(self, i: int, text: str) -> str:
        """The chunk of nearly every token: text for choice `i`, no logprobs, no finish. It is
        serialised once per choice with a placeholder for the text, which is then the only
        part encoded per token (the same bytes as `_chunk_json`)."""
        template = self._text_templates.get(i)
        if template is None:
            choice = self.strategy.text_choice(i, _TEXT_SLOT)
            before, after = self._chunk_json([{**choice, "logprobs": None, "finish_reason": None}]
                                             ).split(to_json(_TEXT_SLOT))
            template = self._text_templates[i] = (before, after)
        return template[0] + _json_str(text) + template[1]

    async def stream(self) -> AsyncGenerator[str, None]:
        """Chunks as OpenAI streams them, serialised as JSON text (the caller frames them as
        SSE and adds `[DONE]`); with stream_options.include_usage a last chunk with `usage`
        and no choices. Nothing is yielded before the engine has admitted the request and
        produced its first token, so admission errors (queue full, context length) surface
        before any chunk."""
        async with contextlib.aclosing(self._streams()) as deltas:
            first = await anext(deltas, None)
            for chunk in self._opening():
                yield chunk
            n = len(self.requests)
            parsers = [self._parser() if self.tool_family else None for _ in range(n)]
            n_calls = [0] * n
            if first is not None:
                for chunk in self._delta_chunks(*first, parsers, n_calls):
                    yield chunk
                async for i, d in deltas:
                    for chunk in self._delta_chunks(i, d, parsers, n_calls):
                        yield chunk
        if self.include_usage:
            last = self._chunk([])
            last["usage"] = _usage_dict(self.usage)
            last.update(self.metadata())
            yield to_json(last)

    def _delta_chunks(self, i: int, d: Delta, parsers: list[ToolCallParser | None],
                      n_calls: list[int]) -> list[str]:
        """The chunks for one delta of choice `i` (none, one, or several for tool calls)."""
        self._account(d)
        if d.finish_reason is None and not self.want_logprobs and parsers[i] is None:
            return [self._text_chunk(i, d.text)] if d.text else []
        return self.strategy.rich_chunks(self, i, d, parsers, n_calls)

    def _opening(self) -> list[str]:
        """The chunks before the first token (see the strategies)."""
        return self.strategy.opening(self)


# ----------------------------------------------------------------------------- strategies
class Strategy:
    """What differs between a chat completion and a text completion: the shape of ids,
    objects, choices, stream chunks and metadata. A `Call` holds one (`STRATEGIES[kind]`);
    the strategies are stateless, the call's state is passed in."""

    id_prefix = ""
    object = ""
    chunk_object = ""

    def metadata(self, call: Call, model_version: str, elapsed: int) -> dict:
        raise NotImplementedError

    def choice(self, call: Call, i: int, text: str, lps: list[TokenLogprob], reason: str,
               prompt: list[TextEntry] | None) -> dict:
        raise NotImplementedError

    def text_choice(self, i: int, text: str) -> dict:
        """The choice of a chunk that carries only text (the per-token template)."""
        raise NotImplementedError

    def rich_chunks(self, call: Call, i: int, d: Delta,
                    parsers: list[ToolCallParser | None], n_calls: list[int]) -> list[str]:
        """The chunks of a delta that is more than text (finish, logprobs, tool calls)."""
        raise NotImplementedError

    def opening(self, call: Call) -> list[str]:
        """The chunks before the first token."""
        raise NotImplementedError


class ChatStrategy(Strategy):
    """/v1/chat/completions: messages, tool and legacy function calls."""

    id_prefix = "chatcmpl"
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"

    def metadata(self, call: Call, model_version: str, elapsed: int) -> dict:
        # OpenAI's chat schema types `metadata` as a map of strings: the number goes beside it
        return {"metadata": {"request_id": call.request_id, "model_version": model_version},
                "processing_time_ms": elapsed}

    def choice(self, call: Call, i: int, text: str, lps: list[TokenLogprob], reason: str,
               prompt: list[TextEntry] | None) -> dict:
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if call.tool_family:
            # the content is what feed() let through (text before, between and after the
            # calls) plus what finish() returns: exactly what the stream's deltas carry
            parser = call._parser()
            content, _ = parser.feed(text)
            rest, calls = parser.finish(truncated=reason == "length")
            content += rest
            message["content"] = content if content or not calls else None
            if calls:  # a call cut by max_tokens keeps finish_reason "length"
                reason = reason if parser.partial else "tool_calls"
                message["tool_calls"] = [
                    {"id": c.id, "type": "function",
                     "function": {"name": c.name, "arguments": c.arguments}} for c in calls]
        if call.legacy_functions:  # the spec's shape: function_call (null when none)
            tc = message.pop("tool_calls", None)
            message["function_call"] = tc[0]["function"] if tc else None
            if tc and reason == "tool_calls":
                reason = "function_call"
        return {"index": i, "message": message,
                "logprobs": {"content": _logprobs_chat(lps), "refusal": None}
                if call.want_logprobs else None,
                "finish_reason": reason}

    def text_choice(self, i: int, text: str) -> dict:
        return {"index": i, "delta": {"content": text}}

    def rich_chunks(self, call: Call, i: int, d: Delta,
                    parsers: list[ToolCallParser | None], n_calls: list[int]) -> list[str]:
        return [call._chunk_json([c]) for c in self._choices(call, i, d, parsers[i], n_calls)]

    def opening(self, call: Call) -> list[str]:
        return [call._chunk_json([{"index": i, "delta": {"role": "assistant", "content": ""},
                                   "logprobs": None, "finish_reason": None}
                                  for i in range(len(call.requests))])]

    def _choices(self, call: Call, i: int, d: Delta, parser: ToolCallParser | None,
                 n_calls: list[int]) -> list[dict]:
        """The `choices[0]` of each chunk for one delta: content, tool calls, finish."""
        out = []
        text, calls = d.text, list[Any]()
        if parser is not None:
            text, calls = parser.feed(d.text)
            if d.finish_reason is not None:
                rest, _ = parser.finish(truncated=d.finish_reason == "length")
                text += rest
                calls += self._final_calls(parser, n_calls[i] + len(calls))
        n_calls[i] += len(calls)
        if text or (call.want_logprobs and d.logprobs):
            out.append({"index": i, "delta": {"content": text},
                        "logprobs": {"content": _logprobs_chat(d.logprobs or []), "refusal": None}
                        if call.want_logprobs else None,
                        "finish_reason": None})
        for c in calls:
            delta = {"function_call": c["function"]} if call.legacy_functions else \
                {"tool_calls": [c]}
            out.append({"index": i, "delta": delta, "logprobs": None, "finish_reason": None})
        if d.finish_reason is not None:
            reason = d.finish_reason
            if n_calls[i] and not (parser is not None and parser.partial):
                reason = "function_call" if call.legacy_functions else "tool_calls"
            out.append({"index": i, "delta": {}, "logprobs": None, "finish_reason": reason})
        return out

    @staticmethod
    def _final_calls(parser: ToolCallParser, already: int) -> list[dict]:
        """Tool calls that only `finish()` completed, as deltas."""
        return [{"index": k, "id": c.id, "type": "function",
                 "function": {"name": c.name, "arguments": c.arguments}}
                for k, c in enumerate(parser.calls) if k >= already]


class CompletionStrategy(Strategy):
    """/v1/completions: text choices, echo, text logprobs with running text_offset."""

    id_prefix = "cmpl"
    object = "text_completion"
    chunk_object = "text_completion"

    def metadata(self, call: Call, model_version: str, elapsed: int) -> dict:
        return {"metadata": {"request_id": call.request_id, "processing_time_ms": elapsed,
                             "model_version": model_version}}

    def choice(self, call: Call, i: int, text: str, lps: list[TokenLogprob], reason: str,
               prompt: list[TextEntry] | None) -> dict:
        prefix = call.echo_texts[i] if call.echo_texts else ""
        logprobs = None
        if call.want_logprobs:  # with the echoed prompt's own tokens first, when read
            logprobs = _logprobs_text(lps, 0, prompt) if prompt is not None else \
                _logprobs_text(lps, len(prefix))
        return {"text": prefix + text, "index": i, "logprobs": logprobs,
                "finish_reason": reason}

    def text_choice(self, i: int, text: str) -> dict:
        return {"text": text, "index": i}

    def rich_chunks(self, call: Call, i: int, d: Delta,
                    parsers: list[ToolCallParser | None], n_calls: list[int]) -> list[str]:
        out = []
        if call.want_logprobs and not call._offsets:
            call._offsets = [len(t) for t in call.echo_texts] or [0] * len(call.requests)
        if d.prompt_logprobs is not None and call.echo_texts:
            # the echoed prompt with its own tokens' logprobs, before this choice's first text
            prompt = call._prompt_entries(d)
            out.append(call._chunk_json([{"text": call.echo_texts[i], "index": i,
                                          "logprobs": _logprobs_text([], 0, prompt),
                                          "finish_reason": None}]))
            call._offsets[i] = sum(len(e[0]) for e in prompt)
        if not (d.text or d.finish_reason or (call.want_logprobs and d.logprobs)):
            return out
        logprobs = None
        if call.want_logprobs:  # text_offset runs on over the choice's text (echo included)
            logprobs = _logprobs_text(d.logprobs or [], call._offsets[i])
            call._offsets[i] += sum(len(t.token) for t in d.logprobs or [])
        out.append(call._chunk_json([{"text": d.text, "index": i, "logprobs": logprobs,
                                      "finish_reason": d.finish_reason}]))
        return out

    def opening(self, call: Call) -> list[str]:
        n = len(call.requests)
        if call.echo_texts and not any(r.prompt_logprobs is not None for r in call.requests):
            return [call._chunk_json([{"text": call.echo_texts[i], "index": i, "logprobs": None,
                                       "finish_reason": None} for i in range(n)])]
        return []  # (an echo with the prompt's logprobs comes with each choice's first delta)


STRATEGIES: dict[str, Strategy] = {"chat": ChatStrategy(), "completion": CompletionStrategy()}


# ----------------------------------------------------------------------------- prepare
def _requests(prompt: list[int], params: SamplingParams, n: int, *, priority: Priority,
              request_id: str, param: str) -> list[GenerationRequest]:
    out = []
    for i in range(n):
        p = params if i == 0 else SamplingParams(**{**params.__dict__, "seed": (
            params.seed + i if params.seed is not None else None)})
        out.append(GenerationRequest(prompt=list(prompt), params=p, priority=priority,
                                     request_id=request_id, prompt_param=param))
    return out


async def prepare_chat(pool, body: dict | ChatCompletionRequest, *,
                       priority: Priority = Priority.INTERACTIVE, request_id: str,
                       model_version: str | None = None) -> Call:
    req = body if isinstance(body, ChatCompletionRequest) else parse(ChatCompletionRequest, body)
    max_tokens = req.max_output
    want_lp = bool(req.logprobs)
    params = req.sampling_params(max_tokens=max_tokens,
                                 logprobs=(req.top_logprobs or 0) if want_lp else None)
    tools, functions = req.tool_dicts(), req.function_dicts()
    engine = await pool.get(req.model)
    backends.require(engine, "generate")
    _check_token_ids(engine, params)
    media = req.media_part()
    if media and not getattr(engine, "accepts_media", False):
        # llama.cpp text models here: a part the template would drop is refused instead
        raise _bad(f"Invalid '{media[0]}': {engine.model_id} is a text-only model; it cannot "
                   f"read '{media[1]}' content parts. Send text parts only.", media[0])
    messages = req.message_dicts()
    _precheck_size(engine, sum(_text_size(m) for m in messages), "messages")
    prompt = await asyncio.to_thread(
        engine.render_chat, messages, tools=tools, tool_choice=req.tool_choice_value(),
        response_format=req.response_format_dict(), functions=functions,
        function_call=req.function_call_value(), parallel_tool_calls=req.parallel_tool_calls)
    if prompt.grammar:
        params.grammar = prompt.grammar
    elif prompt.parse_tools and prompt.extra.get("max_calls") == 1 \
            and prompt.extra.get("tool_family") == "hermes":
        # one call at most (parallel_tool_calls: false): generation ends with the first
        # call's closing tag (a stop string, so left out: the parser accepts the open block)
        params.stop = [*params.stop, ToolCallParser.HERMES_CLOSE]
    tokens = await asyncio.to_thread(engine.tokenize, prompt.prompt, add_special=False,
                                     parse_special=True)
    return Call(kind="chat", engine=engine, model=engine.model_id,
                requests=_requests(tokens, params, req.choices, priority=priority,
                                   request_id=request_id, param="messages"),
                prompt_tokens=len(tokens), max_tokens=max_tokens, request_id=request_id,
                streaming=bool(req.stream), include_usage=req.include_usage,
                model_version=model_version,
                tool_family=prompt.extra.get("tool_family", "hermes") if prompt.parse_tools else None,
                tool_parsing={"max_calls": prompt.extra.get("max_calls"),
                              "forced": bool(prompt.extra.get("forced")),
                              "names": prompt.extra.get("tool_names") or []},
                legacy_functions=bool(functions) and not tools, want_logprobs=want_lp)


#: a prompt of more characters than this many per token of context cannot fit (no vocabulary
#: has many tokens longer than 64 bytes, and a character is at least one byte), so it is
#: refused before it is tokenized: a 10 MB prompt costs a length check, not seconds of
#: tokenization
MAX_CHARS_PER_TOKEN = 64


def _text_size(m: Any) -> int:
    """The characters of text in a message (content and tool call arguments)."""
    if isinstance(m, str):
        return len(m)
    if isinstance(m, dict):
        return sum(_text_size(v) for v in m.values())
    if isinstance(m, list):
        return sum(_text_size(v) for v in m)
    return 0


def _precheck_size(engine, chars: int, param: str) -> None:
    ctx = int(getattr(engine, "slot_ctx", 0) or 0)
    if ctx and chars > ctx * MAX_CHARS_PER_TOKEN:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {ctx} tokens; your prompt has {chars:,} "
            f"characters, far more than fit. Shorten the {param}.", param=param)


def _check_token_ids(engine, params: SamplingParams) -> None:
    """logit_bias keys must exist in the model's vocabulary (llama.cpp would silently ignore
    them). Prompt token ids are checked by the engine itself (`Engine._make_job`)."""
    n_vocab = engine.model.n_vocab
    if any(not 0 <= t < n_vocab for t in params.logit_bias):
        raise _bad(f"Invalid 'logit_bias': token ids must be from 0 to {n_vocab - 1} for "
                   f"{engine.model_id}", "logit_bias")


async def prepare_completion(pool, body: dict | CompletionRequest, *,
                             priority: Priority = Priority.INTERACTIVE, request_id: str,
                             model_version: str | None = None) -> Call:
    req = body if isinstance(body, CompletionRequest) else parse(CompletionRequest, body)
    prompts = req.prompts()
    n = req.choices
    max_tokens = req.max_tokens
    lp = req.logprobs
    params = req.sampling_params(max_tokens=max_tokens, logprobs=lp)
    echo = bool(req.echo)
    engine = await pool.get(req.model)
    backends.require(engine, "generate")
    _check_token_ids(engine, params)
    _precheck_size(engine, max((len(p) for p in prompts if isinstance(p, str)), default=0),
                   "prompt")
    fim = None
    if req.suffix:  # fill-in-the-middle: <PRE> prompt <SUF> suffix <MID>, the middle generated
        fim = engine.model.fim_tokens()
        if fim is None:
            raise _bad(f"'suffix' needs a model with fill-in-the-middle tokens; {engine.model_id} "
                       "has none (its GGUF names no FIM prefix/suffix/middle tokens)", "suffix")
        suffix = await asyncio.to_thread(engine.tokenize, req.suffix, add_special=False)
    requests: list[GenerationRequest] = []
    echo_texts: list[str] = []
    prompt_tokens = 0
    for p in prompts:
        if fim is not None:
            text = await asyncio.to_thread(engine.tokenize, p, add_special=False) \
                if isinstance(p, str) else list(p)
            bos = [engine.model.bos] if engine.model.add_bos and engine.model.bos is not None \
                else []
            tokens = [*bos, fim[0], *text, fim[1], *suffix, fim[2]]
        else:
            tokens = await asyncio.to_thread(engine.tokenize, p, add_special=True) \
                if isinstance(p, str) else p
        prompt_tokens += len(tokens)
        rs = _requests(tokens, params, n, priority=priority, request_id=request_id,
                       param="prompt")
        if echo and lp is not None and fim is None:
            for r in rs:  # the prompt's own tokens with their logprobs
                r.prompt_logprobs = lp
        requests += rs
        if echo:
            echo_texts += [p if isinstance(p, str) else engine.detokenize(p)] * n
    return Call(kind="completion", engine=engine, model=engine.model_id, requests=requests,
                prompt_tokens=prompt_tokens, max_tokens=max_tokens, request_id=request_id,
                streaming=bool(req.stream), include_usage=req.include_usage,
                model_version=model_version, echo_texts=echo_texts,
                want_logprobs=lp is not None)


async def chat_completion(pool, body: dict, *, priority: Priority = Priority.INTERACTIVE,
                          request_id: str) -> dict:
    """A non-streaming chat completion body (the batch runner's entry point)."""
    return await (await prepare_chat(pool, body, priority=priority, request_id=request_id)).run()


async def completion(pool, body: dict, *, priority: Priority = Priority.INTERACTIVE,
                     request_id: str) -> dict:
    """A non-streaming text completion body (the batch runner's entry point)."""
    return await (await prepare_completion(pool, body, priority=priority,
                                           request_id=request_id)).run()
