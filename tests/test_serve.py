"""`llmp serve` as a real process: banner, admin key bootstrap, /health, graceful SIGTERM."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request


def _start_serve(model_path, home, *, slots: int = 2,
                 slot_ctx: int = 256) -> tuple[subprocess.Popen, str, str, list[str]]:
    """`llmp serve --port 0` as a process; returns it, its URL, the admin key and the banner."""
    env = {**os.environ, "LLMP_HOME": str(home), "LLMP_N_SLOTS": str(slots),
           "LLMP_SLOT_CTX": str(slot_ctx), "LLMP_N_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", "from llmp.cli.main import run; run()", "serve",
                             "--port", "0", "--model", str(model_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    lines, url, key = [], None, None
    deadline = time.monotonic() + 60
    while (url is None or key is None) and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if m := re.search(r"(http://127\.0\.0\.1:\d+)/v1", line):
            url = m.group(1)
        if m := re.search(r"(sk-\w{32,})", line):
            key = m.group(1)
    if not (url and key):
        proc.kill()
        raise AssertionError("".join(lines))
    return proc, url, key, lines


def test_serve_banner_health_and_sigterm(tiny_model_path, llmp_home):
    proc, url, key, lines = _start_serve(tiny_model_path, llmp_home)
    try:
        assert "CPU" in "".join(lines) or "GPU" in "".join(lines)
        assert (llmp_home / "admin_key").read_text().strip() == key
        deadline, health = time.monotonic() + 60, None
        while time.monotonic() < deadline:  # 503 while the preloaded model loads, then 200
            try:
                with urllib.request.urlopen(url + "/health") as r:
                    health = json.loads(r.read())
                    break
            except urllib.error.HTTPError as e:
                assert e.code == 503
            time.sleep(0.05)
        assert health is not None, "/health never answered 200"
        assert health["status"] == "ok" and health["models"][0]["id"]
        req = urllib.request.Request(url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req) as r:
            assert json.loads(r.read())["data"]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "Stopped." in out
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_ends_partial_bodies_at_once_and_lets_streams_finish(tiny_model_path, llmp_home):
    """A client still sending its body (slowloris) does not hold the shutdown for the grace
    period: it gets a 503 in the error format, while a stream in flight finishes with [DONE]."""
    proc, url, key, _ = _start_serve(tiny_model_path, llmp_home)
    port = int(url.rsplit(":", 1)[1])
    try:
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nContent-Length: 1000\r\nAuthorization: Bearer "
                     + key.encode() + b"\r\n\r\n{\"model\":")
        body = json.dumps({"model": "tiny-f16", "stream": True, "max_tokens": 200,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        req = urllib.request.Request(url + "/v1/chat/completions", data=body, headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as stream:
            assert stream.readline().startswith(b"data: ")  # the stream is under way
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rest = stream.read()
        assert rest.rstrip().endswith(b"data: [DONE]")
        slow.settimeout(10)
        reply = b""
        while chunk := slow.recv(65536):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 503"), reply[:200]
        assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "server_shutting_down"
        out, _ = proc.communicate(timeout=30)
        assert time.monotonic() - started < 10
        assert proc.returncode == 0 and "Traceback" not in out, out
    finally:
        if proc.poll() is None:
            proc.kill()


def test_second_signal_forces_the_stop(monkeypatch):
    """The first SIGINT asks for a graceful stop; a second one while stopping quits at once."""
    import asyncio

    from llmp.cli import serve as serve_cmd

    exits = []
    monkeypatch.setattr(serve_cmd.os, "_exit", exits.append)
    stop = asyncio.Event()
    serve_cmd._on_signal(stop)
    assert stop.is_set() and exits == []
    serve_cmd._on_signal(stop)
    assert exits == [130]


def test_sigterm_ends_open_streams_in_band_after_the_grace_period(tiny_model_path, llmp_home):
    """16 streams open and a grace period of 1 s: every stream ends with either its last
    chunk or an in-band server_shutting_down error, then `data: [DONE]`; the process exits
    within grace + 5 s; new requests meanwhile get 503."""
    import threading

    (llmp_home).mkdir(parents=True, exist_ok=True)
    (llmp_home / "llmp.toml").write_text("shutdown_grace = 1\n")
    proc, url, key, _ = _start_serve(tiny_model_path, llmp_home, slots=16, slot_ctx=4096)
    bodies: list[bytes] = [b""] * 16
    started = threading.Barrier(17)

    def stream(i: int) -> None:
        body = json.dumps({"model": "tiny-f16", "stream": True, "max_tokens": 4000,
                           "ignore_eos": True, "prompt": f"story {i}"}).encode()
        req = urllib.request.Request(url + "/v1/completions", data=body, headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            bodies[i] = r.readline()
            started.wait(60)
            bodies[i] += r.read()

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(16)]
    try:
        for t in threads:
            t.start()
        started.wait(60)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        out, _ = proc.communicate(timeout=30)
        elapsed = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert elapsed < 1 + 5, elapsed
    cut = 0
    for b in bodies:
        events = [e for e in b.decode().split("\n\n") if e.strip()]
        assert events[-1] == "data: [DONE]", events[-3:]
        last = json.loads(events[-2].removeprefix("data: "))
        if "error" in last:
            cut += 1
            assert last["error"]["code"] == "server_shutting_down"
    assert cut >= 1  # 4000 tokens each do not fit in a 1 s grace
    assert proc.returncode == 0 and "Traceback" not in out, out
