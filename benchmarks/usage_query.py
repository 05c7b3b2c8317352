"""How fast /v1/usage answers over a year of a million usage rows.

    python3 benchmarks/usage_query.py [--rows 1000000]

Fills a fresh SQLite home with `--rows` requests spread over the last 365 days (5 models,
20 keys), through the same insert path the server uses (rows + hourly and daily roll-ups, in
batches of 50,000), then times every shape of the /v1/usage report over the whole year (day
and hour granularity; all keys, one key, one model, per key) and /v1/usage/billing, each
including its JSON encoding (what the route sends). Target: every query under 1 s.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import tempfile
import time
from pathlib import Path

from llmp.config import Settings
from llmp.db import open_home
from llmp.db import usage as db_usage
from llmp.services import usage


def fill(db, rows: int, batch: int = 50_000) -> float:
    rng = random.Random(0)
    now = dt.datetime.now(dt.timezone.utc)
    t0 = time.perf_counter()
    for start in range(0, rows, batch):
        chunk = []
        for _ in range(min(batch, rows - start)):
            t = now - dt.timedelta(seconds=rng.randrange(365 * 86400))
            chunk.append({"created_at": t.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                          "key_id": f"key_{rng.randrange(20)}", "model": f"model-{rng.randrange(5)}",
                          "endpoint": "/v1/chat/completions", "status": 200,
                          "prompt_tokens": rng.randrange(10, 2000),
                          "completion_tokens": rng.randrange(1, 500), "cost": 0.001,
                          "latency_ms": rng.lognormvariate(6.5, 0.6), "ttft_ms": 50.0})
        db_usage.insert_rows(db, chunk)
    return time.perf_counter() - t0


def timed(label: str, fn) -> float:
    t0 = time.perf_counter()
    out = fn()
    json.dumps(out)
    dt_s = time.perf_counter() - t0
    n = len(out.get("data", [])) if isinstance(out, dict) else 0
    print(f"{label:<44} {dt_s * 1000:8.1f} ms  ({n} entries)")
    return dt_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="llmp-usage-bench-"))
    settings = Settings(home=home).ensure_dirs()
    db = open_home(settings)
    print(f"inserting {args.rows:,} rows ... {fill(db, args.rows):.1f} s")
    today = dt.datetime.now(dt.timezone.utc).date()
    year = {"start_date": (today - dt.timedelta(days=364)).isoformat(),
            "end_date": today.isoformat()}
    shapes = {
        "usage, year, by day, all keys": {},
        "usage, year, by hour, all keys": {"granularity": "hour"},
        "usage, year, by day, one key": {"key_id": "key_3"},
        "usage, year, by hour, one key": {"granularity": "hour", "key_id": "key_3"},
        "usage, year, by day, one model": {"model": "model-2"},
        "usage, year, by hour, one model": {"granularity": "hour", "model": "model-2"},
        "usage, year, by day, per key": {"group_by": "key"},
        "usage, year, by day, per key, one model": {"group_by": "key", "model": "model-2"},
        "usage, 30 days, by hour, per key": {"granularity": "hour", "group_by": "key",
                                             "start_date": (today - dt.timedelta(days=29)).isoformat()},
    }
    worst = max(
        *(timed(label, lambda q=q: usage.report(db, **{**year, **q})) for label, q in shapes.items()),
        timed("billing, current month, all keys", lambda: usage.billing(
            db, settings, key=None, quota=None)),
    )
    print(f"slowest: {worst * 1000:.0f} ms ({'OK' if worst < 1 else 'OVER'} the 1 s target)")


if __name__ == "__main__":
    main()
