"""Formatting for cells: sizes, durations, times, bars."""
from __future__ import annotations

import datetime as dt
from typing import Any


def size(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    x = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if x < 1024 or unit == "TB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return f"{x:.1f} TB"


def duration(s: Any) -> str:
    if not isinstance(s, (int, float)):
        return "-"
    s = int(s)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}d {h}h" if d else f"{h}h {m}m" if h else f"{m}m {s}s" if m else f"{s}s"


def seconds(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def when(v: Any) -> str:
    """A unix time or an ISO string, as `YYYY-MM-DD HH:MM` (UTC); '-' for none."""
    if v in (None, ""):
        return "-"
    if isinstance(v, (int, float)):
        return dt.datetime.fromtimestamp(v, dt.UTC).strftime("%Y-%m-%d %H:%M")
    return str(v).replace("T", " ")[:16]


def bar(frac: float, width: int = 20) -> str:
    frac = min(1.0, max(0.0, frac))
    full = int(round(frac * width))
    return "█" * full + "░" * (width - full)


def money(x: Any) -> str:
    return f"${x:,.4f}" if isinstance(x, (int, float)) else "-"


def num(x: Any) -> str:
    return f"{x:,}" if isinstance(x, int) else f"{x:,.1f}" if isinstance(x, float) else "-"
