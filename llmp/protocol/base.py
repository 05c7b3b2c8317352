"""The base of every request model: parsing, validation errors in the spec's format, numbers.

`loads(raw)` parses a JSON body (pydantic-core's parser: no lone surrogates, a nesting limit,
so hostile bodies are a 400, never a crash); `parse(Model, data, prefix=...)` validates and
turns pydantic's errors into one `InvalidRequestError` whose `param` is a path such as
`messages[0].content[0].text` and whose code is `missing_parameter` or `invalid_parameter`.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, TypeVar

import pydantic_core
from pydantic import BaseModel, ConfigDict, PlainValidator, ValidationError, WithJsonSchema
from pydantic_core import PydanticCustomError

from llmp.errors import InvalidRequestError

M = TypeVar("M", bound=BaseModel)

#: the deepest JSON nesting a body may have (pydantic-core's parser stops there too)
MAX_JSON_DEPTH = 200


class RequestModel(BaseModel):
    """A request body: unknown fields are ignored, as OpenAI's clients send fields (and
    `extra_body`) a server may not know. Numbers are finite: pydantic-core's parser reads
    `1e999` as inf even with allow_inf_nan=False, so every float field refuses it here."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=False,
                              allow_inf_nan=False)


class OpenModel(BaseModel):
    """An object whose unknown keys are kept (messages and tools, which chat templates read)."""

    model_config = ConfigDict(extra="allow")


def parse_json(raw: bytes | str) -> Any:
    """Parse JSON text; ValueError when it is not valid JSON (including lone surrogates,
    NaN/Infinity and nesting deeper than MAX_JSON_DEPTH)."""
    return pydantic_core.from_json(raw or b"null", allow_inf_nan=False)


def loads(raw: bytes | str) -> Any:
    """`parse_json`, with InvalidRequestError(code=invalid_json) for invalid JSON."""
    try:
        return parse_json(raw)
    except ValueError as e:
        raise InvalidRequestError(f"We could not parse the JSON body of your request ({e})",
                                  code="invalid_json") from None


def _fmt(lo: float | None, integer: bool) -> str:
    return str(int(lo)) if integer and lo is not None else f"{lo:g}"


def number(lo: float | None = None, hi: float | None = None, *, integer: bool = False,
           exclusive_lo: bool = False) -> Any:
    """An integer or finite number from `lo` to `hi` (booleans and strings are refused); as
    an `Annotated` type for a field, with its JSON schema."""
    kind = "an integer" if integer else "a number"
    rng = ""
    if lo is not None:
        rng += f" {'above' if exclusive_lo else 'from'} {_fmt(lo, integer)}"
    if hi is not None:
        rng += f" {'to' if lo is not None else 'up to'} {_fmt(hi, integer)}"

    def check(v: Any) -> Any:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        if ok and isinstance(v, float):
            ok = math.isfinite(v) and (not integer or v.is_integer())
        if ok and lo is not None:
            ok = v > lo if exclusive_lo else v >= lo
        if ok and hi is not None:
            ok = v <= hi
        if not ok:
            raise PydanticCustomError("invalid_parameter", "{detail}",
                                      {"detail": f"{_short(v)} must be {kind}{rng}"})
        return int(v) if integer else float(v)

    schema: dict[str, Any] = {"type": "integer" if integer else "number"}
    if lo is not None:
        schema["exclusiveMinimum" if exclusive_lo else "minimum"] = lo
    if hi is not None:
        schema["maximum"] = hi
    return Annotated[int if integer else float, PlainValidator(check), WithJsonSchema(schema)]


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def path(loc: tuple[int | str, ...], data: Any, prefix: str = "", *,
         missing: bool = False) -> str:
    """pydantic's error location -> `messages[0].content[0].text`. Union and tag members
    that pydantic adds to a location (`str`, `list[...]`, a discriminator's value) are
    recognised by walking the input: only keys and indexes that exist there are kept (and
    the last key of a `missing` error)."""
    out = prefix
    cur = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            out += f"[{part}]"
            cur = cur[part]
        elif isinstance(cur, dict) and isinstance(part, str) and (part in cur or (last and missing)):
            out += f".{part}" if out else part
            cur = cur.get(part)
        # else: a union member or tag name, not a place in the body
    return out


def _error(e: Any, data: Any, prefix: str) -> InvalidRequestError:
    loc = tuple(e["loc"])
    kind = e["type"]
    p = path(loc, data, prefix, missing=kind == "missing")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tag = str((e.get("ctx") or {}).get("discriminator", "")).strip("'\"")
        if tag:
            p = f"{p}.{tag}" if p else tag
    where = p or "body"
    if kind == "missing":
        return InvalidRequestError(f"Missing required parameter '{where}'", param=p or None,
                                   code="missing_parameter")
    msg = e["msg"].removeprefix("Value error, ")
    if kind == "union_tag_invalid":
        ctx = e.get("ctx") or {}
        msg = f"{ctx.get('tag')!r} is not one of {ctx.get('expected_tags')}"
    elif kind == "model_type" or kind == "dict_type":
        msg = "must be an object"
    elif kind == "extra_forbidden":
        msg = "unknown parameter"
    return InvalidRequestError(f"Invalid '{where}': {msg}", param=p or None,
                               code="invalid_parameter")


def parse(model: type[M], data: Any, *, prefix: str = "") -> M:
    """Validate `data` (parsed JSON) as `model`; the first problem as an InvalidRequestError
    (`prefix` is put before every param, e.g. "body" for a batch line)."""
    if not isinstance(data, dict):
        raise InvalidRequestError(
            f"{'The request body' if not prefix else repr(prefix)} must be a JSON object",
            param=prefix or None, code="invalid_json" if not prefix else "invalid_parameter")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error_of(exc, data, prefix) from None
    except InvalidRequestError as e:  # from a model validator, naming its own param
        if prefix:
            e.param = f"{prefix}.{e.param}" if e.param else prefix
        raise


def error_of(exc: ValidationError, data: Any, prefix: str = "") -> InvalidRequestError:
    """The one InvalidRequestError that reports `exc`: the problem deepest in the body (in a
    union, the member that matched furthest), a missing parameter first among equals; the
    messages of alternatives at the same place are joined."""
    errors = exc.errors(include_url=False, include_input=False)
    paths = [path(tuple(e["loc"]), data, prefix, missing=e["type"] == "missing")
             for e in errors]

    def rank(i: int) -> tuple[int, int, int]:
        depth = paths[i].count(".") + paths[i].count("[")
        return (depth, errors[i]["type"] == "missing", -i)

    best = max(range(len(errors)), key=rank)
    err = _error(errors[best], data, prefix)
    if err.code == "invalid_parameter":
        alts = list(dict.fromkeys(errors[i]["msg"].removeprefix("Value error, ") for i in range(len(errors))
                                  if paths[i] == paths[best] and errors[i]["type"] != "missing"))
        if len(alts) > 1:
            err.message = f"Invalid '{paths[best] or 'body'}': " + "; or ".join(alts)
    return err
