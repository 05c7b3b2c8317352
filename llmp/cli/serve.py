"""`llmp serve`: the /v1 server (the one process that owns the engines and job workers)."""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
from typing import Annotated, Optional

import typer

from llmp import discovery, logs
from llmp.cli import models as models_cmd
from llmp.cli.ui import console, err_console
from llmp.config import load_settings
from llmp.db import models as db_models
from llmp.db import open_home
from llmp.errors import ConfigError, LlmpError
from llmp.models import registry
from llmp.services import keys as keys_service
from llmp.services import models as models_service

log = logging.getLogger("llmp.server")

OFFLINE_HINT = ("Two ways forward without the hub:\n"
                "  llmp models add FILE.gguf                              a GGUF you have\n"
                "  llmp models synth --preset tiny --name tiny            a synthetic model to try llmp")


def _ensure_models(settings, db, wanted: list[str]) -> list[dict]:
    """The models to announce (and preload): those named with --model (a GGUF path is
    registered on the fly), else every registered one; on an empty home the default model is
    pulled first."""
    if wanted:
        return [registry.resolve_path(settings, m, db=db) for m in wanted]
    if not db_models.list_all(db):
        err_console.print(f"No model registered yet: pulling the default model "
                          f"[bold]{settings.default_model}[/bold]")
        try:
            models_cmd.pull(settings.default_model, revision=None, name=None, provider=None)
        except LlmpError as e:
            raise ConfigError(f"could not pull the default model {settings.default_model}: "
                              f"{_short(e.message)}\n" + OFFLINE_HINT) from None
    return []


def _short(message: str, limit: int = 120) -> str:
    """The first sentence of a long error message (the reason, without its advice)."""
    first = message.split("; ")[0].split(". ")[0].strip()
    return first if len(first) <= limit else first[:limit - 3] + "..."


def _banner(url: str, settings, models: list[dict], db, new_admin_key: str | None) -> None:
    from llmp.engine.native import gpu_offload_supported

    device = "GPU (llama.cpp offload)" if gpu_offload_supported() and settings.n_gpu_layers != 0 \
        else f"CPU ({settings.threads} threads)"
    console.print(f"[bold green]llmp[/bold green] serving on [bold]{url}/v1[/bold]  ·  {device}")
    ids = [m["id"] for m in models] or [m["id"] for m in db_models.list_all(db)]
    console.print("models: " + (", ".join(ids) if ids else "(none)")
                  + ("  (preloading)" if models else "  (loaded on first use)"))
    console.print(f"home: {settings.home}  ·  health: {url}/health  ·  metrics: {url}/metrics")
    if new_admin_key:
        console.print(f"[bold yellow]Admin API key (shown once; saved to "
                      f"{settings.admin_key_path}):[/bold yellow] {new_admin_key}")
    elif settings.admin_key:
        console.print("admin key: from LLMP_ADMIN_KEY")
    else:
        console.print(f"admin key: {settings.admin_key_path}")
    console.print("Press Ctrl-C to stop.")


def _on_signal(stop: asyncio.Event) -> None:
    """First SIGINT/SIGTERM: a graceful stop. A second one while stopping: quit at once
    (SQLite's journal keeps the state whole; unfinished batch lines run again on restart)."""
    if stop.is_set():
        err_console.print("Forced stop.")
        os._exit(130)
    stop.set()


async def _serve(settings, models: list[dict], new_admin_key: str | None,
                 adapters: dict[str, dict] | None = None, log_file=None) -> None:
    from llmp.client import connectable
    from llmp.server import runner as server_runner
    from llmp.server.app import create_app
    from llmp.server.state import DB, POOL

    app = create_app(settings, adapters=adapters)
    # the grace period is `graceful_stop`'s; aiohttp's own wait after it is short
    try:
        runner, port = await server_runner.start(app, settings.host, settings.port,
                                                 shutdown_timeout=2.0)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            running = discovery.find(settings.home)
            other = (f" (the llmp server of this home, pid {running['pid']}: `llmp ps`, "
                     "`llmp stop`)" if running else "")
            raise ConfigError(f"port {settings.port} on {settings.host} is already in use{other}; "
                              f"choose another with --port, e.g. `llmp serve --port "
                              f"{settings.port + 1}`") from None
        raise
    host = settings.host if ":" not in settings.host else f"[{settings.host}]"
    url = f"http://{host}:{port}"
    discovery.write(settings.home, f"http://{connectable(settings.host)}:{port}",
                    log_file=log_file)
    logs.event(log, "server.start", f"llmp serving on {url}/v1", url=url, pid=os.getpid(),
               home=str(settings.home))
    _banner(url, settings, models, app[DB], new_admin_key)
    for a in (adapters or {}).values():
        console.print(f"adapter: {a['id']} on {a['parent']} ({a['description']})")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _on_signal, stop)
    preload = [asyncio.create_task(app[POOL].get(m["id"])) for m in models]
    try:
        await stop.wait()
    finally:
        err_console.print(f"Shutting down: finishing in-flight requests (up to "
                          f"{settings.shutdown_grace:g} s)...")
        for t in preload:
            t.cancel()
        await server_runner.graceful_stop(runner, app, settings.shutdown_grace)
        discovery.remove(settings.home)
        logs.event(log, "server.stop", "llmp stopped", pid=os.getpid())
        err_console.print("Stopped.")


def serve(
    host: Annotated[Optional[str], typer.Option("--host", help="Interface to listen on.")] = None,
    port: Annotated[Optional[int], typer.Option("--port", help="TCP port (default 8000).")] = None,
    model: Annotated[Optional[list[str]], typer.Option(
        "--model", "-m", help="Model id, alias or GGUF path to preload (repeatable); a path is "
        "registered on the fly.")] = None,
    slots: Annotated[Optional[int], typer.Option(
        "--slots", help="Concurrent sequences per model (default: sized from memory).")] = None,
    ctx: Annotated[Optional[int], typer.Option(
        "--ctx", help="Context per slot in tokens.")] = None,
    lora: Annotated[Optional[list[str]], typer.Option(
        "--lora", metavar="NAME=PATH", help="Serve a LoRA adapter (GGUF or PEFT folder) on the "
        "first --model as model NAME, without registering it (repeatable).")] = None,
    log_format: Annotated[str, typer.Option(
        "--log-format", envvar="LLMP_LOG_FORMAT", metavar="text|json",
        help="Log lines as text or as one JSON object per line (stderr and "
        "$LLMP_HOME/logs/llmp.log).")] = "text",
    log_level: Annotated[Optional[str], typer.Option(
        "--log-level", metavar="debug|info|warning|error",
        help="Least severity logged (default: the log_level setting, info).")] = None,
) -> None:
    """Start the OpenAI-compatible /v1 server with API keys, limits and usage.

    On a fresh home it pulls the default model, and makes an admin API key (printed once,
    saved with mode 0600 for the CLI) unless LLMP_ADMIN_KEY is set. SIGINT/SIGTERM stop it
    gracefully: in-flight requests finish first; a second Ctrl-C quits at once.

    Logs: one access line per request (request id, key id, method, path, status, latency,
    tokens, model), model loads/unloads, queue-full, batch and webhook events; to stderr and
    $LLMP_HOME/logs/llmp.log (rotated; `llmp logs -f` follows it). The URL and PID go to
    $LLMP_HOME/server.json so that the other commands find this server.

    Examples:

      llmp serve

      llmp serve --port 8011 -m tiny --log-format json
    """
    settings = load_settings(host=host, port=port, n_slots=slots, slot_ctx=ctx, log_level=log_level)
    try:
        log_file = logs.setup(settings.ensure_dirs().home, log_format, settings.log_level)
    except ValueError as e:
        flag = "--log-format" if "format" in str(e) else "--log-level"
        raise ConfigError(f"{flag}: {e}") from None
    running = discovery.find(settings.home)
    if running is not None:
        err_console.print(f"[yellow]Note:[/yellow] another llmp server of this home runs at "
                          f"{running['url']} (pid {running['pid']}); this one takes over "
                          f"{discovery.server_file(settings.home)} while it runs.")
    db = open_home(settings)
    models = _ensure_models(settings, db, list(model or []))
    adapters = models_service.serve_adapters(db, settings, list(lora or []),
                                             models[0]["id"] if models else None)
    new_key = keys_service.ensure_admin(db, settings)
    db.close()
    asyncio.run(_serve(settings, models, new_key, adapters, log_file))
