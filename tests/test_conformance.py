"""Conformance with the spec and OpenAI's API (issue 10), against a real server with the
official openai client; bodies validated against OpenAI's component schemas."""
from __future__ import annotations

import io
import json
import time
import urllib.request

import openai
import pytest

from llmp.models import registry

from schema_check import check

# chat bodies must not make the openai client's pydantic models warn (e.g. about `metadata`)
pytestmark = pytest.mark.filterwarnings("error:Pydantic serializer warnings")

MSG = [{"role": "user", "content": "What is the weather like in Paris?"}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "London"]}},
                   "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {}}}}
GREEDY = {"temperature": 0, "seed": 11}


def sse(server, path: str, body: dict) -> list[dict]:
    """The JSON chunks of a streamed response, read raw (what the client's models hide)."""
    req = urllib.request.Request(server.url + path, data=json.dumps(body).encode(), headers={
        "Authorization": f"Bearer {server.admin_key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        lines = [x[6:] for x in resp.read().decode().splitlines() if x.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(x) for x in lines[:-1]]


# ----------------------------------------------------------------------------- 1
@pytest.mark.parametrize("shape", ["tools", "functions"])
def test_text_is_kept_when_tools_are_offered(server, shape):
    """1. A text answer with tools offered (tool_choice / function_call "auto") keeps its
    content, equal to the streamed deltas for the same request."""
    client = server.openai()
    body = {"model": "tiny", "messages": MSG, "max_tokens": 16, **GREEDY,
            "extra_body": {"ignore_eos": True}}
    body.update({"tools": [WEATHER], "tool_choice": "auto"} if shape == "tools" else
                {"functions": [WEATHER["function"]], "function_call": "auto"})
    r = client.chat.completions.create(**body)
    check(r.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
    msg = r.choices[0].message
    assert isinstance(msg.content, str) and msg.content
    streamed = list(client.chat.completions.create(**body, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert msg.content == text
    assert r.choices[0].finish_reason == streamed[-1].choices[0].finish_reason == "length"
    if shape == "functions":
        assert msg.function_call is None and not msg.tool_calls
    # the spec's own chat example (functions + function_call auto) answers text too
    status, _, raw = server.request("POST", "/v1/chat/completions", json={
        "model": "tiny", "max_tokens": 8, "messages": [
            {"role": "system", "content": "You explain programming concepts clearly."},
            {"role": "user", "content": "Explain what recursion is in programming"}],
        "functions": [{"name": "get_code_example", "parameters": {
            "type": "object", "properties": {"language": {"type": "string"}}}}],
        "function_call": "auto", "ignore_eos": True})
    assert status == 200 and raw["choices"][0]["message"]["content"]
    assert raw["choices"][0]["message"]["function_call"] is None


def test_text_before_and_between_tool_calls_is_content():
    """1. The text around calls stays content in a non-streaming body, as it does streamed."""
    from llmp.services.inference import Call

    call = Call(kind="chat", engine=None, model="m", requests=[], prompt_tokens=0,
                max_tokens=None, request_id="req_x", tool_family="hermes")
    out = call._choice(0, 'Let me check. <tool_call>{"name": "get_weather", "arguments": '
                          '{"city": "Paris"}}</tool_call> And the time:<tool_call>{"name": '
                          '"get_time", "arguments": {}}</tool_call>', [], "stop")
    msg = out["message"]
    assert msg["content"] == "Let me check.  And the time:"
    assert [c["function"]["name"] for c in msg["tool_calls"]] == ["get_weather", "get_time"]
    assert out["finish_reason"] == "tool_calls"


# ----------------------------------------------------------------------------- 6
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_stream_usage_is_null_until_the_last_chunk(server, path):
    """6. With stream_options.include_usage every chunk before the last carries "usage": null;
    the last has the usage and no choices."""
    body = {"model": "tiny", "max_tokens": 5, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    body.update({"messages": MSG} if "chat" in path else {"prompt": "Hello"})
    chunks = sse(server, path, body)
    assert len(chunks) >= 3
    for c in chunks[:-1]:
        assert "usage" in c and c["usage"] is None and c["choices"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    if "chat" in path:
        for c in chunks:
            check(c, "CreateChatCompletionStreamResponse")
    # without include_usage there is no usage key at all (as OpenAI streams it)
    body.pop("stream_options")
    assert all("usage" not in c for c in sse(server, path, body))


@pytest.mark.parametrize("stream", [None, False])
def test_stream_options_without_stream_is_400(server, stream):
    """6. stream_options without stream: true is a 400 naming stream_options."""
    client = server.openai()
    extra = {} if stream is None else {"stream": stream}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=MSG, max_tokens=2,
                                       stream_options={"include_usage": True}, **extra)
    assert e.value.body["param"] == "stream_options"
    assert e.value.body["code"] == "invalid_parameter"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="x", max_tokens=2,
                                  stream_options={"include_usage": True}, **extra)
    assert e.value.body["param"] == "stream_options"


# ----------------------------------------------------------------------------- 2, 9, 10
@pytest.fixture
def own_server(llmp_home, tiny_model_path):
    """A server on this test's home (so `llmp models ...` on the CLI acts on its registry)."""
    from conftest import start_server

    with start_server(llmp_home, tiny_model_path) as srv:
        yield srv


def test_models_list_shows_every_model_and_pages_under_models(own_server):
    """2. Without page/per_page `data` holds every model (the openai client sees all 22);
    the spec's paging stays under `models`. 9. category matches capabilities; a bad filter
    is invalid_parameter like every other bad parameter."""
    srv = own_server
    for i in range(21):
        registry.register(srv.db, registry.resolve(srv.db, "tiny")["path"], model_id=f"m{i:02d}")
    ids = [m.id for m in srv.openai().models.list()]
    assert len(ids) == 22 and "tiny" in ids
    status, _, body = srv.request("GET", "/v1/models")
    assert status == 200 and len(body["data"]) == 22 and len(body["models"]) == 20
    assert body["total"] == 22 and body["page"] == 1 and body["per_page"] == 20
    check(body, "ListModelsResponse")
    _, _, page2 = srv.request("GET", "/v1/models?page=2")
    assert [m["id"] for m in page2["models"]] == [m["id"] for m in page2["data"]] == ids[20:]
    _, _, small = srv.request("GET", "/v1/models?per_page=5")
    assert len(small["data"]) == len(small["models"]) == 5
    # category: a chat model lists text-generation among its capabilities: found by both
    tiny = registry.to_api(registry.resolve(srv.db, "tiny"))
    assert tiny["category"] == "chat" and "text-generation" in tiny["capabilities"]
    for cat in ("chat", "text-generation"):
        _, _, found = srv.request("GET", f"/v1/models?category={cat}&per_page=100")
        assert found["total"] == 22, cat
    assert srv.request("GET", "/v1/models?category=embedding")[2]["total"] == 0
    for query, param in (("category=vision", "category"), ("size=huge", "size"),
                         ("page=0", "page"), ("per_page=101", "per_page"),
                         ("per_page=x", "per_page")):
        status, _, err = srv.request("GET", f"/v1/models?{query}")
        assert status == 400, query
        assert err["error"]["code"] == "invalid_parameter" and err["error"]["param"] == param


def test_a_removed_model_is_unloaded_and_refused(own_server, cli):
    """10. `llmp models rm` (another process, on the home) takes effect on the running
    server: the model is 404 model_not_found for inference too, and its engine unloaded."""
    srv = own_server
    registry.register(srv.db, registry.resolve(srv.db, "tiny")["path"], model_id="t")
    client = srv.openai()
    r = client.chat.completions.create(model="t", messages=MSG, max_tokens=2)
    assert r.model == "t"
    pool = _pool(srv)
    assert "t" in pool.loaded
    assert cli("models", "rm", "t", "-y").exit_code == 0
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("t")
    for call in (lambda: client.chat.completions.create(model="t", messages=MSG, max_tokens=2),
                 lambda: client.completions.create(model="t", prompt="x", max_tokens=2)):
        with pytest.raises(openai.NotFoundError) as e:
            call()
        assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    assert "t" not in pool.loaded
    srv.run(_drained(pool))
    # the other model is served as before
    assert client.chat.completions.create(model="tiny", messages=MSG, max_tokens=2).model == "tiny"


def _pool(srv):
    from llmp.server.state import POOL

    return srv.app[POOL]


async def _drained(pool):
    """Wait for the retired engines to be closed (what `ModelPool.close` waits for)."""
    import asyncio

    await asyncio.gather(*pool._retiring)


# ----------------------------------------------------------------------------- 3, 9
def test_payment_failed_is_a_known_event_and_retry_times_are_integers(server, receiver):
    """3. payment.failed (in the spec's list) is accepted. 9. A delivery's next_attempt_at is
    an integer timestamp like every other."""
    rx = receiver(codes=[500])
    status, _, hook = server.request("POST", "/v1/webhooks", json={
        "url": rx.url, "events": ["payment.failed", "batch.completed"]})
    assert status == 200 and hook["events"] == ["payment.failed", "batch.completed"]
    assert server.request("POST", f"/v1/webhooks/{hook['id']}/test")[0] == 200
    rx.wait(1)
    deadline = time.monotonic() + 10
    while True:  # the deliverer records the 500 just after the receiver answered it
        _, _, d = server.request("GET", f"/v1/webhooks/{hook['id']}/deliveries")
        if d["data"][0]["attempts"] >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    delivery = d["data"][0]
    assert delivery["attempts"] == 1 and delivery["status"] == "pending"
    assert type(delivery["next_attempt_at"]) is int
    assert delivery["next_attempt_at"] >= delivery["created_at"]
    assert type(delivery["created_at"]) is int


# ----------------------------------------------------------------------------- 4
def test_any_key_lists_and_revokes_its_own_keys(server):
    """4. GET /v1/auth/api-keys lists the authenticated user's keys (a non-admin key: itself),
    with the rate limits that apply (its tier's when it has none of its own); it may revoke
    itself, not another key."""
    secret = server.make_key(["inference"], name="mine", tier="free")
    other = server.make_key(["inference"], name="other")
    status, _, body = server.request("GET", "/v1/auth/api-keys", key=secret)
    assert status == 200 and [k["name"] for k in body["data"]] == ["mine"] and body["total"] == 1
    mine = body["data"][0]
    assert mine["rate_limit"] == {"requests_per_minute": 20, "tokens_per_minute": 40_000}
    other_id = server.request("GET", "/v1/auth/api-keys", key=other)[2]["data"][0]["id"]
    status, _, err = server.request("DELETE", f"/v1/auth/api-keys/{other_id}", key=secret)
    assert status == 404 and err["error"]["code"] == "key_not_found"
    assert server.request("POST", "/v1/auth/api-keys", key=secret, json={"name": "x"})[0] == 403
    # an admin key sees every key, with the limits that apply to each
    _, _, everyone = server.request("GET", "/v1/auth/api-keys")
    by_id = {k["id"]: k for k in everyone["data"]}
    assert {mine["id"], other_id} <= set(by_id)
    assert by_id[other_id]["rate_limit"] == {"requests_per_minute": 3500,
                                             "tokens_per_minute": 90_000}
    status, _, revoked = server.request("DELETE", f"/v1/auth/api-keys/{mine['id']}", key=secret)
    assert status == 200 and revoked["status"] == "revoked"
    assert server.request("GET", "/v1/auth/api-keys", key=secret)[0] == 401
    assert server.request("GET", "/v1/auth/api-keys", key=other)[0] == 200


# ----------------------------------------------------------------------------- 11
def test_user_data_and_evals_files_are_stored(server):
    """11. OpenAI's user_data and evals purposes are accepted as plain files; assistants and
    vision are a 400 saying they are not supported here."""
    client = server.openai()
    for purpose in ("user_data", "evals"):
        f = client.files.create(file=("notes.txt", io.BytesIO(b"some notes")), purpose=purpose)
        assert f.purpose == purpose and f.bytes == 10
        if purpose == "user_data":  # OpenAI's published file object lists user_data, not evals
            check(f.model_dump(), "OpenAIFile")
        assert client.files.content(f.id).read() == b"some notes"
        assert f.id in [x.id for x in client.files.list(purpose=purpose)]
    for purpose in ("assistants", "vision"):
        with pytest.raises(openai.BadRequestError) as e:
            client.files.create(file=("a.txt", io.BytesIO(b"x")), purpose=purpose)
        assert e.value.body["param"] == "purpose" and "not supported here" in \
            e.value.body["message"]


# ----------------------------------------------------------------------------- 9
def test_batch_param_and_model_version_match_interactive_replies(server):
    """9. Another key's file answers param input_file_id; batch lines carry the same
    model_version as interactive replies."""
    admin = server.openai()
    line = {"custom_id": "a", "method": "POST", "url": "/v1/completions",
            "body": {"model": "tiny", "prompt": "hi", "max_tokens": 2}}
    f = admin.files.create(file=("in.jsonl", io.BytesIO(json.dumps(line).encode())),
                           purpose="batch")
    stranger = server.openai(server.make_key(["batches.write", "files.read"]))
    with pytest.raises(openai.NotFoundError) as e:
        stranger.batches.create(input_file_id=f.id, endpoint="/v1/completions",
                                completion_window="24h")
    assert e.value.body["param"] == "input_file_id"
    b = admin.batches.create(input_file_id=f.id, endpoint="/v1/completions",
                             completion_window="24h")
    deadline = time.monotonic() + 60
    while (b := admin.batches.retrieve(b.id)).status not in ("completed", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    check(b.model_dump(), "Batch")
    out = json.loads(admin.files.content(b.output_file_id).read())
    body = out["response"]["body"]
    check(body, "CreateCompletionResponse")
    live = admin.completions.create(model="tiny", prompt="hi", max_tokens=2)
    assert body["metadata"]["model_version"] == live.model_extra["metadata"]["model_version"]
    assert body["metadata"]["model_version"].startswith("tiny-")


# ----------------------------------------------------------------------------- 7
def test_forced_calls_follow_parallel_tool_calls(server):
    """7. tool_choice "required" allows several calls unless parallel_tool_calls is false
    (then exactly one); the grammar writes the wrapper, the name and the key order as
    literals, so every call parses."""
    from llmp.engine.grammar import tool_call_grammar

    g = tool_call_grammar([WEATHER, TIME], "hermes", multiple=True)
    root = g.splitlines()[0]
    assert root == ('root ::= "<tool_call>\\x0A" call ("\\x0A</tool_call>\\x0A<tool_call>\\x0A" '
                    'call)* "\\x0A</tool_call>"')
    call_rule = next(x for x in g.splitlines() if x.startswith("call ::="))
    assert '"{\\x22name\\x22: \\x22get_weather\\x22, \\x22arguments\\x22: "' in call_rule
    single = tool_call_grammar([WEATHER], "hermes")
    assert single.splitlines()[0] == 'root ::= "<tool_call>\\x0A" call "\\x0A</tool_call>"'

    client = server.openai()
    seen = set()
    for seed in range(4):
        r = client.chat.completions.create(model="tiny", messages=MSG, tools=[WEATHER, TIME],
                                           tool_choice="required", parallel_tool_calls=False,
                                           max_tokens=200, seed=seed)
        check(r.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
        assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
        assert len(r.choices[0].message.tool_calls) == 1
        r = client.chat.completions.create(model="tiny", messages=MSG, tools=[WEATHER, TIME],
                                           tool_choice="required", max_tokens=200, seed=seed)
        calls = r.choices[0].message.tool_calls
        if r.choices[0].finish_reason == "tool_calls":
            assert calls and all(c.function.name in ("get_weather", "get_time") for c in calls)
            assert all(isinstance(json.loads(c.function.arguments), dict) for c in calls)
            seen.add(len(calls))
    assert seen


@pytest.mark.parametrize("stream", [False, True])
def test_a_forced_call_cut_by_max_tokens_is_a_partial_call(server, stream):
    """7. A forced call cut by max_tokens: the partial call in tool_calls, finish_reason
    "length", and never template markup in the content."""
    client = server.openai()
    kw = dict(model="tiny", messages=MSG, tools=[WEATHER], max_tokens=6, seed=1,
              tool_choice={"type": "function", "function": {"name": "get_weather"}})
    if not stream:
        r = client.chat.completions.create(**kw)
        check(r.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
        choice = r.choices[0]
        assert choice.finish_reason == "length" and choice.message.content is None
        (call,) = choice.message.tool_calls
    else:
        chunks = list(client.chat.completions.create(**kw, stream=True))
        for c in chunks:
            check(c.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert content == "" and chunks[-1].choices[0].finish_reason == "length"
        (call,) = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert call.function.name == "get_weather" and "<tool_call>" not in call.function.arguments
    assert call.id.startswith("call")
    # the spec's legacy shape: a partial function_call, finish_reason "length"
    status, _, body = server.request("POST", "/v1/chat/completions", json={
        "model": "tiny", "messages": MSG, "max_tokens": 6, "seed": 1,
        "functions": [WEATHER["function"]], "function_call": {"name": "get_weather"}})
    msg = body["choices"][0]["message"]
    assert status == 200 and body["choices"][0]["finish_reason"] == "length"
    assert msg["content"] is None and msg["function_call"]["name"] == "get_weather"


# ----------------------------------------------------------------------------- 8
@pytest.mark.parametrize("part", [
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
])
def test_media_parts_to_a_text_model_are_400(server, part):
    """8. An image or audio part sent to a text-only model is refused, not dropped."""
    with pytest.raises(openai.BadRequestError) as e:
        server.openai().chat.completions.create(model="tiny", max_tokens=2, messages=[
            {"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]}])
    assert e.value.body["param"] == "messages[0].content[1].type"
    assert "text-only" in e.value.body["message"]


def test_json_schema_needs_a_name(server):
    """8. response_format json_schema without `name` is a 400, as OpenAI answers."""
    with pytest.raises(openai.BadRequestError) as e:
        server.openai().chat.completions.create(
            model="tiny", messages=MSG, max_tokens=2,
            response_format={"type": "json_schema", "json_schema": {"schema": {"type": "object"}}})
    assert e.value.body["param"] == "response_format.json_schema.name"
    assert e.value.body["code"] == "missing_parameter"


# ----------------------------------------------------------------------------- 9, 8
def test_processing_time_is_a_number_everywhere(server):
    """9. processing_time_ms is a number of milliseconds in every body: in the spec's
    `metadata` on completions; beside `metadata` on chat bodies, whose `metadata` OpenAI
    types as a map of strings (request_id and model_version, strings in both)."""
    client = server.openai()
    c = client.completions.create(model="tiny", prompt="hi", max_tokens=2)
    meta = c.model_extra["metadata"]
    assert type(meta["processing_time_ms"]) is int and meta["request_id"].startswith("req_")
    check(c.model_dump(), "CreateCompletionResponse")
    r = client.chat.completions.create(model="tiny", messages=MSG, max_tokens=2)
    assert r.metadata == {"request_id": r.metadata["request_id"],
                          "model_version": meta["model_version"]}
    assert type(r.model_extra["processing_time_ms"]) is int
    check(r.model_dump(), "CreateChatCompletionResponse")
    chunks = sse(server, "/v1/chat/completions", {
        "model": "tiny", "messages": MSG, "max_tokens": 2, "stream": True,
        "stream_options": {"include_usage": True}})
    assert set(chunks[-1]["metadata"]) == {"request_id", "model_version"}
    assert type(chunks[-1]["processing_time_ms"]) is int


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_max_tokens_beyond_the_context_is_clamped(server, path):
    """8. max_tokens beyond what the context holds is clamped, the same on both endpoints
    (and in batches, which run the same code): generation stops when the slot's context is
    full, with finish_reason "length"."""
    body = {"model": "tiny", "max_tokens": 10 ** 6, "ignore_eos": True}
    body.update({"messages": MSG} if "chat" in path else {"prompt": "Hello"})
    status, _, r = server.request("POST", path, json=body)
    assert status == 200 and r["choices"][0]["finish_reason"] == "length"
    ctx = server.settings.slot_ctx
    assert ctx <= r["usage"]["total_tokens"] <= ctx + 1


# ----------------------------------------------------------------------------- 5
def _engine(srv, model: str = "tiny"):
    from llmp.server.state import POOL

    return srv.run(srv.app[POOL].get(model))


def test_streamed_logprobs_run_on_like_the_whole_body(server):
    """5. Streamed chunks carry running text_offsets: the stream's logprobs, joined, equal
    the non-streamed body's (echo included)."""
    client = server.openai()
    kw = dict(model="tiny", prompt="The quick brown fox", max_tokens=8, logprobs=2,
              temperature=0, extra_body={"ignore_eos": True})
    whole = client.completions.create(**kw).choices[0].logprobs
    joined = {"tokens": [], "token_logprobs": [], "text_offset": []}
    for c in client.completions.create(**kw, stream=True):
        lp = c.choices[0].logprobs
        for k in joined:
            joined[k] += getattr(lp, k) if lp else []
    assert joined["tokens"] == whole.tokens and joined["text_offset"] == whole.text_offset
    assert joined["token_logprobs"] == pytest.approx(whole.token_logprobs, abs=1e-3)
    assert whole.text_offset[0] == 0 and whole.text_offset == sorted(whole.text_offset)
    assert len(set(whole.text_offset)) > 1


def _first_token_filled(body: dict) -> dict:
    """The body with an echoed prompt's first token given a number: OpenAI's API answers null
    there (nothing predicts the first token; evaluation harnesses expect it), which its
    published schema (numbers only) does not allow; everything else is checked as is."""
    body = json.loads(json.dumps(body))
    for c in body["choices"]:
        lp = c.get("logprobs") or {}
        lp["token_logprobs"] = [0.0 if x is None else x for x in lp.get("token_logprobs", [])]
        lp["top_logprobs"] = [{} if x is None else x for x in lp.get("top_logprobs", [])]
    return body


def test_echo_carries_the_prompt_logprobs(server):
    """5. With echo, the prompt's own tokens carry their logprobs (the first none), and
    max_tokens 0 answers just the prompt, as OpenAI's legacy completions do; a prompt token's
    logprob is the one the model gives it when it generates that token."""
    client = server.openai()
    prompt = "The quick brown fox"
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=1, logprobs=1,
                                  temperature=0, extra_body={"ignore_eos": True})
    check(r.model_dump(), "CreateCompletionResponse")
    generated = r.choices[0].logprobs
    (nxt,), (nxt_lp,) = generated.tokens, generated.token_logprobs
    eng = _engine(server)
    ids = eng.tokenize(prompt, add_special=True)
    nxt_id = next(t for t in range(eng.model.n_vocab)
                  if eng.model.piece(t).decode("utf-8", "replace") == nxt)
    for stream in (False, True):
        kw = dict(model="tiny", prompt=[*ids, nxt_id], max_tokens=0, echo=True, logprobs=2)
        if stream:
            chunks = list(client.completions.create(**kw, stream=True))
            lp = chunks[0].choices[0].logprobs
            assert chunks[-1].choices[0].finish_reason == "length"
        else:
            body = client.completions.create(**kw)
            check(_first_token_filled(body.model_dump()), "CreateCompletionResponse")
            assert body.usage.completion_tokens == 0
            assert body.choices[0].text == eng.model.detokenize([*ids, nxt_id])
            lp = body.choices[0].logprobs
        assert len(lp.tokens) == len(ids) + 1 and lp.tokens[-1] == nxt
        assert lp.token_logprobs[0] is None and all(x < 0 for x in lp.token_logprobs[1:])
        assert lp.token_logprobs[-1] == pytest.approx(nxt_lp, abs=2e-3)
        assert lp.text_offset[0] == 0 and len(lp.top_logprobs[1]) == 2
    # echo + generation: the prompt's tokens, then the generated ones, offsets running on
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=3, logprobs=0,
                                  echo=True, temperature=0, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(ids) + 3 and "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:k]) for k in range(len(lp.tokens))]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt=prompt, max_tokens=0)
    assert e.value.body["param"] == "max_tokens"


def _with_fim(src, dst):
    """A copy of a GGUF whose vocabulary names fill-in-the-middle tokens (three of its
    special tokens)."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(src)
    tokens = [bytes(reader.fields["tokenizer.ggml.tokens"].parts[i]).decode()
              for i in reader.fields["tokenizer.ggml.tokens"].data]
    writer = GGUFWriter(dst, "llama")
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = f.types[0]
        writer.add_key_value(key, f.contents(), vtype,
                             sub_type=f.types[-1] if vtype == GGUFValueType.ARRAY else None)
    fim = [tokens.index(t) for t in ("<|im_start|>", "<tool_call>", "</tool_call>")]
    for name, tid in zip(("pre", "suf", "mid"), fim):
        writer.add_uint32(f"tokenizer.ggml.fim_{name}_token_id", tid)
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_shape=[int(x) for x in reversed(t.shape)],
                          raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return fim


def test_suffix_is_fill_in_the_middle_or_a_clear_400(own_server, tiny_model_path, tmp_path):
    """5. suffix: fill-in-the-middle on a model whose vocabulary has FIM tokens (the prompt
    is <PRE> prompt <SUF> suffix <MID>); a clear 400 on one without."""
    srv = own_server
    client = srv.openai()
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="def f(", suffix="\n    return x",
                                  max_tokens=4)
    assert e.value.body["param"] == "suffix" and "fill-in-the-middle" in e.value.body["message"]
    fim = _with_fim(tiny_model_path, tmp_path / "fim.gguf")
    registry.register(srv.db, tmp_path / "fim.gguf", model_id="coder")
    eng = _engine(srv, "coder")
    assert eng.model.fim_tokens() == tuple(fim)
    r = client.completions.create(model="coder", prompt="def f(", suffix="\n    return x",
                                  max_tokens=4, extra_body={"ignore_eos": True})
    check(r.model_dump(), "CreateCompletionResponse")
    n = len(eng.tokenize("def f(", add_special=False)) + \
        len(eng.tokenize("\n    return x", add_special=False))
    assert r.usage.prompt_tokens == n + 3 + int(eng.model.add_bos)
    assert r.usage.completion_tokens == 4 and r.choices[0].finish_reason == "length"


def test_auto_with_parallel_tool_calls_false_stops_after_one_call(server):
    """7. tool_choice "auto" with parallel_tool_calls false: generation ends with the first
    call's closing tag (a stop string), and that cut block is the one call."""
    from llmp.server.state import POOL
    from llmp.services.inference import prepare_chat

    def prepared(**kw):
        body = {"model": "tiny", "messages": MSG, "tools": [WEATHER, TIME], **kw}
        return server.run(prepare_chat(server.app[POOL], body, request_id="req_test"))

    call = prepared(parallel_tool_calls=False)
    assert call.requests[0].params.stop == ["</tool_call>"]
    assert prepared(stop=["\n\n"]).requests[0].params.stop == ["\n\n"]  # parallel: no stop
    out = call._choice(0, 'Checking.<tool_call>\n{"name": "get_time", "arguments": {}}\n', [],
                       "stop")
    assert out["finish_reason"] == "tool_calls" and out["message"]["content"] == "Checking."
    assert [c["function"]["name"] for c in out["message"]["tool_calls"]] == ["get_time"]
