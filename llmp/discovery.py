"""Where the running server is: `$LLMP_HOME/server.json`, written by `llmp serve`.

`llmp serve` writes {url, pid, started_at, version, log_file} once it listens and removes the
file when it stops; clients (the CLI, the TUI) read it to find the server without LLMP_URL.
An entry whose process is gone (killed, crashed, rebooted) is stale: `find` removes it and
returns None. No secret is stored here (the admin key has its own 0600 file).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from llmp import __version__

FILE_NAME = "server.json"


def server_file(home: Path) -> Path:
    return home / FILE_NAME


def pid_alive(pid: int) -> bool:
    """True when process `pid` runs and (where /proc tells) is an llmp process."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return b"llmp" in cmdline  # the pid was reused by something else: stale


def pid_running(pid: int) -> bool:
    """True until process `pid` has exited (a zombie counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def write(home: Path, url: str, *, pid: int | None = None, log_file: Path | None = None) -> Path:
    path = server_file(home)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"url": url, "pid": pid or os.getpid(), "started_at": int(time.time()),
                               "version": __version__,
                               "log_file": str(log_file) if log_file else None}, indent=2))
    tmp.replace(path)
    return path


def remove(home: Path, pid: int | None = None) -> None:
    """Remove the entry if it is this process's (a newer server's entry stays)."""
    entry = read(home)
    if entry is not None and entry.get("pid") == (pid or os.getpid()):
        server_file(home).unlink(missing_ok=True)


def read(home: Path) -> dict[str, Any] | None:
    """The entry as written (stale or not), None when absent or unreadable."""
    try:
        entry = json.loads(server_file(home).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
        return None
    return entry


def find(home: Path) -> dict[str, Any] | None:
    """The running server's entry; a stale one is removed and None returned."""
    entry = read(home)
    if entry is None:
        return None
    pid = entry.get("pid")
    if not isinstance(pid, int) or not pid_alive(pid):
        server_file(home).unlink(missing_ok=True)
        return None
    return entry
