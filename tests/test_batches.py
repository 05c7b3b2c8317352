"""/v1/batches end to end with the official openai client on the tiny model: results, the
life cycle, invalid-line reports, cancel mid-run, expiry, per-key visibility, and a server
killed with SIGKILL mid-batch that resumes with every custom_id answered exactly once."""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import openai
import pytest

from llmp.services import keys as keys_service

from schema_check import check

CHAT = "/v1/chat/completions"
FINAL = ("completed", "failed", "expired", "cancelled")


def line(i: int, *, url: str = CHAT, max_tokens: int = 8, **body) -> dict:
    if url == CHAT:
        b = {"model": "tiny", "messages": [{"role": "user", "content": f"Question {i}?"}]}
    else:
        b = {"model": "tiny", "prompt": f"Prompt {i}"}
    return {"custom_id": f"req-{i}", "method": "POST", "url": url,
            "body": {**b, "max_tokens": max_tokens, "ignore_eos": True, **body}}


def jsonl(lines: list) -> bytes:
    return b"".join((x if isinstance(x, str) else json.dumps(x)).encode() + b"\n" for x in lines)


def submit(client, lines: list, *, endpoint: str = CHAT, window: str = "24h", **kw):
    f = client.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint=endpoint,
                                 completion_window=window, **kw)


def wait(client, batch_id: str, until=lambda b: b.status in FINAL, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b = client.batches.retrieve(batch_id)
        if until(b):
            return b
        time.sleep(0.05)
    raise AssertionError(f"batch {batch_id} still {b.status}: {b.request_counts}")


def results(client, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(x) for x in client.files.content(file_id).read().splitlines()]


def test_batch_round_trip_with_openai_client(server):
    client = server.openai()
    b = submit(client, [line(i) for i in range(12)], metadata={"job": "nightly"})
    assert b.status == "validating" and b.id.startswith("batch_")
    check(b.model_dump(), "Batch")
    done = wait(client, b.id)
    body = done.model_dump()
    check(body, "Batch")
    assert done.status == "completed", body
    assert done.request_counts.model_dump() == {"total": 12, "completed": 12, "failed": 0}
    assert done.metadata == {"job": "nightly"} and done.error_file_id is None
    assert done.created_at <= done.in_progress_at <= done.finalizing_at <= done.completed_at
    assert done.expires_at == done.created_at + 86400
    assert body["usage"]["output_tokens"] == 12 * 8
    out = results(client, done.output_file_id)
    assert sorted(r["custom_id"] for r in out) == sorted(f"req-{i}" for i in range(12))
    assert [r["custom_id"] for r in out] == [f"req-{i}" for i in range(12)]  # input order
    for r in out:
        assert r["error"] is None and r["id"].startswith("batch_req_")
        assert r["response"]["status_code"] == 200
        assert r["response"]["request_id"].startswith("req_")
        assert r["response"]["body"]["object"] == "chat.completion"
        assert r["response"]["body"]["usage"]["completion_tokens"] == 8
    f = client.files.retrieve(done.output_file_id)
    assert f.purpose == "batch_output" and f.bytes > 0

    page = client.batches.list(limit=1)
    raw = page.model_dump()
    check({k: raw[k] for k in ("object", "data", "first_id", "last_id", "has_more")},
          "ListBatchesResponse")
    assert page.data[0].id == b.id


def test_completions_batch_with_a_failing_line(server):
    client = server.openai()
    lines = [line(i, url="/v1/completions") for i in range(4)]
    lines.append(line(4, url="/v1/completions", temperature=7))  # valid shape, bad value
    done = wait(client, submit(client, lines, endpoint="/v1/completions").id)
    assert done.status == "completed"
    assert done.request_counts.model_dump() == {"total": 5, "completed": 4, "failed": 1}
    out, err = results(client, done.output_file_id), results(client, done.error_file_id)
    assert {r["custom_id"] for r in out} == {f"req-{i}" for i in range(4)}
    assert out[0]["response"]["body"]["object"] == "text_completion"
    assert [r["custom_id"] for r in err] == ["req-4"]
    e = err[0]["response"]
    assert e["status_code"] == 400 and e["body"]["error"]["param"] == "temperature"


def test_cli_results_of_a_failed_batch(server, cli, monkeypatch, tmp_path):
    """`llmp batch results` on a batch that failed validation: says so, shows the errors,
    exits non-zero, writes nothing."""
    monkeypatch.setenv("LLMP_URL", server.url)
    monkeypatch.setenv("LLMP_API_KEY", server.admin_key)
    client = server.openai()
    done = wait(client, submit(client, [line(0), "{not json"]).id)
    assert done.status == "failed"
    out = tmp_path / "r.jsonl"
    r = cli("batch", "results", done.id, "-o", out)
    assert r.exit_code == 1 and "failed" in r.stderr and "Wrote 0" not in r.stdout
    assert "line 2" in r.stderr and "invalid_json_line" in r.stderr and not out.exists()


def test_invalid_lines_fail_the_batch_with_line_numbers(server):
    client = server.openai()
    bad = [
        line(0),
        "{not json",
        line(0),  # duplicate custom_id
        {**line(3), "method": "GET"},
        {**line(4), "url": "/v1/completions"},
        {**line(5), "body": {"model": "tiny"}},  # no messages
        line(6, model="no-such-model"),
    ]
    done = wait(client, submit(client, bad).id)
    assert done.status == "failed" and done.failed_at
    check(done.model_dump(), "Batch")
    errors = [(e.line, e.code) for e in done.errors.data]
    assert errors == [(2, "invalid_json_line"), (3, "duplicate_custom_id"), (4, "invalid_method"),
                      (5, "invalid_url"), (6, "invalid_request"), (7, "model_not_found")]
    assert done.errors.object == "list"
    assert done.errors.data[4].param == "body.messages"
    assert done.output_file_id is None and done.request_counts.total == 0


def test_create_errors(server):
    client = server.openai()
    f = client.files.create(file=("x.jsonl", io.BytesIO(jsonl([line(0)]))), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file_nope", endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        client.batches.create(input_file_id=f.id, endpoint="/v1/nope", completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="forever")


def test_cancel_mid_run(server):
    client = server.openai()
    n = 400
    b = submit(client, [line(i, max_tokens=200) for i in range(n)])
    wait(client, b.id, until=lambda x: x.request_counts.completed >= 1)
    c = client.batches.cancel(b.id)
    assert c.status in ("cancelling", "cancelled") and c.cancelling_at
    done = wait(client, b.id)
    assert done.status == "cancelled" and done.cancelled_at >= done.cancelling_at
    out, err = results(client, done.output_file_id), results(client, done.error_file_id)
    ids = Counter(r["custom_id"] for r in out + err)
    assert len(ids) == n and set(ids.values()) == {1}
    assert 1 <= len(out) < n
    assert {r["error"]["code"] for r in err} == {"batch_cancelled"}
    assert done.request_counts.completed == len(out) and done.request_counts.failed == len(err)
    assert client.batches.cancel(b.id).status == "cancelled"  # idempotent


def test_expiry_with_a_short_window(server):
    client = server.openai()
    n = 400
    b = submit(client, [line(i, max_tokens=200) for i in range(n)], window="1s")
    assert b.expires_at == b.created_at + 1
    done = wait(client, b.id)
    assert done.status == "expired" and done.expired_at and done.finalizing_at
    out, err = results(client, done.output_file_id), results(client, done.error_file_id)
    assert len(out) + len(err) == n and len(err) > 0
    assert {r["error"]["code"] for r in err} == {"batch_expired"}
    assert all(r["response"]["status_code"] == 200 for r in out)
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(b.id)


def test_keys_see_only_their_own_batches(server):
    perms = ["inference", "files.read", "files.write", "batches.read", "batches.write"]
    a = server.openai(server.make_key(perms, name="a"))
    b = server.openai(server.make_key(perms, name="b"))
    ba = submit(a, [line(0)])
    assert [x.id for x in a.batches.list()] == [ba.id]
    assert b.batches.list().data == []
    for call in (b.batches.retrieve, b.batches.cancel):
        with pytest.raises(openai.NotFoundError):
            call(ba.id)
    with pytest.raises(openai.NotFoundError):  # b cannot run a's file either
        b.batches.create(input_file_id=ba.input_file_id, endpoint=CHAT, completion_window="24h")
    done = wait(a, ba.id)
    with pytest.raises(openai.NotFoundError):
        b.files.content(done.output_file_id)
    assert a.files.content(done.output_file_id).read()
    assert ba.id in {x.id for x in server.openai().batches.list()}  # admin sees all


# -- kill -9 and resume ------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(home, port: int, key: str) -> subprocess.Popen:
    env = {**os.environ, "LLMP_HOME": str(home), "LLMP_ADMIN_KEY": key, "LLMP_N_SLOTS": "2",
           "LLMP_SLOT_CTX": "256", "LLMP_N_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", "from llmp.cli.main import run; run()",
                             "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _client_when_up(proc: subprocess.Popen, port: int, key: str) -> openai.OpenAI:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "llmp serve exited"
        try:
            client.models.list()
            return client
        except openai.APIConnectionError:
            time.sleep(0.1)
    raise AssertionError("llmp serve did not come up")


def test_kill_9_mid_batch_resumes_exactly_once(tiny_model_path, tmp_path):
    from llmp.config import Settings
    from llmp.db import jobs as jobs_db
    from llmp.db import open_home
    from llmp.models import registry

    home = tmp_path / "home"
    db = open_home(Settings(home=home))
    registry.register(db, tiny_model_path, model_id="tiny")
    db.close()
    key, port, n = "sk-test-admin-key-0123456789abcdefghij", _free_port(), 200
    proc = _serve(home, port, key)
    try:
        client = _client_when_up(proc, port, key)
        b = submit(client, [line(i, max_tokens=32) for i in range(n)])
        before = wait(client, b.id, until=lambda x: x.request_counts.completed >= 10)
        assert before.status == "in_progress"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc = _serve(home, port, key)
        client = _client_when_up(proc, port, key)
        done = wait(client, b.id)
    finally:
        proc.kill()
        proc.wait(10)
    assert done.status == "completed", done
    assert done.request_counts.model_dump() == {"total": n, "completed": n, "failed": 0}
    rows = [json.loads(x) for x in (home / "files" / done.output_file_id).read_text().splitlines()]
    ids = Counter(r["custom_id"] for r in rows)
    assert len(ids) == n and set(ids.values()) == {1}
    # a line's answer and its usage row are written in one transaction: one row per line
    db = open_home(Settings(home=home))
    usage_rows = list(db.query("select count(*) as n, count(distinct request_id) as d "
                               "from usage where batch_id = ?", [b.id]))[0]
    db.close()
    assert usage_rows == {"n": n, "d": n}
    # the batch ran as a durable job: taken back from the killed process (one crash counted)
    # by the new one's job runner, and done
    job = jobs_db.get(open_home(Settings(home=home)), b.id)
    assert job is not None and job["kind"] == "batch"
    assert (job["state"], job["crashes"]) == ("done", 1), job


def test_cli_submit_validates_locally_then_waits_and_writes_results(server, cli, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setenv("LLMP_URL", server.url)
    monkeypatch.setenv("LLMP_API_KEY", server.admin_key)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(jsonl([line(0), "{oops", line(2, model="no-such-model")]))
    r = cli("batch", "submit", bad)
    assert r.exit_code == 2
    assert "line 2" in r.stderr and "invalid_json_line" in r.stderr
    assert "line 3" in r.stderr and "model_not_found" in r.stderr
    assert "nothing was submitted" in r.stderr

    good = tmp_path / "good.jsonl"
    good.write_bytes(jsonl([line(i) for i in range(5)]))
    out = tmp_path / "out.jsonl"
    r = cli("batch", "submit", good, "--wait", "--output", out)
    assert r.exit_code == 0, r.stderr
    assert "completed" in r.stdout and "5/5" in r.stdout
    assert sorted(json.loads(x)["custom_id"] for x in out.read_text().splitlines()) == \
        [f"req-{i}" for i in range(5)]
    r = cli("batch", "list", "--json")
    batch_id = json.loads(r.stdout)[0]["id"]
    assert cli("batch", "status", batch_id).exit_code == 0
    again = tmp_path / "again.jsonl"
    assert cli("batch", "results", batch_id, "--output", again).exit_code == 0
    assert again.read_text() == out.read_text()
    r = cli("batch", "cancel", batch_id)
    assert r.exit_code == 2 and "no longer be" in " ".join(r.stderr.split())


def test_cli_submit_checks_the_output_folder_before_submitting(server, cli, tmp_path,
                                                               monkeypatch):
    monkeypatch.setenv("LLMP_URL", server.url)
    monkeypatch.setenv("LLMP_API_KEY", server.admin_key)
    good = tmp_path / "good.jsonl"
    good.write_bytes(jsonl([line(0)]))
    before = len(server.openai().files.list().data)
    r = cli("batch", "submit", good, "--wait", "--output", tmp_path / "missing" / "out.jsonl")
    assert r.exit_code == 2 and "no directory" in r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert len(server.openai().files.list().data) == before  # nothing was uploaded


def test_revoking_the_key_stops_the_batch(server):
    """Revocation stops further lines: the batch ends failed with api_key_revoked, the lines
    already answered are kept in its output file, the others are in the error file."""
    perms = ["inference", "files.read", "files.write", "batches.read", "batches.write"]
    secret = server.make_key(perms, name="revoked-mid-batch")
    client = server.openai(secret)
    n = 300
    b = submit(client, [line(i, max_tokens=24) for i in range(n)])
    admin = server.openai()
    wait(admin, b.id, until=lambda x: x.request_counts.completed >= 1)
    key_id = keys_service.authenticate(server.db, secret)["id"]
    assert server.request("DELETE", f"/v1/auth/api-keys/{key_id}")[0] == 200
    done = wait(admin, b.id)
    assert done.status == "failed", done
    assert done.errors.data[0].code == "api_key_revoked"
    c = done.request_counts
    assert 1 <= c.completed < n and c.completed + c.failed == n
    out = admin.files.content(done.output_file_id).text.splitlines()
    assert len(out) == c.completed
    errs = [json.loads(x) for x in admin.files.content(done.error_file_id).text.splitlines()]
    assert len(errs) == c.failed and "revoked" in errs[-1]["error"]["message"]


def test_a_key_expiring_mid_batch_stops_it(server):
    """Expiry is checked per line as revocation is: a key that expires while its batch runs
    ends the batch failed with api_key_expired, the lines answered before kept."""
    import datetime as dt

    perms = ["inference", "files.read", "files.write", "batches.read", "batches.write"]
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3)).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    client = server.openai(server.make_key(perms, name="expiring", expires_at=expires))
    n = 2000  # far more than the engine answers in the 3-5 s before the expiry is seen
    b = submit(client, [line(i, max_tokens=64) for i in range(n)])
    admin = server.openai()
    done = wait(admin, b.id)
    assert done.status == "failed", done
    assert done.errors.data[0].code == "api_key_expired"
    c = done.request_counts
    assert 1 <= c.completed < n and c.completed + c.failed == n
    assert len(admin.files.content(done.output_file_id).text.splitlines()) == c.completed
