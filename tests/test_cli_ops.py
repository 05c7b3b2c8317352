"""The everyday CLI against a real `llmp serve` process: discovery of the server through
$LLMP_HOME/server.json (no LLMP_URL, a non-default port), `ps` after `models load`, `run` with
stdin, keys by name, usage totals, the access log (no secret in it), `stop`, a busy port."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmp import discovery


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(home: Path, port: int, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMP_")}
    env.update(LLMP_HOME=str(home), LLMP_N_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", "from llmp.cli.main import run; run()",
                             "serve", "--port", str(port), "--slots", "2", "--ctx", "256", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


def _wait_for_entry(home: Path, proc: subprocess.Popen, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = discovery.find(home)
        if entry is not None and entry["pid"] == proc.pid:
            return entry
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read())
        time.sleep(0.05)
    raise AssertionError("llmp serve never wrote server.json")


@pytest.fixture(scope="module")
def served(tiny_model_path, tmp_path_factory):
    """`llmp serve` on a non-default port over its own home, with the tiny model as "tiny"."""
    from llmp.config import Settings
    from llmp.db import open_home
    from llmp.models import registry

    home = tmp_path_factory.mktemp("ops-home")
    settings = Settings(home=home).ensure_dirs()
    db = open_home(settings)
    registry.register(db, tiny_model_path, model_id="tiny")
    db.close()
    port = _free_port()
    proc = _serve(home, port)
    try:
        entry = _wait_for_entry(home, proc)
        yield {"home": home, "port": port, "proc": proc, "entry": entry}
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


@pytest.fixture
def at_home(served, monkeypatch):
    """This test's CLI runs on the served home, with no LLMP_URL / LLMP_API_KEY."""
    from llmp.cli import ui

    monkeypatch.setenv("LLMP_HOME", str(served["home"]))
    monkeypatch.setattr(ui.console, "width", 160)  # tables unwrapped, whatever the terminal
    return served


def test_discovery_without_llmp_url(at_home, cli):
    entry = at_home["entry"]
    assert entry["url"] == f"http://127.0.0.1:{at_home['port']}" and at_home["port"] != 8000
    r = cli("keys", "list")
    assert r.exit_code == 0, r.stderr
    assert "admin" in r.stdout
    # --url wins over the server file (and names itself in the error)
    r = cli("keys", "list", "--url", "http://127.0.0.1:9")
    assert r.exit_code != 0 and "127.0.0.1:9" in r.stderr and "Traceback" not in r.stderr
    r = cli("--url", "http://127.0.0.1:9", "files", "list")
    assert r.exit_code != 0 and "127.0.0.1:9" in r.stderr
    # a wrong --api-key is refused by the server
    r = cli("keys", "list", "--api-key", "sk-" + "x" * 40)
    assert r.exit_code == 3 and "Traceback" not in r.stderr


def test_stale_server_file_is_ignored(cli, llmp_home, monkeypatch):
    llmp_home.mkdir(parents=True, exist_ok=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    discovery.write(llmp_home, "http://127.0.0.1:9", pid=dead.pid)
    port = _free_port()  # the configured port (nothing listens there; 8000 may be taken)
    monkeypatch.setenv("LLMP_PORT", str(port))
    r = cli("keys", "list")
    assert r.exit_code != 0 and f"127.0.0.1:{port}" in r.stderr  # not the stale URL
    assert not discovery.server_file(llmp_home).exists()
    r = cli("stop")
    assert r.exit_code != 0 and "no llmp server is running" in r.stderr


def test_models_load_then_ps(at_home, cli):
    r = cli("models", "load", "tiny")
    assert r.exit_code == 0, r.stderr
    assert "Loaded tiny" in r.stdout and "2 slots" in r.stdout
    r = cli("ps", "--json")
    assert r.exit_code == 0, r.stderr
    loaded = json.loads(r.stdout)["data"]
    assert [m["id"] for m in loaded] == ["tiny"]
    m = loaded[0]
    assert m["slots_total"] == 2 and m["slots_busy"] == 0 and m["queue_depth"] == 0
    assert m["slot_ctx"] == 256 and m["model_bytes"] > 0 and m["keep_alive_left"] > 0
    r = cli("ps")
    assert r.exit_code == 0 and "tiny" in r.stdout and "0/2" in r.stdout


def test_run_streams_with_stdin(at_home, cli):
    r = cli("run", "tiny", "Summarize:", "--max-tokens", "8", "-t", "0",
            input="some piped text\n")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.endswith("\n") and r.stdout.strip()  # the reply, and nothing else
    r2 = cli("run", "tiny", "Summarize:", "--max-tokens", "8", "-t", "0", "--json",
             input="some piped text\n")
    assert r2.exit_code == 0, r2.stderr
    body = json.loads(r2.stdout)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["finish_reason"] in ("length", "stop")
    assert body["usage"]["completion_tokens"] >= 1
    r3 = cli("run", "tiny", input="")
    assert r3.exit_code == 2 and "PROMPT" in r3.stderr and r3.stdout == ""
    r4 = cli("run", "nope", "hi")
    assert r4.exit_code == 4 and r4.stdout == "" and "nope" in r4.stderr
    r5 = cli("run", "tiny", "hi", "-t", "9")  # the error names the flag, not the API field
    assert r5.exit_code == 2 and "--temperature" in r5.stderr and "'temperature'" not in r5.stderr


def test_keys_by_name(at_home, cli):
    r = cli("keys", "create", "ops-app", "--rpm", "60", "--json")
    assert r.exit_code == 0, r.stderr
    created = json.loads(r.stdout)
    r = cli("keys", "list")
    assert "ops-app" in r.stdout and "60 rpm" in r.stdout and "never" in r.stdout
    r = cli("keys", "revoke", "ops-app")
    assert r.exit_code == 0, r.stderr
    assert created["id"] in r.stdout
    r = cli("keys", "list", "--json")
    assert {k["id"]: k["status"] for k in json.loads(r.stdout)}[created["id"]] == "revoked"
    r = cli("keys", "create", "x", "--tier", "gold")
    assert r.exit_code == 2 and "Invalid --tier" in r.stderr
    r = cli("keys", "revoke", "no-such-key")
    assert r.exit_code == 4 and "no-such-key" in r.stderr


def test_usage_totals_row(at_home, cli):
    assert cli("run", "tiny", "hello", "--max-tokens", "4").exit_code == 0
    r = cli("usage", "--since", "7d", "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    prompt = sum(e["tokens"]["prompt_tokens"] for e in data["data"])
    completion = sum(e["tokens"]["completion_tokens"] for e in data["data"])
    assert prompt > 0 and completion > 0
    r = cli("usage", "--since", "7d")
    total = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("total"))
    cells = total.split()
    assert cells[3:6] == [f"{prompt:,}", f"{completion:,}", f"{prompt + completion:,}"], total
    assert "Tokens (prompt + completion) by model" in r.stdout
    r = cli("usage", "--by", "key", "--since", "yesterday")
    assert r.exit_code == 0 and "admin" in r.stdout  # key names, not only ids
    r = cli("usage", "--since", "last week")
    assert r.exit_code == 2 and "--since" in r.stderr and "start_date" not in r.stderr


def test_access_log_has_no_secret(at_home, cli):
    assert cli("run", "tiny", "log me", "--max-tokens", "2").exit_code == 0
    r = cli("logs", "-n", "200")
    assert r.exit_code == 0, r.stderr
    access = [ln for ln in r.stdout.splitlines() if "llmp.access" in ln
              and "POST /v1/chat/completions 200" in ln]
    assert access, r.stdout
    line = access[-1]
    assert re.search(r"request_id=req_\w+", line) and re.search(r"key_id=key_\w+", line)
    assert "model=tiny" in line and re.search(r"prompt_tokens=\d+", line)
    assert re.search(r"\d+(\.\d+)?ms", line)
    assert "model.load" in r.stdout or "loaded model tiny" in r.stdout
    secret = (at_home["home"] / "admin_key").read_text().strip()
    log_text = (at_home["home"] / "logs" / "llmp.log").read_text()
    assert secret not in log_text and "sk-" not in log_text


def test_config_show_and_path(at_home, cli):
    r = cli("config", "path")
    assert r.stdout.strip() == str(at_home["home"] / "llmp.toml")
    r = cli("config", "show", "--json")
    data = json.loads(r.stdout)
    assert data["port"]["source"] == "default" and "admin_key" in data


def test_busy_port_then_stop(at_home, cli):
    home, port = at_home["home"], at_home["port"]
    other = _serve(home, port, "-m", "tiny")
    _, err = other.communicate(timeout=60)
    assert other.returncode != 0 and "--port" in err and "already in use" in err
    assert "Traceback" not in err
    assert discovery.find(home)["pid"] == at_home["proc"].pid  # the running server's entry stays
    r = cli("stop")
    assert r.exit_code == 0, r.stderr
    assert "Stopped" in r.stdout and at_home["proc"].poll() is not None
    assert not discovery.server_file(home).exists()


def test_offline_first_start_is_short_and_says_what_to_do(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", "from llmp.cli.main import run; run()", "serve", "--port", "0"],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("LLMP_")},
             "LLMP_HOME": str(tmp_path / "home"), "HF_ENDPOINT": "http://127.0.0.1:9"},
        capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    err = proc.stderr[proc.stderr.index("Error:"):].splitlines()
    assert "could not pull the default model" in err[0] and len(err[0]) < 200
    assert any("llmp models add FILE.gguf" in ln for ln in err)
    assert any("llmp models synth --preset tiny --name tiny" in ln for ln in err)


def test_json_log_lines():
    """--log-format json: one object per line with the event's fields; the text form puts
    the fields after the message as key=value."""
    import logging

    from llmp import logs

    logger = logging.getLogger("llmp.access")
    record = logger.makeRecord("llmp.access", logging.INFO, __file__, 1, "POST /v1/x 200 1ms",
                               (), None, extra={"llmp_event": "access",
                                                "llmp_fields": {"key_id": "key_1", "model": None},
                                                "llmp_json": {"status": 200}})
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["event"] == "access" and line["status"] == 200 and line["key_id"] == "key_1"
    assert "model" not in line and line["ts"].endswith("Z") and line["level"] == "info"
    text = logs.TextFormatter().format(record)
    assert text.endswith("POST /v1/x 200 1ms key_id=key_1")
