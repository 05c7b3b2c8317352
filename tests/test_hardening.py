"""Hardening II (issue 9) checks that fit no other module: client disconnects are 499
everywhere and billed for what was processed; /health does not wait on SQLite's write lock."""
from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time

from llmp.db import usage as db_usage
from llmp.server.state import WRITER
from llmp.services import keys as keys_service


def test_a_dropped_stream_is_499_everywhere_and_billed_for_what_was_done(server):
    key = server.make_key(name="dropper")
    kid = keys_service.authenticate(server.db, key)["id"]
    body = json.dumps({"model": "tiny", "stream": True, "max_tokens": 400, "ignore_eos": True,
                       "messages": [{"role": "user", "content": "tell me a story"}]}).encode()
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                  b"application/json\r\nAuthorization: Bearer " + key.encode()
                  + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        got = b""
        while got.count(b"data: ") < 5:
            got += s.recv(65536)
    deadline = time.monotonic() + 30
    while True:
        server.app[WRITER].flush()
        rows = db_usage.recent(server.db, 5, key_id=kid)
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    (row,) = rows
    assert row["status"] == 499 and row["error_type"] == "client_closed"
    assert row["prompt_tokens"] > 0 and 0 < row["completion_tokens"] < 400
    _, _, metrics = server.request("GET", "/metrics", key=None)
    lines = [x for x in metrics.splitlines() if 'route="/v1/chat/completions"' in x]
    assert any('status="499"' in x for x in lines), lines
    assert not any('status="500"' in x for x in lines), lines


def test_health_does_not_wait_for_the_write_lock(server):
    """Another process holds SQLite's write lock for 3 s: /health and reads answer at once,
    and a request whose usage row must be written still answers (written when the lock is
    released, off the event loop)."""
    other = sqlite3.connect(str(server.settings.db_path), timeout=1, isolation_level=None,
                            check_same_thread=False)
    other.execute("begin immediate")  # the write lock
    released = threading.Event()

    def release() -> None:
        time.sleep(3)
        other.execute("commit")
        other.close()
        released.set()

    threading.Thread(target=release, daemon=True).start()
    try:
        t0 = time.monotonic()
        st, _, _ = server.request("GET", "/health", key=None)
        assert st == 200 and time.monotonic() - t0 < 1.0
        t0 = time.monotonic()
        st, _, body = server.request("POST", "/v1/chat/completions", json={
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert st == 200 and time.monotonic() - t0 < 2.0, body
        t0 = time.monotonic()
        st, _, _ = server.request("GET", "/v1/models")
        assert st == 200 and time.monotonic() - t0 < 1.0
    finally:
        released.wait(10)
