"""llmp vs llama-server (llama.cpp's own server): the same load, side by side, in one run.

    LLAMA_SERVER=/path/to/llama-server python3 benchmarks/vs_llama_server.py \\
        [--preset small | --model PATH.gguf] [--concurrency 1,4,8] [--prompt-tokens 128] \\
        [--gen-tokens 128] [--requests 0] [--rounds 1] [--threads 2] [--slot-ctx 512] [--json]

Getting llama-server: llmp does not ship it. Install llama.cpp from your distribution or
package manager (the binary is named `llama-server`), or build it yourself from llama.cpp's
sources (its README explains how). For a like-for-like comparison use the llama.cpp version
that your llama-cpp-python wraps (`python3 -c "import llama_cpp; print(llama_cpp.__version__)"`
names the release; its source distribution vendors that llama.cpp) built for this CPU, as
llama-cpp-python's source build is.

What it does, everything on 127.0.0.1 and in a temporary LLMP_HOME:
1. synthesizes the model (`--preset`, default `small`: ~30M parameters, f16) unless `--model`;
2. starts llama-server with `-np N` (N = the largest concurrency level), `-c N * slot_ctx`,
   separate KV per slot (`--no-kv-unified`, as llmp), `-t/-tb THREADS`, `-b 2048 -ub 512`,
   and `llmp serve --slots N --ctx slot_ctx` with `LLMP_N_THREADS=THREADS` on another port;
   also loads llmp's engine in this process with the same slots, context and threads;
3. per concurrency level C, sends the same `max(C, --requests or max(4, 2*C))` requests to each
   target, C at a time: a prompt of exactly --prompt-tokens token ids (a distinct first
   token per request, level and round, so no prefix cache helps), --gen-tokens generated
   with `ignore_eos`, greedy, streamed (`/v1/completions`, stream_options.include_usage).
   With --rounds R every level runs R times, targets interleaved, and the table keeps each
   target's best run (other processes only ever slow a run down);
4. prints one table: aggregate generated tokens/s, TTFT p50/p95 (submission to the first
   streamed text), and the ratios llmp / llama-server; stops both servers (always).

Targets: `llmp` (the engine in-process, no HTTP), `llmp serve` (HTTP), `llama-server`.
Run it on a quiet machine: every target shares the same cores.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from llmp.cli.bench import Run, _bench_engine, _bench_url, _prompts
from llmp.config import load_settings
from llmp.engine.engine import Engine
from llmp.models.synth import PRESETS, synthesize

TARGETS = ("llmp", "llmp serve", "llama-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, key: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


class Server:
    """A server subprocess (own process group, log file) with a readiness wait and a sure stop."""

    def __init__(self, name: str, argv: list[str], port: int, log: Path, env: dict[str, str] | None = None):
        self.name, self.port, self.log = name, port, log
        self.base = f"http://127.0.0.1:{port}"
        self._log_file = open(log, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Poll GET /health until 200 (both servers answer 503 while loading)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            if _get(self.base + "/health")[0] == 200:
                return
            time.sleep(0.2)
        raise SystemExit(f"{self.name} not ready after {timeout:.0f}s:\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        self._log_file.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


def _machine() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    return {"nproc": str(os.cpu_count()), "cpu": cpu,
            "load_avg_1m": f"{os.getloadavg()[0]:.2f}"}


async def _run(args: argparse.Namespace, model_path: str, llama: Server, llmp: Server,
               llmp_model: str, admin_key: str) -> dict[str, dict[int, Run]]:
    levels = args.levels
    n_slots = max(levels)
    settings = load_settings(args.home).replace(n_slots=n_slots, n_ctx=0, slot_ctx=args.slot_ctx,
                                                n_threads=args.threads, n_batch=2048)
    engine = await asyncio.to_thread(Engine.load, "inproc", model_path, settings, backend_sampling=False)
    results: dict[str, dict[int, Run]] = {t: {} for t in TARGETS}
    try:
        counts = [max(c, args.requests or max(4, 2 * c)) for c in levels]
        # One prompt set, split into disjoint ranges: warm-up first, then one per level and round.
        prompts = _prompts(engine, args.prompt_tokens, 2 + args.rounds * sum(counts), 0)
        warm, start = prompts[:2], 2
        gen = args.gen_tokens

        async def one(target: str, ps: list[list[int]], c: int, g: int) -> Run:
            if target == "llmp":
                return await _bench_engine(engine, ps, c, g)
            if target == "llmp serve":
                return await _bench_url(llmp.base, llmp_model, admin_key, ps, c, g)
            return await _bench_url(llama.base, "model", None, ps, c, g)

        for t in TARGETS:  # first decodes allocate compute graphs: keep them out of the figures
            await one(t, warm, 2, 4)
        for c, n in zip(levels, counts):
            for _ in range(args.rounds):
                ps, start = prompts[start:start + n], start + n
                for t in TARGETS:
                    r = await one(t, ps, c, gen)
                    print(f"  c={c:<3} {t:<13} {r.tps:8.1f} tok/s  TTFT p50 {r.ttft(0.5) * 1000:7.0f} ms",
                          file=sys.stderr, flush=True)
                    if c not in results[t] or r.tps > results[t][c].tps:
                        results[t][c] = r
    finally:
        await asyncio.to_thread(engine.close)
    return results


def _table(results: dict[str, dict[int, Run]], levels: list[int]) -> str:
    head = ["concurrency"]
    for t in TARGETS:
        head += [f"{t} tok/s", f"{t} TTFT p50/p95 ms"]
    head += ["llmp / llama-server", "llmp serve / llama-server"]
    lines = ["| " + " | ".join(head) + " |", "|" + " ---: |" * len(head)]
    for c in levels:
        row = [str(c)]
        for t in TARGETS:
            r = results[t][c]
            row += [f"{r.tps:,.1f}", f"{r.ttft(0.5) * 1000:,.0f} / {r.ttft(0.95) * 1000:,.0f}"]
        peer = results["llama-server"][c].tps
        for t in ("llmp", "llmp serve"):
            row.append(f"{results[t][c].tps / peer:.2f}x" if peer else "-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER") or shutil.which("llama-server"),
                    help="llama-server binary (default: $LLAMA_SERVER, else llama-server on PATH)")
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS), help="synthetic model preset")
    ap.add_argument("--model", help="an existing GGUF file instead of a synthetic preset")
    ap.add_argument("--concurrency", default="1,4,8", help="comma-separated levels (slots = the largest)")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--requests", type=int, default=0,
                    help="requests per level and round (default 2 x concurrency, at least 4)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="runs per level and target, interleaved; the table keeps each one's best")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--slot-ctx", type=int, default=512, help="context per slot, for every target")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    args = ap.parse_args()
    args.levels = sorted({int(x) for x in args.concurrency.split(",") if x.strip()})
    if not args.llama_server or not Path(args.llama_server).is_file():
        raise SystemExit("no llama-server binary: set LLAMA_SERVER=/path/to/llama-server or pass --llama-server "
                         "(install llama.cpp from your distribution, or build it from llama.cpp's sources)")
    if not args.levels or min(args.levels) < 1 or args.requests > 1000 or not 1 <= args.rounds <= 10:
        raise SystemExit("--concurrency takes positive integers like 1,4,8; --requests at most 1000; "
                         "--rounds 1 to 10")
    if args.prompt_tokens + args.gen_tokens + 8 > args.slot_ctx:
        raise SystemExit("--slot-ctx must hold prompt + generated tokens (+8)")
    n_slots = max(args.levels)

    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llmp-vs-llama-")))
        args.home = tmp / "home"
        model = args.model or str(tmp / f"synth-{args.preset}-f16.gguf")
        if not args.model:
            synthesize(args.preset, model, dtype="f16")
        version = subprocess.run([args.llama_server, "--version"], capture_output=True, text=True)
        llama_version = next((line for line in (version.stdout + version.stderr).splitlines()
                              if line.startswith("version")), "unknown")
        admin_key = "sk-bench-" + secrets.token_hex(16)
        env = {**os.environ, "LLMP_HOME": str(args.home), "LLMP_ADMIN_KEY": admin_key,
               "LLMP_N_THREADS": str(args.threads), "LLMP_N_BATCH": "2048", "LLMP_LOG_LEVEL": "warning"}
        llmp_cmd = shutil.which("llmp")
        llmp_argv = [llmp_cmd] if llmp_cmd else [sys.executable, "-c", "from llmp.cli.main import run; run()"]
        servers: list[Server] = []

        @stack.callback
        def stop_servers() -> None:
            for srv in servers:
                srv.stop()

        port = _free_port()
        servers.append(Server("llama-server", [
            args.llama_server, "-m", model, "--host", "127.0.0.1", "--port", str(port),
            "-np", str(n_slots), "-c", str(n_slots * args.slot_ctx), "--no-kv-unified",
            "-t", str(args.threads), "-tb", str(args.threads), "-b", "2048", "-ub", "512",
            "--no-webui", "-a", "model"], port, tmp / "llama-server.log"))
        port = _free_port()
        servers.append(Server("llmp serve", llmp_argv + [
            "serve", "--host", "127.0.0.1", "--port", str(port), "--model", model,
            "--slots", str(n_slots), "--ctx", str(args.slot_ctx)], port, tmp / "llmp-serve.log", env))
        llama, llmp = servers
        llama.wait_ready()
        llmp.wait_ready()
        status, body = _get(llmp.base + "/v1/models", admin_key)
        if status != 200:
            raise SystemExit(f"llmp serve /v1/models: HTTP {status}: {body[:200]!r}")
        llmp_model = json.loads(body)["data"][0]["id"]
        machine = _machine()
        print(f"model {model} · {n_slots} slots x {args.slot_ctx} ctx · {args.threads} threads · "
              f"{args.prompt_tokens} prompt + {args.gen_tokens} generated tokens per request", file=sys.stderr)
        try:
            results = asyncio.run(_run(args, model, llama, llmp, llmp_model, admin_key))
        except Exception:
            for srv in servers:
                state = "running" if srv.proc.poll() is None else f"exited ({srv.proc.returncode})"
                print(f"--- {srv.name}: {state}, end of its log:\n{srv.tail()}", file=sys.stderr)
            raise

    if args.json:
        print(json.dumps({"machine": machine, "llama_server": llama_version, "model": model,
                          "slots": n_slots, "slot_ctx": args.slot_ctx, "threads": args.threads,
                          "rounds": args.rounds,
                          "prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens,
                          "results": {t: {str(c): r.as_dict() for c, r in runs.items()}
                                      for t, runs in results.items()}}, indent=2))
        return
    print(f"machine: {machine['nproc']} CPUs, {machine['cpu']}, load average at start {machine['load_avg_1m']}")
    print(f"llama-server: {llama_version}")
    print(f"model: {'synthetic ' + args.preset + ' preset (f16)' if not args.model else model}, "
          f"{n_slots} slots x {args.slot_ctx} tokens, {args.threads} threads, best of {args.rounds} round(s), "
          f"{args.prompt_tokens} prompt + {args.gen_tokens} generated tokens per request\n")
    print(_table(results, args.levels))


if __name__ == "__main__":
    main()
