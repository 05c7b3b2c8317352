"""Usage accounting: one row per request, and the /v1/usage and /v1/usage/billing reports."""
from __future__ import annotations

import datetime as dt
from typing import Any

from llmp.db import models as db_models
from llmp.db import usage as db_usage
from llmp.db import writer as db_writer
from llmp.errors import InvalidRequestError
from llmp.events import USAGE_RECORDED, Bus
from llmp.services import timefmt

PERCENTILES = db_usage.PERCENTILES


def price(model_row: dict | None, prompt_tokens: int, completion_tokens: int) -> float:
    """The cost of so many tokens at a registered model's prices per 1K tokens (0 without)."""
    if not model_row:
        return 0.0
    return (prompt_tokens * (model_row.get("price_input") or 0.0)
            + completion_tokens * (model_row.get("price_output") or 0.0)) / 1000.0


def cost_of(db, model: str | None, prompt_tokens: int, completion_tokens: int) -> tuple[float, str]:
    """Cost of a request at the model's prices per 1K tokens, and the currency."""
    m = db_models.get(db, model) if model else None
    if not m:
        return 0.0, "USD"
    cost = (prompt_tokens * (m.get("price_input") or 0.0)
            + completion_tokens * (m.get("price_output") or 0.0)) / 1000.0
    return cost, m.get("currency") or "USD"


def usage_row(db, key_id: str | None, model: str | None, endpoint: str, prompt_tokens: int = 0,
              completion_tokens: int = 0, latency_ms: float = 0.0, ttft_ms: float | None = None,
              status: int = 200, *, error_type: str | None = None, cached_tokens: int = 0,
              request_id: str | None = None, batch_id: str | None = None) -> dict[str, Any]:
    """The usage row of one request (failed ones too), priced now, for `record_many`."""
    cost, _ = cost_of(db, model, prompt_tokens, completion_tokens)
    return {"request_id": request_id, "created_at": timefmt.iso(), "key_id": key_id or "",
            "model": model or "", "endpoint": endpoint, "status": status,
            "error_type": error_type, "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens, "cached_tokens": cached_tokens, "cost": cost,
            "latency_ms": latency_ms, "ttft_ms": ttft_ms, "batch_id": batch_id}


def notify(bus: Bus, rows: list[dict[str, Any]]) -> None:
    """Publish `usage.recorded` for rows without storing them (the limiter counts them against
    the keys' quotas; the batch runner stores them with the lines' results)."""
    if rows:
        bus.publish(USAGE_RECORDED, {"rows": rows})


def record_many(db, rows: list[dict[str, Any]], *, bus: Bus) -> None:
    """Publish usage rows (made by `usage_row`) on the app's bus, then store them in one
    transaction: through the process's database writer when one runs (group commit, off the
    event loop), else at once."""
    if not rows:
        return
    notify(bus, rows)
    writer = db_writer.writer_for(db)
    if writer is not None:
        writer.add_usage(rows)
    else:
        db_usage.insert_rows(db, rows)


def record(db, key_id: str | None, model: str | None, endpoint: str, prompt_tokens: int = 0,
           completion_tokens: int = 0, latency_ms: float = 0.0, ttft_ms: float | None = None,
           status: int = 200, *, bus: Bus, **extra: Any) -> float:
    """Record one request (failed ones too; `extra`: `usage_row`'s keywords); returns its cost."""
    row = usage_row(db, key_id, model, endpoint, prompt_tokens, completion_tokens, latency_ms,
                    ttft_ms, status, **extra)
    record_many(db, [row], bus=bus)
    return row["cost"]


def _latency(values: tuple[int | None, ...]) -> dict[str, int | None]:
    """{"p50_ms": ..., "p95_ms": ..., "p99_ms": ...}"""
    return dict(zip(_LATENCY_NAMES, values))


_LATENCY_NAMES = [f"p{p}_ms" for p in PERCENTILES]


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
    rows = db_usage.summary(db, start.isoformat(), end.isoformat(),
                            group=[granularity, group_by], key_id=key_id, model=model,
                            latency=True)
    name = "model" if group_by == "model" else "key_id"
    data = []
    for r in rows:
        prompt, completion = r["prompt_tokens"], r["completion_tokens"]
        entry: dict[str, Any] = {"date": r[granularity][:10]}
        if granularity == "hour":
            entry["hour"] = r["hour"] + ":00:00Z"
        entry[name] = r[group_by]
        entry["requests"] = r["requests"]
        entry["errors"] = r["errors"]
        entry["tokens"] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
        entry["cost"] = {"amount": round(r["cost"], 6), "currency": "USD"}
        entry["latency"] = _latency(r["latency"])
        data.append(entry)
    total = db_usage.summary(db, start.isoformat(), end.isoformat(), group=[], key_id=key_id,
                             model=model, latency=True)
    t: dict[str, Any] = total[0] if total else {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                "cost": 0.0, "latency": (None,) * len(PERCENTILES)}
    return {"object": "usage", "start_date": start.isoformat(), "end_date": end.isoformat(),
            "granularity": granularity, "data": data,
            "total": {"requests": t["requests"],
                      "tokens": t["prompt_tokens"] + t["completion_tokens"],
                      "cost": round(t["cost"], 6), "latency": _latency(t["latency"])}}


def payment_method(settings) -> dict | None:
    """`[billing.payment_method]` of the settings (llmp.toml: type, last_four, expires), else
    None: llmp never invents payment data."""
    pm = settings.billing.payment_method
    return pm.model_dump() if pm is not None else None


def billing(db, settings, *, key: dict | None, quota: dict | None) -> dict[str, Any]:
    """The /v1/usage/billing body for one key (or every key when `key` is None)."""
    start = timefmt.month_start()
    nxt = timefmt.next_month_start()
    rows = db_usage.summary(db, start.date().isoformat(),
                            (nxt - dt.timedelta(days=1)).date().isoformat(), group=[],
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
