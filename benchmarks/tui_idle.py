"""`llmp tui` costs: CPU of an idle dashboard refreshing every second, and the time to show
the Usage screen over a year of hourly data.

    python3 benchmarks/tui_idle.py [--seconds 20] [--models 2]

Fills a fresh home with one usage row per hour per model over the last 365 days (through the
server's own insert path), starts `llmp serve` on it (a subprocess, tiny synthetic model),
then runs the dashboard headless in this process (Textual's `run_test`, 120x40):
  1. idle CPU: the Overview screen polling every 1 s for `--seconds`; CPU time of this
     process (the dashboard only) over wall time, as % of one core. Target < 5%.
  2. the Usage screen over 365 days: by day (365 x models rows) and by hour
     (8760 x models rows): fetch (HTTP + JSON), then render (table, sparklines), each timed.
  3. 10,000 keys in a table: set_rows, then a `/` filter, timed (widget only, no server).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def fill_year(home: Path, models: int) -> int:
    from llmp.config import Settings
    from llmp.db import open_home
    from llmp.db import usage as db_usage

    db = open_home(Settings(home=home).ensure_dirs())
    rng = random.Random(0)
    now = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    rows = []
    for h in range(365 * 24):
        t = now - dt.timedelta(hours=h)
        for m in range(models):
            rows.append({"created_at": t.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "key_id": "key_bench",
                         "model": f"model-{m}", "endpoint": "/v1/chat/completions",
                         "status": 200, "prompt_tokens": rng.randrange(10, 2000),
                         "completion_tokens": rng.randrange(1, 500), "cost": 0.001,
                         "latency_ms": 300.0, "ttft_ms": 50.0})
    db_usage.insert_rows(db, rows)
    db.close()
    return len(rows)


async def measure(url: str, key: str, seconds: float) -> dict:
    from llmp.tui.app import LlmpApp
    from llmp.tui.widgets.table import FilterTable

    out: dict = {}
    app = LlmpApp(url, key, poll_interval=1.0)
    async with app.run_test(size=(120, 40)) as pilot:
        ov = app.view_of("overview")
        while ov.polls < 2:
            await pilot.pause(0.05)
        cpu0, wall0, polls0 = time.process_time(), time.perf_counter(), ov.polls
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        out["idle"] = {"seconds": round(wall, 1), "cpu_s": round(cpu, 3),
                       "cpu_percent_of_one_core": round(100 * cpu / wall, 2),
                       "polls": ov.polls - polls0}

        await pilot.press("4")
        usage = app.view_of("usage")
        usage.stop()  # measure one fetch + one render at a time
        usage.days = 365
        for gran in ("day", "hour"):
            usage.granularity = gran
            t0 = time.perf_counter()
            end = dt.datetime.now(dt.UTC).date()
            body = await app.client.request("GET", "/v1/usage", params={
                "start_date": (end - dt.timedelta(days=364)).isoformat(),
                "end_date": end.isoformat(), "granularity": gran, "group_by": "model"})
            t1 = time.perf_counter()
            usage.show(body, None)
            await pilot.pause()  # the screen repainted
            t2 = time.perf_counter()
            out[f"usage_{gran}"] = {"rows": len(usage.query_one(FilterTable).rows),
                                    "fetch_ms": round((t1 - t0) * 1000, 1),
                                    "render_ms": round((t2 - t1) * 1000, 1)}

        table = usage.query_one(FilterTable)
        keys = [(f"key_{i:05d}", [f"key_{i:05d}", f"name {i}", "inference", "free",
                                  "active"]) for i in range(10_000)]
        t0 = time.perf_counter()
        table.set_rows(keys)
        await pilot.pause()
        t1 = time.perf_counter()
        table.query_text = "name 99"
        table.set_rows(keys)
        await pilot.pause()
        t2 = time.perf_counter()
        out["table_10k"] = {"set_rows_ms": round((t1 - t0) * 1000, 1),
                            "filter_ms": round((t2 - t1) * 1000, 1),
                            "filtered": len(table.visible_rows())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--models", type=int, default=2)
    args = ap.parse_args()

    from soak import Server

    from llmp.models.synth import synthesize

    tmp = Path(tempfile.mkdtemp(prefix="llmp-tui-bench-"))
    home = tmp / "home"
    t0 = time.perf_counter()
    rows = fill_year(home, args.models)
    print(f"filled {rows} hourly usage rows in {time.perf_counter() - t0:.1f} s", flush=True)
    model = synthesize("tiny", tmp / "tiny.gguf", dtype="f16")
    server = Server(home, model, slots=2, ctx=256, threads=1)
    try:
        result = asyncio.run(measure(server.url, server.key, args.seconds))
    finally:
        server.stop()
    result["target_idle_cpu_percent"] = 5
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
