"""Per-key rate limits (X-RateLimit-* headers, 429 with Retry-After) and monthly quotas."""
from __future__ import annotations

import io
import json
import time

from llmp.server.state import LIMITER, WRITER
from llmp.services import keys as keys_service
from llmp.services.limits import TIERS, Limiter

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
HEADERS = ["X-RateLimit-Limit-Requests", "X-RateLimit-Limit-Tokens",
           "X-RateLimit-Remaining-Requests", "X-RateLimit-Remaining-Tokens",
           "X-RateLimit-Reset-Requests", "X-RateLimit-Reset-Tokens"]


def test_headers_count_down_then_429(server):
    key = server.make_key(rate_limit={"requests_per_minute": 3, "tokens_per_minute": 100000})
    remaining = []
    for _ in range(3):
        st, h, _ = server.request("GET", "/v1/models", key=key)
        assert st == 200 and all(name in h for name in HEADERS)
        assert h["X-RateLimit-Limit-Requests"] == "3"
        assert int(h["X-RateLimit-Reset-Requests"]) >= int(time.time())  # unix seconds
        remaining.append(int(h["X-RateLimit-Remaining-Requests"]))
    assert remaining == [2, 1, 0]
    st, h, body = server.request("GET", "/v1/models", key=key)
    assert st == 429 and body["error"]["type"] == "rate_limit_error"
    assert body["error"]["code"] == "rate_limit_exceeded" and int(h["Retry-After"]) >= 1
    assert h["X-RateLimit-Remaining-Requests"] == "0"


def test_tokens_reserved_and_settled(server):
    # 100 tokens per minute refill 1.7 per second: what one request uses takes ~15 s to return
    key = server.make_key(rate_limit={"requests_per_minute": 100, "tokens_per_minute": 100})
    st, h, body = server.request("POST", "/v1/chat/completions", key=key, json=CHAT)
    assert st == 200
    used = body["usage"]["total_tokens"]
    # settled after the reply: the bucket lost about what was used, not prompt + max_tokens
    st, h, _ = server.request("GET", "/v1/models", key=key)
    assert 100 - used <= int(h["X-RateLimit-Remaining-Tokens"]) < 100 - used + 15
    prompt = body["usage"]["prompt_tokens"]
    # fits in the bucket once it refills: 429 with Retry-After
    st, h, body = server.request("POST", "/v1/chat/completions", key=key,
                                 json={**CHAT, "max_tokens": 100 - prompt})
    assert st == 429 and body["error"]["type"] == "rate_limit_error" and "Retry-After" in h
    # larger than the bucket: it can never fit, and the 429 says so (no Retry-After)
    st, h, body = server.request("POST", "/v1/chat/completions", key=key,
                                 json={**CHAT, "max_tokens": 101 - prompt})
    assert st == 429 and body["error"]["type"] == "rate_limit_error"
    assert body["error"]["code"] == "request_too_large" and "Retry-After" not in h
    assert "can never fit" in body["error"]["message"]


def test_tiers():
    assert (TIERS["free"].requests_per_minute, TIERS["free"].tokens_per_minute) == (20, 40_000)
    assert (TIERS["pro"].requests_per_minute, TIERS["pro"].tokens_per_minute) == (3_500, 90_000)
    assert Limiter.limits_for({"tier": "free"}) == (20, 40_000)
    assert Limiter.limits_for({"tier": "enterprise", "requests_per_minute": 7,
                               "tokens_per_minute": 9}) == (7, 9)


def test_bucket_refills_with_time():
    now = [1000.0]
    lim = Limiter(db=None, clock=lambda: now[0])
    key = {"id": "k", "tier": "free"}
    for _ in range(20):
        lim.take_request(key)
    assert lim.state(key).remaining_requests == 0
    now[0] += 3.0  # 20 per minute: one every 3 s
    assert lim.state(key).remaining_requests == 1


def test_quota_exceeded(server):
    key = server.make_key(limits={"requests_per_month": 2}, tier="free")
    for _ in range(2):
        assert server.request("POST", "/v1/chat/completions", key=key, json=CHAT)[0] == 200
    st, h, body = server.request("POST", "/v1/chat/completions", key=key, json=CHAT)
    assert st == 429 and body["error"]["type"] == "quota_exceeded_error"
    assert body["error"]["code"] == "quota_exceeded" and "Retry-After" in h
    probe = server.make_key()
    prompt = server.request("POST", "/v1/chat/completions", key=probe,
                            json=CHAT)[2]["usage"]["prompt_tokens"]
    # room for one request's reservation (prompt + max_tokens), not for two
    tok = server.make_key(limits={"tokens_per_month": prompt + 2 + 3})
    assert server.request("POST", "/v1/chat/completions", key=tok, json=CHAT)[0] == 200
    st, _, body = server.request("POST", "/v1/chat/completions", key=tok, json=CHAT)
    assert st == 429 and "lower max_tokens" in body["error"]["message"]


def test_batch_lines_are_requests_of_the_batch_key(server, receiver):
    """Each line is admitted against the key's monthly quota as an HTTP request is: lines
    that do not fit fail with quota_exceeded (in the error file) and the key never goes past
    its quota; the first refusal emits usage.limit.reached."""
    rx = receiver()
    assert server.request("POST", "/v1/webhooks", json={
        "url": rx.url, "events": ["usage.limit.reached"]})[0] == 200
    key = server.make_key(["inference", "files.read", "files.write", "batches.write",
                           "batches.read"], limits={"tokens_per_month": 60}, name="quota")
    kid = keys_service.authenticate(server.db, key)["id"]
    assert server.request("POST", "/v1/chat/completions", key=key, json=CHAT)[0] == 200
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {**CHAT, "max_tokens": 8, "ignore_eos": True}} for i in range(6)]
    client = server.openai(key)
    f = client.files.create(file=("in.jsonl", io.BytesIO(
        b"".join(json.dumps(x).encode() + b"\n" for x in lines))), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    deadline = time.monotonic() + 120
    while (done := client.batches.retrieve(batch.id)).status != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert done.request_counts.failed >= 1
    errors = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert {e["response"]["body"]["error"]["type"] for e in errors} == {"quota_exceeded_error"}
    server.app[WRITER].flush()
    report = server.request("GET", f"/v1/usage?key_id={kid}")[2]
    assert report["total"]["tokens"] <= 60
    (_, raw), = rx.wait(1)
    event = json.loads(raw)
    assert event["type"] == "usage.limit.reached" and event["data"]["key_id"] == kid
    assert event["data"]["limit"] == "monthly token quota of 60"


def test_batch_without_inference_permission_runs_no_line(server):
    key = server.make_key(["files.read", "files.write", "batches.write", "batches.read"],
                          rate_limit={"requests_per_minute": 1000}, limits={"requests_per_month": 2},
                          name="noinf")
    client = server.openai(key)
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": CHAT} for i in range(20)]
    f = client.files.create(file=("in.jsonl", io.BytesIO(
        b"".join(json.dumps(x).encode() + b"\n" for x in lines))), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    deadline = time.monotonic() + 60
    while (done := client.batches.retrieve(batch.id)).status not in ("completed", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert done.request_counts.completed == 0 and done.request_counts.failed == 20
    errors = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
    assert {e["response"]["body"]["error"]["type"] for e in errors} == {"permission_error"}


def test_rate_limits_pace_a_batch_instead_of_failing_lines(server):
    """A key whose request bucket is empty: its lines wait for the bucket to refill (2 a
    second at 120 RPM) instead of failing."""
    key = server.make_key(["inference", "files.read", "files.write", "batches.write",
                           "batches.read"], rate_limit={"requests_per_minute": 120,
                                                        "tokens_per_minute": 100000},
                          name="paced")
    lim = server.app[LIMITER]
    rec = keys_service.authenticate(server.db, key)
    client = server.openai(key)
    lines = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": CHAT} for i in range(4)]
    f = client.files.create(file=("in.jsonl", io.BytesIO(
        b"".join(json.dumps(x).encode() + b"\n" for x in lines))), purpose="batch")
    while lim.state(rec).remaining_requests > 1:  # leave one: for the batch's creation
        lim.take_request(rec)
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    admin = server.openai()
    deadline = time.monotonic() + 60
    while (done := admin.batches.retrieve(batch.id)).status != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert done.request_counts.completed == 4 and done.request_counts.failed == 0


def test_max_tokens_past_the_context_reserves_only_the_context(server):
    """max_tokens far past a slot's context (where generation stops anyway) must not reserve
    the whole tokens-per-minute bucket: a second such request fits in what the first left."""
    key = server.make_key(rate_limit={"requests_per_minute": 100, "tokens_per_minute": 2000})
    for _ in range(2):
        st, h, body = server.request("POST", "/v1/chat/completions", key=key,
                                     json={**CHAT, "max_tokens": 100_000})
        assert st == 200, body


def _concurrently(n: int, fn) -> list:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(n) as ex:
        return list(ex.map(lambda _: fn(), range(n)))


def test_monthly_quotas_hold_under_concurrency(server):
    """Quotas are reserved at admission: 40 concurrent requests on a quota of 5 requests give
    exactly 5 answers; 30 on a quota of 50 tokens never use more than 50 tokens."""
    key = server.make_key(limits={"requests_per_month": 5}, name="rpm5")
    results = _concurrently(40, lambda: server.request("POST", "/v1/chat/completions", key=key,
                                                       json=CHAT))
    assert sorted(r[0] for r in results) == [200] * 5 + [429] * 35
    assert all(r[2]["error"]["type"] == "quota_exceeded_error" for r in results if r[0] == 429)

    key = server.make_key(limits={"tokens_per_month": 50}, name="tpm50")
    body = {"model": "tiny", "prompt": "hello there", "max_tokens": 16, "ignore_eos": True}
    results = _concurrently(30, lambda: server.request("POST", "/v1/completions", key=key,
                                                       json=body))
    answered = [r[2]["usage"]["total_tokens"] for r in results if r[0] == 200]
    assert answered and sum(answered) <= 50
    _, _, billing = server.request("GET", "/v1/usage/billing", key="admin")
    kid = keys_service.authenticate(server.db, key)["id"]
    report = server.request("GET", f"/v1/usage?key_id={kid}")[2]
    assert report["total"]["tokens"] == sum(answered) <= 50


def test_refusals_are_not_billed(server):
    """A request refused (context too long, over the TPM bucket) is recorded with zero
    tokens: it does not empty the bucket nor tip the key into its quota."""
    from llmp.db import usage as db_usage

    key = server.make_key(rate_limit={"requests_per_minute": 100, "tokens_per_minute": 100},
                          limits={"tokens_per_month": 2000}, name="refused")
    kid = keys_service.authenticate(server.db, key)["id"]
    huge = {"model": "tiny", "prompt": "word " * 3000, "max_tokens": 4}
    st, _, body = server.request("POST", "/v1/completions", key=key, json=huge)
    assert st == 400 and body["error"]["code"] == "context_length_exceeded", body
    st, _, body = server.request("POST", "/v1/completions", key=key,
                                 json={"model": "tiny", "prompt": "word " * 100, "max_tokens": 4})
    assert st == 429 and body["error"]["code"] == "request_too_large", body
    st, h, body = server.request("POST", "/v1/completions", key=key,
                                 json={"model": "tiny", "prompt": "hi", "max_tokens": 4})
    assert st == 200
    assert int(h["X-RateLimit-Remaining-Tokens"]) >= 100 - body["usage"]["total_tokens"] - 5
    server.app[WRITER].flush()
    rows = [r for r in db_usage.recent(server.db, 50, key_id=kid)]
    assert sorted(r["status"] for r in rows) == [200, 400, 429]
    for r in rows:
        if r["status"] != 200:
            assert (r["prompt_tokens"], r["completion_tokens"], r["cost"]) == (0, 0, 0.0)
