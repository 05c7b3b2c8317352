"""The engine's contract with the layers above it (services, server, bench).

The server turns an HTTP body into a `GenerationRequest`, asks the `ModelPool` for the
model's `Engine`, and either iterates `engine.generate(req)` (streaming: `Delta`s, the last
one with `finish_reason` and `usage`) or awaits `engine.complete(req)` (a `Completion`).
Chat requests first go through `engine.render_chat(...)`, which renders the model's own
template and returns the prompt plus the grammar / tool-call parser the request needs.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Priority(enum.IntEnum):
    INTERACTIVE = 0  # goes first
    BATCH = 1  # fills slots that interactive work leaves idle


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int | None = None  # None: until EOG or the slot's context is full
    stop: list[str] = field(default_factory=list)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repeat_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: int | None = None  # None: no logprobs; k >= 0: chosen token + k alternatives
    ignore_eos: bool = False
    grammar: str | None = None  # GBNF


@dataclass
class GenerationRequest:
    prompt: str | list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    priority: Priority = Priority.INTERACTIVE
    request_id: str = ""
    add_special: bool = False  # add BOS when the model wants one (raw completions)
    prompt_param: str = "prompt"  # the API parameter named in errors ("messages" for chat)
    # LoRA adapters applied to this request: (GGUF path, scale) pairs, loaded in the engine
    # (`Engine.load_adapters`); requests with different sets never share a decode step
    lora: tuple[tuple[str, float], ...] = ()
    # scoring instead of generating (`Engine.score`): prefill the prompt, then return the
    # log-probabilities (full-vocabulary log-softmax of the next-token logits) of these tokens
    score_tokens: list[int] | None = None
    # the log-probabilities of the prompt's own tokens, with this many alternatives each
    # (completions' echo + logprobs): the whole prompt is prefilled (no prefix reuse) with
    # logits at every position; sent on the first delta as `Delta.prompt_logprobs`
    prompt_logprobs: int | None = None


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[tuple[str, float, list[int]]] = field(default_factory=list)


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Delta:
    """A piece of generated text. The final delta has `finish_reason` and `usage` set."""
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # "stop" | "length" (| "tool_calls" set by the chat layer)
    usage: Usage | None = None
    ttft: float | None = None  # seconds from submit to first token (on the first delta)
    scores: list[float] | None = None  # a scoring request's log-probabilities (final delta)
    # with `GenerationRequest.prompt_logprobs` (first delta): the prompt's token ids and, for
    # each, its log-probability given the tokens before it (None for the first token)
    prompt_token_ids: list[int] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None


@dataclass
class Completion:
    text: str
    finish_reason: str
    usage: Usage
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    ttft: float | None = None
    latency: float | None = None


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text


@dataclass
class ChatPrompt:
    """What `render_chat` returns: the prompt text and how to post-process the output."""
    prompt: str
    grammar: str | None = None
    parse_tools: bool = False  # run the model family's tool-call parser on the output
    extra: dict[str, Any] = field(default_factory=dict)
