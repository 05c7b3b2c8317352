"""Usage accounting: one row per request, and the /v1/usage and /v1/usage/billing reports."""
from __future__ import annotations

import datetime as dt
import tomllib
from typing import Any

from llmp.db import models as db_models
from llmp.db import usage as db_usage
from llmp.errors import InvalidRequestError
from llmp.services import timefmt

PERCENTILES = (50, 95, 99)


def cost_of(db, model: str | None, prompt_tokens: int, completion_tokens: int) -> tuple[float, str]:
    """Cost of a request at the model's prices per 1K tokens, and the currency."""
    m = db_models.get(db, model) if model else None
    if not m:
        return 0.0, "USD"
    cost = (prompt_tokens * (m.get("price_input") or 0.0)
            + completion_tokens * (m.get("price_output") or 0.0)) / 1000.0
    return cost, m.get("currency") or "USD"


def record(db, key_id: str | None, model: str | None, endpoint: str, prompt_tokens: int = 0,
           completion_tokens: int = 0, latency_ms: float = 0.0, ttft_ms: float | None = None,
           status: int = 200, *, error_type: str | None = None, cached_tokens: int = 0,
           request_id: str | None = None, batch_id: str | None = None) -> float:
    """Record one request (failed ones too); returns its cost."""
    cost, _ = cost_of(db, model, prompt_tokens, completion_tokens)
    db_usage.insert_rows(db, [{
        "request_id": request_id, "created_at": timefmt.iso(), "key_id": key_id or "",
        "model": model or "", "endpoint": endpoint, "status": status, "error_type": error_type,
        "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "cached_tokens": cached_tokens, "cost": cost, "latency_ms": latency_ms,
        "ttft_ms": ttft_ms, "batch_id": batch_id}])
    return cost


def _percentiles(hist: list[tuple[int, int]]) -> dict[str, float | None]:
    """p50/p95/p99 (ms) from sorted (bucket, count) pairs."""
    total = sum(c for _, c in hist)
    out: dict[str, float | None] = {}
    for p in PERCENTILES:
        if not total:
            out[f"p{p}_ms"] = None
            continue
        rank, seen = p / 100 * total, 0
        for bucket, c in hist:
            seen += c
            if seen >= rank:
                out[f"p{p}_ms"] = round(db_usage.bucket_value(bucket))
                break
    return out


def _date(value: str | None, param: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidRequestError(f"Invalid '{param}': {value!r} is not a date (YYYY-MM-DD)",
                                  param=param, code="invalid_parameter") from None


def report(db, *, start_date: str | None = None, end_date: str | None = None,
           granularity: str = "day", model: str | None = None, key_id: str | None = None,
           group_by: str = "model") -> dict[str, Any]:
    """The /v1/usage body: one entry per period (day or hour) and model (or key) between
    start_date and end_date inclusive (default: the last 30 days), plus totals."""
    if granularity not in ("day", "hour"):
        raise InvalidRequestError("'granularity' must be 'day' or 'hour'", param="granularity",
                                  code="invalid_parameter")
    if group_by not in ("model", "key"):
        raise InvalidRequestError("'group_by' must be 'model' or 'key'", param="group_by",
                                  code="invalid_parameter")
    end = _date(end_date, "end_date") or timefmt.now().date()
    start = _date(start_date, "start_date") or end - dt.timedelta(days=29)
    if start > end:
        raise InvalidRequestError("'start_date' is after 'end_date'", param="start_date",
                                  code="invalid_parameter")
    lo, hi = start.isoformat() + "T00", end.isoformat() + "T23"
    group = [granularity, group_by]
    rows = db_usage.aggregate(db, lo, hi, group=group, key_id=key_id, model=model)
    hists: dict[tuple, list[tuple[int, int]]] = {}
    for h in db_usage.latency_histogram(db, lo, hi, group=group, key_id=key_id, model=model):
        hists.setdefault((h[granularity], h[group_by]), []).append((h["bucket"], h["count"]))
    all_hist: dict[int, int] = {}
    for hist in hists.values():
        for b, c in hist:
            all_hist[b] = all_hist.get(b, 0) + c
    data, tot_req, tot_tok, tot_cost = [], 0, 0, 0.0
    for r in rows:
        tokens = r["prompt_tokens"] + r["completion_tokens"]
        entry: dict[str, Any] = {"date": r[granularity][:10]}
        if granularity == "hour":
            entry["hour"] = r["hour"] + ":00:00Z"
        entry[group_by if group_by == "model" else "key_id"] = r[group_by]
        entry.update({
            "requests": r["requests"],
            "errors": r["errors"],
            "tokens": {"prompt_tokens": r["prompt_tokens"],
                       "completion_tokens": r["completion_tokens"], "total_tokens": tokens},
            "cost": {"amount": round(r["cost"], 6), "currency": "USD"},
            "latency": _percentiles(hists.get((r[granularity], r[group_by]), [])),
        })
        data.append(entry)
        tot_req += r["requests"]
        tot_tok += tokens
        tot_cost += r["cost"]
    return {"object": "usage", "start_date": start.isoformat(), "end_date": end.isoformat(),
            "granularity": granularity, "data": data,
            "total": {"requests": tot_req, "tokens": tot_tok, "cost": round(tot_cost, 6),
                      "latency": _percentiles(sorted(all_hist.items()))}}


def payment_method(settings) -> dict | None:
    """`[billing.payment_method]` from llmp.toml (type, last_four, expires), else None: llmp
    never invents payment data."""
    try:
        data = tomllib.loads(settings.config_path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None
    pm = (data.get("billing") or {}).get("payment_method")
    return dict(pm) if isinstance(pm, dict) else None


def billing(db, settings, *, key: dict | None, quota: dict | None) -> dict[str, Any]:
    """The /v1/usage/billing body for one key (or every key when `key` is None)."""
    start = timefmt.month_start()
    nxt = timefmt.next_month_start()
    last_hour = timefmt.iso(nxt - dt.timedelta(hours=1))[:13]
    rows = db_usage.aggregate(db, timefmt.iso(start)[:13], last_hour, group=[],
                              key_id=key["id"] if key else None)
    r = rows[0] if rows else {}
    return {
        "object": "billing",
        "current_period": {
            "start_date": start.date().isoformat(),
            "end_date": (nxt - dt.timedelta(days=1)).date().isoformat(),
            "usage": {"requests": r.get("requests") or 0,
                      "tokens": (r.get("prompt_tokens") or 0) + (r.get("completion_tokens") or 0),
                      "cost": round(r.get("cost") or 0.0, 6)},
            "limits": quota or {"monthly_budget": None, "requests_per_month": None,
                                "tokens_per_month": None},
        },
        "payment_method": payment_method(settings),
        "next_billing_date": nxt.date().isoformat(),
    }
