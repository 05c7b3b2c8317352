"""Every error in the spec's exact format: {"error": {message, type, param, code}, "request_id"}."""
from __future__ import annotations

import pytest

from llmp.server.state import POOL

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def assert_error(resp, status: int, type_: str, code: str | None = None, param: str | None = None):
    st, headers, body = resp
    assert st == status, body
    assert set(body) == {"error", "request_id"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == type_ and body["error"]["message"]
    assert body["request_id"] == headers["x-request-id"] and body["request_id"].startswith("req_")
    if code is not None:
        assert body["error"]["code"] == code
    if param is not None:
        assert body["error"]["param"] == param
    return body


def test_auth_errors(server):
    assert_error(server.request("GET", "/v1/models", key=None), 401, "authentication_error",
                 "missing_api_key")
    assert_error(server.request("GET", "/v1/models", key="sk-nope"), 401, "authentication_error",
                 "invalid_api_key")
    key = server.make_key(["models.read"])
    assert_error(server.request("POST", "/v1/chat/completions", key=key, json=CHAT), 403,
                 "permission_error", "insufficient_permissions")


def test_request_errors(server):
    assert_error(server.request("POST", "/v1/chat/completions", json={**CHAT, "model": "nope"}),
                 404, "not_found_error", "model_not_found", "model")
    assert_error(server.request("GET", "/v1/models/nope"), 404, "not_found_error", "model_not_found")
    assert_error(server.request("POST", "/v1/chat/completions", data=b"{not json",
                                headers={"Content-Type": "application/json"}),
                 400, "invalid_request_error", "invalid_json")
    body = dict(CHAT)
    del body["model"]
    assert_error(server.request("POST", "/v1/chat/completions", json=body), 400,
                 "invalid_request_error", "missing_parameter", "model")
    assert_error(server.request("POST", "/v1/chat/completions", json={**CHAT, "temperature": 9}),
                 400, "invalid_request_error", "invalid_parameter", "temperature")
    assert_error(server.request("POST", "/v1/completions", json={"model": "tiny"}), 400,
                 "invalid_request_error", "missing_parameter", "prompt")
    long = "The quick brown fox jumps over the lazy dog. " * 200
    assert_error(server.request("POST", "/v1/chat/completions",
                                json={**CHAT, "messages": [{"role": "user", "content": long}]}),
                 400, "invalid_request_error", "context_length_exceeded", "messages")
    assert_error(server.request("GET", "/v1/nothing-here"), 404, "not_found_error", "unknown_url")
    assert_error(server.request("DELETE", "/v1/models"), 405, "invalid_request_error",
                 "method_not_allowed")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/batches",
                                  "/v1/webhooks", "/v1/auth/api-keys"])
def test_every_json_body_is_read_alike(server, path):
    """Every JSON endpoint refuses a body that is not JSON, or not a JSON object, the same way."""
    for data in (b"{not json", b"[1, 2]", b""):
        assert_error(server.request("POST", path, data=data,
                                    headers={"Content-Type": "application/json"}),
                     400, "invalid_request_error", "invalid_json")


def test_invalid_messages_and_tools(server):
    """Malformed messages, tools and a tool_choice without tools are 400s naming the param,
    not silently ignored."""
    def post(**extra):
        return server.request("POST", "/v1/chat/completions", json={**CHAT, **extra})

    assert_error(post(messages=[{"role": "user"}]), 400, "invalid_request_error",
                 "missing_parameter", "messages[0].content")
    assert_error(post(messages=[{"role": "user", "content": 5}]), 400, "invalid_request_error",
                 "invalid_parameter", "messages[0].content")
    assert_error(post(tools=[{"type": "function"}]), 400, "invalid_request_error",
                 "missing_parameter", "tools[0].function")
    assert_error(post(functions=[{"description": "no name"}]), 400, "invalid_request_error",
                 "missing_parameter", "functions[0].name")
    assert_error(post(tool_choice="required"), 400, "invalid_request_error",
                 "invalid_parameter", "tool_choice")
    assert_error(post(function_call={"name": "f"}), 400, "invalid_request_error",
                 "invalid_parameter", "function_call")
    # an assistant turn may carry only tool calls; "none"/"auto" need no tools
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    msgs = [CHAT["messages"][0], {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]
    assert post(messages=msgs, tool_choice="none")[0] == 200
    # integer ranges are written as integers, not 9.22337e+18
    body = assert_error(post(seed="x"), 400, "invalid_request_error", "invalid_parameter", "seed")
    assert str(2 ** 63) in body["error"]["message"] and "e+" not in body["error"]["message"]


def test_openai_client_sees_typed_errors(server):
    import openai

    with pytest.raises(openai.NotFoundError):
        server.openai().chat.completions.create(model="nope", messages=CHAT["messages"])
    with pytest.raises(openai.AuthenticationError):
        server.openai("sk-wrong").models.list()


def test_queue_full_and_internal_error(server):
    """A full queue is 503 service_unavailable_error; an unexpected failure is a 500
    server_error whose message carries no traceback."""
    engine = server.run(server.app[POOL].get("tiny"))
    statuses = _with_queue_full(server, engine, queue_size=2)
    assert statuses["queued"] == [200, 200]  # the requests that waited were served
    original = engine.render_chat
    engine.render_chat = None  # calling it raises TypeError inside the handler
    try:
        body = assert_error(server.request("POST", "/v1/chat/completions", json=CHAT), 500,
                            "server_error", "internal_error")
        assert "Traceback" not in body["error"]["message"] and "TypeError" not in body["error"]["message"]
    finally:
        engine.render_chat = original


def _with_queue_full(server, engine, queue_size: int) -> dict:
    """Fill the engine's queue for real and check that the next request is refused at once:
    the step thread is held at its next step (so nothing leaves the queue), one request
    takes a slot, `queue_size` more wait in the queue, and one more must get 503."""
    import threading
    import time

    gate = threading.Event()
    step = engine._step

    def held_step():
        gate.wait(30)  # released below; the timeout only guards against a hung test
        step()

    def wait_for(cond):
        deadline = time.monotonic() + 30
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.005)  # polling a condition, with a deadline
        assert cond(), engine.stats()

    statuses: dict[str, list] = {"running": [], "queued": []}

    def send(kind):
        statuses[kind].append(server.request("POST", "/v1/chat/completions", json=CHAT)[0])

    size = engine.settings.queue_size
    engine._step = held_step
    threads = []
    try:
        threads.append(threading.Thread(target=send, args=("running",)))
        threads[-1].start()
        wait_for(lambda: engine.stats()["slots_busy"] == 1)  # it holds a slot, at the gate
        engine.settings.queue_size = queue_size
        for _ in range(queue_size):
            threads.append(threading.Thread(target=send, args=("queued",)))
            threads[-1].start()
        wait_for(lambda: engine.stats()["queue_depth"] == queue_size)
        t0 = time.monotonic()
        body = assert_error(server.request("POST", "/v1/chat/completions", json=CHAT), 503,
                            "service_unavailable_error")
        assert time.monotonic() - t0 < 5  # refused at once, not after a timeout
        assert "overloaded" in body["error"]["message"]
        assert engine.stats()["queue_depth"] == queue_size
    finally:
        engine.settings.queue_size = size
        gate.set()
        for t in threads:
            t.join(30)
        del engine._step
    assert statuses["running"] == [200]
    return statuses


def test_prompt_token_ids_outside_the_vocabulary(server):
    for prompt, stream in (([1, 2, 999_999_999], False), ([[5, -1]], False),
                           ([[1, 2], [3, 999_999_999]], True)):
        assert_error(server.request("POST", "/v1/completions", json={
            "model": "tiny", "prompt": prompt, "max_tokens": 2, "stream": stream}),
            400, "invalid_request_error", "invalid_parameter", "prompt")


def test_logit_bias_token_ids_outside_the_vocabulary(server):
    for path, body in (("/v1/completions", {"prompt": "hi"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})):
        assert_error(server.request("POST", path, json={
            "model": "tiny", "max_tokens": 2, "logit_bias": {"999999999": 5}, **body}),
            400, "invalid_request_error", "invalid_parameter", "logit_bias")
