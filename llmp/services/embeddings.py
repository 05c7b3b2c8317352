"""POST /v1/embeddings: body -> tokens -> one batched embedding call -> OpenAI's response.

Two steps, as chat and completions (`services.inference`), so that the route and the batch
runner reserve rate-limit tokens between them and record usage the same way:

    call = await prepare_embeddings(pool, body, request_id=rid)   # validate, tokenize
    limiter.admit(key, call.token_estimate, ...)
    body = await call.run()

`call` has the attributes the inference route's and the batch runner's accounting read
(`prompt_tokens`, `max_tokens`, `token_estimate`, `usage`, `ttft`, ...): an embedding request
bills its input tokens, and no completion tokens.

All inputs of a request go to the backend's `embed` in one call; the engine packs them (and
other requests' inputs) into as few decodes as fit its batch (`llmp.engine.embed`).
`dimensions` truncates to the first k dimensions and renormalises, for models trained for
that (Matryoshka; the GGUF says so, see `llmp.models.synth.MATRYOSHKA_KEY`); for others any
`dimensions` but the model's own is a 400.
"""
from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmp import backends
from llmp.engine.types import Priority, Usage
from llmp.errors import ContextLengthExceededError, InvalidRequestError
from llmp.protocol.base import parse
from llmp.protocol.embeddings import MAX_REQUEST_TOKENS, EmbeddingRequest

#: inputs of at most this many characters in all are tokenized on the event loop (tens of
#: microseconds); longer ones in a worker thread
INLINE_TOKENIZE_CHARS = 4096


@dataclass
class EmbeddingCall:
    engine: Any
    model: str
    inputs: list[list[int]]
    encoding_format: str
    dimensions: int | None
    request_id: str
    priority: Priority = Priority.INTERACTIVE
    model_version: str | None = None
    # what the accounting of the inference route and the batch runner reads
    streaming: bool = False
    max_tokens: int | None = 0
    ttft: float | None = None
    generated: int = 0
    completion_tokens_so_far: int = 0
    usage: Usage = field(default_factory=Usage)
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.usage = Usage(prompt_tokens=self.prompt_tokens)

    @property
    def prompt_tokens(self) -> int:
        return sum(len(t) for t in self.inputs)

    @property
    def token_estimate(self) -> int:
        return self.prompt_tokens

    def check_context(self) -> None:
        """Inputs longer than the engine takes fail now, before anything is reserved."""
        ctx = int(getattr(self.engine, "slot_ctx", 0) or 0)
        for i, toks in enumerate(self.inputs):
            if ctx and len(toks) > ctx:
                raise ContextLengthExceededError(
                    f"This model's maximum input is {ctx} tokens; input {i} has {len(toks)} "
                    "tokens. Shorten it.", param="input")

    async def vectors(self) -> np.ndarray:
        """The normalised vectors (n_inputs x dims), truncated and renormalised to
        `dimensions` when asked."""
        out = await self.engine.embed(self.inputs, priority=self.priority)
        if self.dimensions is not None and self.dimensions < out.shape[1]:
            out = out[:, :self.dimensions].astype(np.float64)
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out = (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)
        return out

    async def run(self) -> dict:
        vecs = await self.vectors()
        if self.encoding_format == "base64":  # little-endian float32, as OpenAI sends it
            le = vecs.astype("<f4", copy=False)
            items: list = [base64.b64encode(row.tobytes()).decode("ascii") for row in le]
        else:
            items = vecs.tolist()
        data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(items)]
        n = self.prompt_tokens
        return {"object": "list", "data": data, "model": self.model,
                "usage": {"prompt_tokens": n, "total_tokens": n}}


async def prepare_embeddings(pool, body: dict | EmbeddingRequest, *,
                             priority: Priority = Priority.INTERACTIVE, request_id: str,
                             model_version: str | None = None) -> EmbeddingCall:
    req = body if isinstance(body, EmbeddingRequest) else parse(EmbeddingRequest, body)
    engine = await pool.get(req.model)
    backends.require(engine, "embed")
    n_embd = int(engine.n_embd)
    if req.dimensions is not None and req.dimensions != n_embd:
        if req.dimensions > n_embd:
            raise InvalidRequestError(
                f"Invalid 'dimensions': {req.model} has {n_embd} dimensions; ask for at most "
                f"{n_embd}", param="dimensions", code="invalid_parameter")
        if not engine.truncatable:
            raise InvalidRequestError(
                f"The model '{req.model}' does not support 'dimensions' (its embeddings are "
                f"not trained to be truncated); leave it out or use {n_embd}",
                param="dimensions", code="invalid_parameter")
    raw = req.inputs()
    n_vocab = int(engine.model.n_vocab)
    ctx = int(getattr(engine, "slot_ctx", 0) or 0)
    chars = sum(len(x) for x in raw if isinstance(x, str))
    if chars > MAX_REQUEST_TOKENS * 64:  # far more than can be tokens: refuse before tokenizing
        raise InvalidRequestError(f"The inputs are too long ({chars:,} characters); at most "
                                  f"{MAX_REQUEST_TOKENS:,} tokens in all", param="input",
                                  code="invalid_parameter")
    for i, x in enumerate(raw):
        if isinstance(x, str) and ctx and len(x) > ctx * 64:
            raise ContextLengthExceededError(
                f"This model's maximum input is {ctx} tokens; input {i} has {len(x):,} "
                "characters, far more than fit. Shorten it.", param="input")
        if not isinstance(x, str) and not all(0 <= t < n_vocab for t in x):
            raise InvalidRequestError(
                f"Invalid 'input': token ids must be from 0 to {n_vocab - 1} for "
                f"{engine.model_id}", param="input", code="invalid_parameter")

    def tokenize_all() -> list[list[int]]:
        return [engine.tokenize(x) if isinstance(x, str) else list(x) for x in raw]

    if not any(isinstance(x, str) for x in raw):
        tokens: list[list[int]] = [list(x) for x in raw]  # type: ignore[arg-type]
    elif chars <= INLINE_TOKENIZE_CHARS:  # microseconds: not worth a thread hop
        tokens = tokenize_all()
    else:
        tokens = await asyncio.to_thread(tokenize_all)
    total = sum(len(t) for t in tokens)
    if total > MAX_REQUEST_TOKENS:
        raise InvalidRequestError(f"The inputs have {total:,} tokens; at most "
                                  f"{MAX_REQUEST_TOKENS:,} per request", param="input",
                                  code="invalid_parameter")
    for i, t in enumerate(tokens):
        if not t:
            raise InvalidRequestError(f"Invalid 'input': input {i} has no tokens", param="input",
                                      code="invalid_parameter")
    return EmbeddingCall(engine=engine, model=engine.model_id, inputs=tokens,
                         encoding_format=req.encoding_format, dimensions=req.dimensions,
                         request_id=request_id, priority=priority, model_version=model_version)


async def embeddings(pool, body: dict, *, priority: Priority = Priority.INTERACTIVE,
                     request_id: str) -> dict:
    """A response body at once (the batch runner's one-step entry point)."""
    return await (await prepare_embeddings(pool, body, priority=priority,
                                           request_id=request_id)).run()
