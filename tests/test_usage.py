"""Usage rows (one per request, failed ones too), /v1/usage aggregates, billing, `llmp usage`."""
from __future__ import annotations

import datetime as dt
import json
import math
import random

from llmp.db import connect
from llmp.db import usage as db_usage
from llmp.db.migrations import MIGRATIONS
from llmp.models import registry
from llmp.server.state import WRITER
from llmp.services import keys as keys_service
from llmp.services import usage

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
    server.app[WRITER].flush()  # usage rows are group-committed by the writer thread
    rows = db_usage.recent(server.db, key_id=kid)
    assert [r["status"] for r in rows] == [404, 200, 200, 200]
    assert all(r["latency_ms"] > 0 for r in rows) and rows[1]["ttft_ms"] is not None
    st, _, rep = server.request("GET", "/v1/usage", key=key)
    assert st == 200
    today = dt.datetime.now(dt.UTC).date().isoformat()
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


def _rows(n: int = 400) -> list[dict]:
    """Usage rows over three days, two keys, two models, varied latencies and statuses."""
    rng = random.Random(7)
    base = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    return [{"created_at": (base - dt.timedelta(minutes=rng.randrange(3 * 24 * 60)))
             .strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "key_id": f"key_{rng.randrange(2)}",
             "model": f"m{rng.randrange(2)}", "endpoint": "/v1/chat/completions",
             "status": rng.choice([200, 200, 200, 429]), "prompt_tokens": rng.randrange(1, 50),
             "completion_tokens": rng.randrange(1, 20), "cost": 0.001,
             "latency_ms": rng.lognormvariate(5, 1.2)} for _ in range(n)]


SHAPES = [dict(granularity=g, group_by=b, **k) for g in ("day", "hour") for b in ("model", "key")
          for k in ({}, {"key_id": "key_1"}, {"model": "m0"})]


def _nearest_rank(values: list[float], p: int) -> float:
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def test_report_percentiles_match_a_direct_computation(tmp_path):
    db = connect(tmp_path / "u.db")
    rows = _rows()
    db_usage.insert_rows(db, rows)
    start = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=4)).isoformat()
    for shape in SHAPES:
        rep = usage.report(db, start_date=start, **shape)
        period = 10 if shape["granularity"] == "day" else 13
        name = "model" if shape["group_by"] == "model" else "key_id"
        want = [r for r in rows if all(r[k] == v for k, v in shape.items() if k in ("key_id", "model"))]
        assert rep["total"]["requests"] == len(want)
        assert len(rep["data"]) == len({(r["created_at"][:period], r[name]) for r in want})
        for e in rep["data"]:
            mine = [r for r in want if r[name] == e[name]
                    and r["created_at"][:period] == (e.get("hour") or e["date"])[:period]]
            assert e["requests"] == len(mine)
            assert e["errors"] == sum(r["status"] >= 400 for r in mine)
            assert e["tokens"]["prompt_tokens"] == sum(r["prompt_tokens"] for r in mine)
            for p in usage.PERCENTILES:  # the middle of the bucket holding the exact value
                exact = _nearest_rank([r["latency_ms"] for r in mine], p)
                assert e["latency"][f"p{p}_ms"] == round(
                    db_usage.bucket_value(db_usage.latency_bucket(exact)))
        for p in usage.PERCENTILES:
            exact = _nearest_rank([r["latency_ms"] for r in want], p)
            assert rep["total"]["latency"][f"p{p}_ms"] == round(
                db_usage.bucket_value(db_usage.latency_bucket(exact)))


def _insert_before_0030(db, rows: list[dict]) -> None:
    """What insert_rows wrote before 0030_usage_summaries: rows, hourly sums, per-bucket
    latency rows (hourly and daily), each under the key and under ALL_KEYS."""
    for r in rows:
        h, b = r["created_at"][:13], db_usage.latency_bucket(r["latency_ms"])
        db.execute("insert into usage (created_at, key_id, model, endpoint, status, prompt_tokens,"
                   " completion_tokens, cost, latency_ms) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   [r[c] for c in ("created_at", "key_id", "model", "endpoint", "status",
                                   "prompt_tokens", "completion_tokens", "cost", "latency_ms")])
        for k in (r["key_id"], "*"):
            db.execute("insert into usage_hourly values (?, ?, ?, ?, 1, ?, ?, ?, ?, ?) on conflict"
                       " do update set requests = requests + 1, errors = errors + excluded.errors,"
                       " prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
                       " completion_tokens = completion_tokens + excluded.completion_tokens,"
                       " cost = cost + excluded.cost,"
                       " latency_ms_sum = latency_ms_sum + excluded.latency_ms_sum",
                       [h, k, r["model"], r["endpoint"], int(r["status"] >= 400),
                        r["prompt_tokens"], r["completion_tokens"], r["cost"], r["latency_ms"]])
            for table, period in (("usage_latency", h), ("usage_latency_daily", h[:10])):
                db.execute(f"insert into {table} values (?, ?, ?, ?, 1) on conflict"
                           " do update set count = count + 1", [period, k, r["model"], b])
    db.conn.commit()


def test_upgrade_backfills_the_summaries(tmp_path):
    rows = _rows()
    old = connect(tmp_path / "old.db", migrate=False)
    MIGRATIONS.apply(old, stop_before="0030_usage_summaries")  # then 0030, 0031
    _insert_before_0030(old, rows)
    upgraded = connect(tmp_path / "old.db")  # applies 0030
    fresh = connect(tmp_path / "fresh.db")
    db_usage.insert_rows(fresh, rows)
    start = (dt.datetime.now(dt.UTC).date() - dt.timedelta(days=4)).isoformat()
    for shape in SHAPES:
        assert usage.report(upgraded, start_date=start, **shape) == usage.report(
            fresh, start_date=start, **shape), shape
    # and new rows keep adding up on the upgraded database
    db_usage.insert_rows(upgraded, rows[:10])
    db_usage.insert_rows(fresh, rows[:10])
    assert usage.report(upgraded, start_date=start) == usage.report(fresh, start_date=start)
