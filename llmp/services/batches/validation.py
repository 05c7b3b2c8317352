"""Batch input validation: every line is checked before anything runs (JSON, a unique
custom_id, method POST, url equal to the batch's endpoint, a valid body, a known model, at
most MAX_LINES lines), and the `completion_window` parsed."""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmp.errors import (
    InvalidRequestError,
)
from llmp.protocol.base import RequestModel, parse, parse_json
from llmp.protocol.resources import (
    BATCH_ENDPOINTS,
    ChatLineShape,
    CompletionLineShape,
    EmbeddingLineShape,
    ModerationLineShape,
)
from llmp.services import embeddings, inference, moderation

# endpoint -> the inference function that serves its body (the same code as the HTTP routes)
ENDPOINTS: dict[str, Callable[..., Any]] = {
    "/v1/chat/completions": inference.chat_completion,
    "/v1/completions": inference.completion,
    "/v1/embeddings": embeddings.embeddings,
    "/v1/moderations": moderation.moderations,
}
# endpoint -> its two-step form (validate and tokenize, then run), so that a line is admitted
#: the permission a line of an endpoint needs (others: `inference`)
LINE_PERMISSIONS = {"/v1/moderations": "moderation"}
MAX_LINES = 50_000
MAX_REPORTED_ERRORS = 100  # validation stops collecting errors after this many
MAX_WINDOW_S = 7 * 24 * 3600
_WINDOW = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_window(value: Any) -> int:
    """`"24h"` -> 86400 seconds; any `<n>s|m|h|d` from 1 second to 7 days."""
    m = _WINDOW.match(value) if isinstance(value, str) else None
    seconds = int(m.group(1)) * _UNITS[m.group(2)] if m else 0
    if not 0 < seconds <= MAX_WINDOW_S:
        raise InvalidRequestError(
            f"Invalid 'completion_window': {value!r}; use '24h' (or a duration such as '1h', "
            f"'30m', '90s' up to 7d)", param="completion_window", code="invalid_parameter")
    return seconds


def _error(code: str, message: str, line: int | None, param: str | None = None) -> dict:
    return {"code": code, "message": message, "param": param, "line": line}


#: endpoint -> the shape its line bodies must have (values: the endpoint's request model,
#: `inference.ChatCompletionRequest` ..., when the line runs)
LINE_SHAPES: dict[str, type[RequestModel]] = {
    "/v1/chat/completions": ChatLineShape, "/v1/completions": CompletionLineShape,
    "/v1/embeddings": EmbeddingLineShape, "/v1/moderations": ModerationLineShape}
assert tuple(ENDPOINTS) == tuple(LINE_SHAPES) == BATCH_ENDPOINTS


def check_body(endpoint: str, body: Any) -> tuple[str, str] | None:
    """(param, message) of a line body whose shape is wrong (see `LINE_SHAPES`), or None."""
    try:
        parse(LINE_SHAPES[endpoint], body, prefix="body")
    except InvalidRequestError as e:
        if e.param == "body.stream":
            return e.param, "streaming is not supported in a batch"
        return e.param or "body", e.message
    return None


@dataclass
class Validation:
    """The outcome of `validate_lines`: the runnable lines, or the errors."""
    lines: list[tuple[int, str, str]] = field(default_factory=list)  # (line, custom_id, body)
    line_models: list[str] = field(default_factory=list)  # the model of each of `lines`
    errors: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def models(self) -> list[str]:
        """Distinct models, in first-use order."""
        return list(dict.fromkeys(self.line_models))

    def check_models(self, known_model: Callable[[str], bool]) -> None:
        """Turn every line whose model is not served into a `model_not_found` error."""
        unknown = {m for m in self.models if not known_model(m)}
        for (n, _, _), m in zip(self.lines, self.line_models):
            if m in unknown and len(self.errors) < MAX_REPORTED_ERRORS:
                self.errors.append(_error("model_not_found", f"The model {m!r} does not exist",
                                          n, "body.model"))
        self.errors.sort(key=lambda e: e["line"] or 0)


def validate_lines(lines: Iterable[bytes | str], endpoint: str, *,
                   known_model: Callable[[str], bool] | None = None) -> Validation:
    """Check every line of a batch input file (JSONL; blank lines are skipped). Line numbers
    are 1-based. `known_model` (None: skip the check; see `Validation.check_models`) says
    whether a model id is served."""
    v = Validation()
    seen: dict[str, int] = {}
    count = 0

    def err(*a: Any) -> bool:
        v.errors.append(_error(*a))
        return len(v.errors) >= MAX_REPORTED_ERRORS

    for n, raw in enumerate(lines, 1):
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if not text.strip():
            continue
        count += 1
        if count > MAX_LINES:
            err("too_many_requests", f"A batch holds at most {MAX_LINES:,} requests", n)
            break
        try:
            obj = parse_json(text)
        except ValueError as e:
            if err("invalid_json_line", f"This line is not valid JSON ({e})", n):
                break
            continue
        if not isinstance(obj, dict):
            if err("invalid_json_line", "This line is not a JSON object", n):
                break
            continue
        problem = _check_line(obj, endpoint, seen, n)
        if problem is not None:
            if err(problem[0], problem[1], n, problem[2]):
                break
            continue
        seen[obj["custom_id"]] = n
        v.lines.append((n, obj["custom_id"], json.dumps(obj["body"])))
        v.line_models.append(obj["body"]["model"])
    if known_model is not None:
        v.check_models(known_model)
    if not v.errors and not v.lines:
        v.errors.append(_error("empty_file", "The input file has no requests", None))
    return v


def _check_line(obj: dict, endpoint: str, seen: dict[str, int],
                n: int) -> tuple[str, str, str | None] | None:
    cid = obj.get("custom_id")
    if not isinstance(cid, str) or not cid:
        return "missing_custom_id", "'custom_id' is required (a non-empty string)", "custom_id"
    if cid in seen:
        return ("duplicate_custom_id",
                f"The custom_id {cid!r} is also used on line {seen[cid]}", "custom_id")
    if obj.get("method") != "POST":
        return "invalid_method", "'method' must be 'POST'", "method"
    if obj.get("url") != endpoint:
        return ("invalid_url", f"'url' must be the batch's endpoint {endpoint!r} "
                f"(got {obj.get('url')!r})", "url")
    problem = check_body(endpoint, obj.get("body"))
    if problem is not None:
        return "invalid_request", problem[1], problem[0]
    return None


def read_lines(path: Path) -> Iterator[bytes]:
    """The lines of a file, one at a time (never the whole file in memory)."""
    with open(path, "rb") as f:
        yield from f
