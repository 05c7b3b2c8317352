"""Grammar-constrained output always parses: JSON schemas and forced tool calls."""
from __future__ import annotations

import json

import jsonschema
import pytest

from llmp.config import Settings
from llmp.engine.engine import Engine
from llmp.engine.tools import ToolCallParser
from llmp.engine.types import GenerationRequest, SamplingParams
from llmp.errors import InvalidRequestError

SCHEMA = {"type": "object", "properties": {
    "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
    "ok": {"type": "boolean"},
    "n": {"type": "integer"},
    "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}, "maxItems": 3},
}, "required": ["city", "ok", "n", "tags"], "additionalProperties": False}

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
        "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"utc": {"type": "boolean"}}, "required": ["utc"]}}},
]


@pytest.fixture(scope="module")
def engine(tiny_model_path, tmp_path_factory):
    eng = Engine.load("tiny", str(tiny_model_path), Settings(home=tmp_path_factory.mktemp("h"), n_slots=4, n_ctx=4096))
    yield eng
    eng.close()


def sample(seed: int, grammar: str) -> SamplingParams:
    return SamplingParams(temperature=1.0, seed=seed, max_tokens=200, grammar=grammar)


async def test_json_schema_output_always_validates(engine):
    chat = engine.render_chat([{"role": "user", "content": "JSON please"}],
                              response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}})
    for seed in range(6):
        c = await engine.complete(GenerationRequest(chat.prompt, sample(seed, chat.grammar)))
        assert c.finish_reason == "stop"
        jsonschema.validate(json.loads(c.text), SCHEMA)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
async def test_forced_tool_call_always_parses(engine, choice):
    """Exactly one call for a named choice, or "required" with parallel_tool_calls false."""
    chat = engine.render_chat([{"role": "user", "content": "What time is it?"}], tools=TOOLS,
                              tool_choice=choice, parallel_tool_calls=False)
    assert chat.parse_tools and chat.extra["tool_family"] == "hermes"
    for seed in range(4):
        c = await engine.complete(GenerationRequest(chat.prompt, sample(seed, chat.grammar)))
        parser = ToolCallParser(chat.extra["tool_family"])
        parser.feed(c.text)
        _, calls = parser.finish()
        assert len(calls) == 1 and c.finish_reason == "stop"
        if isinstance(choice, dict):
            assert calls[0].name == "get_time"
        tool = next(t["function"] for t in TOOLS if t["function"]["name"] == calls[0].name)
        jsonschema.validate(json.loads(calls[0].arguments), tool["parameters"])


async def test_required_allows_several_calls_that_all_parse(engine):
    """tool_choice "required" (parallel_tool_calls not false): one call or more, each one
    valid for its tool (a call cut by max_tokens aside)."""
    chat = engine.render_chat([{"role": "user", "content": "What time is it?"}], tools=TOOLS,
                              tool_choice="required")
    assert chat.extra["max_calls"] is None and ")*" in chat.grammar.splitlines()[0]
    c = await engine.complete(GenerationRequest(chat.prompt, sample(0, chat.grammar)))
    parser = ToolCallParser(chat.extra["tool_family"])
    parser.feed(c.text)
    _, calls = parser.finish()
    complete = calls if c.finish_reason == "stop" else calls[:-1]
    assert calls and (complete or c.finish_reason == "length")
    for call in complete:
        tool = next(t["function"] for t in TOOLS if t["function"]["name"] == call.name)
        jsonschema.validate(json.loads(call.arguments), tool["parameters"])


async def test_bad_grammar_and_schema_are_invalid_requests(engine):
    with pytest.raises(InvalidRequestError):
        await engine.complete(GenerationRequest("x", SamplingParams(grammar="root ::= (")))
    with pytest.raises(InvalidRequestError) as e:
        engine.render_chat([{"role": "user", "content": "x"}], tools=TOOLS,
                           tool_choice={"type": "function", "function": {"name": "missing"}})
    assert e.value.param == "tool_choice"


async def test_free_text_strings_never_contain_raw_control_characters(engine):
    """A random model emits control bytes; the grammar must keep them out of JSON strings
    (llama-cpp-python's converter alone lets them in, and json.loads then fails)."""
    schema = {"type": "object", "properties": {"note": {"type": "string", "maxLength": 24}},
              "required": ["note"]}
    chat = engine.render_chat([{"role": "user", "content": "Write a note"}],
                              response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}})
    for seed in range(10):
        c = await engine.complete(GenerationRequest(chat.prompt, sample(seed, chat.grammar)))
        assert c.finish_reason == "stop", c.text
        note = json.loads(c.text)["note"]  # strict: raw control characters raise
        assert not any(ord(ch) < 0x20 for ch in note)
