"""Usage rows (one per request) and their hourly and daily roll-ups.

Every insert also folds the rows, in the same transaction, into

* `usage_hourly` / `usage_daily`: counts, tokens, cost and latency sum per period, key, model
  and endpoint;
* `usage_hist_hourly` / `usage_hist_daily`: one latency histogram per period, key and model
  (log-spaced buckets, stored compactly as one text value, see `encode_hist`) with its
  p50/p95/p99, so that a report entry made of one histogram row reads three numbers,

once under the row's key and once under `ALL_KEYS`, so that a report over every key reads one
roll-up row per period and model: a year by hour is ~8,760 x models rows, by day ~365 x models,
whatever the number of requests. Each roll-up table's primary key starts with `key_id` (tables
WITHOUT ROWID), so a report over one key, or over all keys, reads one contiguous range.
"""
from __future__ import annotations

import collections
import functools
import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from itertools import accumulate
from typing import Any

from sqlite_utils import Database

from llmp.db.locking import _lock

#: Histogram resolution: 4 buckets per doubling (each about 19% wide).
BUCKETS_PER_OCTAVE = 4

#: the key_id of the roll-up rows that sum every key
ALL_KEYS = "*"

#: a latency histogram: (first bucket, counts of that bucket and the following ones)
Hist = tuple[int, list[int]]

#: the latency percentiles kept with each histogram row (columns p50, p95, p99; ms, rounded)
PERCENTILES = (50, 95, 99)

COLUMNS = ("request_id", "created_at", "key_id", "model", "endpoint", "status", "error_type",
           "prompt_tokens", "completion_tokens", "cached_tokens", "cost", "latency_ms",
           "ttft_ms", "batch_id")
_SUMS = ("requests", "errors", "prompt_tokens", "completion_tokens", "cost", "latency_ms_sum")
_PERIODS = {"hour": "hourly", "day": "daily"}
_GROUPS = {"day": "day", "hour": "hour", "model": "model", "key": "key_id",
           "endpoint": "endpoint"}


def latency_bucket(ms: float) -> int:
    return int(math.floor(BUCKETS_PER_OCTAVE * math.log2(max(float(ms), 1.0))))


@functools.cache
def bucket_value(bucket: int) -> float:
    """The representative latency (ms) of a bucket: its geometric middle."""
    return 2 ** ((bucket + 0.5) / BUCKETS_PER_OCTAVE)


# -- histograms --------------------------------------------------------------------------------

def encode_hist(counts: dict[int, int]) -> str:
    """`{5: 2, 7: 1}` -> `"5:2,0,1"` (first bucket, then the dense counts from it)."""
    lo, hi = min(counts), max(counts)
    return f"{lo}:" + ",".join(str(counts.get(b, 0)) for b in range(lo, hi + 1))


def decode_hist(text: str) -> Hist:
    lo, _, counts = text.partition(":")
    return int(lo), list(map(int, counts.split(",")))


def merge_hists(hists: Sequence[Hist]) -> Hist:
    if len(hists) == 1:
        return hists[0]
    lo = min(h[0] for h in hists)
    out = [0] * (max(h[0] + len(h[1]) for h in hists) - lo)
    for first, counts in hists:
        for i, c in enumerate(counts, first - lo):
            out[i] += c
    return lo, out


def _merge_text(old: str | None, new: str) -> str:
    """SQL `hist_merge(old, new)`: the upsert of a histogram row."""
    if old is None:
        return new
    lo, counts = merge_hists([decode_hist(old), decode_hist(new)])
    return encode_hist({lo + i: c for i, c in enumerate(counts) if c})


def hist_percentiles(hist: Hist | None) -> tuple[int | None, ...]:
    """p50/p95/p99 (ms, rounded): the representative latency of the bucket holding each
    percentile (nearest rank: the first bucket whose running count reaches p% of the total)."""
    lo, counts = hist or (0, [])
    cum = list(accumulate(counts))
    total = cum[-1] if cum else 0
    if not total:
        return (None,) * len(PERCENTILES)
    return tuple(round(bucket_value(lo + bisect_left(cum, p / 100 * total))) for p in PERCENTILES)


def _percentiles_text(text: str) -> str:
    """SQL `hist_percentiles(hist)` -> "p50,p95,p99"."""
    return ",".join(map(str, hist_percentiles(decode_hist(text))))


# -- writes ------------------------------------------------------------------------------------

def insert_rows(db: Database, rows: Iterable[dict[str, Any]]) -> int:
    """Insert usage rows (created_at ISO UTC) and update the roll-ups, in one transaction."""
    rows = list(rows)
    hourly: dict[tuple, list] = collections.defaultdict(lambda: [0, 0, 0, 0, 0.0, 0.0])
    daily: dict[tuple, list] = collections.defaultdict(lambda: [0, 0, 0, 0, 0.0, 0.0])
    hist_hourly: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)
    hist_daily: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in rows:
        hour = r["created_at"][:13]
        model, endpoint = r.get("model") or "", r.get("endpoint") or ""
        latency = r.get("latency_ms") or 0.0
        add = (1, 1 if (r.get("status") or 200) >= 400 else 0, r.get("prompt_tokens") or 0,
               r.get("completion_tokens") or 0, r.get("cost") or 0.0, latency)
        bucket = latency_bucket(latency)
        for key_id in (r.get("key_id") or "", ALL_KEYS):
            for sums, period in ((hourly, hour), (daily, hour[:10])):
                s = sums[(period, key_id, model, endpoint)]
                for i, v in enumerate(add):
                    s[i] += v
            hist_hourly[(hour, key_id, model)][bucket] += 1
            hist_daily[(hour[:10], key_id, model)][bucket] += 1
    with _lock, db.atomic():
        db.register_function(_merge_text, deterministic=True, name="hist_merge")
        db.register_function(_percentiles_text, deterministic=True, name="hist_percentiles")
        db.conn.executemany(
            f"insert into usage ({', '.join(COLUMNS)}) values ({', '.join('?' * len(COLUMNS))})",
            [tuple(r.get(c) for c in COLUMNS) for r in rows])
        for table, period, sums in (("usage_hourly", "hour", hourly), ("usage_daily", "day", daily)):
            db.conn.executemany(
                f"insert into {table} ({period}, key_id, model, endpoint, {', '.join(_SUMS)})"
                " values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                f" on conflict ({period}, key_id, model, endpoint) do update set "
                + ", ".join(f"{c} = {c} + excluded.{c}" for c in _SUMS),
                [(*k, *v) for k, v in sums.items()])
        for table, period, hists in (("usage_hist_hourly", "hour", hist_hourly),
                                     ("usage_hist_daily", "day", hist_daily)):
            db.conn.executemany(
                f"insert into {table} ({period}, key_id, model, hist) values (?, ?, ?, ?)"
                f" on conflict (key_id, {period}, model)"
                " do update set hist = hist_merge(hist, excluded.hist)",
                [(*k, encode_hist(c)) for k, c in hists.items()])
            db.conn.executemany(
                f"update {table} set percentiles = hist_percentiles(hist)"
                f" where {period} = ? and key_id = ? and model = ?", hists.keys())
    return len(rows)


# -- reads -------------------------------------------------------------------------------------

def _where(start_day: str, end_day: str, key_id: str | None, model: str | None,
           group: list[str], period: str) -> tuple[str, list]:
    """key_id None: every key (the ALL_KEYS roll-ups, or each key's own when grouping by key)."""
    lo, hi = (start_day, end_day + "T99") if period == "hour" else (start_day, end_day)
    if key_id is None and "key" in group:
        where, args = ["key_id != ?", f"{period} >= ?", f"{period} <= ?"], [ALL_KEYS, lo, hi]
    else:
        where, args = ["key_id = ?", f"{period} >= ?", f"{period} <= ?"], [
            ALL_KEYS if key_id is None else key_id, lo, hi]
    if model is not None:
        where.append("model = ?")
        args.append(model)
    return " where " + " and ".join(where), args


def summary(db: Database, start_day: str, end_day: str, *, group: list[str],
            key_id: str | None = None, model: str | None = None,
            latency: bool = False) -> list[dict]:
    """Sums per group over the days [start_day, end_day] ("YYYY-MM-DD", inclusive), ordered by
    group. `group`: any of `day`, `hour` (read from the hourly roll-ups, else the daily ones),
    `model`, `key`, `endpoint`. With `latency`, each row also has `latency`: the p50/p95/p99
    (ms) of its group, None each without a histogram (not available per endpoint).

    key_id None: every key together, or each key apart when grouping by `key`."""
    period = "hour" if "hour" in group else "day"
    where, args = _where(start_day, end_day, key_id, model, group, period)
    cols = [f"{_GROUPS[g]}" for g in group]
    sums = ", ".join(f"sum({c})" for c in _SUMS)
    sql = f"select {', '.join(cols + [sums])} from usage_{_PERIODS[period]}{where}"
    if group:
        sql += f" group by {', '.join(cols)} order by {', '.join(cols)}"
    n = len(group)
    out = [dict(zip(group, r[:n]), **dict(zip(_SUMS, r[n:])))
           for r in db.conn.execute(sql, args) if r[n]]
    if latency:
        if "endpoint" in group:
            raise ValueError("no latency histograms per endpoint")
        latencies = _latencies(db, period, where, args, cols)
        none = (None,) * len(PERCENTILES)
        for row in out:
            row["latency"] = latencies.get(tuple(row[g] for g in group), none)
    return out


def _latencies(db: Database, period: str, where: str, args: list,
               cols: list[str]) -> dict[tuple, tuple[int | None, ...]]:
    """Group -> its p50/p95/p99: stored with the histogram row when the group is one row,
    else computed from the merged histograms."""
    parts: dict[tuple, list[tuple[str, str]]] = collections.defaultdict(list)
    n = len(cols)
    for r in db.conn.execute(f"select {', '.join(cols + ['hist', 'percentiles'])}"
                             f" from usage_hist_{_PERIODS[period]}" + where, args):
        parts[r[:n]].append(r[n:])
    return {g: (tuple(int(v) for v in hs[0][1].split(",")) if len(hs) == 1 else
                hist_percentiles(merge_hists([decode_hist(h) for h, _ in hs])))
            for g, hs in parts.items()}


def recent(db: Database, limit: int = 100, *, key_id: str | None = None) -> list[dict]:
    sql, args = "select * from usage", []
    if key_id is not None:
        sql += " where key_id = ?"
        args.append(key_id)
    return [dict(r) for r in db.query(sql + " order by id desc limit ?", [*args, limit])]
