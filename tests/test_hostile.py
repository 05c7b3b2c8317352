"""Hostile requests (issue 8): bodies that used to crash the server or answer 500 now get a
400 in the spec's error format, and the server stays up. Table-driven: every case names the
path, the body, and the status/code/param it must get."""
from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from test_server_errors import assert_error

U = [{"role": "user", "content": "hi"}]
CHAT = {"model": "tiny", "messages": U, "max_tokens": 2}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {
    "type": "object", "properties": {"s": {"type": "string", "maxLength": 20000}},
    "required": ["s"]}}}


def schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


# (path, body, status, code, param)
CASES = [
    # grammar bombs: each used to kill the process (stack overflow in llama.cpp's parser)
    ("/v1/chat/completions",
     {**CHAT, "response_format": schema_format({"type": "string", "maxLength": 20000})},
     400, "schema_too_complex", "response_format"),
    ("/v1/chat/completions",
     {**CHAT, "response_format": schema_format(
         {"type": "array", "items": {"type": "integer"}, "maxItems": 50000})},
     400, "schema_too_complex", "response_format"),
    ("/v1/chat/completions",
     {**CHAT, "response_format": schema_format({"type": "string", "pattern": "^a{1,20000}$"})},
     400, "schema_too_complex", "response_format"),
    ("/v1/chat/completions", {**CHAT, "tools": [TOOL], "tool_choice": "required"},
     400, "schema_too_complex", "tools"),
    ("/v1/chat/completions",
     {**CHAT, "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "f"}}},
     400, "schema_too_complex", "tools"),
    # bodies that answered 500 with a traceback
    ("/v1/chat/completions",
     {**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": 123}]}]},
     400, "invalid_parameter", "messages[0].content[0].text"),
    ("/v1/chat/completions",
     {**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]},
     400, "invalid_parameter", "messages[0].content[0].text"),
    ("/v1/chat/completions",
     {**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": ["a"]}]}]},
     400, "invalid_parameter", "messages[0].content[0].text"),
    ("/v1/chat/completions",
     {**CHAT, "messages": U + [{"role": "assistant", "tool_calls": "abc"}]},
     400, "invalid_parameter", "messages[1].tool_calls"),
    ("/v1/chat/completions",
     {**CHAT, "messages": U + [{"role": "assistant", "tool_calls": [None]}]},
     400, "invalid_parameter", "messages[1].tool_calls[0]"),
    ("/v1/chat/completions",
     {**CHAT, "messages": U + [{"role": "assistant", "tool_calls": {"a": 1}}]},
     400, "invalid_parameter", "messages[1].tool_calls"),
    ("/v1/chat/completions",
     {**CHAT, "messages": U + [{"role": "assistant", "tool_calls": [{"function": "x"}]}]},
     400, "invalid_parameter", "messages[1].tool_calls[0].function"),
    ("/v1/chat/completions",
     {**CHAT, "tools": [TOOL], "tool_choice": {"type": "function", "function": "f"}},
     400, "invalid_parameter", "tool_choice.function"),
    ("/v1/chat/completions",
     {**CHAT, "response_format": {"type": "json_schema", "json_schema": "x"}},
     400, "invalid_parameter", "response_format.json_schema"),
    ("/v1/batches", {"input_file_id": "file_x", "endpoint": ["/v1/chat/completions"]},
     400, "invalid_parameter", "endpoint"),
    ("/v1/auth/api-keys", {"name": "k", "rate_limit": {"requests_per_minute": 1e30}},
     400, "invalid_parameter", "rate_limit.requests_per_minute"),
    ("/v1/auth/api-keys", {"name": "k", "limits": {"tokens_per_month": 10 ** 40}},
     400, "invalid_parameter", "limits.tokens_per_month"),
    ("/v1/auth/api-keys", {"name": "k", "tier": ["x"]}, 400, "invalid_parameter", "tier"),
    # found by the fuzzer: a tool call without arguments (the template's tojson of an
    # undefined value answered 500)
    ("/v1/chat/completions",
     {**CHAT, "messages": U + [{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]},
                               {"role": "tool", "content": "x"}]}, 200, None, None),
    # one validation layer: top_p 0 is valid (greedy), not refused deeper down
    ("/v1/chat/completions", {**CHAT, "top_p": 0}, 200, None, None),
    ("/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 2, "top_p": 0},
     200, None, None),
]


@pytest.mark.parametrize("path, body, status, code, param", CASES,
                         ids=[f"{i}-{c[0].rsplit('/', 1)[-1]}" for i, c in enumerate(CASES)])
def test_hostile_body(server, path, body, status, code, param):
    resp = server.request("POST", path, json=body)
    if status == 200:
        assert resp[0] == 200, resp[2]
    else:
        assert_error(resp, status, "invalid_request_error", code, param)
    assert server.request("GET", "/health", key=None)[0] == 200


# raw bodies: (path, bytes, code)
RAW = [
    ("/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user", '
                             b'"content": "\\ud800"}]}', "invalid_json"),
    ("/v1/chat/completions", b"[" * 50_000, "invalid_json"),
    ("/v1/auth/api-keys", b'{"name": "k", "limits": {"monthly_budget": 1e999}}', None),
    ("/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}],'
                             b' "temperature": NaN}', "invalid_json"),
    ("/v1/admin/models/tiny/price", b'{"input_price": 1e999}', "invalid_parameter"),
]


@pytest.mark.parametrize("path, data, code", RAW, ids=["surrogate", "nested", "inf", "nan", "inf-price"])
def test_hostile_raw_body(server, path, data, code):
    resp = server.request("POST", path, data=data, headers={"Content-Type": "application/json"})
    assert_error(resp, 400, "invalid_request_error", code)


def _multipart(parts: list[bytes], boundary: str | None = "xyz") -> tuple[bytes, dict]:
    ctype = "multipart/form-data" + (f"; boundary={boundary}" if boundary else "")
    return b"".join(parts), {"Content-Type": ctype}


def _part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--xyz\r\nContent-Disposition: {disp}\r\n\r\n".encode() + value + b"\r\n"


@pytest.mark.parametrize("data, headers, status", [
    (*_multipart([_part("purpose", b"batch"), _part("file", b"{}", "a.jsonl"), b"--xyz--\r\n"],
                 boundary=None), 400),
    (*_multipart([b"garbage garbage\r\n\r\n\x00\x01"]), 400),
    (*_multipart([b"--xyz\r\nContent-Disposition: form-data\r\n\r\nx\r\n--xyz--\r\n"]), 400),
    (*_multipart([_part("purpose", b"batch"), _part("file", b"{}", "a\x00b.jsonl"),
                  b"--xyz--\r\n"]), 400),
])
def test_hostile_uploads(server, data, headers, status):
    st, _, body = server.request("POST", "/v1/files", data=data, headers=headers)
    assert st == status, body
    if status == 200:
        assert "\x00" not in body["filename"]
        got = server.request("GET", f"/v1/files/{body['id']}/content")
        assert got[0] == 200
    else:
        assert_error((st, _, body), status, "invalid_request_error")


def _raw_request(server, method: str, path: str, headers: dict[str, bytes], body: bytes = b""):
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.putrequest(method, path)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, resp.headers, json.loads(data)


def test_non_ascii_authorization_is_401(server):
    resp = _raw_request(server, "GET", "/v1/models", {"Authorization": b"Bearer \xff\xfe"})
    assert_error(resp, 401, "authentication_error", "invalid_api_key")


@pytest.mark.parametrize("raw", [b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: \x00\r\n\r\n",
                                 b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
                                 b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n"],
                         ids=["nul-header", "no-colon", "long-line"])
def test_malformed_http_is_answered_in_the_error_format(server, raw):
    """Requests aiohttp cannot parse never reach the app: its own answer is in the spec's
    format too, and the server stays up."""
    import socket

    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
    assert_error((status, headers, json.loads(body)), status, "invalid_request_error",
                 "invalid_http_request")
    assert 400 <= status < 500
    assert server.request("GET", "/health", key=None)[0] == 200


def test_budget_is_never_stored_as_infinity(server):
    st, _, body = server.request("POST", "/v1/auth/api-keys", data=b'{"name": "k", "limits": '
                                 b'{"monthly_budget": 1e308}}',
                                 headers={"Content-Type": "application/json"})
    assert_error((st, _, body), 400, "invalid_request_error", "invalid_parameter",
                 "limits.monthly_budget")
    st, _, listed = server.request("GET", "/v1/auth/api-keys")
    assert st == 200  # valid JSON (no Infinity anywhere)


def test_body_over_the_cap_is_413(tiny_model_path, tmp_path):
    from conftest import start_server

    with start_server(tmp_path / "home", tiny_model_path, max_request_bytes=10_000) as srv:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 20_000}]}
        assert_error(srv.request("POST", "/v1/chat/completions", json=big), 413,
                     "invalid_request_error", "request_too_large")
        assert srv.request("POST", "/v1/chat/completions", json=CHAT)[0] == 200


def test_health_answers_while_a_huge_prompt_is_refused(server):
    """A 10 MB prompt is refused by a length check before tokenization; /health keeps
    answering fast meanwhile."""
    huge = {**CHAT, "messages": [{"role": "user", "content": "word " * 2_000_000}]}
    result: dict = {}

    def send() -> None:
        result["resp"] = server.request("POST", "/v1/chat/completions", json=huge)

    t = threading.Thread(target=send)
    t.start()
    worst = 0.0
    while t.is_alive():
        t0 = time.perf_counter()
        assert server.request("GET", "/health", key=None)[0] == 200
        worst = max(worst, time.perf_counter() - t0)
    t.join()
    assert_error(result["resp"], 400, "invalid_request_error", "context_length_exceeded",
                 "messages")
    assert worst < 0.5, worst


def test_grammar_bomb_in_a_batch_line_fails_only_that_line(server):
    """A batch line that used to crash the server (and again on every restart, when the
    runner resumed it) now fails with a 400 in the error file."""
    client = server.openai()
    bomb = {**CHAT, "response_format": schema_format({"type": "string", "maxLength": 20000})}
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": bomb if i == 1 else CHAT} for i in range(3)]
    data = "\n".join(json.dumps(x) for x in lines).encode()
    f = client.files.create(file=("in.jsonl", data), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                              completion_window="24h")
    deadline = time.monotonic() + 60
    while (b := client.batches.retrieve(b.id)).status not in ("completed", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert b.status == "completed" and b.request_counts.failed == 1
    err = [json.loads(x) for x in client.files.content(b.error_file_id).text.splitlines()]
    assert err[0]["custom_id"] == "c1"
    assert err[0]["response"]["status_code"] == 400
    assert err[0]["response"]["body"]["error"]["code"] == "schema_too_complex"
