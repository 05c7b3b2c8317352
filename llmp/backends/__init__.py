"""The backend seam: what services ask of a loaded model, whatever computes it.

Services get a backend from the model pool (`await pool.get(model_id)`) and talk to it only
through the methods below. Today every backend is the llama.cpp engine: `Engine`
(generation and guard models: generate, complete, tokenize, render_chat, score) or
`EmbeddingEngine` (embedding models: tokenize, embed). An upstream OpenAI-compatible engine
can implement the same protocol later.

A backend's `kind` ("generate" | "embed" | "guard", from the model's `ModelSpec`) says what it
serves; `require(backend, capability)` turns asking the wrong kind of model (chat on an
embedding model, embeddings on a chat model) into one clear 400.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

from llmp.errors import InvalidRequestError

KINDS = ("generate", "embed", "guard")

#: capability -> the kinds of backend that have it
CAPABILITIES: dict[str, tuple[str, ...]] = {
    "generate": ("generate", "guard"),  # chat/completions (a guard model can also chat)
    "embed": ("embed",),
    "moderate": ("guard",),
}

_HINT = {
    "generate": "it is an embedding model: use POST /v1/embeddings",
    "embed": "it is not an embedding model (category 'embedding'); embed with a GGUF "
             "embedding model (e.g. `llmp models synth --preset embed --register`)",
    "moderate": "it is not a guard model; register one with `llmp models set-guard ID "
                "--profile llama-guard-3|llama-guard-3-1b|qwen3-guard`",
}


@runtime_checkable
class Backend(Protocol):
    model_id: str
    kind: str
    slot_ctx: int

    def tokenize(self, text: str, add_special: bool = ..., parse_special: bool = ...) -> list[int]: ...


class GenerateBackend(Backend, Protocol):
    def generate(self, req: Any) -> AsyncIterator[Any]: ...

    async def complete(self, req: Any) -> Any: ...

    def render_chat(self, messages: list[dict], **kwargs: Any) -> Any: ...

    async def score(self, tokens: list[int], candidates: list[int], *,
                    priority: Any = ...) -> list[float]: ...


class EmbedBackend(Backend, Protocol):
    n_embd: int
    truncatable: bool

    async def embed(self, inputs: list[list[int]], *, priority: Any = ...) -> Any: ...


def kind(backend: Any) -> str:
    return getattr(backend, "kind", "generate")


def require(backend: Any, capability: str, *, param: str = "model") -> None:
    """InvalidRequestError (400, code `model_not_supported`) unless the backend can do it."""
    if kind(backend) not in CAPABILITIES[capability]:
        what = {"generate": "text generation", "embed": "embeddings",
                "moderate": "moderation"}[capability]
        raise InvalidRequestError(
            f"The model '{getattr(backend, 'model_id', '?')}' does not support {what}: "
            f"{_HINT[capability]}.", param=param, code="model_not_supported")
