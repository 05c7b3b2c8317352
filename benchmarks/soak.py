"""Soak a real `llmp serve` (issue 9) and measure /health under abuse (issue 8).

    python3 benchmarks/soak.py [--streams 128] [--minutes 5] [--drop 0.2] [--preset tiny]
    python3 benchmarks/soak.py --mode health [--streams 8] [--minutes 1] [--oversized-per-s 1]

`llmp serve` runs as its own process over a fresh home, on a synthetic model (so it runs
anywhere); the load is sent from this process over loopback only, and every loop is bounded
by the deadline.

soak (default): `--streams` concurrent streaming chat completions, each worker sending one
after another until the deadline; a random `--drop` share of them is dropped by the client
mid-stream (the connection is closed after a random number of chunks). Reported: requests by
status, 5xx count, the server's open file descriptors and RSS before (after a warm-up round,
once the server is idle) and after (once idle again), TTFT p50/p95 of the streams and the
tokens/s received. Target: zero 5xx, fds back to the start, RSS within 5% after the run.

health: `--streams` streams run (8 by default) while one oversized prompt per second (a body
of `--oversized-mb` MB, far over the context: refused with 400 before tokenizing) arrives,
and /health is probed every 20 ms: its p50/p99/max latency is reported.

Needs a Linux /proc for the server's fds and RSS.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import multiprocessing
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- the server
class Server:
    """`llmp serve --port 0` on a fresh home, as a subprocess."""

    def __init__(self, home: Path, model: Path, slots: int, ctx: int, threads: int):
        env = {**os.environ, "LLMP_HOME": str(home), "LLMP_N_THREADS": str(threads),
               "LLMP_LOG_LEVEL": "warning", "PYTHONPATH": str(ROOT)}
        env.pop("LLMP_ADMIN_KEY", None)
        self.log = open(home.parent / "serve.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmp.cli.main", "serve", "--port", "0", "--model", str(model),
             "--slots", str(slots), "--ctx", str(ctx)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        self.url = self.key = None
        deadline = time.monotonic() + 120
        lines: list[str] = []
        while (self.url is None or self.key is None) and time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if m := re.search(r"(http://127\.0\.0\.1:\d+)/v1", line):
                self.url = m.group(1)
            if m := re.search(r"(sk-\w{32,})", line):
                self.key = m.group(1)
        if not (self.url and self.key):
            self.stop()
            raise SystemExit("llmp serve did not start:\n" + "".join(lines))
        # keep draining its output so it never blocks on a full pipe
        threading.Thread(target=self._copy_output, daemon=True).start()

    def _copy_output(self) -> None:
        for line in self.proc.stdout:
            self.log.write(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


# ----------------------------------------------------------------------------- the load
class Stats:
    def __init__(self) -> None:
        self.status: dict[str, int] = {}
        self.ttft: list[float] = []
        self.tokens = 0
        self.dropped = 0
        self.errors_in_band = 0
        self.bad_errors: list[str] = []

    def count(self, status: int | str) -> None:
        self.status[str(status)] = self.status.get(str(status), 0) + 1

    @property
    def five_xx(self) -> int:
        return sum(n for s, n in self.status.items() if s.isdigit() and int(s) >= 500)


def _is_error_format(body: bytes) -> bool:
    try:
        err = json.loads(body)
        return set(err) == {"error", "request_id"} and \
            set(err["error"]) == {"message", "type", "param", "code"}
    except (ValueError, TypeError, KeyError):
        return False


async def stream_once(session: aiohttp.ClientSession, url: str, key: str, model: str,
                      stats: Stats, drop_p: float, max_tokens: int, i: int) -> None:
    body = {"model": model, "stream": True, "max_tokens": random.randint(8, max_tokens),
            "ignore_eos": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": f"Stream {i}: tell me something."}]}
    drop_after = random.randint(1, 8) if random.random() < drop_p else None
    t0 = time.perf_counter()
    chunks = 0
    try:
        async with session.post(url + "/v1/chat/completions", json=body,
                                headers={"Authorization": f"Bearer {key}"}) as resp:
            if resp.status != 200:
                raw = await resp.read()
                stats.count(resp.status)
                if not _is_error_format(raw):
                    stats.bad_errors.append(f"{resp.status}: {raw[:200]!r}")
                return
            async for line in resp.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    stats.errors_in_band += 1
                    continue
                if event.get("choices") and event["choices"][0]["delta"].get("content"):
                    if chunks == 0:
                        stats.ttft.append(time.perf_counter() - t0)
                    chunks += 1
                    stats.tokens += 1
                    if drop_after is not None and chunks >= drop_after:
                        stats.dropped += 1
                        stats.count("dropped")
                        conn = resp.connection  # None once the body was all read
                        if conn is not None and conn.transport is not None:
                            conn.transport.abort()  # the client goes away mid-stream
                        resp.close()
                        return
            stats.count(200)
    except (TimeoutError, aiohttp.ClientError) as e:
        stats.count(f"client_error:{type(e).__name__}")


async def wait_idle(session: aiohttp.ClientSession, url: str, timeout: float = 60) -> None:
    """Until the server reports no request in flight (its Prometheus gauge), or `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with session.get(url + "/metrics") as r:
            text = await r.text()
        busy = [float(m) for m in re.findall(r"^llmp_(?:queue_depth|slots_busy)"
                                             r"(?:\{[^}]*\})? (\S+)$", text, re.M)]
        if not any(busy):
            return
        await asyncio.sleep(0.2)


async def soak(srv: Server, model: str, args) -> dict:
    stats = Stats()
    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        # warm-up: every stream once (allocations settle), then idle
        warm = Stats()
        await asyncio.gather(*(stream_once(session, srv.url, srv.key, model, warm, 0.0, 16, i)
                               for i in range(args.streams)))
        await wait_idle(session, srv.url)
        await asyncio.sleep(1.0)
        before = {"fds": srv.fds(), "rss_mb": round(srv.rss_mb(), 1)}
        deadline = time.monotonic() + args.minutes * 60
        t0 = time.perf_counter()

        async def worker(w: int) -> None:
            i = 0
            while time.monotonic() < deadline:
                await stream_once(session, srv.url, srv.key, model, stats, args.drop,
                                  args.max_tokens, w * 1_000_000 + i)
                i += 1

        await asyncio.gather(*(worker(w) for w in range(args.streams)))
        elapsed = time.perf_counter() - t0
        await wait_idle(session, srv.url)
        await asyncio.sleep(1.0)
        after = {"fds": srv.fds(), "rss_mb": round(srv.rss_mb(), 1)}
        async with session.get(srv.url + "/health") as r:
            health = r.status
    ttft = sorted(stats.ttft)
    return {
        "mode": "soak", "streams": args.streams, "minutes": args.minutes, "drop": args.drop,
        "requests": sum(stats.status.values()), "by_status": stats.status,
        "five_xx": stats.five_xx, "errors_in_band": stats.errors_in_band,
        "non_spec_errors": stats.bad_errors[:5],
        "ttft_p50_ms": round(1000 * statistics.median(ttft), 1) if ttft else None,
        "ttft_p95_ms": round(1000 * ttft[int(0.95 * (len(ttft) - 1))], 1) if ttft else None,
        "tokens": stats.tokens, "tokens_per_s": round(stats.tokens / elapsed, 1),
        "fds_before": before["fds"], "fds_after": after["fds"],
        "rss_mb_before": before["rss_mb"], "rss_mb_after": after["rss_mb"],
        "rss_change_pct": round(100 * (after["rss_mb"] / before["rss_mb"] - 1), 2),
        "health_after": health,
    }


def probe_health(url: str, seconds: float) -> list[float]:
    """GET /health every 20 ms for `seconds`; the latencies (s) of its 200 answers."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    lat: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        t = time.perf_counter()
        conn.request("GET", "/health")
        r = conn.getresponse()
        r.read()
        if r.status == 200:
            lat.append(time.perf_counter() - t)
        conn.close()
        time.sleep(0.02)
    return lat


async def health_under_abuse(srv: Server, model: str, args) -> dict:
    stats = Stats()
    oversized: dict[str, int] = {}
    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=300)
    big = json.dumps({"model": model, "messages": [
        {"role": "user", "content": "word " * (args.oversized_mb * 1024 * 1024 // 5)}]}).encode()
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        deadline = time.monotonic() + args.minutes * 60

        async def streams(w: int) -> None:
            i = 0
            while time.monotonic() < deadline:
                await stream_once(session, srv.url, srv.key, model, stats, 0.0,
                                  args.max_tokens, w * 1_000_000 + i)
                i += 1

        async def oversize() -> None:
            while args.oversized_per_s > 0 and time.monotonic() < deadline:
                t = time.monotonic()
                async with session.post(srv.url + "/v1/chat/completions", data=big, headers={
                        "Authorization": f"Bearer {srv.key}",
                        "Content-Type": "application/json"}) as r:
                    await r.read()
                    oversized[str(r.status)] = oversized.get(str(r.status), 0) + 1
                await asyncio.sleep(max(0.0, 1.0 / args.oversized_per_s - (time.monotonic() - t)))

        # the probe runs in a process of its own, so the load's client work (SSE parsing,
        # sending 10 MB bodies) does not count in /health's latency
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
            probing = asyncio.get_running_loop().run_in_executor(
                pool, probe_health, srv.url, deadline - time.monotonic())
            await asyncio.gather(*(streams(w) for w in range(args.streams)), oversize())
            lat = sorted(await probing)
    return {
        "mode": "health", "streams": args.streams, "minutes": args.minutes,
        "oversized_mb": args.oversized_mb, "oversized_per_s": args.oversized_per_s,
        "oversized_answers": oversized, "stream_answers": stats.status,
        "health_probes": len(lat),
        "health_p50_ms": round(1000 * statistics.median(lat), 2),
        "health_p99_ms": round(1000 * lat[int(0.99 * (len(lat) - 1))], 2),
        "health_max_ms": round(1000 * lat[-1], 2),
    }


async def main(args) -> dict:
    from llmp.models.synth import synthesize

    with tempfile.TemporaryDirectory(prefix="llmp-soak-") as tmp:
        tmp_path = Path(tmp)
        model_path = synthesize(args.preset, tmp_path / f"{args.preset}.gguf", dtype="f16")
        srv = Server(tmp_path / "home", model_path, args.slots, args.ctx, args.threads)
        try:
            async with aiohttp.ClientSession() as s:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:  # 503 while the preloaded model loads
                    async with s.get(srv.url + "/health") as r:
                        if r.status == 200:
                            break
                    await asyncio.sleep(0.1)
                async with s.get(srv.url + "/v1/models",
                                 headers={"Authorization": f"Bearer {srv.key}"}) as r:
                    model = (await r.json())["data"][0]["id"]
            run = health_under_abuse if args.mode == "health" else soak
            result = await run(srv, model, args)
        finally:
            code = srv.stop()
            srv.log.seek(0)
            tracebacks = srv.log.read().count("Traceback")
        result.update({"server_exit_code": code, "server_tracebacks": tracebacks,
                       "command": " ".join(["python3", "benchmarks/soak.py", *sys.argv[1:]])})
        return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("soak", "health"), default="soak")
    p.add_argument("--streams", type=int, default=None,
                   help="concurrent streams (soak: 128, health: 8)")
    p.add_argument("--minutes", type=float, default=None, help="soak: 5, health: 1")
    p.add_argument("--drop", type=float, default=0.2, help="share of streams the client drops")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--preset", default="tiny", help="synthetic model preset (tiny, small)")
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--oversized-mb", type=int, default=10)
    p.add_argument("--oversized-per-s", type=float, default=1.0)
    args = p.parse_args(argv)
    if args.streams is None:
        args.streams = 8 if args.mode == "health" else 128
    if args.minutes is None:
        args.minutes = 1.0 if args.mode == "health" else 5.0
    return args


if __name__ == "__main__":
    out = asyncio.run(main(parse_args()))
    print(json.dumps(out, indent=2))
    ok = out.get("five_xx", 0) == 0 and out["server_exit_code"] == 0
    sys.exit(0 if ok else 1)
