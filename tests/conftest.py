"""Shared fixtures: an isolated LLMP_HOME per test, a tiny synthetic model per session,
and an in-process CLI runner that goes through the real entry point (`llmp.cli.main.run`)."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmp.models.synth import synthesize


@pytest.fixture(autouse=True)
def llmp_home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own home; no test touches ~/.llmp."""
    for k in list(os.environ):
        if k.startswith("LLMP_"):
            monkeypatch.delenv(k, raising=False)
    home = tmp_path / "llmp-home"
    monkeypatch.setenv("LLMP_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    return home


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """The tiny synthetic llama model (f16, ~0.4 MB), built once per test session."""
    return synthesize("tiny", tmp_path_factory.mktemp("models") / "tiny-f16.gguf", dtype="f16")


@pytest.fixture(scope="session")
def tiny_model_f32_path(tmp_path_factory) -> Path:
    return synthesize("tiny", tmp_path_factory.mktemp("models32") / "tiny-f32.gguf", dtype="f32")


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys):
    """Run `llmp ARGS...` in-process through the real entry point; returns a CliResult."""
    from llmp.cli.main import run

    def invoke(*args: str, input: str | None = None) -> CliResult:
        capsys.readouterr()
        old_stdin = sys.stdin
        if input is not None:
            import io
            sys.stdin = io.StringIO(input)
        try:
            run([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            sys.stdin = old_stdin
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)

    return invoke


# --------------------------------------------------------------------------- the server
@dataclass
class RunningServer:
    """A real llmp app on 127.0.0.1:<free port>, run by a thread with its own event loop."""

    url: str  # http://127.0.0.1:PORT
    base_url: str  # url + "/v1" (what the openai client takes)
    admin_key: str
    settings: object
    db: object
    app: object
    loop: object

    def make_key(self, permissions=("inference", "models.read"), rate_limit=None, *,
                 name: str = "test", **fields) -> str:
        """Create a key directly in the server's DB; returns its secret. `fields`: tier,
        limits {monthly_budget, requests_per_month, tokens_per_month}, expires_at."""
        from llmp.services import keys as keys_service

        body = {"name": name, "permissions": list(permissions), "rate_limit": rate_limit, **fields}
        return keys_service.create(self.db, body)["api_key"]

    def openai(self, key: str | None = None, **kwargs):
        """The official openai client on this server (admin key by default)."""
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=key or self.admin_key,
                             max_retries=0, **kwargs)

    def request(self, method: str, path: str, *, key: str | None = "admin", json=None,
                data: bytes | None = None, headers: dict | None = None):
        """A raw HTTP call: returns (status, headers, decoded JSON body or text). `key`:
        "admin" (default) for the admin key, None for no Authorization header, else a secret."""
        import json as jsonlib
        import urllib.error
        import urllib.request

        hdrs = dict(headers or {})
        if key is not None:
            hdrs["Authorization"] = f"Bearer {self.admin_key if key == 'admin' else key}"
        if json is not None:
            data = jsonlib.dumps(json).encode()
            hdrs["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=hdrs)
        try:
            resp = urllib.request.urlopen(req, timeout=120)
        except urllib.error.HTTPError as e:
            resp = e
        with resp:
            raw = resp.read()
            ctype = resp.headers.get("Content-Type") or ""
            body = jsonlib.loads(raw) if "json" in ctype and raw else raw.decode()
            return resp.status, resp.headers, body

    def run(self, coro, timeout: float = 60):
        """Run a coroutine on the server's loop (e.g. to read pool state)."""
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


def start_server(home: Path, model_path: Path, **settings_fields):
    """A context manager: an llmp server over a fresh home with `model_path` registered as
    "tiny"; settings fields (n_slots, slot_ctx, queue_size, ...) may be overridden;
    `listen_port` (default: a free one) lets a test restart a server on the same port."""
    import asyncio
    import contextlib
    import threading

    from llmp.config import Settings
    from llmp.models import registry
    from llmp.server import runner as server_runner
    from llmp.server.app import create_app
    from llmp.server.state import DB
    from llmp.services import keys as keys_service

    listen_port = settings_fields.pop("listen_port", 0)

    @contextlib.contextmanager
    def run():
        # webhook receivers in tests listen on 127.0.0.1: the operator setting that allows it
        fields = {"n_slots": 16, "slot_ctx": 512, "keep_alive": -1,
                  "webhook_allow_private": True, **settings_fields}
        settings = Settings(home=home, **fields).ensure_dirs()
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="llmp-test-server", daemon=True)
        thread.start()

        async def up():
            app = create_app(settings)
            registry.register(app[DB], model_path, model_id="tiny")
            r, port = await server_runner.start(app, "127.0.0.1", listen_port,
                                                  shutdown_timeout=5)
            return app, r, port

        app, r, port = asyncio.run_coroutine_threadsafe(up(), loop).result(120)
        admin = keys_service.create(app[DB], {"name": "test admin", "permissions": ["admin"]})
        try:
            yield RunningServer(url=f"http://127.0.0.1:{port}", base_url=f"http://127.0.0.1:{port}/v1",
                                admin_key=admin["api_key"], settings=settings, db=app[DB], app=app,
                                loop=loop)
        finally:
            asyncio.run_coroutine_threadsafe(r.cleanup(), loop).result(60)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()

    return run()


@pytest.fixture(scope="module")
def server(tiny_model_path, tmp_path_factory):
    """A running llmp server shared by the tests of one module (see `RunningServer`): make
    your own keys with `server.make_key(...)` so tests do not share rate-limit state."""
    with start_server(tmp_path_factory.mktemp("server-home"), tiny_model_path) as srv:
        yield srv


@pytest.fixture
def llama_generate():
    """Load a GGUF with llama-cpp-python and generate a few tokens greedily (EOS suppressed,
    since random weights may pick it first); returns the text."""
    import llama_cpp

    def generate(path, prompt: str = "The weather is", max_tokens: int = 8) -> str:
        llm = llama_cpp.Llama(str(path), n_ctx=128, verbose=False)
        out = llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0,
                                    logit_bias={llm.token_eos(): -100.0})
        assert out["choices"][0]["finish_reason"] == "length"
        assert out["choices"][0]["text"]
        return out["choices"][0]["text"]

    return generate


# --------------------------------------------------------------------------- webhooks
class WebhookReceiver:
    """A real aiohttp server on 127.0.0.1 that records what it gets; answers `codes` in turn
    (then 200)."""

    def __init__(self, server, codes: list[int] | None = None):
        self.server = server
        self.codes = list(codes or [])
        self.got: list[tuple[dict, bytes]] = []

        from aiohttp import web

        async def handle(request: web.Request) -> web.Response:
            self.got.append((dict(request.headers), await request.read()))
            return web.Response(status=self.codes.pop(0) if self.codes else 200)

        async def start():
            app = web.Application()
            app.router.add_post("/hook", handle)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            return runner, runner.addresses[0][1]

        self.runner, port = server.run(start())
        self.url = f"http://127.0.0.1:{port}/hook"

    def wait(self, n: int, timeout: float = 30) -> list[tuple[dict, bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.got) < n:
            assert time.monotonic() < deadline, f"got {len(self.got)} of {n} deliveries"
            time.sleep(0.02)
        return self.got

    def close(self) -> None:
        self.server.run(self.runner.cleanup())


@pytest.fixture
def receiver(server):
    """`receiver(codes=None)` makes a `WebhookReceiver` (closed after the test)."""
    made = []

    def make(codes=None) -> WebhookReceiver:
        made.append(WebhookReceiver(server, codes))
        return made[-1]

    yield make
    for r in made:
        r.close()
