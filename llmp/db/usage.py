"""Usage rows (one per request) and their hourly roll-ups.

Every insert also folds the rows into `usage_hourly` (counts, tokens, cost) and
`usage_latency` / `usage_latency_daily` (log-spaced latency histograms), once under the row's key and once under
`ALL_KEYS`, so that a report over every key reads one roll-up row per hour and model (a year:
tens of thousands of rows, whatever the number of requests or keys).
"""
from __future__ import annotations

import collections
import math
from typing import Any, Iterable

from sqlite_utils import Database

from llmp.db import _lock

#: Histogram resolution: 4 buckets per doubling (each about 19% wide).
BUCKETS_PER_OCTAVE = 4

#: the key_id of the roll-up rows that sum every key
ALL_KEYS = "*"

_GROUPS = {"day": "substr(hour, 1, 10)", "hour": "hour", "model": "model", "key": "key_id",
           "endpoint": "endpoint"}


def latency_bucket(ms: float) -> int:
    return int(math.floor(BUCKETS_PER_OCTAVE * math.log2(max(float(ms), 1.0))))


def bucket_value(bucket: int) -> float:
    """The representative latency (ms) of a bucket: its geometric middle."""
    return 2 ** ((bucket + 0.5) / BUCKETS_PER_OCTAVE)


def insert_rows(db: Database, rows: Iterable[dict[str, Any]]) -> int:
    """Insert usage rows (created_at ISO UTC) and update the roll-ups, in one transaction."""
    rows = list(rows)
    hourly: dict[tuple, list] = collections.defaultdict(lambda: [0, 0, 0, 0, 0.0, 0.0])
    latency: collections.Counter = collections.Counter()
    latency_daily: collections.Counter = collections.Counter()
    for r in rows:
        hour = r["created_at"][:13]
        bucket = latency_bucket(r.get("latency_ms") or 0.0)
        for key_id in (r.get("key_id") or "", ALL_KEYS):
            key = (hour, key_id, r.get("model") or "", r.get("endpoint") or "")
            h = hourly[key]
            h[0] += 1
            h[1] += 1 if (r.get("status") or 200) >= 400 else 0
            h[2] += r.get("prompt_tokens") or 0
            h[3] += r.get("completion_tokens") or 0
            h[4] += r.get("cost") or 0.0
            h[5] += r.get("latency_ms") or 0.0
            latency[(hour, key_id, key[2], bucket)] += 1
            latency_daily[(hour[:10], key_id, key[2], bucket)] += 1
    with _lock, db.atomic():
        db["usage"].insert_all(rows, batch_size=1000)
        db.conn.executemany(
            "insert into usage_hourly (hour, key_id, model, endpoint, requests, errors,"
            " prompt_tokens, completion_tokens, cost, latency_ms_sum)"
            " values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " on conflict (hour, key_id, model, endpoint) do update set"
            " requests = requests + excluded.requests, errors = errors + excluded.errors,"
            " prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
            " completion_tokens = completion_tokens + excluded.completion_tokens,"
            " cost = cost + excluded.cost, latency_ms_sum = latency_ms_sum + excluded.latency_ms_sum",
            [(*k, *v) for k, v in hourly.items()])
        db.conn.executemany(
            "insert into usage_latency (hour, key_id, model, bucket, count) values (?, ?, ?, ?, ?)"
            " on conflict (hour, key_id, model, bucket) do update set count = count + excluded.count",
            [(*k, n) for k, n in latency.items()])
        db.conn.executemany(
            "insert into usage_latency_daily (day, key_id, model, bucket, count)"
            " values (?, ?, ?, ?, ?) on conflict (day, key_id, model, bucket)"
            " do update set count = count + excluded.count",
            [(*k, n) for k, n in latency_daily.items()])
    return len(rows)


def _where(start_hour: str, end_hour: str, key_id: str | None, model: str | None,
           group: list[str], time_col: str = "hour") -> tuple[str, list]:
    """key_id None: every key (the ALL_KEYS roll-ups, or each key's own when grouping by key)."""
    cut = len("YYYY-MM-DD") if time_col == "day" else len("YYYY-MM-DDTHH")
    where = ["key_id = ?", f"{time_col} >= ?", f"{time_col} <= ?"]
    args = [key_id, start_hour[:cut], end_hour[:cut]]
    if key_id is None:
        if "key" in group:
            where[0] = "key_id != ?"
        args[0] = ALL_KEYS
    if model is not None:
        where.append("model = ?")
        args.append(model)
    return " where " + " and ".join(where), args


def aggregate(db: Database, start_hour: str, end_hour: str, *, group: list[str],
              key_id: str | None = None, model: str | None = None) -> list[dict]:
    """Sums per group (`day`, `hour`, `model`, `key`, `endpoint`) over [start_hour, end_hour]
    (both "YYYY-MM-DDTHH", inclusive)."""
    cols = [f"{_GROUPS[g]} as {g}" for g in group]
    where, args = _where(start_hour, end_hour, key_id, model, group)
    sql = ("select " + ", ".join(cols + [
        "sum(requests) as requests", "sum(errors) as errors",
        "sum(prompt_tokens) as prompt_tokens", "sum(completion_tokens) as completion_tokens",
        "sum(cost) as cost", "sum(latency_ms_sum) as latency_ms_sum"])
        + " from usage_hourly" + where)
    if group:
        sql += " group by " + ", ".join(group) + " order by " + ", ".join(group)
    return [dict(r) for r in db.query(sql, args) if r["requests"]]


def latency_histogram(db: Database, start_hour: str, end_hour: str, *, group: list[str],
                      key_id: str | None = None, model: str | None = None) -> list[dict]:
    """Histogram rows (group columns..., bucket, count) for latency percentiles; from the
    daily histograms unless grouping by hour."""
    group = [g for g in group if g != "endpoint"]
    daily = "hour" not in group
    exprs = {**_GROUPS, "day": "day"} if daily else _GROUPS
    cols = [f"{exprs[g]} as {g}" for g in group] + ["bucket", "sum(count) as count"]
    where, args = _where(start_hour, end_hour, key_id, model, group,
                         "day" if daily else "hour")
    table = "usage_latency_daily" if daily else "usage_latency"
    sql = ("select " + ", ".join(cols) + f" from {table}" + where
           + " group by " + ", ".join(group + ["bucket"]) + " order by " + ", ".join(group + ["bucket"]))
    return [dict(r) for r in db.query(sql, args)]


def recent(db: Database, limit: int = 100, *, key_id: str | None = None) -> list[dict]:
    sql, args = "select * from usage", []
    if key_id is not None:
        sql += " where key_id = ?"
        args.append(key_id)
    return [dict(r) for r in db.query(sql + " order by id desc limit ?", [*args, limit])]
