"""The /v1 server through the official openai client: models, completions and chat (streaming
and not), tools, structured output; bodies validated against OpenAI's component schemas."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest


def _nullable(node):
    """OpenAPI 3.0's `nullable: true` (still used in parts of OpenAI's 3.1 file) as JSON Schema."""
    if isinstance(node, dict):
        node = {k: _nullable(v) for k, v in node.items()}
        if node.pop("nullable", False):
            node = {"anyOf": [node, {"type": "null"}]}
        return node
    return [_nullable(v) for v in node] if isinstance(node, list) else node


SCHEMAS = _nullable(json.loads((Path(__file__).parent / "data" / "openai_schemas.json").read_text()))
# chat bodies must not make the openai client's pydantic models warn (e.g. about `metadata`)
pytestmark = pytest.mark.filterwarnings("error:Pydantic serializer warnings")

MSG = [{"role": "user", "content": "Hello, how are you today?"}]
FULL = {"ignore_eos": True}  # the random tiny model may emit EOS at any point


def check(body: dict, schema: str) -> None:
    """Validate the whole body against OpenAI's component schema, and the spec's `metadata`
    {request_id, processing_time_ms, model_version}: as is on /completions (whose OpenAI
    schema has no `metadata`); on chat bodies, whose `metadata` is OpenAI's map of strings,
    processing_time_ms (a number) sits beside it."""
    meta = body.get("metadata")
    if meta is not None:
        chat = schema.startswith("CreateChatCompletion")
        assert meta["request_id"].startswith("req_")
        if chat:
            assert set(meta) == {"request_id", "model_version"}
            assert type(body["processing_time_ms"]) is int
        else:
            assert set(meta) == {"request_id", "processing_time_ms", "model_version"}
            assert type(meta["processing_time_ms"]) is int
    jsonschema.validate(body, {"$ref": f"#/components/schemas/{schema}", **SCHEMAS},
                        cls=jsonschema.Draft202012Validator)


def test_models_list_and_retrieve(server):
    client = server.openai()
    ids = [m.id for m in client.models.list()]
    assert ids == ["tiny"]
    m = client.models.retrieve("tiny")
    assert m.id == "tiny" and m.object == "model" and m.owned_by
    status, headers, body = server.request("GET", "/v1/models?per_page=1&page=1")
    assert status == 200 and headers["x-request-id"].startswith("req_")
    assert body["total"] == 1 and body["page"] == 1 and body["per_page"] == 1
    assert body["models"] == body["data"] and body["object"] == "list"
    check(body, "ListModelsResponse")
    model = body["models"][0]
    assert {"name", "provider", "category", "context_length", "pricing", "capabilities",
            "created_at"} <= set(model)
    check(model, "Model")
    assert server.request("GET", "/v1/models?category=embedding")[2]["total"] == 0
    assert server.request("GET", "/v1/models?page=2")[2]["models"] == []


def test_chat_completion(server):
    client = server.openai()
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=12, seed=1,
                                       extra_body=FULL)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens == 12 and r.choices[0].finish_reason == "length"
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12
    status, headers, body = server.request("POST", "/v1/chat/completions", json={
        "model": "tiny", "messages": MSG, "max_tokens": 8, "seed": 1, "n": 2,
        "logprobs": True, "top_logprobs": 2, **FULL})
    assert status == 200
    check(body, "CreateChatCompletionResponse")
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"]["completion_tokens"] == 16
    assert len(body["choices"][0]["logprobs"]["content"]) == 8
    assert body["metadata"]["request_id"] == headers["x-request-id"]
    assert body["metadata"]["model_version"].startswith("tiny-")


def test_chat_stream_with_usage(server):
    client = server.openai()
    chunks = list(client.chat.completions.create(
        model="tiny", messages=MSG, max_tokens=10, stream=True,
        stream_options={"include_usage": True}, extra_body=FULL))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert text
    for c in chunks:
        check(c.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")


def test_completions(server):
    client = server.openai()
    r = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=6,
                                  logprobs=2, echo=True, extra_body=FULL)
    assert r.object == "text_completion" and r.choices[0].text.startswith("The quick brown fox")
    # echo: the prompt's 4 tokens (with their logprobs) then the 6 generated
    assert len(r.choices[0].logprobs.tokens) == 4 + 6 and r.usage.completion_tokens == 6
    status, _, body = server.request("POST", "/v1/completions", json={
        "model": "tiny", "prompt": ["a", "b"], "max_tokens": 3, **FULL})
    assert status == 200 and len(body["choices"]) == 2
    check(body, "CreateCompletionResponse")
    parts = list(client.completions.create(model="tiny", prompt="Hello", max_tokens=5, stream=True,
                                          extra_body=FULL))
    assert parts[-1].choices[0].finish_reason == "length"
    assert sum(1 for p in parts if p.choices[0].text) >= 1


def test_tool_call_round_trip(server):
    client = server.openai()
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "London"]}},
                       "required": ["city"], "additionalProperties": False}}}]
    msgs = [{"role": "user", "content": "What is the weather like in Paris?"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, tools=tools,
                                       tool_choice="required", max_tokens=256, seed=3)
    check(r.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert "city" in json.loads(call.function.arguments)
    msgs += [r.choices[0].message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'}]
    r2 = client.chat.completions.create(model="tiny", messages=msgs, tools=tools, max_tokens=8)
    assert r2.choices[0].message.role == "assistant" and r2.usage.prompt_tokens > r.usage.prompt_tokens
    # streamed, and the legacy functions / function_call shape
    chunks = list(client.chat.completions.create(
        model="tiny", messages=msgs[:1], tools=tools, max_tokens=256, stream=True, seed=3,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls and calls[0].function.name == "get_weather"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    status, _, body = server.request("POST", "/v1/chat/completions", json={
        "model": "tiny", "messages": msgs[:1], "max_tokens": 256,
        "functions": [tools[0]["function"]], "function_call": {"name": "get_weather"}})
    msg = body["choices"][0]["message"]
    assert status == 200 and body["choices"][0]["finish_reason"] == "function_call"
    assert msg["function_call"]["name"] == "get_weather" and "tool_calls" not in msg


@pytest.mark.parametrize("kind", ["json_schema", "json_object"])
def test_structured_output_parses(server, kind):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                               "size": {"enum": ["small", "large"]}},
              "required": ["ok", "size"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}} \
        if kind == "json_schema" else {"type": "json_object"}
    r = server.openai().chat.completions.create(model="tiny", messages=MSG, max_tokens=200,
                                                response_format=fmt, seed=5)
    if kind == "json_schema":
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    else:  # any JSON object: a random model may not close it within max_tokens
        assert r.choices[0].message.content.lstrip().startswith("{")


def test_health_and_metrics(server):
    status, headers, body = server.request("GET", "/health", key=None)
    assert status == 200 and body["status"] == "ok" and "x-request-id" in headers
    server.openai().chat.completions.create(model="tiny", messages=MSG, max_tokens=2)
    status, headers, text = server.request("GET", "/metrics", key=None)
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    for name in ("llmp_requests_total", "llmp_completion_tokens_total", "llmp_queue_depth",
                 "llmp_slots_busy", "llmp_time_to_first_token_seconds_bucket",
                 "llmp_request_duration_seconds_bucket"):
        assert name in text
    assert 'llmp_slots_total{model="tiny"} 16' in text
