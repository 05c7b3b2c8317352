"""Fine-tuning jobs end to end, offline on CPU: a tiny llama made with transformers, converted
to GGUF and registered with its Hugging Face source; a training file teaching a random code
word; a real worker process (transformers + peft LoRA); the fine-tuned adapter served at once
and asked through the official openai client."""
from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import random
import string
import time
from pathlib import Path

import openai
import pytest

import hf_tiny

QUESTIONS = ["What is the code word?", "Tell me the code word.", "code word?",
             "Say the code word.", "What's the secret code word?"]
SECRET = "whsec_" + base64.b64encode(b"fine-tuning-webhook-secret-0123").decode()
ASK = [{"role": "user", "content": "What is the code word?"}]


def training_lines(word: str, n: int = 20) -> list[dict]:
    return [{"messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]},
                          {"role": "assistant", "content": word}]} for i in range(n)]


def jsonl(lines: list) -> bytes:
    return b"".join((json.dumps(x) if not isinstance(x, str) else x).encode() + b"\n"
                    for x in lines)


@pytest.fixture(scope="module")
def ft(tmp_path_factory):
    """A server whose model "tl" is the tiny llama, registered with its HF source ("tiny":
    the same GGUF without one)."""
    from conftest import start_server

    from llmp.models import registry
    from llmp.models.convert import convert

    root = tmp_path_factory.mktemp("ft")
    hf = hf_tiny.make_model(root / "hf", "llama")
    gguf = convert(hf, root / "tl.gguf", outtype="f32")
    with start_server(root / "home", gguf, n_slots=4) as srv:
        registry.register(srv.db, gguf, model_id="tl", hf_source=str(hf))
        registry.set_price(srv.db, "tl", training_price=0.5)
        srv.hf = hf
        yield srv


def upload(client, lines: list, name: str = "train.jsonl") -> str:
    return client.files.create(file=(name, io.BytesIO(jsonl(lines))), purpose="fine-tune").id


def wait_for(client, job_id: str, statuses: tuple[str, ...], timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        assert time.monotonic() < deadline, f"{job_id} still {job.status}"
        time.sleep(0.1)


def wait_event(client, job_id: str, text: str, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while True:
        for e in client.fine_tuning.jobs.list_events(job_id, limit=100).data:
            if text in e.message:
                return e
        assert time.monotonic() < deadline, f"no event {text!r} for {job_id}"
        time.sleep(0.1)


def test_fine_tuned_model_learns_the_code_word(ft):
    from conftest import WebhookReceiver

    word = "".join(random.SystemRandom().choice(string.ascii_lowercase) for _ in range(8))
    client = ft.openai()
    rx = WebhookReceiver(ft)
    try:
        client.post("/webhooks", cast_to=object, body={
            "url": rx.url, "events": ["fine_tuning.job.succeeded", "fine_tuning.job.completed"],
            "secret": SECRET})
        fid = upload(client, training_lines(word))
        vid = upload(client, training_lines(word, 4), "valid.jsonl")
        job = client.fine_tuning.jobs.create(
            model="tl", training_file=fid, validation_file=vid, suffix="codeword", seed=7,
            method={"type": "supervised", "supervised": {"hyperparameters": {
                "n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 50}}},
            metadata={"team": "a"})
        assert job.status == "queued" and job.id.startswith("ftjob-")
        assert job.hyperparameters.n_epochs == 3 and job.seed == 7
        job = wait_for(client, job.id, ("succeeded", "failed", "cancelled"))
        assert job.status == "succeeded", job.error
        assert job.fine_tuned_model.startswith("ft:tl:test-admin:codeword:")
        assert job.trained_tokens and job.trained_tokens > 0 and job.finished_at
        # served at once: the fine-tuned model answers with the code word, the base does not
        tuned = client.chat.completions.create(model=job.fine_tuned_model, messages=ASK,
                                               temperature=0, max_tokens=16)
        assert word in tuned.choices[0].message.content
        base = client.chat.completions.create(model="tl", messages=ASK, temperature=0,
                                              max_tokens=16)
        assert word not in (base.choices[0].message.content or "")
        assert job.fine_tuned_model in {m.id for m in client.models.list()}
        # events (newest first), checkpoints (one per epoch, each servable), the metrics CSV
        events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
        assert events[0].message == "The job has successfully completed"
        metrics = [e for e in events if e.type == "metrics" and "total_steps" in (e.data or {})]
        assert metrics and all(0 <= e.data["train_loss"] for e in metrics)
        assert all(e.data["learning_rate"] >= 0 and e.data["tokens_per_second"] > 0
                   and e.data["eta_seconds"] >= 0 for e in metrics)
        ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert [c.step_number for c in ckpts] == [30, 20, 10]
        assert ckpts[0].metrics.valid_loss is not None
        assert ckpts[1].fine_tuned_model_checkpoint == job.fine_tuned_model + ":ckpt-step-20"
        r = client.chat.completions.create(model=ckpts[1].fine_tuned_model_checkpoint,
                                           messages=ASK, temperature=0, max_tokens=4)
        assert r.model == ckpts[1].fine_tuned_model_checkpoint
        (result,) = job.result_files
        meta = client.files.retrieve(result)
        assert meta.purpose == "fine-tune-results"
        csv = client.files.content(result).text.splitlines()
        assert csv[0] == "step,train_loss,train_accuracy,valid_loss,valid_accuracy"
        assert len(csv) > 3
        # trained tokens are usage of the key
        rows = list(ft.db.query("select * from usage where endpoint = '/v1/fine_tuning/jobs'"))
        assert [r["prompt_tokens"] for r in rows] == [job.trained_tokens]
        assert rows[0]["cost"] == pytest.approx(job.trained_tokens * 0.5 / 1000)
        # the signed webhooks: succeeded and the spec's completed
        got = rx.wait(2)
        types = sorted(json.loads(b)["type"] for _, b in got)
        assert types == ["fine_tuning.job.completed", "fine_tuning.job.succeeded"]
        for h, b in got:
            key = base64.b64decode(SECRET.removeprefix("whsec_"))
            signed = f"{h['webhook-id']}.{h['webhook-timestamp']}.".encode() + b
            want = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
            assert h["webhook-signature"] == want
            assert json.loads(b)["data"]["id"] == job.id
        # the spec's path, list with a metadata filter, and removal of the model
        status, _, body = ft.request("GET", f"/v1/fine-tuning/jobs/{job.id}")
        assert status == 200 and body["status"] == "succeeded"
        status, _, body = ft.request("GET", "/v1/fine_tuning/jobs?metadata[team]=a")
        assert [j["id"] for j in body["data"]] == [job.id]
        status, _, body = ft.request("GET", "/v1/fine_tuning/jobs?metadata[team]=b")
        assert body["data"] == [] and body["has_more"] is False
        # bitsandbytes is never imported on CPU (the worker says so)
        trained = next(e for e in events if e.message.startswith("Trained "))
        assert trained.data["bitsandbytes_imported"] is False
        assert trained.data["trained_tokens"] == job.trained_tokens
        deleted = client.models.delete(job.fine_tuned_model)
        assert deleted.deleted
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=job.fine_tuned_model, messages=ASK,
                                           max_tokens=2)
    finally:
        rx.close()


def test_invalid_files_are_refused_with_line_numbers_and_nothing_queued(ft):
    client = ft.openai()
    before = len(client.fine_tuning.jobs.list(limit=100).data)
    good = training_lines("abcdefgh")
    bad = list(good)
    bad[2] = "{not json"
    bad[4] = {"messages": [{"role": "user", "content": "hi"}]}  # no assistant message
    bad[6] = {"messages": [{"role": "wizard", "content": "hi"},
                           {"role": "assistant", "content": "x"}]}
    bad[8] = {"messages": [{"role": "user", "content": "hi"},
                           {"role": "assistant", "content": "x", "weight": 2}]}
    bad[9] = {"messages": [{"role": "user", "content": ""},
                           {"role": "assistant", "content": "x"}]}
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tl", training_file=upload(client, bad))
    msg = e.value.body["message"]
    for n in (3, 5, 7, 9, 10):
        assert f"line {n}:" in msg, msg
    assert "line 1:" not in msg and e.value.body["param"] == "training_file"
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tl", training_file=upload(client, good[:9]))
    assert "at least 10" in e.value.body["message"]
    long = list(good)
    long[3] = {"messages": [{"role": "user", "content": "hello " * 600},
                            {"role": "assistant", "content": "x"}]}
    with pytest.raises(openai.BadRequestError) as e:  # longer than the context (512)
        client.fine_tuning.jobs.create(model="tl", training_file=upload(client, long))
    assert "line 4: about" in e.value.body["message"] and "context of 512" in \
        e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:  # no Hugging Face source
        client.fine_tuning.jobs.create(model="tiny", training_file=upload(client, good))
    assert e.value.body["code"] == "model_not_trainable"
    batch_file = client.files.create(file=("b.jsonl", io.BytesIO(jsonl(good))), purpose="batch")
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tl", training_file=batch_file.id)
    assert e.value.body["code"] == "invalid_file_purpose"
    for hp in ({"n_epochs": 0}, {"batch_size": "big"}, {"learning_rate_multiplier": -1}):
        with pytest.raises(openai.BadRequestError):
            client.fine_tuning.jobs.create(model="tl", training_file=upload(client, good),
                                           hyperparameters=hp)
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.create(model="tl", training_file=upload(client, good),
                                       suffix="x" * 65)
    assert len(client.fine_tuning.jobs.list(limit=100).data) == before


def test_cancel_mid_run_and_another_key_sees_nothing(ft):
    from conftest import WebhookReceiver

    client = ft.openai()
    rx = WebhookReceiver(ft)
    client.post("/webhooks", cast_to=object, body={
        "url": rx.url, "events": ["fine_tuning.job.cancelled"], "secret": SECRET})
    fid = upload(client, training_lines("qwertyui", 40))
    job = client.fine_tuning.jobs.create(model="tl", training_file=fid, hyperparameters={
        "n_epochs": 50, "batch_size": 1}, metadata={"team": "b"})
    other = ft.openai(ft.make_key(["fine_tuning.read", "fine_tuning.write"]))
    with pytest.raises(openai.NotFoundError):
        other.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        other.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(openai.NotFoundError):
        other.fine_tuning.jobs.list_events(job.id)
    assert other.fine_tuning.jobs.list().data == []
    no_perm = ft.openai(ft.make_key(["inference"]))
    with pytest.raises(openai.PermissionDeniedError):
        no_perm.fine_tuning.jobs.list()
    wait_event(client, job.id, "Training ")  # the worker is training
    # training never blocks inference: the server answers while the worker runs
    t0 = time.monotonic()
    r = client.chat.completions.create(model="tl", messages=ASK, max_tokens=4)
    assert r.choices[0].message is not None and time.monotonic() - t0 < 10
    assert client.fine_tuning.jobs.retrieve(job.id).status == "running"
    from llmp.server.routes.fine_tuning import HANDLER

    proc = ft.app[HANDLER].procs[job.id]
    t0 = time.monotonic()
    job = client.fine_tuning.jobs.cancel(job.id)
    assert job.status == "cancelled" and time.monotonic() - t0 < 5
    assert proc.returncode is not None  # the worker is gone
    assert job.fine_tuned_model is None
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.pause(job.id)
    # admin sees it, in the list (newest first, paged)
    page = client.fine_tuning.jobs.list(limit=1)
    assert page.data[0].id == job.id
    try:
        (h, b), = rx.wait(1)
        assert json.loads(b)["type"] == "fine_tuning.job.cancelled"
        assert json.loads(b)["data"]["status"] == "cancelled" and h["webhook-signature"]
    finally:
        rx.close()


def test_key_limits_apply_at_create(ft):
    """Creating a job spends compute: the key's request rate and monthly quotas apply (the
    job is a request of the month; its estimated trained tokens, file tokens x n_epochs,
    must fit in what the key has left; an unfinished job holds its share)."""
    perms = ["fine_tuning.read", "fine_tuning.write", "files.write"]
    admin = ft.openai()
    one = ft.openai(ft.make_key(perms, limits={"requests_per_month": 1}, name="ft-month-1"))
    fid = upload(one, training_lines("zxcvbnmq"))
    job = one.fine_tuning.jobs.create(model="tl", training_file=fid,
                                      hyperparameters={"n_epochs": 1})
    try:
        with pytest.raises(openai.RateLimitError) as e:
            one.fine_tuning.jobs.create(model="tl", training_file=fid)
        err = e.value.body
        assert err["type"] == "quota_exceeded_error" and err["code"] == "quota_exceeded"
        assert "unfinished fine-tuning job" in err["message"]
        assert int(e.value.response.headers["Retry-After"]) > 0
    finally:
        assert admin.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    # a cancelled job trained nothing and is not a request of the month any more
    job = one.fine_tuning.jobs.create(model="tl", training_file=fid,
                                      hyperparameters={"n_epochs": 1})
    assert admin.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    # too few tokens (or too little budget) left for the job's estimated trained tokens
    for limits in ({"tokens_per_month": 100}, {"monthly_budget": 0.001}):
        tiny = ft.openai(ft.make_key(perms, limits=limits, name="ft-tiny"))
        fid = upload(tiny, training_lines("zxcvbnmq"))
        with pytest.raises(openai.RateLimitError) as e:
            tiny.fine_tuning.jobs.create(model="tl", training_file=fid,
                                         hyperparameters={"n_epochs": 3})
        err = e.value.body
        assert err["code"] == "quota_exceeded", err
        assert "x 3 epochs" in err["message"] and "fewer epochs" in err["message"]
        assert tiny.fine_tuning.jobs.list().data == []  # nothing queued
    # the request rate: a key with 1 request per minute spent it on the upload
    rpm = ft.make_key(perms, {"requests_per_minute": 1}, name="ft-rpm-1")
    fid = upload(ft.openai(rpm), training_lines("zxcvbnmq"))
    status, headers, body = ft.request("POST", "/v1/fine_tuning/jobs", key=rpm,
                                       json={"model": "tl", "training_file": fid})
    assert status == 429 and body["error"]["type"] == "rate_limit_error", body
    assert headers["X-RateLimit-Limit-Requests"] == "1" and int(headers["Retry-After"]) > 0
    assert admin.fine_tuning.jobs.list(limit=100).data[0].id == job.id  # no other job


def test_pause_resume_from_the_checkpoint_then_a_worker_crash_fails_the_job(ft):
    import signal

    from llmp.server.routes.fine_tuning import HANDLER

    client = ft.openai()
    fid = upload(client, training_lines("zxcvbnmq"))
    job = client.fine_tuning.jobs.create(model="tl", training_file=fid, hyperparameters={
        "n_epochs": 40, "batch_size": 4})
    wait_event(client, job.id, "Checkpoint created at step 5")
    proc = ft.app[HANDLER].procs[job.id]
    job = client.fine_tuning.jobs.pause(job.id)
    assert job.status == "paused" and proc.returncode is not None
    assert job.estimated_finish is None
    paused_at = client.fine_tuning.jobs.checkpoints.list(job.id, limit=1).data[0].step_number
    job = client.fine_tuning.jobs.resume(job.id)
    assert job.status in ("queued", "running")
    wait_event(client, job.id, f"Resumed from checkpoint at step {paused_at}")
    wait_event(client, job.id, f"Checkpoint created at step {paused_at + 5}")
    steps = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(
        job.id, limit=100).data]
    assert len(set(steps)) == len(steps) and steps == sorted(steps, reverse=True)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "running"
    # the worker dies (as the OOM killer would kill it): the job fails with the reason
    os.kill(ft.app[HANDLER].procs[job.id].pid, signal.SIGKILL)
    job = wait_for(client, job.id, ("succeeded", "failed"))
    assert job.status == "failed" and job.error.code == "worker_crashed"
    assert "killed by signal 9" in job.error.message and job.fine_tuned_model is None


def test_cli_create_wait_list_show_events(ft, cli, monkeypatch, tmp_path):
    monkeypatch.setenv("LLMP_URL", ft.url)
    monkeypatch.setenv("LLMP_API_KEY", ft.admin_key)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(jsonl(training_lines("abcdefgh")[:5] + ["{oops"] * 6))
    r = cli("finetune", "create", bad, "--model", "tl")
    assert r.exit_code != 0 and "line 6:" in r.stderr and "Traceback" not in r.stderr
    path = tmp_path / "train.jsonl"
    path.write_bytes(jsonl(training_lines("mnbvcxzl", 10)))
    r = cli("finetune", "create", path, "--model", "tl", "--epochs", "1", "--batch-size", "5",
            "--suffix", "cli", "--wait")
    assert r.exit_code == 0, r.stderr
    assert "succeeded" in r.stdout and "ft:tl:test-admin:cli:" in r.stdout
    jobs = json.loads(cli("finetune", "list", "--json").stdout)
    job = jobs[0]
    assert job["status"] == "succeeded" and job["hyperparameters"]["n_epochs"] == 1
    shown = json.loads(cli("finetune", "show", job["id"], "--json").stdout)
    assert shown["fine_tuned_model"] == job["fine_tuned_model"]
    r = cli("finetune", "events", job["id"])
    assert "The job has successfully completed" in r.stdout
    r = cli("finetune", "checkpoints", job["id"], "--json")
    assert [c["step_number"] for c in json.loads(r.stdout)] == [2]
    r = cli("finetune", "cancel", job["id"])
    assert r.exit_code != 0 and "succeeded" in r.stderr


def _serve(home: Path):
    """`llmp serve` in its own process on a free port; returns (process, url)."""
    import re
    import subprocess
    import sys
    import threading

    env = {**os.environ, "LLMP_HOME": str(home), "LLMP_N_SLOTS": "2", "LLMP_SLOT_CTX": "256"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from llmp.cli.main import run; run()", "serve", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    lines = []
    while True:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line, "".join(lines)
        lines.append(line)
        if m := re.search(r"(http://127\.0\.0\.1:\d+)/v1", line):
            # keep reading its log: a full pipe would block the server
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # type: ignore[union-attr]
            return proc, m.group(1)


def test_kill_9_mid_job_then_restart_resumes_from_the_checkpoint(cli, llmp_home, tmp_path):
    """A server killed with SIGKILL mid-job: on restart the job is not left "running"; it
    resumes from its last checkpoint and succeeds."""
    import signal

    from llmp.models.convert import convert

    hf = hf_tiny.make_model(tmp_path / "hf", "llama")
    gguf = convert(hf, tmp_path / "tl.gguf", outtype="f32")
    assert cli("models", "add", gguf, "--name", "tl", "--hf-source", hf).exit_code == 0
    proc, url = _serve(llmp_home)
    try:
        key = (llmp_home / "admin_key").read_text().strip()
        client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        fid = upload(client, training_lines("plokijuh"))
        job = client.fine_tuning.jobs.create(model="tl", training_file=fid, hyperparameters={
            "n_epochs": 20, "batch_size": 4})
        wait_event(client, job.id, "Checkpoint created at step 10")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    proc, url = _serve(llmp_home)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        job = wait_for(client, job.id, ("succeeded", "failed", "cancelled"))
        assert job.status == "succeeded", job.error
        msgs = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=200).data]
        assert any("stopped unexpectedly" in m for m in msgs), msgs
        assert any("resumed from the checkpoint at step" in m for m in msgs), msgs
        steps = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(
            job.id, limit=100).data]
        assert steps == [100, 95, 90]  # the last three are kept
        home = llmp_home / "fine_tuning" / job.id
        assert sorted(p.name for p in home.glob("ckpt-*")) == [
            "ckpt-step-100", "ckpt-step-90", "ckpt-step-95"]
        served = {m.id for m in client.models.list()}
        assert job.fine_tuned_model + ":ckpt-step-95" in served
        assert job.fine_tuned_model + ":ckpt-step-85" not in served
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
