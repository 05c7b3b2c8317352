"""Usage rows (one per request, failed ones too), /v1/usage aggregates, billing, `llmp usage`."""
from __future__ import annotations

import datetime as dt
import json

from llmp.db import usage as db_usage
from llmp.models import registry
from llmp.services import keys as keys_service

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
        "ignore_eos": True}


def test_usage_aggregates_match(server):
    registry.set_price(server.db, "tiny", input_price=1.0, output_price=2.0)
    key = server.make_key(["inference", "usage.read"])
    kid = keys_service.authenticate(server.db, key)["id"]
    sent_prompt = sent_completion = 0
    for i in range(3):
        st, _, body = server.request("POST", "/v1/chat/completions", key=key,
                                     json={**CHAT, "max_tokens": 2 + i})
        sent_prompt += body["usage"]["prompt_tokens"]
        sent_completion += body["usage"]["completion_tokens"]
    assert server.request("POST", "/v1/chat/completions", key=key,
                          json={**CHAT, "model": "nope"})[0] == 404
    rows = db_usage.recent(server.db, key_id=kid)
    assert [r["status"] for r in rows] == [404, 200, 200, 200]
    assert all(r["latency_ms"] > 0 for r in rows) and rows[1]["ttft_ms"] is not None
    st, _, rep = server.request("GET", "/v1/usage", key=key)
    assert st == 200
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    tiny = next(e for e in rep["data"] if e["model"] == "tiny")
    assert tiny["date"] == today and tiny["requests"] == 3
    assert tiny["tokens"] == {"prompt_tokens": sent_prompt, "completion_tokens": sent_completion,
                              "total_tokens": sent_prompt + sent_completion}
    cost = (sent_prompt * 1.0 + sent_completion * 2.0) / 1000
    assert abs(tiny["cost"]["amount"] - cost) < 1e-9 and tiny["cost"]["currency"] == "USD"
    lat = tiny["latency"]
    assert 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"]
    assert rep["total"]["requests"] == 4 and rep["total"]["tokens"] == sent_prompt + sent_completion
    hourly = server.request("GET", f"/v1/usage?granularity=hour&model=tiny&start_date={today}",
                            key=key)[2]
    assert sum(e["requests"] for e in hourly["data"]) == 3 and hourly["data"][0]["hour"].endswith(":00:00Z")
    bill = server.request("GET", "/v1/usage/billing", key=key)[2]
    assert bill["current_period"]["usage"]["requests"] == 4 and bill["payment_method"] is None
    assert bill["next_billing_date"] > today and set(bill["current_period"]["limits"]) == {
        "monthly_budget", "requests_per_month", "tokens_per_month"}
    # a non-admin key sees only its own usage
    other = server.make_key(["usage.read"])
    assert server.request("GET", "/v1/usage", key=other)[2]["total"]["requests"] == 0
    assert server.request("GET", f"/v1/usage?key_id={kid}", key=other)[0] == 403
    assert server.request("GET", "/v1/usage?granularity=week", key=key)[2]["error"]["param"] == "granularity"


def test_cli_usage(server, cli, monkeypatch):
    monkeypatch.setenv("LLMP_URL", server.url)
    monkeypatch.setenv("LLMP_API_KEY", server.admin_key)
    assert server.request("POST", "/v1/chat/completions", json=CHAT)[0] == 200
    r = cli("usage", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["total"]["requests"] >= 1
    for by in ("model", "key", "day"):
        r = cli("usage", "--by", by)
        assert r.exit_code == 0 and "total" in r.stdout and "█" in r.stdout, r.stdout
