"""`llmp ps`, `llmp stop`, `llmp logs`: the running server, seen and controlled as a process.

`ps` asks the server (GET /v1/admin/models) what it holds; `stop` signals the process recorded
in `$LLMP_HOME/server.json` (SIGTERM: a graceful stop) and waits for it to exit; `logs` reads
`$LLMP_HOME/logs/llmp.log`, the file `llmp serve` writes.
"""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Column

from llmp import discovery
from llmp import logs as logs_mod
from llmp.cli.ui import ApiKeyOpt, JsonOpt, UrlOpt, client, console, human_bytes, print_json, table
from llmp.config import load_settings
from llmp.errors import InvalidRequestError, NotFoundError


def duration(seconds: float | None) -> str:
    """72.4 -> '1m 12s'; None -> 'forever'."""
    if seconds is None:
        return "forever"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def ps(url: UrlOpt = None, api_key: ApiKeyOpt = None, json_out: JsonOpt = False) -> None:
    """Show the models the server has loaded: slots busy/total, queue, context per slot,
    memory, device and how long until an idle model is unloaded (keep-alive).

    Examples:

      llmp ps

      llmp ps --json | jq '.data[].id'
    """
    c = client()
    data = c.request("GET", "/v1/admin/models")
    if json_out:
        print_json(data)
        return
    rows = data["data"]
    for mid in data.get("loading") or []:
        console.print(f"loading {mid} ...")
    if not rows:
        console.print(f"No model loaded at {c.url} (models load on first use, or with "
                      "`llmp models load ID`).")
        return
    t = table(Column("MODEL", no_wrap=True), "DEVICE", "SLOTS", "QUEUE", "CTX/SLOT", "MEMORY",
              "TOK/S", "UNLOADS IN", caption="SLOTS: busy/total; UNLOADS IN: keep-alive left")
    for m in rows:
        mem = (m.get("model_bytes") or 0) + (m.get("kv_cache_bytes") or 0)
        left = m.get("keep_alive_left")
        busy = m.get("slots_busy", 0)
        t.add_row(m["id"], str(m.get("device") or "-"), f"{busy}/{m.get('slots_total', '-')}",
                  str(m.get("queue_depth", 0)), f"{m.get('slot_ctx', '-')}",
                  human_bytes(mem) if mem else "-", f"{m.get('tokens_per_second', 0):g}",
                  "busy" if busy else duration(left))
    console.print(t)


def _pid_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not discovery.pid_running(pid):
            return True
        time.sleep(0.1)
    return not discovery.pid_running(pid)


def stop(
    timeout: Annotated[float, typer.Option(
        "--timeout", metavar="SECONDS",
        help="How long to wait for it to exit (default: the shutdown grace + 10 s).")] = 0,
    force: Annotated[bool, typer.Option(
        "--force", help="Do not wait for in-flight requests: quit at once.")] = False,
) -> None:
    """Stop the server running on this home (the PID in $LLMP_HOME/server.json): in-flight
    requests finish first (up to the shutdown grace), as with Ctrl-C.

    Examples:

      llmp stop

      LLMP_HOME=/srv/llmp llmp stop --force
    """
    settings = load_settings()
    entry = discovery.read(settings.home)
    found = discovery.find(settings.home)
    if found is None:
        stale = f" (removed a stale entry for pid {entry.get('pid')})" if entry else ""
        raise NotFoundError(f"no llmp server is running on {settings.home}{stale}; a remote one "
                            "stops on its own machine")
    pid = int(found["pid"])
    os.kill(pid, signal.SIGTERM)
    if force:  # a second signal while stopping: the server quits at once
        time.sleep(0.2)
        if discovery.pid_alive(pid):
            os.kill(pid, signal.SIGTERM)
    wait = timeout or settings.shutdown_grace + 10
    if not _pid_gone(pid, wait):
        raise InvalidRequestError(f"llmp (pid {pid}) is still stopping after {wait:g} s; "
                                  "`llmp stop --force` quits at once", param="timeout")
    discovery.remove(settings.home, pid)
    console.print(f"Stopped llmp at {found['url']} (pid {pid}).")


def _tail(path: Path, n: int) -> list[str]:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        block, data = 64 * 1024, b""
        while size > 0 and data.count(b"\n") <= n:
            step = min(block, size)
            size -= step
            f.seek(size)
            data = f.read(step) + data
    return data.decode("utf-8", "replace").splitlines()[-n:] if n > 0 else []


def _follow(path: Path) -> Iterator[str]:
    """Lines appended to `path` from now on, across rotations (a new file under the name)."""
    f = path.open("r", encoding="utf-8", errors="replace")
    f.seek(0, os.SEEK_END)
    inode = os.fstat(f.fileno()).st_ino
    try:
        while True:
            line = f.readline()
            if line:
                yield line.rstrip("\n")
                continue
            try:
                if os.stat(path).st_ino != inode:  # rotated: read the new file from its start
                    f.close()
                    f = path.open("r", encoding="utf-8", errors="replace")
                    inode = os.fstat(f.fileno()).st_ino
                    continue
            except FileNotFoundError:
                pass
            time.sleep(0.25)
    finally:
        f.close()


def logs(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", metavar="N",
                                       help="How many of the last lines to print.")] = 50,
) -> None:
    """Print the server's log ($LLMP_HOME/logs/llmp.log): access lines, model loads and
    unloads, queue-full, batch and webhook events.

    Examples:

      llmp logs -n 100

      llmp logs -f | grep access
    """
    path = logs_mod.log_file(load_settings().home)
    if not path.exists():
        raise NotFoundError(f"no log yet at {path}: `llmp serve` writes it")
    for line in _tail(path, lines):
        typer.echo(line)
    if follow:
        for line in _follow(path):
            typer.echo(line)
