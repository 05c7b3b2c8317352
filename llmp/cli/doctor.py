"""`llmp doctor`: what this installation can do, at a glance (or as JSON for scripts)."""
from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from importlib import metadata
from typing import Any

from rich.table import Table

from llmp import __version__, discovery
from llmp.cli.ui import JsonOpt, console, human_bytes, print_json
from llmp.config import load_settings


def _llama_cpp() -> dict[str, Any]:
    try:
        import llama_cpp
    except Exception as e:  # a broken build must not stop the report
        return {"version": None, "error": str(e).splitlines()[0] if str(e) else type(e).__name__}
    return {
        "version": getattr(llama_cpp, "__version__", None) or metadata.version("llama-cpp-python"),
        "gpu_offload": bool(llama_cpp.llama_supports_gpu_offload()),
        # "CPU : SSE3 = 1 | AVX = 1 | ..." -> "CPU: SSE3 AVX ..." (the features that are on)
        "system_info": _features(llama_cpp.llama_print_system_info().decode("utf-8", "replace")),
    }


def _features(info: str) -> str:
    out: list[str] = []
    for item in info.split("|"):
        key, _, value = (x.strip() for x in item.partition("="))
        if " : " in item:  # a backend name opens a group: "CPU : SSE3 = 1"
            backend, _, key = (x.strip() for x in key.partition(":"))
            out.append(f"{backend}:")
        if key and value not in ("0", ""):
            out.append(key if value == "1" else f"{key}={value}")
    return " ".join(out)


def _devices() -> list[str]:
    """GPUs `nvidia-smi -L` lists (none when it is absent or fails: nvcc alone is no GPU)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [ln.strip() for ln in out.stdout.splitlines() if ln.strip().startswith("GPU")] \
        if out.returncode == 0 else []


def _home(settings) -> dict[str, Any]:
    from llmp.db import models as db_models
    from llmp.db import open_home, schema_version

    info: dict[str, Any] = {"path": str(settings.home)}
    try:
        db = open_home(settings)
        info["db_schema"] = schema_version(db)
        info["models"] = len(db_models.list_all(db))
    except Exception as e:  # report a broken home instead of failing the whole check
        info["error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
    usage = shutil.disk_usage(settings.home if settings.home.exists() else settings.home.parent)
    info["disk_free"] = usage.free
    return info


def doctor(json_: JsonOpt = False) -> None:
    """Check the installation: Python, llama.cpp build and GPU offload, home, DB, disk.

    Examples:

      llmp doctor

      llmp doctor --json | jq .llama_cpp
    """
    settings = load_settings()
    report: dict[str, Any] = {
        "llmp": __version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "llama_cpp": _llama_cpp(),
        "devices": _devices(),
        "home": _home(settings),
        "server": discovery.find(settings.home),  # the running `llmp serve` of this home
    }
    if json_:
        print_json(report)
        return
    lc, home = report["llama_cpp"], report["home"]
    gpu = lc.get("gpu_offload")
    rows = [
        ("llmp", report["llmp"]),
        ("Python", report["python"]),
        ("Platform", report["platform"]),
        ("llama-cpp-python", lc.get("version") or f"[red]not importable: {lc.get('error')}[/red]"),
        ("GPU offload", "[green]yes[/green]" if gpu else "no (CPU build)"),
        ("llama.cpp features", lc.get("system_info", "-")),
        ("Devices", ", ".join(report["devices"]) or "no GPU seen (nvidia-smi -L)"),
        ("Home", home["path"]),
        ("DB schema", home.get("db_schema") or f"[red]{home.get('error')}[/red]"),
        ("Models", str(home.get("models", "-"))),
        ("Free disk", human_bytes(home["disk_free"])),
        ("Server", f"running at {report['server']['url']} (pid {report['server']['pid']})"
         if report["server"] else "not running on this home (`llmp serve`)"),
    ]
    if report["devices"] and not gpu:
        rows.append(("Hint", "[yellow]a GPU is present but this llama-cpp-python cannot use it: "
                             "reinstall with LLMP_CUDA=1 ./install.sh[/yellow]"))
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)
