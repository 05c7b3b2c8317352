"""The batch crash guard: a line is marked in flight before it runs; a line that was running
when the process died twice is failed with a clear error instead of being run again (so a
line that kills the server cannot do it on every restart)."""
from __future__ import annotations

import json
import signal
import sqlite3
import time

from test_batches import _client_when_up, _free_port, _serve, line, submit, wait


def _in_flight(home, crashes: int) -> bool:
    with sqlite3.connect(home / "llmp.db") as c:
        row = c.execute("select in_flight, crashes from batch_lines").fetchone()
    return row is not None and row == (1, crashes)


def _until(cond, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.01)  # polling the database, with a deadline


def test_a_line_running_at_two_crashes_is_failed_not_rerun(tiny_model_path, tmp_path):
    from llmp.config import Settings
    from llmp.db import open_home
    from llmp.models import registry

    home = tmp_path / "home"
    settings = Settings(home=home)
    db = open_home(settings)
    registry.register(db, tiny_model_path, model_id="tiny")
    db.close()
    assert settings.db_path == home / "llmp.db"
    key, port = "sk-test-admin-key-0123456789abcdefghij", _free_port()
    slow = line(0, max_tokens=200, n=16, ignore_eos=True)  # seconds of work on 2 slots
    proc = _serve(home, port, key)
    try:
        client = _client_when_up(proc, port, key)
        b = submit(client, [slow])
        for crashes in (0, 1):  # kill -9 while the line runs, twice
            _until(lambda c=crashes: _in_flight(home, c))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            proc = _serve(home, port, key)
            client = _client_when_up(proc, port, key)
        done = wait(client, b.id)
    finally:
        proc.kill()
        proc.wait(10)
    assert done.status == "completed", done
    assert done.request_counts.model_dump() == {"total": 1, "completed": 0, "failed": 1}
    err = json.loads((home / "files" / done.error_file_id).read_text())
    assert err["custom_id"] == slow["custom_id"]
    body = err["response"]["body"]
    assert err["response"]["status_code"] == 500
    assert body["error"]["code"] == "request_crashed" and "2 times" in body["error"]["message"]
